"""TrainingRules: judge what happened in TrainFinal (SageMaker processing contract).

Reads TrainFinal's output data (``--training-output``: the folder, or a folder holding the
job's ``output.tar.gz`` as SageMaker stores it), which train.py fills when it runs as
TrainFinal:

    debugger/   smdebug hook output (reductions at save steps)    -> the six rules
    profiler/   system use and per-step timings                    -> the profiler report

Writes to ``--output-dir``:

    rules.json             each rule's verdict (NoIssuesFound, IssuesFound, Error), the step
                           where it fired, its parameters; which rules block registration
                           (``--blocking-rules``) and how many of them fired
    profiler-report.html   one file, plots embedded

A rule that cannot be evaluated is a verdict (Error, with the reason), not a failed job: an
Error never blocks registration, a finding of a blocking rule does (the pipeline's condition
reads ``blocking.count``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit import archives  # noqa: E402
from breedkit.contract import UserError, parse_args, run_main, setup_logging  # noqa: E402
from breedkit.rulespec import (DEFAULT_BLOCKING, HOOK_DIR, PROFILE_DIR, REPORT_FILE,  # noqa: E402
                               RULES, RULES_FILE, parse_blocking)

log = logging.getLogger("training_rules")
ARCHIVE = "output.tar.gz"
MAX_ARCHIVE_BYTES = 20 * 2**30  # what is extracted from the job's output, at most


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--training-output", required=True,
                   help="TrainFinal's output data: a folder, or one holding output.tar.gz")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--blocking-rules", default=",".join(DEFAULT_BLOCKING),
                   help="comma-separated rules whose finding blocks registration, or none")
    p.add_argument("--title", default="TrainFinal profile")
    return p


def training_output(path: Path, scratch: Path) -> Path:
    """The folder with debugger/ and profiler/: ``path`` itself, or its output.tar.gz
    extracted (regular files and folders only, inside ``scratch``, size bounded)."""
    if not path.exists():
        raise UserError(f"--training-output {path} does not exist")
    archive = path / ARCHIVE if path.is_dir() else path
    if not archive.is_file():
        return path
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                total += max(0, member.size)
                if total > MAX_ARCHIVE_BYTES:
                    raise UserError(f"{archive} holds more than {MAX_ARCHIVE_BYTES} bytes")
                if member.isfile() or member.isdir():
                    archives.extract(tar, scratch, [member])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{archive} cannot be read as a tar.gz archive ({exc}); it should be "
                        f"TrainFinal's output.tar.gz") from None
    return scratch


def summarize(verdicts: list[dict], blocking: tuple[str, ...]) -> dict:
    fired = [v["rule"] for v in verdicts if v["rule"] in blocking and
             v["status"] == "IssuesFound"]
    return {"rules": verdicts,
            "blocking": {"rules": list(blocking), "count": len(fired),
                         "fired": ",".join(fired), "summary": ",".join(fired) or "none"},
            "report": REPORT_FILE}


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    try:
        blocking = parse_blocking(args.blocking_rules)
    except ValueError as exc:
        raise UserError(f"--blocking-rules: {exc}") from None
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="training-output-") as scratch:
        data = training_output(Path(args.training_output), Path(scratch))
        try:
            from breedkit.rules import evaluate_rules
        except ImportError as exc:  # a verdict: the rules need smdebug
            verdicts = [{"rule": name, "status": "Error", "step": None, "parameters": {},
                         "message": f"smdebug unavailable ({exc}): pip install -r "
                                    f"requirements/rules.txt"} for name in RULES]
        else:
            verdicts = evaluate_rules(str(data / HOOK_DIR))
        from breedkit.profiler_report import build_report

        build_report(data / PROFILE_DIR, out / REPORT_FILE, args.title)
    result = summarize(verdicts, blocking)
    tmp = out / f".{RULES_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out / RULES_FILE)
    for v in verdicts:
        where = f" at step {v['step']}" if v["step"] is not None else ""
        extra = f" ({v['message']})" if v["status"] == "Error" else ""
        print(f"rule {v['rule']}: {v['status']}{where}{extra}", flush=True)
    print(f"blocking rules fired: {result['blocking']['fired'] or 'none'} "
          f"(blocking: {','.join(blocking) or 'none'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
