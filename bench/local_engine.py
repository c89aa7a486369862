"""The README's first command (the whole local pipeline on sklearn-digits), on this tree and on
a baseline commit, side by side in one run.

    .venv/bin/python bench/local_engine.py --baseline 41011b1 --rounds 2

Each side is a fresh checkout (``git worktree``) with a fresh home; the job runs as the README
writes it (``python -m pipelines.run --local --param ...``, the same interpreter, each checkout
first on PYTHONPATH); the sides alternate, so drift on a shared machine hits both. Printed:
each run's wall time and step seconds, the medians and their ratio (this tree / baseline), and
each side's test accuracy.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_job() -> list[str]:
    command = re.findall(r"```bash\n(.*?)\n```", README.split("## Set up on a fresh machine")[1],
                         re.S)[0]
    job = command.split(" && ")[-1]
    return shlex.split(job)[1:]  # without .venv/bin/python


def checkout(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=ROOT,
                   check=True, capture_output=True)
    return folder


def run_once(tree: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOGBREED_", "AWS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(tree / "scripts")])
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *readme_job(), "--home", str(home)], cwd=tree,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: exit {proc.returncode}\n{proc.stdout[-2000:]}"
                         f"\n{proc.stderr[-2000:]}")
    steps = {m.group(1): float(m.group(2)) for m in
             re.finditer(r"^  (\S+)\s+Succeeded\s+([0-9.]+)", proc.stdout, re.M)}
    accuracy = re.search(r"test accuracy: ([0-9.]+)", proc.stdout)
    return {"seconds": seconds, "steps": steps,
            "test_accuracy": float(accuracy.group(1)) if accuracy else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="commit to compare with")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        tmp = Path(tmp)
        trees = {"baseline": checkout(args.baseline, tmp / "baseline"),
                 "this tree": checkout("HEAD", tmp / "head")}
        # uncommitted changes of this tree count too
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=ROOT, capture_output=True).stdout
        if diff:
            subprocess.run(["git", "apply"], cwd=trees["this tree"], input=diff, check=True)
        results: dict[str, list[dict]] = {name: [] for name in trees}
        try:
            for round_ in range(args.rounds):
                for name, tree in trees.items():
                    result = run_once(tree, tmp / f"home-{name.replace(' ', '-')}-{round_}")
                    results[name].append(result)
                    steps = ", ".join(f"{k} {v:.1f}" for k, v in result["steps"].items())
                    print(f"round {round_ + 1} {name:<9}: {result['seconds']:6.1f} s "
                          f"(test accuracy {result['test_accuracy']}; {steps})", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               capture_output=True)
    medians = {name: statistics.median(r["seconds"] for r in runs)
               for name, runs in results.items()}
    print(f"median: baseline {medians['baseline']:.1f} s, this tree {medians['this tree']:.1f} s"
          f" -> ratio {medians['this tree'] / medians['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
