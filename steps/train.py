"""TrainFinal: train with the tuning job's best hyperparameters, with SageMaker Debugger.

Best values come from ``HPTuning``'s BestTrainingJob.TunedHyperParameters; the epochs are the
``Epochs`` parameter. Debugger: the built-in tensor rules of pipelines.spec.DEBUGGER_RULES, system
monitoring and the ProfilerReport rule, each switchable when the pipeline is built (Debugger is
closed to new AWS accounts). With --spot, checkpoints go to S3 (a prefix per execution) so spot
interruptions resume.
"""

from __future__ import annotations

from sagemaker.debugger import (CollectionConfig, DebuggerHookConfig, ProfilerConfig,
                                ProfilerRule, Rule, rule_configs)
from sagemaker.workflow.steps import TrainingStep, TuningStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_estimator
from .context import BuildContext
from .tune import best_hyperparameter

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
    rules = []
    for name in spec.DEBUGGER_RULES:
        rule = Rule.sagemaker(getattr(rule_configs, name)())
        rule.collection_configs = [
            CollectionConfig(c.name, {**c.parameters, **COLLECTION_OVERRIDES.get(c.name, {})})
            for c in rule.collection_configs]
        rules.append(rule)
    return rules


def make_step(ctx: BuildContext, tuning: TuningStep, inputs: dict) -> TrainingStep:
    tuned = {name: best_hyperparameter(tuning, name) for name in spec.HYPERPARAMETER_RANGES
             if name != "epochs"}
    kwargs = {}
    rules = []
    if ctx.options.debugger_rules:
        rules += debugger_rules()
        # each built-in rule adds the collections it reads (losses, gradients, weights,
        # relu_input...); adding our own with other settings would duplicate their names
        kwargs["debugger_hook_config"] = OrderedDebuggerHookConfig(
            s3_output_path=ctx.s3("debugger"))
    else:
        kwargs["debugger_hook_config"] = False
    if ctx.options.profiler:
        # a named rule: the SDK's default name carries a timestamp, which breaks step caching
        rules.append(ProfilerRule.sagemaker(rule_configs.ProfilerReport(),
                                            name=spec.PROFILER_RULE))
        kwargs["profiler_config"] = ProfilerConfig(
            system_monitor_interval_millis=spec.SYSTEM_MONITOR_INTERVAL_MS,
            s3_output_path=ctx.s3("profiler"))
        kwargs["disable_profiler"] = False
    estimator = pytorch_estimator(
        ctx, {**tuned, "epochs": ctx.p("Epochs")},
        "train-debugger" if ctx.options.debugger_rules else "train",
        instance_count=ctx.options.training_instance_count, checkpoints=True,
        rules=rules or None, **kwargs)
    step_args = estimator.fit(inputs=inputs, job_name="dogbreed-train")
    return TrainingStep(name=spec.STEP.TRAIN, step_args=step_args, cache_config=cache_config(ctx),
                        retry_policies=job_retry_policies())


def model_artifact(step: TrainingStep):
    return step.properties.ModelArtifacts.S3ModelArtifacts
