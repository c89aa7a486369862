"""Training throughput: our loop against a typical course-project loop, side by side.

Baseline (how course projects write it): torchvision ImageFolder over the full-size JPEGs,
PIL decode + RandomResizedCrop + ToTensor + Normalize every epoch, DataLoader in the main
process, fp32, NCHW, single process.

Ours: the shipped code path: preprocess.py's resize (shorter side 256, done once and timed
separately), breedkit's uint8 loader (torchvision.io decoding, in-model normalization),
channels_last, automatic mixed precision (bf16 where the CPU/GPU supports it) and
``breedkit.training.train_one_epoch``.

Same architecture, batch size, images and optimizer; each side gets two untimed warm-up steps,
then one timed epoch; the two are run alternately and the median epoch throughput of each is
compared. Prints one line per run and the ratio.

    python bench/train_throughput.py                      # resnet18, 224 px, 128 images
    python bench/train_throughput.py --arch resnet50 --images 256 --repeats 3
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

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from breedkit import distributed  # noqa: E402
from breedkit.data import ImageFolderDataset, make_loader  # noqa: E402
from breedkit.model import build_model  # noqa: E402
from breedkit.training import (choose_precision, configure_backends, make_optimizer,  # noqa: E402
                               train_one_epoch)
from breedkit.transforms import train_transform  # noqa: E402
from train import default_workers  # noqa: E402

CLASSES = 4
WARMUP_STEPS = 2  # untimed steps before each timed epoch (kernel selection, worker start-up)


def make_raw_images(root: Path, n: int, seed: int = 0) -> None:
    """Photo-sized JPEGs (dogImages' are mostly 300-800 px a side) with smooth, varied content."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(400, 800)), int(rng.integers(320, 640))
        coarse = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255)
                              .astype(np.uint8))
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:04d}.jpg", quality=90)


def baseline_epoch(raw: Path, arch: str, image_size: int, batch: int, lr: float) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(raw), tf), batch_size=batch,
                                         shuffle=True, num_workers=0, drop_last=True)
    # the bare torchvision network with a new head (any family), normalized by the transform
    model = build_model(arch, CLASSES, image_size=image_size).backbone
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    model.train()

    def epoch(max_steps=None):
        count, start = 0, time.perf_counter()
        for step, (images, labels) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            count += labels.shape[0]
        return count / (time.perf_counter() - start)

    epoch(WARMUP_STEPS)
    return epoch()


def ours_epoch(data: Path, arch: str, image_size: int, batch: int, lr: float,
               workers: int, amp: str, epoch: int) -> float:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_backends(device)  # as train.py: cuDNN autotuning, TF32
    dataset = ImageFolderDataset(data, transform=train_transform(image_size))
    loader = make_loader(dataset, batch, shuffle=True, workers=workers, drop_last=True,
                         pin_memory=device.type == "cuda")
    model = build_model(arch, CLASSES, image_size=image_size).to(
        device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), "adamw", lr)
    run = dict(criterion=nn.CrossEntropyLoss(), device=device,
               amp_dtype=choose_precision(amp, device))
    train_one_epoch(model, loader, optimizer, max_steps=WARMUP_STEPS, **run)
    loader.sampler.set_epoch(epoch)
    stats = train_one_epoch(model, loader, optimizer, **run)
    return stats["count"] / stats["seconds"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=-1,
                   help="our loader's worker processes (-1: train.py's default for this machine)")
    p.add_argument("--amp", default="auto")
    args = p.parse_args()
    if args.workers < 0:
        args.workers = default_workers(distributed.init())

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        make_raw_images(raw, args.images)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts/preprocess.py"), "--input-dir",
                        str(raw), "--output-dir", str(prepared), "--valid-ratio", "0",
                        "--test-ratio", "0", "--image-size", str(round(args.image_size * 256 / 224))],
                       check=True, capture_output=True)
        prep_seconds = time.perf_counter() - start
        device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = choose_precision(args.amp, torch.device(device))
        print(f"device={device} threads={torch.get_num_threads()} arch={args.arch} "
              f"image_size={args.image_size} batch={args.batch_size} images={args.images} "
              f"ours_precision={precision or 'fp32'} ours_workers={args.workers}")
        print(f"preprocess (one time, included in no figure below): {prep_seconds:.1f} s, "
              f"{args.images / prep_seconds:.1f} images/s with {os.cpu_count()} processes")
        base, ours = [], []
        for r in range(args.repeats):
            base.append(baseline_epoch(raw, args.arch, args.image_size, args.batch_size, 1e-3))
            print(f"run {r + 1}: baseline {base[-1]:7.1f} images/s", flush=True)
            ours.append(ours_epoch(prepared / "train", args.arch, args.image_size,
                                   args.batch_size, 1e-3, args.workers, args.amp, r))
            print(f"run {r + 1}: ours     {ours[-1]:7.1f} images/s", flush=True)
        b, o = statistics.median(base), statistics.median(ours)
        print(f"baseline median {b:.1f} images/s, ours median {o:.1f} images/s, "
              f"ratio {o / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
