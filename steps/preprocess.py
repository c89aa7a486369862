"""Preprocess: split and resize the data set (scripts/preprocess.py in a PyTorch container).

Input:   InputDataUrl (an S3 prefix of image folders, or a .zip) -> /opt/ml/processing/input
Outputs: train, valid, test (image folders) and manifest, under s3://<bucket>/<prefix>/...
Cached: the same data and arguments reuse the last run's outputs.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.steps import ProcessingStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_processor
from .context import BuildContext

JOB = spec.PREPROCESS_JOB


def make_step(ctx: BuildContext) -> ProcessingStep:
    source = ctx.source("preprocess")
    processor = pytorch_processor(ctx, "dogbreed-preprocess", source)
    step_args = processor.run(
        code=JOB["script"],
        source_dir=source,
        inputs=[ProcessingInput(source=ctx.p("InputDataUrl"), destination=JOB["inputs"]["data"],
                                input_name="data")],
        outputs=[ProcessingOutput(output_name=name, source=path)
                 for name, path in JOB["outputs"].items()],
        arguments=ctx.arguments(JOB["arguments"]),
        job_name="dogbreed-preprocess",
    )
    return ProcessingStep(name=spec.STEP.PREPROCESS, step_args=step_args,
                          cache_config=cache_config(ctx), retry_policies=job_retry_policies())


def output_uri(step: ProcessingStep, name: str):
    return step.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri
