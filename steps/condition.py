"""CheckAccuracy: validation accuracy (validation.json, the valid split scored by Evaluate
with the weights TrainFinal kept) >= AccuracyThreshold.

True: the register step runs. False: AccuracyTooLow fails the execution with a message that
states the accuracy and the threshold. The test split never decides anything: its metrics are
registered with the version, for the approver.
"""

from __future__ import annotations

from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep

from pipelines import spec

from .context import BuildContext


def accuracy(evaluate: ProcessingStep, report: PropertyFile) -> JsonGet:
    """The accuracy in one of Evaluate's reports (Model Registry multiclass format)."""
    return JsonGet(step_name=evaluate.name, property_file=report,
                   json_path=spec.ACCURACY_JSON_PATH)


def make_fail_step(ctx: BuildContext, evaluate: ProcessingStep, reports: dict) -> FailStep:
    report = reports[spec.VALIDATION_REPORT]
    message = Join(on=" ", values=["Validation accuracy", accuracy(evaluate, report),
                                   "is below the AccuracyThreshold of",
                                   ctx.p("AccuracyThreshold"), "- the model was not registered."])
    return FailStep(name=spec.STEP.FAIL, error_message=message)


def make_step(ctx: BuildContext, evaluate: ProcessingStep, reports: dict,
              if_steps: list, else_steps: list) -> ConditionStep:
    condition = ConditionGreaterThanOrEqualTo(left=accuracy(evaluate,
                                                            reports[spec.VALIDATION_REPORT]),
                                              right=ctx.p("AccuracyThreshold"))
    return ConditionStep(name=spec.STEP.CHECK, conditions=[condition], if_steps=if_steps,
                         else_steps=else_steps)
