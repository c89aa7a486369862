"""HPTuning: Bayesian search over learning rate, batch size, epochs, weight decay and label
smoothing.

Each trial is scripts/train.py with ``--mode`` the build option --tuning-mode: linear-probe
trials train the head
on the Features step's cached features (seconds on a CPU instance: TuningInstanceType),
fine-tune trials the whole network on the train and valid splits (never test). The objective
is valid:best_accuracy, read from the training log by breedkit.logformat's regex. Early
stopping Auto lets SageMaker stop trials whose per-epoch objective lags.

The trials' image follows the build option (SageMaker fixes the image when the pipeline is
built): the CPU image for linear-probe trials on ml.m5.large, the GPU image for fine-tune trials
on ml.g4dn.xlarge (TuningInstanceType's default follows it too).

FineTuneTuning (build option --tune-fine-tune, after linear-probe trials) is a second search:
short fine-tuning trials from the best probed head, on TrainFinal's instance type and image,
over the fine-tune's own settings (spec.FINE_TUNE_RANGES); TrainFinal takes the best.
"""

from __future__ import annotations

from sagemaker import image_uris
from sagemaker.inputs import TrainingInput
from sagemaker.tuner import (CategoricalParameter, ContinuousParameter, HyperparameterTuner,
                             IntegerParameter)
from sagemaker.workflow.functions import Join
from sagemaker.workflow.steps import ProcessingStep, TuningStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_estimator
from .context import BuildContext
from .preprocess import output_uri


def tuning_ranges(ctx: BuildContext, ranges: dict | None = None) -> dict:
    """``ranges`` (pipelines.spec.HYPERPARAMETER_RANGES by default) as SDK ranges; string
    bounds name parameters."""
    bound = lambda value: ctx.p(value) if isinstance(value, str) else value  # noqa: E731
    sdk = {}
    for name, r in (spec.HYPERPARAMETER_RANGES if ranges is None else ranges).items():
        if r["type"] == "Categorical":
            sdk[name] = CategoricalParameter([str(v) for v in r["values"]])
        elif r["type"] == "Integer":
            sdk[name] = IntegerParameter(bound(r["min"]), bound(r["max"]),
                                         scaling_type=r["scaling"])
        else:
            sdk[name] = ContinuousParameter(bound(r["min"]), bound(r["max"]),
                                            scaling_type=r["scaling"])
    return sdk


def training_inputs(preprocess: ProcessingStep) -> dict:
    return {channel: TrainingInput(output_uri(preprocess, channel))
            for channel in spec.TRAINING_CHANNELS}


def trial_image(ctx: BuildContext) -> str:
    """The CPU training image for linear-probe trials (about half the GPU image's size, and
    pulled by every trial), the GPU one for fine-tune trials: fixed by the build option."""
    instance = spec.TUNING_MODES[ctx.options.tuning_mode]["image_instance"]
    return image_uris.retrieve("pytorch", region=ctx.session.boto_region_name,
                               version=spec.FRAMEWORK_VERSION, py_version=spec.PY_VERSION,
                               instance_type=instance, image_scope="training")


def tuner(ctx: BuildContext, estimator, ranges: dict, max_jobs, name: str
          ) -> HyperparameterTuner:
    """Bayesian search for the best valid:best_accuracy, trials stopped early when they lag."""
    return HyperparameterTuner(
        estimator,
        objective_metric_name=spec.OBJECTIVE_METRIC,
        hyperparameter_ranges=ranges,
        metric_definitions=list(spec.METRIC_DEFINITIONS),
        strategy=spec.TUNING_STRATEGY,
        objective_type=spec.OBJECTIVE_TYPE,
        max_jobs=max_jobs,
        max_parallel_jobs=ctx.p("MaxParallelTuningJobs"),
        early_stopping_type=spec.EARLY_STOPPING,
        base_tuning_job_name=name,
        tags=ctx.tags or None,
    )


def make_step(ctx: BuildContext, preprocess: ProcessingStep,
              features: ProcessingStep) -> TuningStep:
    fixed = {hp: ctx.value(value) for hp, value in spec.TUNING_HYPERPARAMETERS.items()}
    estimator = pytorch_estimator(ctx, fixed, "tuning", instance_type=ctx.p("TuningInstanceType"),
                                  image_uri=trial_image(ctx))
    search = tuner(ctx, estimator, tuning_ranges(ctx), ctx.p("MaxTuningJobs"), "dogbreed-hpo")
    # a fixed job name keeps the definition (and its code path) free of timestamps
    inputs = {**training_inputs(preprocess), spec.FEATURES_CHANNEL: TrainingInput(
        features.properties.ProcessingOutputConfig.Outputs["features"].S3Output.S3Uri)}
    step_args = search.fit(inputs=inputs, job_name="dogbreed-hpo")
    return TuningStep(name=spec.STEP.TUNE, step_args=step_args, cache_config=cache_config(ctx),
                      retry_policies=job_retry_policies())


def make_fine_tune_step(ctx: BuildContext, preprocess: ProcessingStep,
                        probe: TuningStep) -> TuningStep:
    """FineTuneTuning (build option --tune-fine-tune): ``MaxFineTuneJobs`` short fine-tuning
    trials (``FineTuneTuningEpochs``), each from the best probed head, as TrainFinal fine-tunes
    (its instance type, image, layers and batch), over spec.FINE_TUNE_RANGES."""
    fixed = {"mode": "fine-tune", "lr": best_hyperparameter(probe, "lr"),
             "epochs": ctx.p("FineTuneTuningEpochs"), "batch-size": ctx.p("FineTuneBatchSize"),
             **{hp: ctx.p(param) for hp, param in spec.TRAIN_FINAL_HYPERPARAMETERS.items()}}
    estimator = pytorch_estimator(ctx, fixed, "tuning")
    search = tuner(ctx, estimator, tuning_ranges(ctx, spec.FINE_TUNE_RANGES),
                   ctx.p("MaxFineTuneJobs"), "dogbreed-ft-hpo")
    inputs = {**training_inputs(preprocess),
              spec.HEAD_CHANNEL: TrainingInput(best_model(ctx, probe))}
    step_args = search.fit(inputs=inputs, job_name="dogbreed-ft-hpo")
    return TuningStep(name=spec.STEP.TUNE_FINE_TUNE, step_args=step_args,
                      cache_config=cache_config(ctx), retry_policies=job_retry_policies())


def best_hyperparameter(step: TuningStep, name: str):
    return step.properties.BestTrainingJob.TunedHyperParameters[name]


def best_model(ctx: BuildContext, step: TuningStep) -> Join:
    """The best trial's model.tar.gz (a probed head in linear-probe mode), where the trials'
    estimator writes it: <output_path>/<training job name>/output/model.tar.gz."""
    return Join(on="/", values=[ctx.s3("training"),
                                step.properties.BestTrainingJob.TrainingJobName,
                                "output", "model.tar.gz"])
