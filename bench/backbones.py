"""What each backbone costs: serving and training throughput at its weights' own crop, as ratios
to ResNet50 (the default) measured in the same run.

Each backbone is built as train.py builds it (breedkit.model.build_model, no weights: the cost
does not depend on them), channels_last, with train.py's automatic precision (bf16 where the CPU
or GPU supports it). Serving: eval-mode forward passes of ``--batch`` images. Training: AdamW
steps over the parameter groups train.py uses. One untimed warm-up each, then the median of
``--repeats`` timed passes.

    python bench/backbones.py                         # every backbone, batch 4, 3 repeats
    python bench/backbones.py --archs resnet50 vit_b_16 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from breedkit.archs import ARCHS, BACKBONES  # noqa: E402
from breedkit.model import build_model, parameter_groups  # noqa: E402
from breedkit.training import autocast, choose_precision, configure_backends  # noqa: E402

BASELINE = "resnet50"


def timed(action, repeats: int) -> float:
    action()  # warm-up: allocations, kernel choice
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(arch: str, batch: int, repeats: int, device, amp_dtype) -> dict:
    crop = BACKBONES[arch].crop
    torch.manual_seed(0)
    model = build_model(arch, 120, image_size=crop).to(device, memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 120, (batch,), device=device)

    def serve():
        with torch.inference_mode(), autocast(device, amp_dtype):
            model(images)
        if device.type == "cuda":
            torch.cuda.synchronize()

    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-4, 0.05))
    criterion = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.eval()
    serve_s = timed(serve, repeats)
    model.train()
    train_s = timed(step, repeats)
    return {"arch": arch, "crop": crop, "params": sum(p.numel() for p in model.parameters()),
            "serve": batch / serve_s, "train": batch / train_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_backends(device)
    amp_dtype = choose_precision("auto", device)
    archs = [BASELINE] + [a for a in args.archs if a != BASELINE]
    print(f"device {device}, precision {amp_dtype or 'fp32'}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'backbone':<18} {'crop':>4} {'params':>7} {'serve img/s':>11} {'x resnet50':>10} "
          f"{'train img/s':>11} {'x resnet50':>10}")
    base = None
    for arch in archs:
        row = measure(arch, args.batch, args.repeats, device, amp_dtype)
        base = base or row
        print(f"{arch:<18} {row['crop']:>4} {row['params'] / 1e6:>6.1f}M "
              f"{row['serve']:>11.2f} {row['serve'] / base['serve']:>10.2f} "
              f"{row['train']:>11.2f} {row['train'] / base['train']:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
