"""RegisterModel: a new version in the model package group, with the evaluation as metrics.

The model is a plain ``Model`` on the PyTorch inference image: model.tar.gz already carries
code/inference.py and its package, so no repack job is added and the definition stays
deterministic. Approval status comes from the ModelApprovalStatus parameter
(PendingManualApproval by default).

The request holds only what the SDK's ``register()`` emits: the Pipelines service parses step
arguments with its own model and has refused API members the SDK does not emit ("Unknown
Argument member", sagemaker-python-sdk PR 3472). So the version is registered with the CPU
inference image (its InferenceSpecification); the deploy adds the GPU image as an additional
inference specification named ``spec.GPU_INFERENCE_SPECIFICATION`` (UpdateModelPackage) the
first time the version goes to a GPU instance type. No ``Tags`` either (CreateModelPackage's
documentation: no tags with ModelPackageGroupName): the build's tags (``--tag``, CodeBuild's
``source-version=<commit>``) are recorded as CustomerMetadataProperties ``tag:<key>``.
"""

from __future__ import annotations

from sagemaker import image_uris
from sagemaker.drift_check_baselines import DriftCheckBaselines
from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.workflow.functions import Join
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from pipelines import spec

from .common import service_retry_policy
from .condition import accuracy, comparison
from .context import BuildContext
from .evaluate import baseline_uri, page_uri
from .evaluate import report_uri as evaluation_uri
from .rules import blocking_summary, report_uri, verdict
from .train import mlflow_run_name, model_artifact

SERVING_ENV = {"SAGEMAKER_PROGRAM": "inference.py",
               "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
               "TOP_K": "5"}


def inference_image(ctx: BuildContext, instance_type: str) -> str:
    return image_uris.retrieve("pytorch", region=ctx.session.boto_region_name,
                               version=spec.FRAMEWORK_VERSION, py_version=spec.PY_VERSION,
                               instance_type=instance_type, image_scope="inference")


def make_step(ctx: BuildContext, train: TrainingStep, evaluate: ProcessingStep,
              reports: dict, rules=None) -> ModelStep:
    """``rules``: the TrainingRules step and its PropertyFile, when the pipeline has them."""
    model = Model(image_uri=inference_image(ctx, spec.CPU_INFERENCE_INSTANCES[0]),
                  model_data=model_artifact(train), role=ctx.role_arn, env=dict(SERVING_ENV),
                  sagemaker_session=ctx.session)
    metrics = ModelMetrics(model_statistics=MetricsSource(
        s3_uri=evaluation_uri(evaluate), content_type="application/json"))
    step_args = model.register(
        content_types=list(spec.CONTENT_TYPES),
        response_types=list(spec.RESPONSE_TYPES),
        inference_instances=list(spec.CPU_INFERENCE_INSTANCES),
        transform_instances=[spec.CPU_INFERENCE_INSTANCES[1]],
        model_package_group_name=ctx.model_package_group,
        approval_status=ctx.p("ModelApprovalStatus"),
        model_metrics=metrics,
        # what the monitoring job judges the version's live traffic against
        drift_check_baselines=DriftCheckBaselines(model_data_statistics=MetricsSource(
            s3_uri=baseline_uri(evaluate), content_type="application/json")),
        description="A torchvision backbone fine-tuned by the DogBreedBuild pipeline",
        # for the approver (Studio, pipelines.registry describe) and the deploy pipeline
        customer_metadata_properties=metadata(ctx, evaluate, reports, rules),
    )
    return ModelStep(name=spec.STEP.REGISTER, step_args=step_args,
                     retry_policies=[service_retry_policy()])


def metadata(ctx: BuildContext, evaluate: ProcessingStep, reports: dict, rules) -> dict:
    """CustomerMetadataProperties (strings, each 1-256 characters: no value may resolve
    empty, or CreateModelPackage refuses the version): both accuracies; each training rule's verdict,
    the blocking rules that fired and the profiler report's S3 URI; the evaluation report's S3
    URI (report.html, for the approver); the comparison with the approved version; the MLflow
    run."""
    values = {key: Join(on="", values=[accuracy(evaluate, reports[report])])
              for key, report in spec.ACCURACY_METADATA.items()}
    if rules is not None:
        step, report = rules
        if ctx.options.training_rules:
            for index, name in enumerate(spec.TRAINING_RULES):
                values[spec.rule_metadata_key(name)] = verdict(step, report, index)
            values[spec.BLOCKING_FIRED_METADATA] = Join(on="", values=[
                blocking_summary(step, report)])
        if ctx.options.profiler:
            values[spec.PROFILER_REPORT_METADATA] = report_uri(step)
    if ctx.options.mlflow_arn:
        values[spec.MLFLOW_RUN_METADATA] = mlflow_run_name(ctx)
    values[spec.EVALUATION_REPORT_METADATA] = page_uri(evaluate)
    # the comparison with the version approved when the execution started ("none ..." if none)
    for key, parameter in spec.COMPARISON_METADATA.items():
        values[key] = ctx.p(parameter)
    values[spec.ACCURACY_DELTA_METADATA] = Join(on="", values=[
        comparison(evaluate, reports, spec.COMPARISON_SUMMARY_JSON_PATH)])
    for tag in ctx.tags:  # (a tag value may be empty; a metadata value may not)
        if tag["Value"]:
            values[spec.tag_metadata_key(tag["Key"])] = tag["Value"]
    return values
