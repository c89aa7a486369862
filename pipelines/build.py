"""The build pipeline (and the batch pipeline, at the end): Preprocess -> Features -> HPTuning
(-> FineTuneTuning, with --tune-fine-tune) -> TrainFinal -> TrainingRules and
Evaluate -> CheckTrainingRules -> CheckAccuracy -> CheckImprovement -> RegisterModel (or
TrainingRulesFired, AccuracyTooLow, NotBetterThanApproved).
Each step is defined in its own module of ``steps/``."""

from __future__ import annotations

from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_definition_config import PipelineDefinitionConfig

from steps import batch, condition, evaluate, features, preprocess, register, rules, train, tune
from steps.context import BuildContext


def build_pipeline(ctx: BuildContext) -> Pipeline:
    step_preprocess = preprocess.make_step(ctx)
    step_features = features.make_step(ctx, step_preprocess)
    step_tune = tune.make_step(ctx, step_preprocess, step_features)
    step_fine_tune = (tune.make_fine_tune_step(ctx, step_preprocess, step_tune)
                      if ctx.options.tune_fine_tune else None)
    step_train = train.make_step(ctx, step_tune, tune.training_inputs(step_preprocess),
                                 step_fine_tune)
    step_evaluate, reports = evaluate.make_step(ctx, step_preprocess, step_train)
    options = ctx.options
    step_rules = (rules.make_step(ctx, step_train) if options.training_rules or options.profiler
                  else None)
    step_register = register.make_step(ctx, step_train, step_evaluate, reports, step_rules)
    step_fail = condition.make_fail_step(ctx, step_evaluate, reports)
    step_improvement = condition.make_improvement_steps(ctx, step_evaluate, reports,
                                                        if_steps=[step_register])
    step_check = condition.make_step(ctx, step_evaluate, reports, if_steps=[step_improvement],
                                     else_steps=[step_fail])
    jobs = [step_preprocess, step_features, step_tune,
            *([step_fine_tune] if step_fine_tune is not None else []), step_train, step_evaluate]
    if step_rules is not None:
        jobs.insert(jobs.index(step_train) + 1, step_rules[0])
    gate = step_check
    if options.training_rules:  # the rules' gate first, then the accuracy's
        gate = rules.make_check_step(ctx, *step_rules, if_steps=[step_check])
    return Pipeline(
        name=ctx.pipeline_name,
        parameters=list(ctx.params.values()),
        steps=[*jobs, gate],
        sagemaker_session=ctx.session,
        # the steps' fixed job names become the jobs' name prefixes (dogbreed-train-...), so
        # jobs are recognisable in the console; without this, Pipelines drops them
        pipeline_definition_config=PipelineDefinitionConfig(use_custom_job_prefix=True),
        # no SageMaker Experiments: by default Pipelines creates an experiment, a trial and
        # trial components per execution (sagemaker:CreateExperiment, CreateTrial,
        # CreateTrialComponent, AssociateTrialComponent), which the execution role is not
        # granted; runs are tracked in TensorBoard and, with --mlflow-arn, MLflow instead
        pipeline_experiment_config=None,
    )


def build_batch_pipeline(ctx: BuildContext) -> Pipeline:
    """DogBreedBatch: BatchModel -> BatchScore (steps/batch.py); ``ctx.params`` from
    ``batch.make_parameters``."""
    step_model = batch.make_model_step(ctx)
    step_score = batch.make_transform_step(ctx, step_model)
    return Pipeline(
        name=ctx.pipeline_name,
        parameters=list(ctx.params.values()),
        steps=[step_model, step_score],
        sagemaker_session=ctx.session,
        pipeline_definition_config=PipelineDefinitionConfig(use_custom_job_prefix=True),
        pipeline_experiment_config=None,
    )
