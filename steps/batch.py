"""The DogBreedBatch pipeline's steps: BatchModel (a SageMaker Model of a registered version)
and BatchScore (a Batch Transform job of it over an S3 prefix of images).

The version is given by parameters (``ModelPackageArn``, its ``InferenceImage`` and
``ModelDataUrl``), which ``python -m pipelines.run --upsert --batch`` sets by default to the
newest Approved version and ``--start --batch`` passes for each run: Pipelines has no
expression for "the newest Approved version", and the SDK's ``ModelPackage`` takes no
parameter (it describes the package while the definition is built). The Model is the one the
version registered (same image, model.tar.gz and serving environment), so the records are
scored by the served model's own handlers and transforms. The transform's settings are
``spec.TRANSFORM``, shared with ``python -m pipelines.batch --sagemaker``.
"""

from __future__ import annotations

from sagemaker.model import Model
from sagemaker.transformer import Transformer
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.functions import Join
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import ParameterInteger, ParameterString
from sagemaker.workflow.steps import TransformStep

from pipelines import spec

from .common import job_retry_policies, service_retry_policy
from .context import BuildContext
from .register import SERVING_ENV

_TYPES = {"String": ParameterString, "Integer": ParameterInteger}


def default_input_url(ctx: BuildContext) -> str:
    return ctx.s3("batch", "input") + "/"


def make_parameters(input_url: str, version: dict) -> dict:
    """The batch pipeline's parameters; ``version``: the defaults of ModelPackageArn,
    InferenceImage and ModelDataUrl (the version to score with)."""
    defaults = {**{p.name: p.default for p in spec.BATCH_PARAMETERS},
                "BatchInputUrl": input_url, **version}
    return {p.name: _TYPES[p.type](name=p.name, default_value=defaults[p.name])
            for p in spec.BATCH_PARAMETERS}


def make_model_step(ctx: BuildContext) -> ModelStep:
    model = Model(image_uri=ctx.p("InferenceImage"), model_data=ctx.p("ModelDataUrl"),
                  name=spec.BATCH_JOB_PREFIX,  # (the models' name prefix, as the jobs')
                  role=ctx.role_arn, env=dict(SERVING_ENV), sagemaker_session=ctx.session)
    return ModelStep(name=spec.BATCH_MODEL_STEP,
                     step_args=model.create(instance_type=ctx.p("TransformInstanceType")),
                     retry_policies=[service_retry_policy()])


def output_url(ctx: BuildContext):
    """One folder per execution: a rerun never mixes its records with an earlier run's."""
    return Join(on="/", values=[ctx.s3("batch", "output"),
                                ExecutionVariables.PIPELINE_EXECUTION_ID])


def make_transform_step(ctx: BuildContext, model_step: ModelStep) -> TransformStep:
    t = spec.TRANSFORM
    transformer = Transformer(
        model_name=model_step.properties.ModelName,
        instance_type=ctx.p("TransformInstanceType"),
        instance_count=ctx.p("TransformInstanceCount"),
        output_path=output_url(ctx),
        accept=t["accept"], strategy=t["strategy"], assemble_with=t["assemble_with"],
        max_payload=t["max_payload_mb"], max_concurrent_transforms=t["max_concurrent"],
        env={**t["environment"], "MODEL_PACKAGE_ARN": ctx.p("ModelPackageArn")},
        base_transform_job_name=spec.BATCH_JOB_PREFIX,
        tags=ctx.tags or None,
        sagemaker_session=ctx.session)
    step_args = transformer.transform(data=ctx.p("BatchInputUrl"), data_type="S3Prefix",
                                      content_type=t["content_type"],
                                      split_type=t["split_type"])
    return TransformStep(name=spec.BATCH_SCORE_STEP, step_args=step_args,
                         retry_policies=job_retry_policies())
