"""SageMaker Debugger (smdebug) hook: from SageMaker's configuration, or local with reductions.

- In a SageMaker job with Debugger rules, SageMaker writes a hook configuration
  (``SMDEBUG_CONFIG_FILE_PATH`` or ``/opt/ml/input/config/debughookconfig.json``); the hook is
  created from it, exactly as the built-in rules expect.
- Locally, ``--debugger-out DIR`` writes the same kind of output, but only reductions
  (mean, std, min, max, abs mean, L2 norm) every ``save_interval`` steps instead of full tensors,
  so rules can be evaluated afterwards from a few megabytes.
- smdebug is optional: without it training runs unchanged (a SageMaker configuration is then
  reported and ignored; an explicit ``--debugger-out`` is an error that says what to install).

smdebug cannot save bfloat16/float16 tensors, so train.py disables mixed precision while a hook
is active.
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


def sagemaker_config_path() -> str | None:
    path = os.environ.get("SMDEBUG_CONFIG_FILE_PATH") or SAGEMAKER_CONFIG
    return path if os.path.isfile(path) else None


class DebugHook:
    """A thin wrapper so the training loop needs no ``if hook`` and no smdebug import."""

    def __init__(self, hook=None, modes=None):
        self._hook = hook
        self._modes = modes

    @property
    def active(self) -> bool:
        return self._hook is not None

    def register(self, model, loss_module) -> None:
        if self._hook is not None:
            self._hook.register_module(model)
            self._hook.register_loss(loss_module)

    def train_mode(self) -> None:
        if self._hook is not None:
            self._hook.set_mode(self._modes.TRAIN)

    def eval_mode(self) -> None:
        if self._hook is not None:
            self._hook.set_mode(self._modes.EVAL)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.close()


def create_hook(local_out_dir: str | None = None, save_interval: int = 20) -> DebugHook:
    config = sagemaker_config_path()
    if config is None and not local_out_dir:
        return DebugHook()
    try:
        import smdebug.pytorch as smd
        from smdebug import modes
    except ImportError as exc:
        if local_out_dir:
            raise UserError(f"--debugger-out needs smdebug, which cannot be imported ({exc}); "
                            f"pip install -r scripts/requirements/debugger.txt, or drop --debugger-out"
                            ) from None
        log.warning("SageMaker Debugger configuration %s found but smdebug is not installed "
                    "(%s); training without the Debugger hook", config, exc)
        return DebugHook()
    if config is not None:
        log.info("SageMaker Debugger: hook from %s", config)
        return DebugHook(smd.Hook.create_from_json_file(), modes)
    from smdebug.core.reduction_config import ReductionConfig
    from smdebug.core.save_config import SaveConfig

    reductions = ReductionConfig(reductions=list(LOCAL_REDUCTIONS),
                                 abs_reductions=list(LOCAL_ABS_REDUCTIONS),
                                 norms=list(LOCAL_NORMS))
    hook = smd.Hook(out_dir=local_out_dir, save_config=SaveConfig(save_interval=save_interval),
                    reduction_config=reductions, include_collections=list(LOCAL_COLLECTIONS))
    # as SageMaker's rule configuration defines it, for PoorWeightInitialization
    hook.get_collection("relu_output").include(RELU_OUTPUT_REGEX)
    log.info("SageMaker Debugger: local hook writing reductions every %d steps to %s",
             save_interval, local_out_dir)
    return DebugHook(hook, modes)
