"""What the training hook and the profiler cost: the same training with and without them.

Three sides, the same model, batches, optimizer and step count, run alternately (``--repeats``
rounds; the medians are compared):

    plain          breedkit.training.train_one_epoch, mixed precision, no hook, no profiler
    hook+profiler  the same with TrainFinal's hook (breedkit.debugger, reductions every
                   ``--save-interval`` steps) and profiler (breedkit.profiling) on
    smdebug-own    for reference, how it was before: smdebug's ``register_module`` (Python
                   hooks on every module and parameter, every step) and fp32 (smdebug
                   cannot write bf16)

Batches are uint8 images already in memory, so data loading is not in the figures: the ratio
is the hook's and profiler's own cost. Prints each run and ``hook+profiler / plain``; the aim
is at least 0.90 (at most 10% of throughput).

    python bench/hook_overhead.py                          # resnet18, 32 px (the README's run)
    python bench/hook_overhead.py --image-size 224 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from breedkit.debugger import create_hook  # noqa: E402
from breedkit.model import build_model  # noqa: E402
from breedkit.profiling import Profiler  # noqa: E402
from breedkit.training import choose_precision, make_optimizer, train_one_epoch  # noqa: E402

CLASSES = 10
WARMUP_STEPS = 3


class SmdebugOwnHook:
    """smdebug's own hook as train.py used it before: register_module, every step."""

    def __init__(self, out_dir: str, save_interval: int):
        import smdebug.pytorch as smd
        from smdebug import modes

        from breedkit.debugger import _local_hook

        self.hook, self.modes = _local_hook(smd, out_dir, save_interval), modes

    def register(self, model, criterion):
        self.hook.register_module(model)
        self.hook.register_loss(criterion)

    def train_mode(self):
        self.hook.set_mode(self.modes.TRAIN)

    def begin_step(self):
        pass

    def after_backward(self, scaler=None):
        pass

    def close(self):
        self.hook.close()


def batches(n: int, batch: int, size: int) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, CLASSES, (batch,), generator=g)) for _ in range(n)]


def run(side: str, args, data, tmp: Path, round_: int) -> float:
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(args.arch, CLASSES, image_size=args.image_size).to(
        device, memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(model.parameters(), "adamw", 1e-3)
    amp = choose_precision(args.amp, device)
    hook = profiler = None
    out = tmp / f"{side}-{round_}"
    if side == "hook+profiler":
        hook = create_hook(str(out / "debugger"), args.save_interval)
        profiler = Profiler(out / "profiler", device)
    elif side == "smdebug-own":
        hook, amp = SmdebugOwnHook(str(out / "debugger"), args.save_interval), None
    if hook is not None:
        hook.register(model, criterion)
    common = dict(amp_dtype=amp, hook=hook, profiler=profiler)
    train_one_epoch(model, data[:WARMUP_STEPS], optimizer, criterion, device, **common)
    start = time.perf_counter()
    stats = train_one_epoch(model, data, optimizer, criterion, device, **common)
    seconds = time.perf_counter() - start
    if hook is not None:
        hook.close()
    if profiler is not None:
        profiler.close()
    return stats["count"] / seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-interval", type=int, default=20, help="TrainFinal's default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", default="auto")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the smdebug-own side (slow at large image sizes)")
    args = p.parse_args()
    data = batches(args.steps, args.batch_size, args.image_size)
    sides = ["plain", "hook+profiler"] + ([] if args.no_reference else ["smdebug-own"])
    amp = choose_precision(args.amp, torch.device("cpu"))
    print(f"threads={torch.get_num_threads()} arch={args.arch} image_size={args.image_size} "
          f"batch={args.batch_size} steps={args.steps} save_interval={args.save_interval} "
          f"precision={amp or 'fp32'}")
    results = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-hook-") as tmp:
        for r in range(args.repeats):
            for side in sides:
                results[side].append(run(side, args, data, Path(tmp), r))
                print(f"round {r + 1}: {side:<14} {results[side][-1]:8.1f} images/s", flush=True)
    med = {side: statistics.median(v) for side, v in results.items()}
    print("median images/s: " + ", ".join(f"{s} {v:.1f}" for s, v in med.items()))
    print(f"hook+profiler / plain = {med['hook+profiler'] / med['plain']:.3f} (aim >= 0.90)")
    if "smdebug-own" in med:
        print(f"smdebug-own / plain = {med['smdebug-own'] / med['plain']:.3f} (before)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
