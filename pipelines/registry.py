"""Model registry: a local one in SQLite, and the same commands on SageMaker's Model Registry.

    python -m pipelines.registry list [--status Approved]
    python -m pipelines.registry describe 3
    python -m pipelines.registry approve 3 [--note "checked the confusion matrix"]
    python -m pipelines.registry reject 2
    ... --group DogBreedModels (default)  --home DIR (local; $DOGBREED_HOME, ./.dogbreed)
    ... --sagemaker [--region R] [--profile P]   (SageMaker's Model Registry, via boto3)

The local registry follows SageMaker's model: model package groups, versions numbered from 1
per group, approval status PendingManualApproval / Approved / Rejected, metrics,
hyperparameters, the model artifact's location, lineage and timestamps. Registrations from
parallel runs each get their own version (one write transaction per registration).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipelines import spec
from pipelines.sqlite import connect, initialize

STATUSES = ("PendingManualApproval", "Approved", "Rejected")
DEFAULT_HOME = ".dogbreed"
DB_FILE = "registry.sqlite"


class RegistryError(Exception):
    """A clear, user-facing registry problem (unknown group or version, bad status)."""


@dataclass
class ModelPackage:
    group: str
    version: int
    approval_status: str
    model_data: str
    metrics: dict = field(default_factory=dict)
    hyperparameters: dict = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)
    description: str = ""
    approval_description: str = ""
    created_at: str = ""
    updated_at: str = ""
    arn: str = ""
    # string pairs for the approver, as SageMaker's CustomerMetadataProperties: accuracies,
    # the training rules' verdicts, where the profiler report is, the MLflow run
    metadata: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        try:
            return spec.accuracy_of(self.metrics)
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def validation_accuracy(self) -> float | None:
        """The valid split's accuracy (the gate's figure): the version's
        ``validation_accuracy`` metadata (CustomerMetadataProperties in SageMaker), or, in
        versions the local engine registered before 2026-12, beside the test metrics."""
        try:
            return float(self.metadata["validation_accuracy"])
        except (KeyError, TypeError, ValueError):
            pass
        try:
            return spec.accuracy_of(self.metrics["validation"])
        except (KeyError, TypeError, ValueError):
            return None


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """--home, $DOGBREED_HOME or ./.dogbreed, as an absolute path: steps run as subprocesses
    in folders of their own, where a relative path would point somewhere else."""
    return Path(home or os.environ.get("DOGBREED_HOME") or DEFAULT_HOME).expanduser().resolve()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_package_groups (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_packages (
    group_name TEXT NOT NULL REFERENCES model_package_groups(name),
    version INTEGER NOT NULL,
    approval_status TEXT NOT NULL CHECK (approval_status IN
        ('PendingManualApproval', 'Approved', 'Rejected')),
    model_data TEXT NOT NULL,
    metrics TEXT NOT NULL,
    hyperparameters TEXT NOT NULL,
    lineage TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    approval_description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (group_name, version)
);
"""


class LocalRegistry:
    """SQLite registry under the engine's home folder (WAL; safe for parallel processes)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.path = home_dir(home) / DB_FILE
        initialize(self.path, _SCHEMA)
        self._add_column("metadata", "TEXT NOT NULL DEFAULT '{}'")  # registries before 2026-11

    def _add_column(self, name: str, definition: str) -> None:
        with self._connect() as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(model_packages)")}
            if name in columns:
                return
            try:
                db.execute(f"ALTER TABLE model_packages ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):  # another process added it first
                    raise

    def _open(self) -> sqlite3.Connection:
        return connect(self.path)

    def _connect(self):
        return contextlib.closing(self._open())

    def register(self, group: str, model_data: str, *, metrics: dict | None = None,
                 hyperparameters: dict | None = None, lineage: dict | None = None,
                 approval_status: str = "PendingManualApproval",
                 description: str = "", metadata: dict | None = None) -> ModelPackage:
        _check_status(approval_status)
        now = _now()
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time: versions never collide
            db.execute("INSERT OR IGNORE INTO model_package_groups (name, created_at) "
                       "VALUES (?, ?)", (group, now))
            version = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_packages "
                                 "WHERE group_name = ?", (group,)).fetchone()[0]
            db.execute(
                "INSERT INTO model_packages (group_name, version, approval_status, model_data, "
                "metrics, hyperparameters, lineage, description, created_at, updated_at, "
                "metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (group, version, approval_status, str(model_data), json.dumps(metrics or {}),
                 json.dumps(hyperparameters or {}), json.dumps(lineage or {}), description,
                 now, now, json.dumps({k: str(v) for k, v in (metadata or {}).items()})))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()
        return self.describe(group, version)

    def list(self, group: str, status: str | None = None) -> list[ModelPackage]:
        """Newest first."""
        if status:
            _check_status(status)
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM model_packages WHERE group_name = ? AND (? IS NULL OR "
                "approval_status = ?) ORDER BY version DESC", (group, status, status)).fetchall()
        return [_from_row(r) for r in rows]

    def describe(self, group: str, version: int) -> ModelPackage:
        with self._connect() as db:
            row = db.execute("SELECT * FROM model_packages WHERE group_name = ? AND version = ?",
                             (group, int(version))).fetchone()
            if row is None:
                versions = [r[0] for r in db.execute(
                    "SELECT version FROM model_packages WHERE group_name = ? ORDER BY version",
                    (group,))]
        if row is None:
            raise RegistryError(_missing(group, version, versions))
        return _from_row(row)

    def set_status(self, group: str, version: int, status: str,
                   note: str = "") -> ModelPackage:
        _check_status(status)
        self.describe(group, version)  # a clear error for an unknown version
        with self._connect() as db:
            db.execute("UPDATE model_packages SET approval_status = ?, approval_description = ?, "
                       "updated_at = ? WHERE group_name = ? AND version = ?",
                       (status, note, _now(), group, int(version)))
        return self.describe(group, version)

    def latest_approved(self, group: str) -> ModelPackage | None:
        approved = self.list(group, "Approved")
        return approved[0] if approved else None


class SageMakerRegistry:
    """The same operations on SageMaker's Model Registry."""

    def __init__(self, session):
        self.sm = session.client("sagemaker")

    def _packages(self, group: str, status: str | None = None) -> list[dict]:
        kwargs = {"ModelPackageGroupName": group, "SortBy": "CreationTime",
                  "SortOrder": "Descending"}  # the API's default order is ascending
        if status:
            kwargs["ModelApprovalStatus"] = status
        found = []
        for page in self.sm.get_paginator("list_model_packages").paginate(**kwargs):
            found.extend(page.get("ModelPackageSummaryList", []))
        return found

    def list(self, group: str, status: str | None = None) -> list[ModelPackage]:
        if status:
            _check_status(status)
        return [self._summary(s) for s in self._packages(group, status)]

    def _arn(self, group: str, version: int) -> str:
        for summary in self._packages(group):
            if int(summary.get("ModelPackageVersion", 0)) == int(version):
                return summary["ModelPackageArn"]
        versions = sorted(int(s.get("ModelPackageVersion", 0)) for s in self._packages(group))
        raise RegistryError(_missing(group, version, versions))

    def describe(self, group: str, version: int) -> ModelPackage:
        d = self.sm.describe_model_package(ModelPackageName=self._arn(group, version))
        containers = d.get("InferenceSpecification", {}).get("Containers", [{}])
        return ModelPackage(
            group=group, version=int(d.get("ModelPackageVersion", version)),
            approval_status=d.get("ModelApprovalStatus", ""),
            model_data=containers[0].get("ModelDataUrl", ""),
            metrics={"ModelQuality": d.get("ModelMetrics", {}).get("ModelQuality", {})},
            lineage={"MetadataProperties": d.get("MetadataProperties", {})},
            description=d.get("ModelPackageDescription", ""),
            approval_description=d.get("ApprovalDescription", ""),
            created_at=str(d.get("CreationTime", "")),
            updated_at=str(d.get("LastModifiedTime", "")), arn=d["ModelPackageArn"],
            metadata=dict(d.get("CustomerMetadataProperties", {})))

    def set_status(self, group: str, version: int, status: str,
                   note: str = "") -> ModelPackage:
        _check_status(status)
        kwargs = {"ApprovalDescription": note} if note else {}
        self.sm.update_model_package(ModelPackageArn=self._arn(group, version),
                                     ModelApprovalStatus=status, **kwargs)
        return self.describe(group, version)

    def latest_approved(self, group: str) -> ModelPackage | None:
        approved = self._packages(group, "Approved")
        return self._summary(approved[0]) if approved else None

    @staticmethod
    def _summary(s: dict) -> ModelPackage:
        return ModelPackage(group=s.get("ModelPackageGroupName", ""),
                            version=int(s.get("ModelPackageVersion", 0)),
                            approval_status=s.get("ModelApprovalStatus", ""), model_data="",
                            description=s.get("ModelPackageDescription", ""),
                            created_at=str(s.get("CreationTime", "")), arn=s["ModelPackageArn"])


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"unknown approval status {status!r}; use one of "
                            f"{', '.join(STATUSES)}")


def _missing(group: str, version, versions: list[int]) -> str:
    if not versions:
        return f"model package group {group} has no versions (nothing registered yet)"
    return (f"version {version} does not exist in model package group {group}; versions: "
            f"{', '.join(map(str, versions))}")


def _from_row(row: sqlite3.Row) -> ModelPackage:
    return ModelPackage(
        group=row["group_name"], version=row["version"],
        approval_status=row["approval_status"], model_data=row["model_data"],
        metrics=json.loads(row["metrics"]), hyperparameters=json.loads(row["hyperparameters"]),
        lineage=json.loads(row["lineage"]), description=row["description"],
        approval_description=row["approval_description"], created_at=row["created_at"],
        updated_at=row["updated_at"], metadata=json.loads(row["metadata"]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.registry", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", default=spec.DEFAULT_MODEL_PACKAGE_GROUP)
    p.add_argument("--home", help="local engine home (default $DOGBREED_HOME or ./.dogbreed)")
    p.add_argument("--sagemaker", action="store_true", help="use SageMaker's Model Registry")
    p.add_argument("--region")
    p.add_argument("--profile")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="versions, newest first")
    ls.add_argument("--status", choices=STATUSES)
    for name in ("describe", "approve", "reject"):
        cmd = sub.add_parser(name)
        cmd.add_argument("version", type=int)
        if name != "describe":
            cmd.add_argument("--note", default="", help="approval description")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.sagemaker:
            from botocore.exceptions import BotoCoreError, ClientError

            from pipelines.aws import CliError, boto_session, describe_aws_error
            try:
                registry = SageMakerRegistry(boto_session(args.region, args.profile))
                return _command(registry, args)
            except CliError as exc:
                raise RegistryError(str(exc)) from None
            except (ClientError, BotoCoreError) as exc:
                raise RegistryError(describe_aws_error(exc)) from None
        return _command(LocalRegistry(args.home), args)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _command(registry, args) -> int:
    if args.command == "list":
        packages = registry.list(args.group, args.status)
        if not packages:
            print(f"no versions in {args.group}" + (f" with status {args.status}"
                                                     if args.status else ""))
            return 0
        print(f"{'version':>7}  {'status':<22} {'accuracy':>8}  created")
        for pkg in packages:
            acc = f"{pkg.accuracy:.4f}" if pkg.accuracy is not None else "-"
            print(f"{pkg.version:>7}  {pkg.approval_status:<22} {acc:>8}  {pkg.created_at}")
    elif args.command == "describe":
        print(json.dumps(asdict(registry.describe(args.group, args.version)), indent=2,
                         default=str))
    else:
        status = "Approved" if args.command == "approve" else "Rejected"
        pkg = registry.set_status(args.group, args.version, status, args.note)
        print(f"{args.group} version {pkg.version}: {pkg.approval_status}")
    return 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
