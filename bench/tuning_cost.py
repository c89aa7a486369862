"""The cost of tuning: a linear-probe trial on cached features against a full fine-tuning trial.

Side by side on the same machine, data, architecture and epochs, each job run as the local
engine runs it (a fresh ``train.py`` / ``features.py`` process, all cores, wall time from start
to exit, so process start-up counts): one full fine-tuning trial (``--mode fine-tune``, the old
HPTuning), the one-time feature extraction (``features.py``, ``FeatureViews`` views), and
linear-probe trials (``--mode linear-probe``). Prints each job's seconds and peak memory (the
process's maximum RSS, from wait4), the trial ratio, and the whole tuning step's ratio:
8 full trials against extraction plus 8 probe trials (the full trial is run once and counted 8
times; the probe trials' median is counted 8 times).

    python bench/tuning_cost.py                        # resnet50, 224 px, ~1,000 images
    python bench/tuning_cost.py --arch resnet18 --scale 0.05 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dogimages_sized import generate  # noqa: E402


def run(script: str, *args) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of scripts/<script> in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{script} {' '.join(map(str, args))} failed:\n{output.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=1, help="epochs of every trial")
    p.add_argument("--views", type=int, default=2, help="FeatureViews")
    p.add_argument("--scale", type=float, default=0.15,
                   help="fraction of dogImages' size (0.15: 1,002 training images)")
    p.add_argument("--probe-trials", type=int, default=3)
    p.add_argument("--trials", type=int, default=8, help="trials of the tuning step")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tuning-cost-"))
    generate(work / "raw", args.scale)
    run("preprocess.py", "--input-dir", work / "raw", "--output-dir", work / "data",
        "--image-size", round(args.image_size * 256 / 224))
    data = work / "data"
    n_train = sum(1 for _ in (data / "train").rglob("*.jpg"))
    n_valid = sum(1 for _ in (data / "valid").rglob("*.jpg"))
    common = ["--arch", args.arch, "--pretrained", "false", "--image-size", args.image_size]
    trial = [*common, "--epochs", args.epochs, "--batch-size", 32, "--lr", 0.001,
             "--checkpoint-dir", "", "--train-dir", data / "train", "--valid-dir",
             data / "valid", "--output-data-dir", work / "out"]
    print(f"{args.arch} at {args.image_size} px, {n_train} training and {n_valid} validation "
          f"images, {args.epochs} epoch(s) per trial, {os.cpu_count()} CPU(s)", flush=True)

    full, full_mem = run("train.py", *trial, "--model-dir", work / "full")
    print(f"fine-tune trial:       {full:8.1f} s  peak {full_mem:7.0f} MiB", flush=True)
    extract, extract_mem = run("features.py", *common, "--views", args.views, "--train-dir",
                               data / "train", "--valid-dir", data / "valid", "--output-dir",
                               work / "features")
    print(f"features ({args.views} views):   {extract:8.1f} s  peak {extract_mem:7.0f} MiB",
          flush=True)
    probes, probe_mem = [], 0.0
    for i in range(args.probe_trials):
        seconds, mem = run("train.py", *trial, "--mode", "linear-probe", "--features-dir",
                           work / "features", "--model-dir", work / f"probe-{i}")
        probes.append(seconds)
        probe_mem = max(probe_mem, mem)
        print(f"linear-probe trial {i}:  {seconds:8.1f} s  peak {mem:7.0f} MiB", flush=True)
    probe = statistics.median(probes)
    before = args.trials * full
    after = extract + args.trials * probe
    print(f"trial: fine-tune / linear-probe = {full / probe:.1f}x")
    print(f"tuning step ({args.trials} trials): fine-tune {before:.0f} s / (features + "
          f"linear-probe) {after:.0f} s = {before / after:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
