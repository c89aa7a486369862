"""Features: scripts/features.py runs the backbone once over train and valid and caches the
pooled features (float16 arrays with their signature) for the linear-probe tuning trials.

Inputs:  Preprocess's train and valid outputs
Output:  features (s3://<bucket>/<prefix>/...), the HPTuning trials' ``features`` channel
With TuningMode=fine-tune the script writes only a note that nothing was needed. Cached: the
same data, backbone, size and views reuse the last run's features.
"""

from __future__ import annotations

from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.steps import ProcessingStep

from pipelines import spec

from .common import cache_config, job_retry_policies, pytorch_processor
from .context import BuildContext
from .preprocess import output_uri

JOB = spec.FEATURES_JOB


def make_step(ctx: BuildContext, preprocess: ProcessingStep) -> ProcessingStep:
    source = ctx.source("features")
    processor = pytorch_processor(ctx, "dogbreed-features", source)
    step_args = processor.run(
        code=JOB["script"],
        source_dir=source,
        inputs=[ProcessingInput(source=output_uri(preprocess, split),
                                destination=JOB["inputs"][split], input_name=split)
                for split in ("train", "valid")],
        outputs=[ProcessingOutput(output_name=name, source=path)
                 for name, path in JOB["outputs"].items()],
        arguments=ctx.arguments(JOB["arguments"]),
        job_name="dogbreed-features",
    )
    return ProcessingStep(name=spec.STEP.FEATURES, step_args=step_args,
                          cache_config=cache_config(ctx), retry_policies=job_retry_policies())
