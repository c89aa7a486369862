"""HPTuning: Bayesian search over learning rate, batch size, epochs and weight decay.

Each trial is scripts/train.py on the train and valid splits (never test); the objective is
valid:best_accuracy, read from the training log by breedkit.logformat's regex. Early stopping
Auto lets SageMaker stop trials whose per-epoch objective lags.
"""

from __future__ import annotations

from sagemaker.inputs import TrainingInput
from sagemaker.tuner import (CategoricalParameter, ContinuousParameter, HyperparameterTuner,
                             IntegerParameter)
from sagemaker.workflow.steps import ProcessingStep, TuningStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_estimator
from .context import BuildContext
from .preprocess import output_uri


def tuning_ranges(ctx: BuildContext) -> dict:
    """pipelines.spec.HYPERPARAMETER_RANGES as SDK ranges; string bounds name parameters."""
    bound = lambda value: ctx.p(value) if isinstance(value, str) else value  # noqa: E731
    ranges = {}
    for name, r in spec.HYPERPARAMETER_RANGES.items():
        if r["type"] == "Categorical":
            ranges[name] = CategoricalParameter([str(v) for v in r["values"]])
        elif r["type"] == "Integer":
            ranges[name] = IntegerParameter(bound(r["min"]), bound(r["max"]),
                                            scaling_type=r["scaling"])
        else:
            ranges[name] = ContinuousParameter(bound(r["min"]), bound(r["max"]),
                                               scaling_type=r["scaling"])
    return ranges


def training_inputs(preprocess: ProcessingStep) -> dict:
    return {channel: TrainingInput(output_uri(preprocess, channel))
            for channel in spec.TRAINING_CHANNELS}


def make_step(ctx: BuildContext, preprocess: ProcessingStep) -> TuningStep:
    estimator = pytorch_estimator(ctx, {}, "tuning")
    tuner = HyperparameterTuner(
        estimator,
        objective_metric_name=spec.OBJECTIVE_METRIC,
        hyperparameter_ranges=tuning_ranges(ctx),
        metric_definitions=list(spec.METRIC_DEFINITIONS),
        strategy=spec.TUNING_STRATEGY,
        objective_type=spec.OBJECTIVE_TYPE,
        max_jobs=ctx.p("MaxTuningJobs"),
        max_parallel_jobs=ctx.p("MaxParallelTuningJobs"),
        early_stopping_type=spec.EARLY_STOPPING,
        base_tuning_job_name="dogbreed-hpo",
        tags=ctx.tags or None,
    )
    # a fixed job name keeps the definition (and its code path) free of timestamps
    step_args = tuner.fit(inputs=training_inputs(preprocess), job_name="dogbreed-hpo")
    return TuningStep(name=spec.STEP.TUNE, step_args=step_args, cache_config=cache_config(ctx),
                      retry_policies=job_retry_policies())


def best_hyperparameter(step: TuningStep, name: str):
    return step.properties.BestTrainingJob.TunedHyperParameters[name]
