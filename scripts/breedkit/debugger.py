"""The training hook: smdebug output (reductions at save intervals) that costs nothing between
saves, with mixed precision kept.

train.py writes hook output whenever it runs as TrainFinal (``--debugger-out``), with or without
SageMaker Debugger; scripts/training_rules.py evaluates the rules on it (breedkit.rules).
Where SageMaker Debugger is configured (the opt-in build option, for accounts that still have
Debugger: ``SMDEBUG_CONFIG_FILE_PATH`` or ``/opt/ml/input/config/debughookconfig.json``), a
second smdebug hook from that configuration writes what SageMaker's built-in rules read.

smdebug's own ``register_module`` puts Python hooks on every module and parameter that run on
every step, and it cannot write bf16/fp16 tensors, so training used to fall back to fp32 while
it was active (5-10x slower on CPUs with AMX). Here smdebug's hook objects only keep the
collections, save configuration and writers; this driver

- counts steps itself (``begin_step``), in smdebug's numbering (global and per mode);
- on a save step only, attaches forward hooks to the modules for that one forward pass, saves
  the weights before it and the gradients after the backward pass (``after_backward``);
- converts what it saves to fp32 first, so autocast stays on. Reductions of bf16 activations
  are computed in fp32 from the bf16 values.

Between save steps the cost is one dictionary lookup per step.
"""

from __future__ import annotations

import logging
import os

from .contract import UserError

log = logging.getLogger("breedkit.debugger")

SAGEMAKER_CONFIG = "/opt/ml/input/config/debughookconfig.json"
LOCAL_COLLECTIONS = ("losses", "weights", "biases", "gradients", "relu_output")
LOCAL_REDUCTIONS = ("mean", "std", "min", "max")
LOCAL_ABS_REDUCTIONS = ("mean", "max")
LOCAL_NORMS = ("l2",)
RELU_OUTPUT_REGEX = r".*relu_output"
INPUT_SUFFIX, OUTPUT_SUFFIX, GRADIENT_PREFIX = "_input_", "_output_", "gradient/"


def sagemaker_config_path() -> str | None:
    path = os.environ.get("SMDEBUG_CONFIG_FILE_PATH") or SAGEMAKER_CONFIG
    return path if os.path.isfile(path) else None


class DebugHook:
    """What the training loop calls; with no smdebug hook behind it every call does nothing."""

    def __init__(self, hooks=(), modes=None):
        self._hooks = list(hooks)
        self._modes = modes
        self._mode = None
        self._model = self._loss = None
        self._handles: list = []
        self._saving: list = []  # the smdebug hooks saving at this step
        self.saves = 0

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def register(self, model, loss_module) -> None:
        if not self._hooks:
            return
        self._model, self._loss = model, loss_module
        for name, module in model.named_modules():
            module._module_name = name
        model._module_name = model._get_name()
        loss_module._module_name = loss_module._get_name()
        for hook in self._hooks:
            hook._prepare_collections()
            hook.prepared_collections = True

    def train_mode(self) -> None:
        self._set_mode("TRAIN")

    def eval_mode(self) -> None:
        self._set_mode("EVAL")

    def _set_mode(self, name: str) -> None:
        if self._hooks:
            self._mode = getattr(self._modes, name)
            for hook in self._hooks:
                hook.set_mode(self._mode)

    # -- per step ------------------------------------------------------------------------------

    def begin_step(self) -> None:
        """Before a step's forward pass: count it; on a save step, attach the savers."""
        if not self._hooks:
            return
        self._finish_step()
        for hook in self._hooks:
            hook.step += 1
            hook.mode_steps[hook.mode] += 1
            hook.mode_steps[self._modes.GLOBAL] = hook.step
            hook._collections_to_save_for_step = None
            hook.written_tensor_name_for_step.clear()
            if hook._get_collections_to_save_for_step():
                hook._initialize_writers()
                if hook.writer is not None:
                    self._saving.append(hook)
        if not self._saving:
            return
        self.saves += 1
        prefix = self._model._module_name + "_"
        for name, param in self._model.named_parameters():  # weights and biases
            self._save(prefix + name, param)
        for module in self._model.modules():
            if module is not self._model:
                self._handles.append(module.register_forward_hook(self._module_io))
        self._handles.append(self._loss.register_forward_hook(self._module_io))

    def after_backward(self, scaler=None) -> None:
        """After the backward pass of a save step: the gradients (unscaled under fp16)."""
        if not self._saving:
            return
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        prefix = GRADIENT_PREFIX + self._model._module_name + "_"
        for name, param in self._model.named_parameters():
            if param.grad is not None:
                self._save(prefix + name, param.grad, scale)
        self._remove_handles()

    def _module_io(self, module, inputs, outputs) -> None:
        name = module._module_name
        self._save_all(name + INPUT_SUFFIX, inputs)
        self._save_all(name + OUTPUT_SUFFIX, outputs)

    def _save_all(self, base: str, value) -> None:
        import torch

        if isinstance(value, (tuple, list)):
            for item in value:
                self._save_all(base, item)
            return
        if not isinstance(value, torch.Tensor):
            return
        for hook in self._saving:
            idx = hook.written_tensor_name_for_step.get(base, 0)
            hook.written_tensor_name_for_step[base] = idx + 1
            self._save_to(hook, f"{base}{idx}", value)

    def _save(self, name: str, tensor, scale: float = 1.0) -> None:
        for hook in self._saving:
            self._save_to(hook, name, tensor, scale)

    @staticmethod
    def _save_to(hook, name: str, tensor, scale: float = 1.0) -> None:
        wanted = hook._get_collections_with_tensor(name) & hook._get_collections_to_save_for_step()
        if not wanted:
            return
        value = tensor.detach().float()  # smdebug writes no bf16/fp16
        if scale != 1.0:
            value = value / scale
        hook._write_for_tensor(name, value.cpu(), wanted)
        hook.last_saved_step = hook.step

    def _remove_handles(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _finish_step(self) -> None:
        self._remove_handles()
        for hook in self._saving:
            hook._close_writers()
        self._saving.clear()

    def close(self) -> None:
        """Flush and write the collections: the output is readable even after a failure."""
        if not self._hooks:
            return
        self._finish_step()
        for hook in self._hooks:
            hook.close()


def create_hook(local_out_dir: str | None = None, save_interval: int = 20) -> DebugHook:
    config = sagemaker_config_path()
    if config is None and not local_out_dir:
        return DebugHook()
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")
    try:
        import smdebug.pytorch as smd
        from smdebug import modes
    except ImportError as exc:
        if local_out_dir:
            raise UserError(f"--debugger-out needs smdebug, which cannot be imported ({exc}); "
                            f"pip install -r scripts/requirements/train.txt, or drop --debugger-out"
                            ) from None
        log.warning("SageMaker Debugger configuration %s found but smdebug is not installed "
                    "(%s); training without the Debugger hook", config, exc)
        return DebugHook()
    hooks = []
    if local_out_dir:
        hooks.append(_local_hook(smd, local_out_dir, save_interval))
        log.info("training hook: reductions every %d steps to %s", save_interval, local_out_dir)
    if config is not None:
        log.info("SageMaker Debugger: hook from %s", config)
        hooks.append(smd.Hook.create_from_json_file(config))
    return DebugHook(hooks, modes)


def _local_hook(smd, out_dir: str, save_interval: int):
    from smdebug.core.reduction_config import ReductionConfig
    from smdebug.core.save_config import SaveConfig

    reductions = ReductionConfig(reductions=list(LOCAL_REDUCTIONS),
                                 abs_reductions=list(LOCAL_ABS_REDUCTIONS),
                                 norms=list(LOCAL_NORMS))
    hook = smd.Hook(out_dir=out_dir, save_config=SaveConfig(save_interval=save_interval),
                    reduction_config=reductions, include_collections=list(LOCAL_COLLECTIONS))
    # as SageMaker's rule configuration defines it, for PoorWeightInitialization
    hook.get_collection("relu_output").include(RELU_OUTPUT_REGEX)
    return hook
