"""The whole local pipeline on a dogImages-sized data set, timed step by step.

Generates 133 classes with dogImages' split sizes (6,680 train / 835 valid / 836 test images,
500x375 JPEG, like the photos' typical size) and runs ``python -m pipelines.run --local`` on it
with ResNet50 at 224 px and the pipeline's defaults (LP-FT: Features, then 8 linear-probe
trials, then TrainFinal), printing each step's seconds and the total. Accuracy on generated
images means nothing here; time does. Pretrained weights cannot be downloaded offline, so the
backbone is random (``Pretrained=false``): the same computation, the same time.

    python bench/dogimages_sized.py                      # Epochs=1
    python bench/dogimages_sized.py --epochs 2 --param FineTuneLayers=layer4
    python bench/dogimages_sized.py --tuning-mode fine-tune   # the old path (hours)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SPLITS = {"train": 6680, "valid": 835, "test": 836}
CLASSES = 133


def generate(root: Path, scale: float = 1.0, seed: int = 0) -> Path:
    """<root>/<split>/<NNN.Class_k>/<i>.jpg, 500x375, smooth random shapes and noise."""
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:03d}.Class_{i + 1}" for i in range(CLASSES)]
    for split, total in SPLITS.items():
        count = max(CLASSES, int(total * scale))
        for i in range(count):
            folder = root / split / names[i % CLASSES]
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(low).resize((500, 375), Image.BICUBIC)
            noise = rng.integers(-12, 13, (375, 500, 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", "JPEG", quality=88)
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1, help="TrainFinal's Epochs")
    p.add_argument("--param", action="append", default=[], help="more pipeline parameters")
    p.add_argument("--tuning-mode", default="linear-probe", choices=("linear-probe", "fine-tune"),
                   help="the build option of the same name")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of dogImages' size")
    p.add_argument("--work-dir", default="", help="keep data and home here (default: temp)")
    args = p.parse_args()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dogimages-sized-"))
    data = work / "data"
    if not (data / "test").is_dir():
        start = time.perf_counter()
        generate(data, args.scale)
        print(f"generated {sum(1 for _ in data.rglob('*.jpg'))} images in "
              f"{time.perf_counter() - start:.0f}s under {data}", flush=True)
    command = [sys.executable, "-m", "pipelines.run", "--local", "--home", str(work / "home"),
               "--tuning-mode", args.tuning_mode,
               f"--param=InputDataUrl={data}", "--param=BaseModel=resnet50",
               "--param=Pretrained=false", "--param=ImageSize=224",
               f"--param=Epochs={args.epochs}", "--param=AccuracyThreshold=0",
               *[f"--param={x}" for x in args.param]]
    print(" ".join(command[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    total = time.perf_counter() - start
    out = proc.stdout
    (work / "run.log").write_text(out + proc.stderr)
    print("\n".join(line for line in out.splitlines() if line.startswith((
        "[Features]", "[HPTuning] best", "[TrainFinal] epoch", "[Preprocess] "))))
    table = re.findall(r"^  (\w+)\s+(Succeeded|Failed)\s+([0-9.]+)", out, re.M)
    for name, status, seconds in table:
        print(f"{name:<20} {status:<10} {float(seconds):8.1f} s")
    print(f"whole pipeline: {total / 60:.1f} min (exit {proc.returncode}); log {work / 'run.log'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
