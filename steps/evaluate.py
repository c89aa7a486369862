"""Evaluate: scripts/evaluate.py scores the trained model on the valid and the test split.

validation.json (Model Registry multiclass format) is the PropertyFile CheckAccuracy reads;
evaluation.json (the test split, same format) is what RegisterModel attaches as model metrics,
and baseline.json (the valid split's predictions and image statistics) its drift baseline.
Both are PropertyFiles: RegisterModel also records both accuracies on the version, and the
comparison with the approved version (``ApprovedModelDataUrl``: Evaluate scores the same test
images with it), which CheckImprovement reads when ``RequireImprovement`` is true.
"""

from __future__ import annotations

from sagemaker.workflow.functions import Join
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from pipelines import spec

from .common import processing_step
from .context import BuildContext
from .preprocess import output_uri
from .train import model_artifact

OUTPUT_NAME = "evaluation"
JOB = spec.EVALUATE_JOB


def make_step(ctx: BuildContext, preprocess: ProcessingStep, train: TrainingStep
              ) -> tuple[ProcessingStep, dict[str, PropertyFile]]:
    """The step and its property files by name (ValidationReport, EvaluationReport)."""
    reports = {name: PropertyFile(name=name, output_name=OUTPUT_NAME, path=path)
               for name, path in ((spec.VALIDATION_REPORT, spec.VALIDATION_FILE),
                                  (spec.EVALUATION_REPORT, spec.EVALUATION_FILE))}
    inputs = {"model": model_artifact(train), "valid": output_uri(preprocess, "valid"),
              "test": output_uri(preprocess, "test"),
              # the approved version's model.tar.gz (or the placeholder: no comparison)
              "approved": ctx.p("ApprovedModelDataUrl")}
    step = processing_step(ctx, spec.STEP.EVALUATE, JOB, "evaluate", "dogbreed-evaluate",
                           inputs, list(reports.values()))
    return step, reports


def report_uri(step: ProcessingStep):
    """S3 URI of evaluation.json (the test split's metrics)."""
    return Join(on="/", values=[output_uri(step, OUTPUT_NAME), spec.EVALUATION_FILE])


def page_uri(step: ProcessingStep):
    """S3 URI of report.html, the page the approver looks at (breedkit.report)."""
    return Join(on="/", values=[output_uri(step, OUTPUT_NAME), spec.EVALUATION_REPORT_FILE])


def baseline_uri(step: ProcessingStep):
    """S3 URI of baseline.json (the valid split's predictions and image statistics: what the
    monitoring job compares an endpoint's traffic with)."""
    return Join(on="/", values=[output_uri(step, OUTPUT_NAME), spec.DRIFT_BASELINE_FILE])
