"""Preprocess: split and resize the data set (scripts/preprocess.py in a PyTorch container).

Input:   InputDataUrl (an S3 prefix of image folders, or a .zip) -> /opt/ml/processing/data
         (not .../input, where the FrameworkProcessor mounts its code and entrypoint)
Outputs: train, valid, test (image folders) and manifest, under s3://<bucket>/<prefix>/...
Cached: the same data and arguments reuse the last run's outputs.
"""

from __future__ import annotations

from sagemaker.workflow.steps import ProcessingStep

from pipelines import spec

from .common import processing_step
from .context import BuildContext

JOB = spec.PREPROCESS_JOB


def make_step(ctx: BuildContext) -> ProcessingStep:
    return processing_step(ctx, spec.STEP.PREPROCESS, JOB, "preprocess", "dogbreed-preprocess",
                           {"data": ctx.p("InputDataUrl")})


def output_uri(step: ProcessingStep, name: str):
    return step.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri
