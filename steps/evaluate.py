"""Evaluate: scripts/evaluate.py scores the trained model on the valid and the test split.

validation.json (Model Registry multiclass format) is the PropertyFile CheckAccuracy reads;
evaluation.json (the test split, same format) is what RegisterModel attaches as model metrics.
Both are PropertyFiles: RegisterModel also records both accuracies on the version.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.functions import Join
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_processor
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
    source = ctx.source("evaluate")
    processor = pytorch_processor(ctx, "dogbreed-evaluate", source)
    step_args = processor.run(
        code=JOB["script"],
        source_dir=source,
        inputs=[
            ProcessingInput(source=model_artifact(train), destination=JOB["inputs"]["model"],
                            input_name="model"),
            *[ProcessingInput(source=output_uri(preprocess, split),
                              destination=JOB["inputs"][split], input_name=split)
              for split in ("valid", "test")],
        ],
        outputs=[ProcessingOutput(output_name=OUTPUT_NAME,
                                  source=JOB["outputs"][OUTPUT_NAME])],
        arguments=ctx.arguments(JOB["arguments"]),
        job_name="dogbreed-evaluate",
    )
    step = ProcessingStep(name=spec.STEP.EVALUATE, step_args=step_args,
                          property_files=list(reports.values()), cache_config=cache_config(ctx),
                          retry_policies=job_retry_policies())
    return step, reports


def report_uri(step: ProcessingStep):
    """S3 URI of evaluation.json (the test split's metrics)."""
    return Join(on="/", values=[output_uri(step, OUTPUT_NAME), spec.EVALUATION_FILE])
