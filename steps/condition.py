"""CheckAccuracy: validation accuracy (validation.json, the valid split scored by Evaluate
with the weights TrainFinal kept) >= AccuracyThreshold.

True: CheckImprovement. False: AccuracyTooLow fails the execution with a message that
states the accuracy and the threshold. The test split decides nothing by default: its metrics
are registered with the version, for the approver.

CheckImprovement: RequireImprovement is "false", or Evaluate found the new model more accurate
on the test split than the approved version (the same images; or no version is approved). True:
the register step runs. False: NotBetterThanApproved fails the execution with the comparison.
"""

from __future__ import annotations

from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import (ConditionEquals, ConditionGreaterThanOrEqualTo,
                                           ConditionOr)
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


def comparison(evaluate: ProcessingStep, reports: dict, json_path: str) -> JsonGet:
    return JsonGet(step_name=evaluate.name, property_file=reports[spec.EVALUATION_REPORT],
                   json_path=json_path)


def make_improvement_steps(ctx: BuildContext, evaluate: ProcessingStep, reports: dict,
                           if_steps: list) -> ConditionStep:
    """CheckImprovement, and its NotBetterThanApproved Fail step."""
    fail = FailStep(name=spec.STEP.NOT_BETTER, error_message=Join(on=" ", values=[
        "RequireImprovement is true and the model is not more accurate on the test split than "
        "the approved version:", comparison(evaluate, reports, spec.COMPARISON_SUMMARY_JSON_PATH),
        "- the model was not registered."]))
    condition = ConditionOr(conditions=[
        ConditionEquals(left=ctx.p("RequireImprovement"), right="false"),
        ConditionEquals(left=comparison(evaluate, reports, spec.IMPROVEMENT_JSON_PATH),
                        right=True)])
    return ConditionStep(name=spec.STEP.CHECK_IMPROVEMENT, conditions=[condition],
                         if_steps=if_steps, else_steps=[fail])
