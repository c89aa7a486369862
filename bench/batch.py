"""Batch scoring (python -m pipelines.batch) against the model's own forward pass, same run.

    python bench/batch.py                          # resnet18 (the fast case for the forward:
                                                   # decoding weighs most), 1,000 + 10,000 images
    python bench/batch.py --arch resnet50 --images 2000

Builds a model directory of 133 classes (random weights: speed does not depend on them),
registers it in a temporary local registry, and writes ``--images`` 500x375 JPEGs (the typical
dogImages photo; 200 distinct ones, repeated). Then:

  raw      the model's forward pass over the first 1,000 images, already decoded and
           transformed (in batches of 16, in-process): the most any scorer can reach;
  batch    ``python -m pipelines.batch`` on those 1,000 images, and on all ``--images``, in a
           process of its own: decoding, transforms, TTA, forward, writing the CSV.

Prints images/s of each; the scoring rate without the process's fixed costs (start-up, loading
the model: about 3 s), from the difference of the two runs, against the raw forward (aim: at
least 0.8); and the batch process's peak RSS (the kernel's high-water mark, measured by a fresh
parent) on 1,000 and on all images (aim: flat, memory bounded whatever the input's size).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))

import inference  # noqa: E402  the artifact's handlers
from endpoint import jpeg, make_model  # noqa: E402

from pipelines.registry import LocalRegistry  # noqa: E402

PEAK = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(f"peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""
SUBSET = 1_000


def photos(folder: Path, n: int) -> Path:
    """``n`` files of 200 distinct photo-like 500x375 JPEGs, 1,000 a folder."""
    distinct = [jpeg(seed=i) for i in range(200)]
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:06d}.jpg").write_bytes(distinct[i % len(distinct)])
    return folder


def raw_rate(model_dir: Path, folder: Path, n: int) -> float:
    """Images/s of the bare forward pass (batches of 16) over ``n`` decoded images."""
    loaded = inference.model_fn(str(model_dir))
    files = sorted(folder.rglob("*.jpg"))[:n]
    images = [inference.input_fn(f.read_bytes(), "image/jpeg")["images"][0] for f in files]
    with torch.inference_mode():
        loaded.model(torch.stack(images[:16]))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), 16):
            loaded.model(torch.stack(images[i:i + 16]))
    return len(images) / (time.perf_counter() - start)


def batch_run(home: Path, folder: Path, out: Path) -> tuple[int, float, float]:
    """(rows, seconds, peak RSS MB) of pipelines.batch on ``folder``."""
    command = [sys.executable, "-c", PEAK, sys.executable, "-m", "pipelines.batch",
               "--home", str(home), "--input", str(folder), "--output", str(out), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    rows = sum(1 for _ in open(out)) - 1
    peak = int(proc.stderr.rsplit("peak_kb=", 1)[1].split()[0]) / 1024
    return rows, seconds, peak


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=10_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        model_dir = make_model(work / "model", args.arch, args.image_size)
        LocalRegistry(work / "home").register("DogBreedModels", str(model_dir),
                                              approval_status="Approved")
        everything = photos(work / "photos", args.images)
        subset = photos(work / "subset", min(SUBSET, args.images))
        raw = raw_rate(model_dir, subset, SUBSET)
        n, small_seconds, small_peak = batch_run(work / "home", subset, work / "subset.csv")
        total, full_seconds, full_peak = batch_run(work / "home", everything, work / "all.csv")
    steady = (total - n) / (full_seconds - small_seconds)
    print(f"{args.arch} {args.image_size} px, 500x375 JPEGs, {torch.get_num_threads()} threads")
    print(f"raw forward (batch 16, decoded images): {raw:.1f} images/s")
    print(f"pipelines.batch, {n:,} images: {n / small_seconds:.1f} images/s, peak RSS "
          f"{small_peak:.0f} MB (with start-up and loading the model)")
    print(f"pipelines.batch, {total:,} images: {total / full_seconds:.1f} images/s, peak RSS "
          f"{full_peak:.0f} MB")
    print(f"scoring rate without the fixed costs (the {total - n:,} images more): {steady:.1f} "
          f"images/s, {steady / raw:.2f} of the raw forward (aim: at least 0.8)")
    print(f"peak RSS, {args.images:,} against {n:,} images: {full_peak / small_peak:.2f} "
          f"(aim: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
