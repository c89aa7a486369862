"""A hyperparameter tuning job locally, from its CreateHyperParameterTuningJob request.

The request's ``HyperParameterTuningJobConfig`` decides: its ranges and scaling, its strategy
(Bayesian -> Optuna's TPE sampler, Random -> random sampling, Grid -> every combination of
categorical and integer ranges), its limits (MaxNumberOfTrainingJobs,
MaxParallelTrainingJobs) and early stopping (Auto -> a median pruner: a trial below the median
of earlier trials at the same epoch is stopped). The objective is read from each trial's log,
line by line, with the regex of the request's MetricDefinitions that bears the objective's
name; each match is one intermediate value, the last one the trial's result.

Hyperparameters are passed as SageMaker passes them: the range's text (a categorical value as
written in the request, continuous and integer values as numbers in text); the best trial's
values are reported as ``TunedHyperParameters`` in the same form.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Callable

import optuna

from .expressions import Unsupported
from .jobs import JobStopped

STRATEGIES = ("Bayesian", "Random", "Grid")


@dataclass
class TrialOutcome:
    number: int
    hyperparameters: dict  # name -> the text passed to the job
    state: str  # Completed, Failed, Stopped
    value: float | None
    intermediate: list = field(default_factory=list)
    log_path: str = ""
    error: str = ""


class TrialFailed(Exception):
    pass


@dataclass
class Ranges:
    continuous: list
    integer: list
    categorical: list

    @classmethod
    def of(cls, config: dict) -> "Ranges":
        ranges = config.get("ParameterRanges") or {}
        return cls(ranges.get("ContinuousParameterRanges") or [],
                   ranges.get("IntegerParameterRanges") or [],
                   ranges.get("CategoricalParameterRanges") or [])

    def suggest(self, trial: optuna.Trial) -> dict:
        chosen = {}
        for r in self.continuous:
            log = r.get("ScalingType") in ("Logarithmic", "ReverseLogarithmic")
            if r.get("ScalingType") == "ReverseLogarithmic":
                raise Unsupported(f"range {r['Name']}: ReverseLogarithmic scaling")
            value = trial.suggest_float(r["Name"], float(r["MinValue"]), float(r["MaxValue"]),
                                        log=log and float(r["MinValue"]) > 0)
            chosen[r["Name"]] = repr(value)
        for r in self.integer:
            log = r.get("ScalingType") == "Logarithmic" and int(r["MinValue"]) > 0
            chosen[r["Name"]] = str(trial.suggest_int(r["Name"], int(r["MinValue"]),
                                                      int(r["MaxValue"]), log=log))
        for r in self.categorical:
            chosen[r["Name"]] = trial.suggest_categorical(r["Name"], list(r["Values"]))
        return chosen

    def grid(self) -> dict:
        if self.continuous or self.integer:
            raise Unsupported("the Grid strategy with continuous or integer ranges (SageMaker's "
                              "grid search takes categorical ranges only)")
        return {r["Name"]: list(r["Values"]) for r in self.categorical}


def sampler(strategy: str, ranges: Ranges, n_trials: int, seed: int = 0):
    if strategy == "Bayesian":
        # the random start-up fits the budget: with 8 trials, 10 random ones would be all
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10,
                                                                               n_trials // 2)))
    if strategy == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "Grid":
        return optuna.samplers.GridSampler(ranges.grid(), seed=seed)
    raise Unsupported(f"tuning strategy {strategy} (supported: {', '.join(STRATEGIES)})")


def objective_regex(config: dict, metric_definitions: list) -> tuple[str, re.Pattern, str]:
    objective = config["HyperParameterTuningJobObjective"]
    name = objective["MetricName"]
    found = [d["Regex"] for d in metric_definitions or [] if d["Name"] == name]
    if not found:
        raise Unsupported(f"objective {name} has no regex in the training job definition's "
                          f"MetricDefinitions (built-in algorithm metrics are not known here)")
    return name, re.compile(found[0]), objective.get("Type", "Maximize")


def tune(config: dict, metric_definitions: list, run_trial: Callable, *, seed: int = 0,
         on_trial: Callable[[TrialOutcome], None] | None = None) -> list[TrialOutcome]:
    """Run the study. ``run_trial(number, hyperparameters, on_line)`` runs one training job
    and returns its JobResult; ``on_line`` returns True when the trial should stop."""
    ranges = Ranges.of(config)
    limits = config.get("ResourceLimits") or {}
    strategy = config.get("Strategy", "Bayesian")
    n_trials = int(limits.get("MaxNumberOfTrainingJobs", 1))
    if strategy == "Grid":  # every combination, at most the limit if one is given
        combinations = len(list(itertools.product(*ranges.grid().values()))) or 1
        n_trials = min(int(limits.get("MaxNumberOfTrainingJobs", combinations)), combinations)
    parallel = max(1, min(int(limits.get("MaxParallelTrainingJobs", 1)), n_trials))
    metric, regex, direction = objective_regex(config, metric_definitions)
    early = config.get("TrainingJobEarlyStoppingType", "Off")
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=max(2, parallel), n_warmup_steps=2)
              if early == "Auto" else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(logging.ERROR)  # trials are reported by on_trial
    study = optuna.create_study(direction="maximize" if direction == "Maximize" else "minimize",
                                sampler=sampler(strategy, ranges, n_trials, seed), pruner=pruner)
    outcomes: list[TrialOutcome] = []
    lock = threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        hps = ranges.suggest(trial)
        values: list[float] = []

        def on_line(line: str) -> bool:
            matches = regex.findall(line)
            if matches:
                try:
                    value = float(matches[-1] if isinstance(matches[-1], str) else
                                  matches[-1][0])
                except ValueError:  # the regex matched something that is not a number
                    return False
                values.append(value)
                trial.report(value, step=len(values))
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
                raise TrialFailed(f"no {metric} in the trial's log")
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


def best(outcomes: list[TrialOutcome], direction: str = "Maximize") -> TrialOutcome | None:
    done = [o for o in outcomes if o.state == "Completed" and o.value is not None]
    if not done:
        return None
    pick = max if direction == "Maximize" else min
    return pick(done, key=lambda o: o.value)
