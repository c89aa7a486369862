"""Estimator and processor factories shared by several steps (tuning and final training use
the same estimator, Preprocess and Evaluate the same processor)."""

from __future__ import annotations

from sagemaker.processing import FrameworkProcessor
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.retry import (SageMakerJobExceptionTypeEnum, SageMakerJobStepRetryPolicy,
                                      StepExceptionTypeEnum, StepRetryPolicy)
from sagemaker.workflow.steps import CacheConfig

from pipelines import spec

from .context import BuildContext


def cache_config(ctx: BuildContext) -> CacheConfig:
    return CacheConfig(enable_caching=True, expire_after=ctx.options.cache_expire)


def service_retry_policy() -> StepRetryPolicy:
    r = spec.RETRY_SERVICE
    return StepRetryPolicy(exception_types=[StepExceptionTypeEnum[e] for e in r["exceptions"]],
                           interval_seconds=r["interval_seconds"], backoff_rate=r["backoff_rate"],
                           max_attempts=r["max_attempts"])


def job_retry_policies() -> list:
    """For a job step: capacity/limit errors of the job, throttling/faults of the call."""
    r = spec.RETRY_CAPACITY
    capacity = SageMakerJobStepRetryPolicy(
        exception_types=[SageMakerJobExceptionTypeEnum[e] for e in r["exceptions"]],
        interval_seconds=r["interval_seconds"], backoff_rate=r["backoff_rate"],
        max_attempts=r["max_attempts"])
    return [capacity, service_retry_policy()]


def pytorch_processor(ctx: BuildContext, base_job_name: str, source: str) -> FrameworkProcessor:
    return FrameworkProcessor(
        estimator_cls=PyTorch,
        framework_version=spec.FRAMEWORK_VERSION,
        py_version=spec.PY_VERSION,
        role=ctx.role_arn,
        instance_type=ctx.p("ProcessingInstanceType"),
        instance_count=1,
        base_job_name=base_job_name,
        code_location=ctx.code_location(source),
        sagemaker_session=ctx.session,
        tags=ctx.tags or None,
    )


def pytorch_estimator(ctx: BuildContext, hyperparameters: dict, job: str, *,
                      instance_count: int = 1, checkpoints: bool = False,
                      instance_type=None, **kwargs) -> PyTorch:
    """The training job shared by the tuning trials and TrainFinal.

    With spot training, checkpoints go to S3 so an interrupted job resumes (train.py reads
    /opt/ml/checkpoints), under a prefix of the execution's own: concurrent executions never
    share (or resume) each other's checkpoints. SageMaker keys TrainFinal's step cache on its
    CheckpointConfig, so a spot TrainFinal is not taken from the cache. Without spot there are
    no checkpoints: a retried job starts afresh. The tuning trials are short and restart.
    """
    spot = ctx.options.spot
    kwargs.setdefault("disable_profiler", True)
    static = {name: ctx.p(param) for name, param in spec.STATIC_HYPERPARAMETERS.items()}
    source = ctx.source(job)
    return PyTorch(
        entry_point="train.py",
        source_dir=source,
        framework_version=spec.FRAMEWORK_VERSION,
        py_version=spec.PY_VERSION,
        role=ctx.role_arn,
        instance_type=instance_type or ctx.p("TrainingInstanceType"),
        instance_count=instance_count,
        hyperparameters={**static, **hyperparameters},
        metric_definitions=list(spec.METRIC_DEFINITIONS),
        use_spot_instances=spot,
        max_run=ctx.p("MaxRuntimeSeconds"),
        max_wait=ctx.p("MaxRuntimeSeconds") if spot else None,
        checkpoint_s3_uri=Join(on="/", values=[ctx.s3("checkpoints"),
                                               ExecutionVariables.PIPELINE_EXECUTION_ID])
        if checkpoints and spot else None,
        output_path=ctx.s3("training"),
        code_location=ctx.code_location(source),
        sagemaker_session=ctx.session,
        tags=ctx.tags or None,
        **kwargs,
    )
