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

from . import distributed
from .contract import UserError
from .model import load_state

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

    auto: bf16 on GPUs with bf16 hardware (compute capability 8.0 and later: A100, A10G, L4,
    H100), fp16 with loss scaling on older GPUs (T4, V100), bf16 on CPUs with native bf16
    instructions, fp32 elsewhere. ``torch.cuda.is_bf16_supported()`` is not the test: it is also
    True on a T4, where bf16 is emulated without fast kernels. BatchNorm and the loss stay in fp32
    under autocast.
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
        return torch.bfloat16 if gpu_has_bf16(device) else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def gpu_has_bf16(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) or later."""
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def configure_backends(device: torch.device) -> None:
    """Fast GPU kernels for this job: cuDNN picks the fastest convolution algorithm for each
    input shape once (training and evaluation crops have fixed sizes, so the search is paid a
    few times, not every step), and fp32 matrix products may use TF32 on Ampere and later."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def scale_lr(lr: float, world_size: int, optimizer: str) -> float:
    """The learning rate for ``world_size`` processes, given ``lr`` for one.

    Each process takes ``--batch-size`` images a step, so the global batch grows with the world
    size. SGD follows the linear scaling rule (Goyal et al., 2017); AdamW the square-root rule
    (Malladi et al., 2022), as its update size does not grow with the gradient's scale.
    """
    factor = world_size if optimizer == "sgd" else math.sqrt(world_size)
    return lr * factor


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


FINITE_CHECK_EVERY = 25  # steps between checks that the loss stayed finite
NO_STEP = 2 ** 62  # "no step yet" for the first step with a loss that is not finite


def train_one_epoch(model, loader, optimizer, criterion, device, *, amp_dtype=None, scaler=None,
                    scheduler=None, hook=None, epoch: int = 0, max_steps: int | None = None,
                    progress=None, profiler=None, tracker=None, after_step=None,
                    check_every: int = FINITE_CHECK_EVERY) -> dict:
    """One pass over ``loader``; returns sums (loss, correct, count) and timings for this rank.

    Raises TrainingDiverged, on every rank alike, within ``check_every`` steps of a loss that is
    not finite on any rank. The first such step is tracked on the device and read only at the
    checks (reading it every step would make the CPU wait for the GPU every step).
    """
    model.train()
    if hook is not None:
        hook.train_mode()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    data_seconds = 0.0
    first_bad = torch.full((), NO_STEP, dtype=torch.int64, device=device)
    start = tick = time.perf_counter()
    for step, (images, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        if step and step % check_every == 0:
            _check_finite(first_bad, optimizer, epoch)
        started = time.perf_counter()
        data_seconds += started - tick
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if hook is not None:
            hook.begin_step()
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = criterion(logits, labels)
        first_bad = torch.where(torch.isfinite(loss.detach()) | (first_bad < NO_STEP), first_bad,
                                step)
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
        if after_step is not None:  # (the weights' moving average)
            after_step()
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
    _check_finite(first_bad, optimizer, epoch)
    seconds = time.perf_counter() - start
    return {"loss_sum": loss_sum.item(), "correct": int(correct.item()), "count": count,
            "seconds": seconds, "data_seconds": data_seconds}


class WeightAverage:
    """An exponential moving average of a module's weights and buffers (Polyak averaging, as
    timm's ModelEmaV2), updated after every optimizer step and kept in fp32. The decay warms up
    as ``min(decay, (1 + n) / (10 + n))`` after n updates, so early averages are not dominated
    by the starting weights. ``applied()`` puts the average in the module for a while (to
    evaluate it) and restores the raw weights after."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay, self.updates = module, decay, 0
        self.shadow = {k: (v.detach().float().clone() if v.is_floating_point()
                           else v.detach().clone()) for k, v in module.state_dict().items()}

    def rate(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = self.rate()
        for key, value in self.module.state_dict().items():
            shadow = self.shadow[key]
            if shadow.is_floating_point():
                shadow.mul_(d).add_(value.detach().float(), alpha=1 - d)
            else:
                shadow.copy_(value)

    def weights(self) -> dict:
        """The average, in the module's own dtypes, on the CPU (to keep or save)."""
        own = self.module.state_dict()
        return {k: v.to(own[k].dtype).cpu().clone() for k, v in self.shadow.items()}

    @contextlib.contextmanager
    def applied(self):
        raw = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        self.module.load_state_dict(self.weights())
        try:
            yield
        finally:
            self.module.load_state_dict(raw)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(value)
        self.updates = int(state["updates"])


def _check_finite(first_bad: torch.Tensor, optimizer, epoch: int) -> None:
    """Raise TrainingDiverged on every rank if the loss was not finite on any rank."""
    step = int(distributed.all_reduce_min(first_bad))
    if step < NO_STEP:
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"training loss became NaN or infinite at epoch {epoch} step {step} (lr={lr:.3g}); "
            f"the run diverged: lower --lr, or check the data")


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
    """``last.pt`` (everything needed to resume) and ``best.pt`` (the best epoch's weights).

    Only rank 0 touches the folder; under torch.distributed it decides for every rank whether
    checkpoints are on (``prepare``) and where training resumes (``load``), and every rank must
    call both. Files are written to a temporary name and renamed, so an interrupted job (spot
    reclaim, Ctrl-C) never leaves a half-written file; ``last.pt`` is written first and
    ``best.pt`` records its epoch, so a job killed between the two renames never pairs one
    epoch's weights with another's state (when the newest epoch is the best, its weights are
    those in ``last.pt``). Loading uses ``weights_only=True``.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.dir = Path(directory) if directory else None

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def prepare(self) -> bool:
        """Whether checkpoints are on: rank 0 write-tests the folder and tells the others."""
        ok = self._write_test() if distributed.rank() == 0 else False
        if not distributed.broadcast_object(ok):
            self.dir = None
        return self.dir is not None

    def _write_test(self) -> bool:
        if self.dir is None:
            return False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            log.warning("checkpoints disabled: cannot write to %s (%s); pass --checkpoint-dir",
                        self.dir, exc)
            return False
        return True

    def _save(self, obj, name: str) -> None:
        tmp = self.dir / f".{name}.tmp"
        torch.save(obj, tmp)
        os.replace(tmp, self.dir / name)

    def save(self, state: dict, best_weights: dict | None = None) -> None:
        """Rank 0 only. ``state`` holds ``epoch`` and ``best_epoch``; ``best_weights`` are this
        epoch's weights when it is the new best."""
        if self.dir is None:
            return
        self._save(state, CHECKPOINT_FILE)
        if best_weights is not None:
            self._save({"epoch": state["epoch"], "weights": best_weights}, BEST_FILE)

    def load(self, signature: dict) -> tuple[dict, dict] | None:
        """The last checkpoint and the best weights, if they exist and match this
        configuration: rank 0's, on every rank."""
        found = None
        if distributed.rank() == 0:
            try:
                found = ("ok", self._load(signature))
            except UserError as exc:
                found = ("error", str(exc))
        status, value = distributed.broadcast_object(found)
        if status == "error":
            raise UserError(value)
        return value

    def _load(self, signature: dict) -> tuple[dict, dict] | None:
        if self.dir is None or not (self.dir / CHECKPOINT_FILE).is_file():
            return None
        path, best_path = self.dir / CHECKPOINT_FILE, self.dir / BEST_FILE
        try:
            state = load_state(path)
        except Exception as exc:  # unreadable: start over rather than fail the job
            log.warning("ignoring unreadable checkpoint %s (%s); starting from scratch", path, exc)
            return None
        if state.get("signature") != signature:
            log.warning("ignoring checkpoint %s: it was written with other settings or data "
                        "(%s); starting from scratch", path,
                        _diff(state.get("signature") or {}, signature))
            return None
        if state["best_epoch"] == state["epoch"]:
            return state, state["model"]
        best = None
        if best_path.is_file():
            try:
                best = load_state(best_path)
            except Exception as exc:
                log.warning("cannot read %s (%s)", best_path, exc)
        found = best.get("epoch") if isinstance(best, dict) else None
        if found != state["best_epoch"]:
            raise UserError(
                f"checkpoint folder {self.dir}: {CHECKPOINT_FILE} is from epoch {state['epoch']} "
                f"and names epoch {state['best_epoch']} the best, but {BEST_FILE} "
                f"{'is missing' if best is None else f'holds epoch {found}'}. The folder was "
                f"changed by something other than this job: delete it to start over, or pass "
                f"another --checkpoint-dir")
        return state, best["weights"]


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:5]) or "unknown"
