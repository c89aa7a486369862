"""HPTuning locally: Optuna over the same ranges and objective as the SageMaker tuning job.

TPE sampling stands in for SageMaker's Bayesian strategy and a median pruner for its early
stopping: each trial is scripts/train.py in a subprocess whose log is read line by line with
the same metric regexes; the objective's per-epoch values are reported to Optuna, and a trial
that falls below the median of earlier trials at the same epoch (from its second epoch
on) is stopped.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import optuna

from breedkit.logformat import parse_metrics
from pipelines import spec

from .jobs import JobStopped


@dataclass
class TrialOutcome:
    number: int
    hyperparameters: dict
    state: str
    value: float | None
    intermediate: list = field(default_factory=list)
    log_path: str = ""
    error: str = ""


class TrialFailed(Exception):
    pass


def suggest(trial: optuna.Trial, params: dict) -> dict:
    """Hyperparameters for one trial from spec.HYPERPARAMETER_RANGES."""
    bound = lambda v: params[v] if isinstance(v, str) else v  # noqa: E731
    chosen = {}
    for name, r in spec.HYPERPARAMETER_RANGES.items():
        if r["type"] == "Categorical":
            chosen[name] = trial.suggest_categorical(name, list(r["values"]))
        elif r["type"] == "Integer":
            chosen[name] = trial.suggest_int(name, int(bound(r["min"])), int(bound(r["max"])))
        else:
            chosen[name] = trial.suggest_float(name, float(bound(r["min"])),
                                               float(bound(r["max"])),
                                               log=r.get("scaling") == "Logarithmic")
    return chosen


def tune(params: dict, run_trial: Callable, *, n_trials: int, parallel: int, seed: int = 0,
         on_trial: Callable[[TrialOutcome], None] | None = None) -> list[TrialOutcome]:
    """Run the study. ``run_trial(number, hyperparameters, on_line)`` runs train.py and returns
    a JobResult; ``on_line`` returns True when the trial should be stopped (pruned)."""
    optuna.logging.set_verbosity(logging.ERROR)  # trials are reported by on_trial
    study = optuna.create_study(
        direction="maximize" if spec.OBJECTIVE_TYPE == "Maximize" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=max(2, parallel),
                                           n_warmup_steps=2))
    outcomes: list[TrialOutcome] = []
    lock = threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        hps = suggest(trial, params)
        values: list[float] = []

        def on_line(line: str) -> bool:
            found = parse_metrics(line).get(spec.OBJECTIVE_METRIC)
            if found and line.startswith("epoch="):
                values.append(found[-1])
                trial.report(found[-1], step=len(values))
                return trial.should_prune()
            return False

        outcome = TrialOutcome(trial.number, hps, "Failed", None, values)
        try:
            result = run_trial(trial.number, hps, on_line)
            outcome.log_path = str(result.log_path)
            if result.returncode != 0:
                outcome.error = result.failure_reason or f"exit code {result.returncode}"
                raise TrialFailed(outcome.error)
            if not values:
                raise TrialFailed(f"no {spec.OBJECTIVE_METRIC} in the trial's log")
            outcome.state, outcome.value = "Completed", values[-1]
            return values[-1]
        except JobStopped:
            outcome.state, outcome.value = "Stopped", values[-1] if values else None
            raise optuna.TrialPruned() from None
        finally:
            with lock:
                outcomes.append(outcome)
                if on_trial is not None:
                    on_trial(outcome)

    study.optimize(objective, n_trials=n_trials, n_jobs=parallel, catch=(TrialFailed,))
    return sorted(outcomes, key=lambda o: o.number)


def best(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    done = [o for o in outcomes if o.state == "Completed" and o.value is not None]
    return max(done, key=lambda o: o.value) if done else None
