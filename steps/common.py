"""Estimator and processor factories shared by several steps (tuning and final training use
the same estimator, Preprocess and Evaluate the same processor)."""

from __future__ import annotations

from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.retry import (SageMakerJobExceptionTypeEnum, SageMakerJobStepRetryPolicy,
                                      StepExceptionTypeEnum, StepRetryPolicy)
from sagemaker.workflow.steps import CacheConfig, ProcessingStep

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
    """For a job step: capacity errors of the job (waiting helps), account limits (one retry:
    a quota of 0 does not go away), throttling/faults of the call."""
    def job_policy(r: dict) -> SageMakerJobStepRetryPolicy:
        return SageMakerJobStepRetryPolicy(
            exception_types=[SageMakerJobExceptionTypeEnum[e] for e in r["exceptions"]],
            interval_seconds=r["interval_seconds"], backoff_rate=r["backoff_rate"],
            max_attempts=r["max_attempts"])
    return [job_policy(spec.RETRY_CAPACITY), job_policy(spec.RETRY_LIMIT),
            service_retry_policy()]


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


def processing_step(ctx: BuildContext, name: str, job: dict, requirements: str, job_name: str,
                    sources: dict, property_files: list | None = None) -> ProcessingStep:
    """A cached, retried ProcessingStep that runs ``job`` (a container contract of
    pipelines/spec.py) with the scripts and ``requirements``' packages: ``sources`` gives each
    of the job's inputs its S3 source, in order; every output of the job is uploaded."""
    source = ctx.source(requirements)
    step_args = pytorch_processor(ctx, job_name, source).run(
        code=job["script"],
        source_dir=source,
        inputs=[ProcessingInput(source=uri, destination=job["inputs"][input_name],
                                input_name=input_name) for input_name, uri in sources.items()],
        outputs=[ProcessingOutput(output_name=output_name, source=path)
                 for output_name, path in job["outputs"].items()],
        arguments=ctx.arguments(job["arguments"]),
        job_name=job_name,
    )
    return ProcessingStep(name=name, step_args=step_args, property_files=property_files,
                          cache_config=cache_config(ctx), retry_policies=job_retry_policies())


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
