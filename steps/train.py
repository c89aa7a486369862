"""TrainFinal: train with the tuning job's best hyperparameters, writing what the rules read.

Best values come from ``HPTuning``'s BestTrainingJob.TunedHyperParameters; the epochs are the
``Epochs`` parameter, the trained layers ``FineTuneLayers``. After linear-probe trials, which
tuned the probe (a head on frozen features), the fine-tune has settings of its own: the
``FineTune*`` parameters (spec.LP_FT_HYPERPARAMETERS: the backbone's rate, batch, weight decay,
label smoothing), or with the build option --tune-fine-tune the best of FineTuneTuning's
fine-tuning trials (its rate, weight decay, label smoothing); the probe's rate stays the rate of
a new head if no probed head is found. The best trial's model.tar.gz is the ``head`` channel:
with --tuning-mode linear-probe it is a probed head and train.py fine-tunes from it (LP-FT); a fine-tune trial's whole model is ignored there. train.py writes its hook
output and profiling data into the job's output data (spec.TRAIN_FINAL_MONITORING) for the
TrainingRules step, and TensorBoard events that the job's TensorBoardOutputConfig syncs to S3
(SageMaker's managed TensorBoard reads them). With a managed MLflow server (``--mlflow-arn``)
the job logs its run there through the environment train.py reads (MLFLOW_TRACKING_URI = the
server's ARN, resolved by the sagemaker-mlflow plugin the job installs). Not MlflowConfig: the
Pipelines service parses step arguments with its own model and refuses members the SDK does not
emit ("Unknown Argument member", sagemaker-python-sdk PR 3472); SDK 2.x emits no MlflowConfig.

SageMaker Debugger's built-in rules, system monitoring and ProfilerReport are an opt-in build
option (``--sagemaker-debugger``), for accounts that still have Debugger: it is closed to new
customers. With --spot, checkpoints go to S3 (a prefix per execution) so spot interruptions
resume.
"""

from __future__ import annotations

from sagemaker.debugger import (CollectionConfig, DebuggerHookConfig, ProfilerConfig,
                                ProfilerRule, Rule, TensorBoardOutputConfig, rule_configs)
from sagemaker.inputs import TrainingInput
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.steps import TrainingStep, TuningStep

from breedkit.rulespec import SAGEMAKER_RULE_CONFIGS

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_estimator
from .context import BuildContext
from .tune import best_hyperparameter, best_model

# Collections saved more often than the rules' default of every 500 steps: an epoch of
# dogImages is ~200 steps, so loss-based rules would otherwise see a handful of points.
COLLECTION_OVERRIDES = {"losses": {"save_interval": "10"},
                        "gradients": {"save_interval": "50"}}


class OrderedDebuggerHookConfig(DebuggerHookConfig):
    """The SDK gathers the rules' collection configs in a ``set()``, whose order follows string
    hashes, which change from one process to the next: every CodeBuild upsert would change the
    definition and TrainFinal (and all after it) would miss the step cache. Sorted by name."""

    def _to_request_dict(self):
        request = super()._to_request_dict()
        if "CollectionConfigurations" in request:
            request["CollectionConfigurations"] = sorted(
                request["CollectionConfigurations"], key=lambda c: c["CollectionName"])
        return request


def debugger_rules() -> list:
    """SageMaker Debugger's built-in rules of the names TrainingRules evaluates (opt-in)."""
    rules = []
    for name in spec.TRAINING_RULES:
        rule = Rule.sagemaker(getattr(rule_configs, SAGEMAKER_RULE_CONFIGS[name])())
        rule.collection_configs = [
            CollectionConfig(c.name, {**c.parameters, **COLLECTION_OVERRIDES.get(c.name, {})})
            for c in rule.collection_configs]
        rules.append(rule)
    return rules


def mlflow_run_name(ctx: BuildContext) -> Join:
    return Join(on="-", values=[ctx.pipeline_name, spec.STEP.TRAIN,
                                ExecutionVariables.PIPELINE_EXECUTION_ID])


def monitoring_hyperparameters(ctx: BuildContext) -> dict:
    wanted = {"debugger-out": ctx.options.training_rules, "profile-out": ctx.options.profiler,
              "tensorboard-dir": True}
    return {name: path for name, path in spec.TRAIN_FINAL_MONITORING.items() if wanted[name]}


def make_step(ctx: BuildContext, tuning: TuningStep, inputs: dict,
              fine_tune_tuning: TuningStep | None = None) -> TrainingStep:
    tuned = {name: best_hyperparameter(tuning, name) for name in spec.HYPERPARAMETER_RANGES
             if name != "epochs"}
    kwargs = {"tensorboard_output_config": TensorBoardOutputConfig(
        s3_output_path=ctx.s3("tensorboard"), container_local_output_path=spec.TENSORBOARD_DIR)}
    rules = []
    if ctx.options.sagemaker_debugger:
        rules += debugger_rules()
        # each built-in rule adds the collections it reads (losses, gradients, weights,
        # relu_input...); adding our own with other settings would duplicate their names
        kwargs["debugger_hook_config"] = OrderedDebuggerHookConfig(
            s3_output_path=ctx.s3("debugger"))
        # a named rule: the SDK's default name carries a timestamp, which breaks step caching
        rules.append(ProfilerRule.sagemaker(rule_configs.ProfilerReport(),
                                            name=spec.PROFILER_RULE))
        kwargs["profiler_config"] = ProfilerConfig(
            system_monitor_interval_millis=spec.SYSTEM_MONITOR_INTERVAL_MS,
            s3_output_path=ctx.s3("profiler"))
        kwargs["disable_profiler"] = False
    else:
        kwargs["debugger_hook_config"] = False
    mlflow = bool(ctx.options.mlflow_arn)
    if mlflow:
        # what train.py reads (breedkit.tracking); the sagemaker-mlflow plugin resolves the ARN
        kwargs["environment"] = {"MLFLOW_TRACKING_URI": ctx.options.mlflow_arn,
                                 "MLFLOW_EXPERIMENT_NAME": ctx.pipeline_name,
                                 "MLFLOW_RUN_NAME": mlflow_run_name(ctx)}
    fixed = {hp: ctx.p(param) for hp, param in spec.TRAIN_FINAL_HYPERPARAMETERS.items()}
    if ctx.options.tuning_mode == "linear-probe":  # the fine-tune's own settings
        fixed.update({hp: ctx.p(param) for hp, param in spec.LP_FT_HYPERPARAMETERS.items()})
    if fine_tune_tuning is not None:  # tuned by fine-tuning trials (--tune-fine-tune)
        fixed.update({hp: best_hyperparameter(fine_tune_tuning, hp)
                      for hp in spec.FINE_TUNE_RANGES})
    estimator = pytorch_estimator(
        ctx, {**tuned, "epochs": ctx.p("Epochs"), **fixed, **monitoring_hyperparameters(ctx)},
        "train-mlflow" if mlflow else "train",
        instance_count=ctx.options.training_instance_count, checkpoints=True,
        rules=rules or None, **kwargs)
    inputs = {**inputs, spec.HEAD_CHANNEL: TrainingInput(best_model(ctx, tuning))}
    step_args = estimator.fit(inputs=inputs, job_name="dogbreed-train")
    return TrainingStep(name=spec.STEP.TRAIN, step_args=step_args,
                        cache_config=cache_config(ctx), retry_policies=job_retry_policies())


def model_artifact(step: TrainingStep):
    return step.properties.ModelArtifacts.S3ModelArtifacts
