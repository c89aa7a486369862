"""Watch a live local endpoint: its captured traffic against its version's baseline.

    python -m pipelines.monitor dogbreed-prod [--since 1h] [--until TIME] [--fail-on-drift]

Runs ``scripts/monitor.py`` (the same script the scheduled SageMaker processing job runs) on
what the endpoint captured under ``<home>/data-capture/<endpoint>/`` in the window, against the
baseline the build registered with the version the endpoint serves (Evaluate's predictions and
image statistics on the valid split); the window starts no earlier than that version's deploy,
so an earlier version's traffic is never judged against this one's baseline. It prints the measures and verdicts and writes
``monitor.json`` and ``monitor.html`` under ``<home>/monitoring/<endpoint>/<time>/``.
Threshold options (``--alpha``, ``--psi-threshold``, ``--ks-threshold``, ``--low-confidence``,
``--low-confidence-margin``, ``--max-error-rate``, ``--min-images``) are passed on to the script.
Exit code 0 (3 with ``--fail-on-drift`` when it finds drift: for a cron job); 2 for a bad
request (no such endpoint, no baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from breedkit.monitorspec import MARKER

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "monitor.py"
CAPTURE_DIR = "data-capture"
DRIFT_EXIT = 3
PASSED_ON = ("alpha", "psi_threshold", "ks_threshold", "low_confidence",
             "low_confidence_margin", "max_error_rate", "min_images")


class MonitorError(Exception):
    pass


def capture_root(home: Path) -> Path:
    return home / CAPTURE_DIR


def served(home: Path, endpoint: str, group: str | None):
    """(group, version, baseline path, when it was deployed) of what ``endpoint`` serves."""
    from pipelines.deploy.endpoints import Endpoints
    from pipelines.registry import LocalRegistry, RegistryError

    record = Endpoints(home).get(endpoint)
    if record is None:
        names = ", ".join(e.name for e in Endpoints(home).all()) or "none"
        raise MonitorError(f"no local endpoint named {endpoint} under {home} (endpoints: "
                           f"{names}); deploy one with python -m pipelines.deploy --local")
    group = group or record.model_group
    try:
        package = LocalRegistry(home).describe(group, record.version)
    except RegistryError as exc:
        raise MonitorError(str(exc)) from None
    baseline = package.lineage.get("drift_baseline")
    if not baseline or not Path(baseline).is_file():
        raise MonitorError(f"{group} version {record.version} has no drift baseline"
                           f"{' (' + baseline + ' is gone)' if baseline else ''}: versions "
                           f"registered by the build pipeline since 2026-12 have one; register "
                           f"a newer version")
    return group, record.version, baseline, record.updated_at


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.monitor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("endpoint", help="a local endpoint's name, e.g. dogbreed-prod")
    p.add_argument("--since", default="1h", help="an ISO time, or a duration before --until "
                                                 "(30m, 1h, 2d); default 1h")
    p.add_argument("--until", default="", help="an ISO time (default: now)")
    p.add_argument("--home", help="default $DOGBREED_HOME or ./.dogbreed")
    p.add_argument("--group", help="default: the group the endpoint's record names")
    p.add_argument("--output-dir", help="default <home>/monitoring/<endpoint>/<time>")
    p.add_argument("--fail-on-drift", action="store_true",
                   help=f"exit {DRIFT_EXIT} when the verdict is drift")
    for name in PASSED_ON:
        p.add_argument("--" + name.replace("_", "-"), type=int if name == "min_images" else float)
    return p


def main(argv=None) -> int:
    from pipelines.registry import home_dir

    args = build_parser().parse_args(argv)
    home = home_dir(args.home)
    try:
        group, version, baseline, deployed = served(home, args.endpoint, args.group)
    except MonitorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.output_dir) if args.output_dir else \
        home / "monitoring" / args.endpoint / stamp
    capture = capture_root(home) / args.endpoint
    capture.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SCRIPT), "--capture-dir", str(capture),
               "--baseline", baseline, "--output-dir", str(out), "--since", args.since,
               "--until", args.until, "--not-before", deployed, "--endpoint", args.endpoint,
               "--model-version", str(version)]
    for name in PASSED_ON:
        if getattr(args, name) is not None:
            command += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    print(f"{args.endpoint} serves {group} version {version}; captured traffic under {capture}",
          flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():  # the script's summary, without its log prefixes
        if line.startswith(f'{{"{MARKER}"'):
            continue
        print(line.split(" monitor: ", 1)[-1])
    if proc.returncode != 0:
        return 2 if proc.returncode == 2 else 1
    report = json.loads((out / "monitor.json").read_text())
    print(f"report: {out / 'monitor.html'}")
    return DRIFT_EXIT if args.fail_on_drift and report["drift"] else 0


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
