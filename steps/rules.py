"""TrainingRules: scripts/training_rules.py judges TrainFinal from what it wrote (a ProcessingStep).

train.py writes its hook output and profiling data into the training job's output data, which
SageMaker uploads as ``<S3OutputPath>/<TrainingJobName>/output/output.tar.gz``; this step reads
that archive and writes rules.json (the PropertyFile CheckTrainingRules reads) and
profiler-report.html. It needs no SageMaker Debugger, so it works in every account; the same
script is a step of the local engine.

CheckTrainingRules: no finding of a rule named in the BlockingRules parameter (rules.json's
``blocking.count`` is 0), else TrainingRulesFired fails the execution naming the rules.
"""

from __future__ import annotations

from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep, TrainingStep

from breedkit.rulespec import (BLOCKING_COUNT_PATH, BLOCKING_NAMES_PATH, BLOCKING_SUMMARY_PATH,
                               REPORT_FILE, RULES_FILE)
from pipelines import spec

from .common import processing_step
from .context import BuildContext
from .preprocess import output_uri

OUTPUT_NAME = "rules"
JOB = spec.RULES_JOB


def training_output_archive(train: TrainingStep) -> Join:
    """Where SageMaker puts a training job's output data (documented layout)."""
    return Join(on="/", values=[train.properties.OutputDataConfig.S3OutputPath,
                                train.properties.TrainingJobName, "output", "output.tar.gz"])


def make_step(ctx: BuildContext, train: TrainingStep) -> tuple[ProcessingStep, PropertyFile]:
    report = PropertyFile(name=spec.RULES_REPORT, output_name=OUTPUT_NAME, path=RULES_FILE)
    step = processing_step(ctx, spec.STEP.RULES, JOB, "rules", "dogbreed-rules",
                           {"training": training_output_archive(train)}, [report])
    return step, report


def verdict(step: ProcessingStep, report: PropertyFile, index: int) -> JsonGet:
    return JsonGet(step_name=step.name, property_file=report,
                   json_path=f"rules[{index}].status")


def blocking_fired(step: ProcessingStep, report: PropertyFile) -> JsonGet:
    return JsonGet(step_name=step.name, property_file=report, json_path=BLOCKING_NAMES_PATH)


def blocking_summary(step: ProcessingStep, report: PropertyFile) -> JsonGet:
    """The blocking rules that fired, or "none": never empty."""
    return JsonGet(step_name=step.name, property_file=report, json_path=BLOCKING_SUMMARY_PATH)


def report_uri(step: ProcessingStep) -> Join:
    return Join(on="/", values=[output_uri(step, OUTPUT_NAME), REPORT_FILE])


def make_check_step(ctx: BuildContext, step: ProcessingStep, report: PropertyFile,
                    if_steps: list) -> ConditionStep:
    fired = FailStep(name=spec.STEP.RULES_FIRED, error_message=Join(on=" ", values=[
        "Training rule(s)", blocking_fired(step, report),
        "found issues in TrainFinal (they are in BlockingRules) - the model was not "
        "registered. See", Join(on="/", values=[output_uri(step, OUTPUT_NAME), RULES_FILE])]))
    count = JsonGet(step_name=step.name, property_file=report, json_path=BLOCKING_COUNT_PATH)
    return ConditionStep(name=spec.STEP.CHECK_RULES, conditions=[ConditionEquals(left=count,
                                                                                 right=0)],
                         if_steps=if_steps, else_steps=[fired])
