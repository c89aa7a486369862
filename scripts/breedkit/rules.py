"""SageMaker Debugger's built-in rules, evaluated with smdebug on TrainFinal's hook output.

The built-in rule implementations are not in any public smdebug release, so these are our own
``smdebug.rules.Rule`` subclasses with SageMaker's names, parameters and defaults, evaluated the
way SageMaker's rule containers do (``invoke_rule`` step by step). Each gives a verdict:
NoIssuesFound, IssuesFound (with the step where it fired) or Error. They read full tensors
where they were saved and the reductions train.py's hook saves otherwise. Run by
scripts/training_rules.py, the TrainingRules step of both backends.
"""

from __future__ import annotations

import math
import os

import inspect
from pathlib import Path

os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")

from smdebug import modes  # noqa: E402
from smdebug.exceptions import RuleEvaluationConditionMet  # noqa: E402
from smdebug.rules.rule import Rule  # noqa: E402
from smdebug.rules.rule_invoker import invoke_rule  # noqa: E402

from .rulespec import RULES as RULE_NAMES  # noqa: E402


def _stat(tensor, step: int, reduction: str, abs: bool = False) -> float | None:
    """A reduction of a tensor at a step, from the full value or the saved reduction."""
    try:
        import numpy as np

        value = np.asarray(tensor.value(step), dtype=np.float64)
        if abs:
            value = np.abs(value)
        return float({"mean": np.mean, "max": np.max, "min": np.min, "std": np.std}[reduction](
            value))
    except Exception:  # noqa: BLE001 - only reductions were saved at this step
        pass
    try:
        return float(tensor.reduction_value(step, reduction, abs=abs))
    except Exception:  # noqa: BLE001 - neither: nothing to judge here
        return None


class _TrialRule(Rule):
    def __init__(self, base_trial):
        super().__init__(base_trial, action_str="")
        self.last_step = max(base_trial.steps()) if base_trial.steps() else -1

    def names(self, collection: str) -> list[str]:
        try:
            return self.base_trial.tensor_names(collection=collection)
        except Exception:  # noqa: BLE001 - collection not saved
            return []

    def saved_at(self, name: str, step: int) -> bool:
        return step in self.base_trial.tensor(name).steps()

    def loss(self, step: int) -> float | None:
        values = [_stat(self.base_trial.tensor(n), step, "mean")
                  for n in self.names("losses") if self.saved_at(n, step)]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None


class ExplodingTensor(_TrialRule):
    """NaN or infinite values in losses, gradients or weights."""

    def __init__(self, base_trial, collection_names=("losses", "gradients", "weights")):
        super().__init__(base_trial)
        self.tensors = [n for c in collection_names for n in self.names(c)]

    def invoke_at_step(self, step):
        for name in self.tensors:
            if self.saved_at(name, step):
                value = _stat(self.base_trial.tensor(name), step, "max", abs=True)
                if value is not None and not math.isfinite(value):
                    return True
        return False


class VanishingGradient(_TrialRule):
    """A gradient whose mean absolute value falls below ``threshold``."""

    def __init__(self, base_trial, threshold=1e-7):
        super().__init__(base_trial)
        self.threshold = float(threshold)
        self.tensors = self.names("gradients")

    def invoke_at_step(self, step):
        for name in self.tensors:
            if self.saved_at(name, step):
                value = _stat(self.base_trial.tensor(name), step, "mean", abs=True)
                if value is not None and value < self.threshold:
                    return True
        return False


class LossNotDecreasing(_TrialRule):
    """The mean training loss of the last ``num_steps`` saved steps is not at least
    ``diff_percent`` percent below that of the ``num_steps`` before."""

    def __init__(self, base_trial, num_steps=10, diff_percent=0.1):
        super().__init__(base_trial)
        self.num_steps, self.diff = int(num_steps), float(diff_percent) / 100
        self.history: list[float] = []

    def invoke_at_step(self, step):
        if self.base_trial.mode(step) != modes.TRAIN:
            return False
        loss = self.loss(step)
        if loss is None:
            return False
        self.history.append(loss)
        if len(self.history) < 2 * self.num_steps or len(self.history) % self.num_steps:
            return False
        n = self.num_steps
        recent = sum(self.history[-n:]) / n
        before = sum(self.history[-2 * n:-n]) / n
        return recent > before * (1 - self.diff)


class _PhaseRule(_TrialRule):
    """Loss per phase: the mean training loss between evaluations, and each evaluation's."""

    def __init__(self, base_trial):
        super().__init__(base_trial)
        self.train_losses: list[float] = []
        self.eval_losses: list[float] = []
        self.phases: list[tuple[float | None, float]] = []  # (train loss, eval loss)

    def invoke_at_step(self, step):
        mode = self.base_trial.mode(step)
        loss = self.loss(step)
        fired = False
        if mode == modes.TRAIN and self.eval_losses:
            fired = self._close()
        if loss is not None:
            (self.eval_losses if mode == modes.EVAL else self.train_losses).append(loss)
        if step == self.last_step and self.eval_losses:
            fired = self._close() or fired
        return fired

    def _close(self) -> bool:
        train = sum(self.train_losses) / len(self.train_losses) if self.train_losses else None
        self.phases.append((train, sum(self.eval_losses) / len(self.eval_losses)))
        self.train_losses, self.eval_losses = [], []
        return self.judge()

    def judge(self) -> bool:
        raise NotImplementedError


class Overfit(_PhaseRule):
    """Validation loss above training loss by more than ``ratio_threshold`` (relative) for
    more than ``patience`` evaluations in a row, from evaluation ``start_step`` on."""

    def __init__(self, base_trial, start_step=0, patience=1, ratio_threshold=0.1):
        super().__init__(base_trial)
        self.start, self.patience = int(start_step), int(patience)
        self.ratio = float(ratio_threshold)
        self.streak = 0

    def judge(self) -> bool:
        train, valid = self.phases[-1]
        if train is None or train <= 0 or len(self.phases) <= self.start:
            return False
        self.streak = self.streak + 1 if (valid - train) / train > self.ratio else 0
        return self.streak > self.patience


class Overtraining(_PhaseRule):
    """Validation loss has not improved by ``delta`` for ``patience_validation`` evaluations."""

    def __init__(self, base_trial, patience_train=5, patience_validation=10, delta=0.01):
        super().__init__(base_trial)
        self.patience = int(patience_validation)
        self.delta = float(delta)
        self.best, self.stale = math.inf, 0

    def judge(self) -> bool:
        valid = self.phases[-1][1]
        if valid < self.best - self.delta:
            self.best, self.stale = valid, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


class NothingToRead(Exception):
    """The hook output holds none of the tensors a rule reads."""


class PoorWeightInitialization(_TrialRule):
    """In the first ``steps`` training steps, the variance of activations differs between
    layers by more than a factor ``threshold`` (or some layer's activations are all zero)."""

    def __init__(self, base_trial, activation_inputs_regex=None, threshold=10.0, steps=10):
        super().__init__(base_trial)
        self.threshold, self.steps = float(threshold), int(steps)
        self.tensors = self.names("relu_output") or self.names("relu_input")
        if not self.tensors:  # an Error verdict, not a silent NoIssuesFound
            raise NothingToRead("the hook output holds no relu_output or relu_input tensors: "
                                "the network has no ReLU modules (ConvNeXt and ViT use GELU, "
                                "EfficientNetV2 SiLU), so this rule has nothing to read")
        self.seen = 0

    def invoke_at_step(self, step):
        if self.seen >= self.steps or self.base_trial.mode(step) != modes.TRAIN:
            return False
        variances = []
        for name in self.tensors:
            if self.saved_at(name, step):
                std = _stat(self.base_trial.tensor(name), step, "std")
                if std is not None:
                    variances.append(std * std)
        if not variances:
            return False
        self.seen += 1
        if min(variances) <= 0:
            return True
        return max(variances) / min(variances) > self.threshold


RULES = {cls.__name__: cls for cls in (LossNotDecreasing, Overfit, Overtraining,
                                        VanishingGradient, ExplodingTensor,
                                        PoorWeightInitialization)}
assert tuple(RULES) == RULE_NAMES


def parameters(cls) -> dict:
    """A rule's parameters and their defaults, as reported with its verdict."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty and not isinstance(p.default, tuple)
            and p.default is not None}


def event_file_errors(path: str | Path) -> list[str]:
    """Each event file of the hook output that cannot be read, by name, with the reason."""
    from smdebug.core.tfevent.event_file_reader import EventFileReader

    errors = []
    for file in sorted(Path(path).rglob("*.tfevents")):
        try:
            list(EventFileReader(str(file)).read_tensors())
        except Exception as exc:  # noqa: BLE001 - any reader failure means unreadable
            errors.append(f"{file.relative_to(path)}: {type(exc).__name__}: {exc}")
    return errors


def evaluate_rules(path: str) -> list[dict]:
    """A verdict for every rule of rulespec.RULES on the hook output at ``path``.

    No hook output (training ended before its first save) or an unreadable event file gives
    every rule the verdict Error with the reason; a rule that fails gives its own Error.
    """
    verdicts = [{"rule": name, "status": "NoIssuesFound", "step": None, "message": "",
                 "parameters": parameters(cls)} for name, cls in RULES.items()]
    problem = None
    if not (Path(path) / "events").is_dir():
        problem = (f"no hook output in {path}: training ended before its first save step, or "
                   f"ran without --debugger-out")
    else:
        errors = event_file_errors(path)
        if errors:
            problem = "unreadable event file " + "; ".join(errors[:3]) + (
                f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
    if problem:
        for verdict in verdicts:
            verdict.update(status="Error", message=problem)
        return verdicts
    from smdebug.trials import create_trial

    trial = create_trial(str(path))
    for verdict in verdicts:
        cls = RULES[verdict["rule"]]
        try:
            rule = cls(trial)
            invoke_rule(rule, start_step=0, end_step=rule.last_step + 1, raise_eval_cond=True)
        except RuleEvaluationConditionMet as exc:
            verdict.update(status="IssuesFound", step=exc.step,
                           message=f"{verdict['rule']} fired at step {exc.step}")
        except Exception as exc:  # noqa: BLE001 - a verdict, as SageMaker's rule jobs give
            verdict.update(status="Error", message=f"{type(exc).__name__}: {exc}")
    return verdicts
