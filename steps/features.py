"""Features: scripts/features.py runs the backbone once over train and valid and caches the
pooled features (float16 arrays with their signature) for the linear-probe tuning trials.

Inputs:  Preprocess's train and valid outputs
Output:  features (s3://<bucket>/<prefix>/...), the HPTuning trials' ``features`` channel
With --tuning-mode fine-tune the script writes only a note that nothing was needed. Cached: the
same data, backbone, size and views reuse the last run's features.
"""

from __future__ import annotations

from sagemaker.workflow.steps import ProcessingStep

from pipelines import spec

from .common import processing_step
from .context import BuildContext
from .preprocess import output_uri

JOB = spec.FEATURES_JOB


def make_step(ctx: BuildContext, preprocess: ProcessingStep) -> ProcessingStep:
    return processing_step(ctx, spec.STEP.FEATURES, JOB, "features", "dogbreed-features",
                           {split: output_uri(preprocess, split) for split in ("train", "valid")})
