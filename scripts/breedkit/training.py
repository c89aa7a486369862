"""The training loop's parts: precision choice, one epoch of training, evaluation, checkpoints.

train.py wires these together; bench/train_throughput.py times ``train_one_epoch`` directly, so
the benchmark measures the loop that ships.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch

from .contract import UserError

log = logging.getLogger("breedkit.training")

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_FILE = "last.pt"
BEST_FILE = "best.pt"


class TrainingDiverged(UserError):
    """Loss became NaN or infinite."""


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    auto: bf16 on GPUs that support it, fp16 on older GPUs (with loss scaling), bf16 on CPUs with
    native bf16 instructions, fp32 elsewhere. BatchNorm and the loss stay in fp32 under autocast.
    """
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16 needs a GPU; use --amp bf16 or --amp off on CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(params, name: str, lr: float, momentum: float = 0.9):
    """AdamW or Nesterov SGD, with the fused kernels where this torch has them (on CPU too:
    resnet18's AdamW step takes ~7 ms fused against ~39 ms with the default kernels)."""
    for fused in (True, False):
        try:
            if name == "sgd":
                return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                                       fused=fused or None)
            return torch.optim.AdamW(params, lr=lr, fused=fused or None)
        except (RuntimeError, TypeError, ValueError):
            if not fused:
                raise
    raise AssertionError("unreachable")


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up, then cosine decay to zero, stepped once per batch."""
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model, loader, optimizer, criterion, device, *, amp_dtype=None, scaler=None,
                    scheduler=None, hook=None, epoch: int = 0, max_steps: int | None = None,
                    progress=None, profiler=None, tracker=None) -> dict:
    """One pass over ``loader``; returns sums (loss, correct, count) and timings for this rank.

    Raises TrainingDiverged as soon as the loss is not finite.
    """
    model.train()
    if hook is not None:
        hook.train_mode()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    data_seconds = 0.0
    start = tick = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        started = time.perf_counter()
        data_seconds += started - tick
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if hook is not None:
            hook.begin_step()
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = criterion(logits, labels)
        if not torch.isfinite(loss):
            lr = optimizer.param_groups[0]["lr"]
            raise TrainingDiverged(
                f"training loss became {loss.item()} at epoch {epoch} step {step} (lr={lr:.3g}); "
                f"the run diverged: lower --lr, or check the data")
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if hook is not None:
            hook.after_backward(scaler)
        if tracker is not None:
            tracker.after_backward(model)
        if profiler is not None:
            profiler.sync()
            backward_done = time.perf_counter()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if profiler is not None:
            profiler.sync()
            done = time.perf_counter()
            profiler.record_step(epoch=epoch, step=step, images=int(labels.shape[0]),
                                 data_s=round(started - tick, 5),
                                 forward_backward_s=round(backward_done - started, 5),
                                 optimizer_s=round(done - backward_done, 5))
        n = labels.shape[0]
        loss_sum += loss.detach().double() * n
        correct += (logits.detach().argmax(1) == labels).sum()
        count += n
        if progress is not None:
            progress(n)
        tick = time.perf_counter()
    seconds = time.perf_counter() - start
    return {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "count": count,
            "seconds": seconds, "data_seconds": data_seconds}


@torch.inference_mode()
def evaluate(model, loader, criterion, device, *, amp_dtype=None, hook=None) -> dict:
    """Loss and accuracy sums over ``loader`` for this rank."""
    model.eval()
    if hook is not None:
        hook.eval_mode()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if hook is not None:
            hook.begin_step()
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        n = labels.shape[0]
        loss_sum += loss.item() * n
        correct += int((logits.argmax(1) == labels).sum().item())
        count += n
    return {"loss_sum": loss_sum, "correct": correct, "count": count}


class Checkpoints:
    """``last.pt`` (everything needed to resume) and ``best.pt`` (best weights) in one folder.

    Files are written to a temporary name and renamed, so an interrupted job (spot reclaim,
    Ctrl-C) never leaves a half-written checkpoint. Loading uses ``weights_only=True``.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.dir = Path(directory) if directory else None

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def prepare(self) -> bool:
        if self.dir is None:
            return False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            log.warning("checkpoints disabled: cannot write to %s (%s); pass --checkpoint-dir",
                        self.dir, exc)
            self.dir = None
            return False
        return True

    def _save(self, obj, name: str) -> None:
        tmp = self.dir / f".{name}.tmp"
        torch.save(obj, tmp)
        os.replace(tmp, self.dir / name)

    def save(self, state: dict, best_weights: dict | None = None) -> None:
        if self.dir is None:
            return
        if best_weights is not None:
            self._save(best_weights, BEST_FILE)
        self._save(state, CHECKPOINT_FILE)

    def load(self, signature: dict) -> tuple[dict, dict | None] | None:
        """The last checkpoint and best weights, if they exist and match this configuration."""
        if self.dir is None or not (self.dir / CHECKPOINT_FILE).is_file():
            return None
        path = self.dir / CHECKPOINT_FILE
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            best_path = self.dir / BEST_FILE
            best = (torch.load(best_path, map_location="cpu", weights_only=True)
                    if best_path.is_file() else None)
        except Exception as exc:  # unreadable: start over rather than fail the job
            log.warning("ignoring unreadable checkpoint %s (%s); starting from scratch", path, exc)
            return None
        if state.get("signature") != signature:
            log.warning("ignoring checkpoint %s: it was written with other settings or data "
                        "(%s); starting from scratch", path,
                        _diff(state.get("signature") or {}, signature))
            return None
        return state, best


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:5]) or "unknown"
