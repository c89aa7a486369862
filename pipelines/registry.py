"""Model registry: a local one in SQLite, and the same commands on SageMaker's Model Registry.

    python -m pipelines.registry list [--status Approved]
    python -m pipelines.registry describe 3
    python -m pipelines.registry approve 3 [--note "checked the confusion matrix"]
    python -m pipelines.registry reject 2
    python -m pipelines.registry restore       # a damaged registry.sqlite from its backup
    ... --group DogBreedModels (default)  --home DIR (local; $DOGBREED_HOME, ./.dogbreed)
    ... --sagemaker [--region R] [--profile P]   (SageMaker's Model Registry, via boto3)

The local registry follows SageMaker's model: model package groups, versions numbered from 1
per group, approval status PendingManualApproval / Approved / Rejected, metrics,
hyperparameters, the model artifact's location, lineage and timestamps. Registrations from
parallel runs each get their own version (one write transaction per registration). Each
version records its model archive's size and sha256: ``list`` and ``describe`` flag an archive
that is gone or changed, and deploys refuse it. After every change the registry is copied to
``registry.sqlite.bak`` (SQLite's backup API), from which ``restore`` brings back a damaged one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipelines import spec
from pipelines.sqlite import (DamagedStore, add_column, check, connect, initialize,
                              write_transaction)

STATUSES = ("PendingManualApproval", "Approved", "Rejected")
DEFAULT_HOME = ".dogbreed"
DB_FILE = "registry.sqlite"
BACKUP_SUFFIX = ".bak"


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
    # the model archive as registered (None: a folder, or registered before 2026-12)
    artifact_bytes: int | None = None
    artifact_sha256: str = ""

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


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalRegistry:
    """SQLite registry under the engine's home folder (WAL; safe for parallel processes)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = home_dir(home)
        self.path = self.home / DB_FILE
        self.backup_path = self.path.with_name(DB_FILE + BACKUP_SUFFIX)
        initialize(self.path, _SCHEMA, advice=self._advice())
        for name, definition in (("metadata", "TEXT NOT NULL DEFAULT '{}'"),  # before 2026-11
                                 ("artifact_bytes", "INTEGER"),  # before 2026-12
                                 ("artifact_sha256", "TEXT NOT NULL DEFAULT ''")):
            add_column(self.path, "model_packages", name, definition)

    def _advice(self) -> str:
        restore = f"python -m pipelines.registry --home {self.home} restore"
        if self.backup_path.exists():
            return (f"restore the copy made after its last change with `{restore}` (the "
                    f"damaged file is kept as {self.path.name}.damaged)")
        return (f"there is no backup ({self.backup_path.name}) to restore; move it aside "
                f"(mv {self.path} {self.path}.damaged) to start an empty registry")

    def _backup(self) -> None:
        """Copy the registry, just changed, to registry.sqlite.bak (atomically, one process
        at a time, so an older copy never replaces a newer one). Best effort: the change is
        made either way, and a failed copy is one warning."""
        import fcntl

        partial = self.backup_path.with_name(f"{self.backup_path.name}.{os.getpid()}.partial")
        try:
            with open(self.backup_path.with_name(self.backup_path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                with self._connect() as db, contextlib.closing(sqlite3.connect(partial)) as copy:
                    db.backup(copy)
                os.replace(partial, self.backup_path)
        except (OSError, sqlite3.Error) as exc:
            print(f"warning: the change is made, but the registry's backup "
                  f"{self.backup_path} could not be written ({exc})", file=sys.stderr)
        finally:
            partial.unlink(missing_ok=True)

    def restore(self, force: bool = False) -> Path | None:
        """Bring back registry.sqlite from its backup, keeping the current file beside it
        (``registry.sqlite.damaged``, numbered if taken); where it went, or None when there
        was none. A registry that is not damaged is left alone unless ``force``."""
        if not self.backup_path.exists():
            raise RegistryError(f"no backup {self.backup_path} to restore")
        check(self.backup_path, "the backup is damaged too: move both aside to start an "
                                "empty registry")
        if not force and self.path.exists():
            try:
                check(self.path, "")
            except DamagedStore:
                pass
            else:
                raise RegistryError(f"{self.path} is not damaged: restore replaces it with "
                                    f"the backup of its last change; add --force to do that")
        restoring = self.path.with_name(DB_FILE + ".restoring")
        with contextlib.closing(sqlite3.connect(self.backup_path)) as src, \
                contextlib.closing(sqlite3.connect(restoring)) as dst:
            src.backup(dst)  # the copy first: a kill from here on still leaves a registry
        damaged = None
        if self.path.exists():
            damaged = self.path.with_name(DB_FILE + ".damaged")
            n = 1
            while damaged.exists():
                n += 1
                damaged = self.path.with_name(f"{DB_FILE}.damaged.{n}")
            os.link(self.path, damaged)  # kept; registry.sqlite itself is replaced below
        for suffix in ("-wal", "-shm"):  # the damaged file's journal is not the backup's
            journal = self.path.with_name(DB_FILE + suffix)
            if journal.exists():
                if damaged:
                    os.replace(journal, damaged.with_name(damaged.name + suffix))
                else:
                    journal.unlink()
        os.replace(restoring, self.path)
        return damaged

    @classmethod
    def restore_in(cls, home: str | os.PathLike | None = None,
                   force: bool = False) -> tuple[Path | None, Path]:
        """``restore`` without opening (checking) the damaged registry first."""
        registry = cls.__new__(cls)
        registry.home = home_dir(home)
        registry.path = registry.home / DB_FILE
        registry.backup_path = registry.path.with_name(DB_FILE + BACKUP_SUFFIX)
        return registry.restore(force), registry.path

    def _open(self) -> sqlite3.Connection:
        return connect(self.path)

    def _connect(self):
        return contextlib.closing(self._open())

    def register(self, group: str, model_data: str, *, metrics: dict | None = None,
                 hyperparameters: dict | None = None, lineage: dict | None = None,
                 approval_status: str = "PendingManualApproval",
                 description: str = "", metadata: dict | None = None) -> ModelPackage:
        return self._register(group, model_data, metrics, hyperparameters, lineage,
                              approval_status, description, metadata)[0]

    def register_once(self, group: str, model_data: str, *, sha256: str | None = None,
                      **fields) -> tuple[ModelPackage, bool]:
        """As ``register``, unless a version of ``group`` already holds a model archive with
        this content (``sha256``, default: ``model_data``'s): then that version, and False.
        One transaction, so parallel runs registering one archive get one version."""
        return self._register(group, model_data, fields.get("metrics"),
                              fields.get("hyperparameters"), fields.get("lineage"),
                              fields.get("approval_status", "PendingManualApproval"),
                              fields.get("description", ""), fields.get("metadata"),
                              once=True, sha256=sha256)

    def _register(self, group, model_data, metrics, hyperparameters, lineage, approval_status,
                  description, metadata, once: bool = False, sha256: str | None = None
                  ) -> tuple[ModelPackage, bool]:
        _check_status(approval_status)
        size, digest = _artifact(model_data, sha256)
        now = _now()
        db = self._open()
        try:
            with write_transaction(db):  # one writer at a time: versions never collide
                existing = next((row for row in db.execute(
                    "SELECT * FROM model_packages WHERE group_name = ? AND artifact_sha256 = ? "
                    "ORDER BY version DESC", (group, digest))
                    if self.artifact_problem(_from_row(row), full=False) is None),
                    None) if once and digest else None
                if existing:
                    db.execute("ROLLBACK")
                    return _from_row(existing), False
                db.execute("INSERT OR IGNORE INTO model_package_groups (name, created_at) "
                           "VALUES (?, ?)", (group, now))
                version = db.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM model_packages "
                    "WHERE group_name = ?", (group,)).fetchone()[0]
                db.execute(
                    "INSERT INTO model_packages (group_name, version, approval_status, "
                    "model_data, metrics, hyperparameters, lineage, description, created_at, "
                    "updated_at, metadata, artifact_bytes, artifact_sha256) VALUES (?, ?, ?, ?, "
                    "?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (group, version, approval_status, str(model_data),
                     json.dumps(metrics or {}), json.dumps(hyperparameters or {}),
                     json.dumps(lineage or {}), description, now, now,
                     json.dumps({k: str(v) for k, v in (metadata or {}).items()}), size, digest))
        finally:
            db.close()
        self._backup()
        return self.describe(group, version), True

    def find_artifact(self, group: str, sha256: str) -> ModelPackage | None:
        """The newest version of ``group`` registered with an archive of this sha256 that is
        still there, of its registered size (one whose archive is gone can be registered
        again); the sha256 matched already, so its archive is not read again."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM model_packages WHERE group_name = ? AND "
                              "artifact_sha256 = ? ORDER BY version DESC",
                              (group, sha256)).fetchall()
        return next((p for p in map(_from_row, rows)
                     if self.artifact_problem(p, full=False) is None), None)

    @staticmethod
    def artifact_problem(package: ModelPackage, full: bool = True) -> str | None:
        """What is wrong with the version's model archive now (gone, or not the archive
        registered: its size, and with ``full`` its sha256), or None."""
        path = Path(package.model_data)
        registered = f"{package.artifact_bytes} bytes" if package.artifact_bytes is not None \
            else "its size was not recorded"
        if not path.exists():
            return (f"its model archive {path} is gone (registered: {registered}); register "
                    f"the model again")
        if package.artifact_bytes is None or not path.is_file():
            return None  # a folder, or registered before sizes were recorded
        size = path.stat().st_size
        if size != package.artifact_bytes or (full and package.artifact_sha256 and
                                              sha256_of(path) != package.artifact_sha256):
            return (f"its model archive {path} changed since it was registered ({size} bytes "
                    f"now, {registered}; sha256 then {package.artifact_sha256[:12]}...); "
                    f"register the model again")
        return None

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
        self._backup()
        return self.describe(group, version)

    def latest_approved(self, group: str) -> ModelPackage | None:
        approved = self.list(group, "Approved")
        return approved[0] if approved else None


def usable_version(registry: LocalRegistry, group: str, version: int | None = None):
    """``version`` of the local group, or its newest Approved one, whose archive is intact:
    what batch scoring and the batch pipeline score with. RegistryError says what to do."""
    package = registry.describe(group, version) if version is not None \
        else registry.latest_approved(group)
    if package is None:
        raise RegistryError(f"no Approved version in {group} under {registry.home}: approve one "
                            f"(python -m pipelines.registry approve N) or pass --version N")
    problem = registry.artifact_problem(package)
    if problem:
        raise RegistryError(f"{group} version {package.version} cannot be used: {problem}")
    return package


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


def _artifact(model_data, sha256: str | None = None) -> tuple[int | None, str]:
    """Size and sha256 (``sha256`` if the caller has it) of a model archive; None, "" for a
    folder or a path not here."""
    path = Path(str(model_data))
    if not path.is_file():
        return None, ""
    return path.stat().st_size, sha256 or sha256_of(path)


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
        updated_at=row["updated_at"], metadata=json.loads(row["metadata"]),
        artifact_bytes=row["artifact_bytes"], artifact_sha256=row["artifact_sha256"])


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
    restore = sub.add_parser("restore", help="bring back a damaged registry.sqlite from "
                                             "registry.sqlite.bak (local only)")
    restore.add_argument("--force", action="store_true",
                         help="also when registry.sqlite is not damaged")
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
        if args.command == "restore":
            damaged, path = LocalRegistry.restore_in(args.home, args.force)
            kept = f" (the previous file is kept as {damaged.name})" if damaged else ""
            print(f"restored {path} from its backup{kept}")
            return 0
        return _command(LocalRegistry(args.home), args)
    except (RegistryError, DamagedStore) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _command(registry, args) -> int:
    if args.command == "restore":
        raise RegistryError("restore is for the local registry (SageMaker's Model Registry "
                            "keeps its own records)")
    if args.command == "list":
        packages = registry.list(args.group, args.status)
        if not packages:
            print(f"no versions in {args.group}" + (f" with status {args.status}"
                                                     if args.status else ""))
            return 0
        print(f"{'version':>7}  {'status':<22} {'accuracy':>8}  created")
        local = isinstance(registry, LocalRegistry)
        for pkg in packages:
            acc = f"{pkg.accuracy:.4f}" if pkg.accuracy is not None else "-"
            problem = registry.artifact_problem(pkg, full=False) if local else None
            flag = ("  artifact missing" if "is gone" in problem else "  artifact changed") \
                if problem else ""
            print(f"{pkg.version:>7}  {pkg.approval_status:<22} {acc:>8}  {pkg.created_at}"
                  f"{flag}")
    elif args.command == "describe":
        pkg = registry.describe(args.group, args.version)
        shown = asdict(pkg)
        if isinstance(registry, LocalRegistry):
            problem = registry.artifact_problem(pkg)
            shown["artifact_status"] = "ok" if problem is None else \
                ("missing: " if "is gone" in problem else "changed: ") + problem
        print(json.dumps(shown, indent=2, default=str))
    else:
        status = "Approved" if args.command == "approve" else "Rejected"
        pkg = registry.set_status(args.group, args.version, status, args.note)
        print(f"{args.group} version {pkg.version}: {pkg.approval_status}")
    return 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
