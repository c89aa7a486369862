"""Estimator and processor factories shared by several steps (tuning and final training use
the same estimator, Preprocess and Evaluate the same processor)."""

from __future__ import annotations

from sagemaker.processing import FrameworkProcessor
from sagemaker.pytorch import PyTorch
from sagemaker.workflow.steps import CacheConfig

from pipelines import spec

from .context import SCRIPTS_DIR, BuildContext


def cache_config(ctx: BuildContext) -> CacheConfig:
    return CacheConfig(enable_caching=True, expire_after=ctx.options.cache_expire)


def pytorch_processor(ctx: BuildContext, base_job_name: str) -> FrameworkProcessor:
    return FrameworkProcessor(
        estimator_cls=PyTorch,
        framework_version=spec.FRAMEWORK_VERSION,
        py_version=spec.PY_VERSION,
        role=ctx.role_arn,
        instance_type=ctx.p("ProcessingInstanceType"),
        instance_count=1,
        base_job_name=base_job_name,
        code_location=ctx.code_location,
        sagemaker_session=ctx.session,
    )


def pytorch_estimator(ctx: BuildContext, hyperparameters: dict, *, instance_count: int = 1,
                      checkpoints: bool = False, **kwargs) -> PyTorch:
    """The training job shared by the tuning trials and TrainFinal.

    With spot training, checkpoints go to S3 so an interrupted job resumes (train.py reads
    /opt/ml/checkpoints); the tuning trials are short and restart instead.
    """
    spot = ctx.options.spot
    kwargs.setdefault("disable_profiler", True)
    static = {name: ctx.p(param) for name, param in spec.STATIC_HYPERPARAMETERS.items()}
    return PyTorch(
        entry_point="train.py",
        source_dir=SCRIPTS_DIR,
        framework_version=spec.FRAMEWORK_VERSION,
        py_version=spec.PY_VERSION,
        role=ctx.role_arn,
        instance_type=ctx.p("TrainingInstanceType"),
        instance_count=instance_count,
        hyperparameters={**static, **hyperparameters},
        metric_definitions=list(spec.METRIC_DEFINITIONS),
        use_spot_instances=spot,
        max_run=ctx.p("MaxRuntimeSeconds"),
        max_wait=ctx.p("MaxRuntimeSeconds") if spot else None,
        checkpoint_s3_uri=ctx.s3("checkpoints") if checkpoints else None,
        output_path=ctx.s3("training"),
        code_location=ctx.code_location,
        sagemaker_session=ctx.session,
        **kwargs,
    )
