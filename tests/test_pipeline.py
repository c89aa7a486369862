"""The SageMaker build pipeline and `python -m pipelines.run`, against moto (offline).

Moto accepts any definition, so the assertions on the definition JSON are ours.
"""

from __future__ import annotations

import json

import boto3
import pytest

from pipelines import run, spec

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
BUCKET = "dogbreed-test-bucket"
REGION = "us-east-1"


@pytest.fixture
def aws(fake_aws):
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    return boto3.client("sagemaker", region_name=REGION)


def cli(*args):
    return run.main(["--role-arn", ROLE, "--bucket", BUCKET, *args])


def definition(tmp_path, *args, name="definition.json") -> dict:
    out = tmp_path / name
    assert cli("--definition-out", str(out), *args) == 0
    return json.loads(out.read_text())


def steps_by_name(d: dict) -> dict:
    """Every step, condition branches (nested) included."""
    found = {}

    def visit(steps):
        for step in steps:
            found[step["Name"]] = step
            for branch in ("IfSteps", "ElseSteps"):
                visit(step.get("Arguments", {}).get(branch, []))

    visit(d["Steps"])
    return found


def entrypoint_script(processing_args: dict) -> str:
    """The runproc.sh a FrameworkProcessor step runs (uploaded to S3 at build time)."""
    (entry,) = [i for i in processing_args["ProcessingInputs"] if i["InputName"] == "entrypoint"]
    bucket, _, key = entry["S3Input"]["S3Uri"][len("s3://"):].partition("/")
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def test_upsert_creates_then_updates(aws, capsys):
    assert cli("--upsert") == 0
    out = capsys.readouterr().out
    assert "created pipeline DogBreedBuild" in out
    assert "created model package group DogBreedModels" in out
    first = aws.describe_pipeline(PipelineName="DogBreedBuild")
    assert first["RoleArn"] == ROLE
    assert cli("--upsert", "--tag", "source-version=abc123") == 0
    assert "updated pipeline DogBreedBuild" in capsys.readouterr().out
    second = aws.describe_pipeline(PipelineName="DogBreedBuild")
    assert aws.list_tags(ResourceArn=second["PipelineArn"])["Tags"] == [
        {"Key": "source-version", "Value": "abc123"}]
    # ... and every job carries the source version too; the registered version records it
    # as metadata (CreateModelPackage takes no tags with a group name, and the SDK emits none)
    tagged = steps_by_name(json.loads(second["PipelineDefinition"]))
    for name in ("Preprocess", "TrainFinal", "Evaluate"):
        assert {"Key": "source-version", "Value": "abc123"} in tagged[name]["Arguments"]["Tags"]
    assert {"Key": "source-version", "Value": "abc123"} in tagged["HPTuning"]["Arguments"]["Tags"]
    register = tagged["RegisterModel-RegisterModel"]["Arguments"]
    assert "Tags" not in register
    assert register["CustomerMetadataProperties"]["tag:source-version"] == "abc123"
    # tags are no part of SageMaker's step cache keys: everything else is unchanged
    untagged = steps_by_name(json.loads(first["PipelineDefinition"]))
    for name, step in tagged.items():
        if step["Type"] == "Condition":
            continue  # it holds the register step, compared on its own
        def untag(arguments):
            arguments = {k: v for k, v in arguments.items() if k != "Tags"}
            if "CustomerMetadataProperties" in arguments:
                arguments["CustomerMetadataProperties"] = {
                    k: v for k, v in arguments["CustomerMetadataProperties"].items()
                    if not k.startswith("tag:")}
            return arguments
        assert untag(step.get("Arguments", {})) == untag(untagged[name].get("Arguments", {})), \
            name
    assert aws.describe_model_package_group(ModelPackageGroupName="DogBreedModels")
    # the scripts are uploaded at content-addressed keys, nothing else is written
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]]
    # and the placeholder ApprovedModelDataUrl points to when no version is approved
    assert "dogbreed/no-approved-version/README.txt" in keys
    keys.remove("dogbreed/no-approved-version/README.txt")
    assert keys and all(k.startswith(("dogbreed/code/", "DogBreedBuild/code/")) for k in keys)


def test_no_sagemaker_experiments_are_created(aws, tmp_path):
    """The default PipelineExperimentConfig makes Pipelines create experiments, trials and
    trial components, which the execution role has no permission for."""
    # (null is how the SDK writes "none"; its default names the pipeline and the execution)
    assert definition(tmp_path)["PipelineExperimentConfig"] is None


def test_definition_in_detail(aws, tmp_path):
    d = definition(tmp_path)
    params = {p["Name"]: p for p in d["Parameters"]}
    assert list(params) == [p.name for p in spec.PARAMETERS]
    assert params["InputDataUrl"]["DefaultValue"] == f"s3://{BUCKET}/dogbreed/data/"
    assert params["ModelApprovalStatus"]["DefaultValue"] == "PendingManualApproval"
    assert params["AccuracyThreshold"]["Type"] == "Float"
    assert params["Epochs"]["Type"] == "Integer"

    steps = steps_by_name(d)
    assert [s["Name"] for s in d["Steps"]] == ["Preprocess", "Features", "HPTuning",
                                               "TrainFinal", "TrainingRules", "Evaluate",
                                               "CheckTrainingRules"]
    types = {name: s["Type"] for name, s in steps.items()}
    assert types == {"Preprocess": "Processing", "Features": "Processing", "HPTuning": "Tuning",
                     "TrainFinal": "Training",
                     "TrainingRules": "Processing", "Evaluate": "Processing",
                     "CheckTrainingRules": "Condition", "TrainingRulesFired": "Fail",
                     "CheckAccuracy": "Condition", "CheckImprovement": "Condition",
                     "RegisterModel-RegisterModel": "RegisterModel",
                     "AccuracyTooLow": "Fail", "NotBetterThanApproved": "Fail"}

    pre = steps["Preprocess"]
    assert pre["CacheConfig"]["Enabled"] is True
    pre_args = pre["Arguments"]
    assert pre_args["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {"Get": "Parameters.InputDataUrl"}
    outputs = {o["OutputName"] for o in pre_args["ProcessingOutputConfig"]["Outputs"]}
    assert {"train", "valid", "test", "manifest"} <= outputs
    assert pre_args["ProcessingResources"]["ClusterConfig"]["InstanceType"] == {
        "Get": "Parameters.ProcessingInstanceType"}
    assert "preprocess.py" in entrypoint_script(pre_args)

    # Features: the backbone once over train and valid, by the same parameters as training
    features = steps["Features"]["Arguments"]
    assert "features.py" in entrypoint_script(features)
    assert {i["InputName"]: json.dumps(i["S3Input"]["S3Uri"]) for i in features[
        "ProcessingInputs"] if i["InputName"] != "entrypoint" and i["InputName"] != "code"} == {
        "train": '{"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs[\'train\'].S3Output.S3Uri"}',
        "valid": '{"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs[\'valid\'].S3Output.S3Uri"}'}
    container_args = json.dumps(features["AppSpecification"]["ContainerArguments"])
    for name in ("BaseModel", "Pretrained", "ImageSize", "FeatureViews"):
        assert f"Parameters.{name}" in container_args
    assert "--tuning-mode" in container_args and '"linear-probe"' in container_args

    tuning = steps["HPTuning"]["Arguments"]
    config = tuning["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize",
                                                          "MetricName": "valid:best_accuracy"}
    assert config["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": {"Get": "Parameters.MaxTuningJobs"},
        "MaxParallelTrainingJobs": {"Get": "Parameters.MaxParallelTuningJobs"}}
    ranges = config["ParameterRanges"]
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    assert continuous["lr"]["ScalingType"] == "Logarithmic"
    assert float(continuous["lr"]["MinValue"]) == spec.HYPERPARAMETER_RANGES["lr"]["min"]
    assert float(continuous["weight-decay"]["MaxValue"]) == spec.HYPERPARAMETER_RANGES[
        "weight-decay"]["max"]
    (batch,) = ranges["CategoricalParameterRanges"]
    assert batch["Name"] == "batch-size" and [json.loads(v) for v in batch["Values"]] == [
        "16", "32", "64"]
    (epochs,) = ranges["IntegerParameterRanges"]
    assert "Parameters.TuningEpochs" in json.dumps(epochs["MaxValue"])
    job = tuning["TrainingJobDefinition"]
    assert job["AlgorithmSpecification"]["MetricDefinitions"] == spec.METRIC_DEFINITIONS
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert set(channels) == {"train", "valid", "features"}  # never the test split
    assert "Steps.Features.ProcessingOutputConfig.Outputs['features']" in json.dumps(
        channels["features"])
    # the build option decides what the trials train, and their image (CPU for a probe)
    assert json.loads(job["StaticHyperParameters"]["mode"]) == "linear-probe"
    assert "pytorch-training:2.6.0-cpu-" in job["AlgorithmSpecification"]["TrainingImage"]
    assert "TuningMode" not in {p["Name"] for p in d["Parameters"]}
    # trials on their own (CPU by default) instance type
    assert job["HyperParameterTuningResourceConfig"]["InstanceType"] == {
        "Get": "Parameters.TuningInstanceType"}
    assert "Steps.Preprocess.ProcessingOutputConfig.Outputs['train']" in json.dumps(
        channels["train"])
    assert job["StaticHyperParameters"]["arch"] == {"Get": "Parameters.BaseModel"}
    assert "train.py" in job["StaticHyperParameters"]["sagemaker_program"]

    train = steps["TrainFinal"]["Arguments"]
    # after linear-probe trials the fine-tune has settings of its own; the probe's rate stays
    # the rate of a new head (when no probed head is found)
    hp = train["HyperParameters"]
    assert "Steps.HPTuning.BestTrainingJob.TunedHyperParameters['lr']" in json.dumps(hp["lr"])
    for name, parameter in (("backbone-lr", "FineTuneLearningRate"),
                            ("batch-size", "FineTuneBatchSize"),
                            ("weight-decay", "FineTuneWeightDecay"),
                            ("label-smoothing", "FineTuneLabelSmoothing")):
        assert hp[name] == {"Std:Join": {"On": "", "Values": [
            {"Get": f"Parameters.{parameter}"}]}}, name
    assert "Parameters.Epochs" in json.dumps(train["HyperParameters"]["epochs"])
    assert train["HyperParameters"]["fine-tune"] == {"Get": "Parameters.FineTuneLayers"}
    assert train["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    # LP-FT: the best trial's model.tar.gz (its probed head) is TrainFinal's head channel
    train_channels = {c["ChannelName"]: c for c in train["InputDataConfig"]}
    assert set(train_channels) == {"train", "valid", "head"}
    assert train_channels["head"]["DataSource"]["S3DataSource"]["S3Uri"] == {"Std:Join": {
        "On": "/", "Values": [f"s3://{BUCKET}/dogbreed/training",
                              {"Get": "Steps.HPTuning.BestTrainingJob.TrainingJobName"},
                              "output", "model.tar.gz"]}}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/dogbreed/training"
    assert "CheckpointConfig" not in train  # only spot jobs resume; a retry starts afresh
    # no SageMaker Debugger by default (closed to new accounts): our hook writes into the
    # job's output data, TensorBoard events go to S3
    assert "DebugRuleConfigurations" not in train and "ProfilerRuleConfigurations" not in train
    assert "DebugHookConfig" not in train
    assert train["ProfilerConfig"] == {"DisableProfiler": True}
    assert train["HyperParameters"]["debugger-out"] == '"/opt/ml/output/data/debugger"'
    assert train["HyperParameters"]["profile-out"] == '"/opt/ml/output/data/profiler"'
    assert train["HyperParameters"]["tensorboard-dir"] == '"/opt/ml/output/tensorboard"'
    assert train["TensorBoardOutputConfig"] == {
        "LocalPath": "/opt/ml/output/tensorboard",
        "S3OutputPath": f"s3://{BUCKET}/dogbreed/tensorboard"}
    assert "MlflowConfig" not in train
    assert "EnableManagedSpotTraining" not in train or not train["EnableManagedSpotTraining"]

    # job names kept as prefixes (PipelineDefinitionConfig(use_custom_job_prefix=True))
    names = {"Preprocess": ("ProcessingJobName", "dogbreed-preprocess"),
             "Features": ("ProcessingJobName", "dogbreed-features"),
             "HPTuning": ("HyperParameterTuningJobName", "dogbreed-hpo"),
             "TrainFinal": ("TrainingJobName", "dogbreed-train"),
             "TrainingRules": ("ProcessingJobName", "dogbreed-rules"),
             "Evaluate": ("ProcessingJobName", "dogbreed-evaluate")}
    for step, (member, name) in names.items():
        assert steps[step]["Arguments"][member] == name, step
    # capacity and throttling errors are retried; nothing else is
    for step in names:
        policies = {tuple(p["ExceptionType"]): p for p in steps[step]["RetryPolicies"]}
        assert set(policies) == {("SageMaker.CAPACITY_ERROR",), ("SageMaker.RESOURCE_LIMIT",),
                                 ("Step.THROTTLING", "Step.SERVICE_FAULT")}, step
        capacity = policies[("SageMaker.CAPACITY_ERROR",)]
        assert capacity["IntervalSeconds"] >= 60 and capacity["MaxAttempts"] >= 3
        # a quota of 0 (a new account's GPU training) is not waited out for 15 minutes
        assert policies[("SageMaker.RESOURCE_LIMIT",)]["MaxAttempts"] == 1
    register_policies = steps["RegisterModel-RegisterModel"]["RetryPolicies"]
    assert [p["ExceptionType"] for p in register_policies] == [["Step.THROTTLING",
                                                                "Step.SERVICE_FAULT"]]

    evaluate = steps["Evaluate"]
    assert evaluate["PropertyFiles"] == [
        {"PropertyFileName": "ValidationReport", "OutputName": "evaluation",
         "FilePath": "validation.json"},
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
         "FilePath": "evaluation.json"}]
    assert "evaluate.py" in entrypoint_script(evaluate["Arguments"])
    inputs = {i["InputName"]: json.dumps(i) for i in evaluate["Arguments"]["ProcessingInputs"]}
    assert "Steps.TrainFinal.ModelArtifacts.S3ModelArtifacts" in inputs["model"]
    assert "Outputs['test']" in inputs["test"] and "Outputs['valid']" in inputs["valid"]
    arguments = evaluate["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--valid-dir") + 1] == "/opt/ml/processing/valid"

    # TrainingRules reads TrainFinal's output.tar.gz (SageMaker's documented layout) and the
    # blocking rules (a parameter); its rules.json is the first gate
    rules = steps["TrainingRules"]
    assert "training_rules.py" in entrypoint_script(rules["Arguments"])
    (training,) = [i for i in rules["Arguments"]["ProcessingInputs"]
                   if i["InputName"] == "training"]
    assert training["S3Input"]["S3Uri"] == {"Std:Join": {"On": "/", "Values": [
        {"Get": "Steps.TrainFinal.OutputDataConfig.S3OutputPath"},
        {"Get": "Steps.TrainFinal.TrainingJobName"}, "output", "output.tar.gz"]}}
    arguments = rules["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--blocking-rules") + 1] == {
        "Get": "Parameters.BlockingRules"}
    assert params["BlockingRules"]["DefaultValue"] == "ExplodingTensor,VanishingGradient"
    assert rules["PropertyFiles"] == [{"PropertyFileName": "TrainingRulesReport",
                                       "OutputName": "rules", "FilePath": "rules.json"}]
    (blocking,) = steps["CheckTrainingRules"]["Arguments"]["Conditions"]
    assert blocking["Type"] == "Equals" and blocking["RightValue"] == 0
    assert blocking["LeftValue"]["Std:JsonGet"] == {
        "PropertyFile": {"Get": "Steps.TrainingRules.PropertyFiles.TrainingRulesReport"},
        "Path": "blocking.count"}
    assert [s["Name"] for s in steps["CheckTrainingRules"]["Arguments"]["IfSteps"]] == [
        "CheckAccuracy"]
    assert [s["Name"] for s in steps["CheckTrainingRules"]["Arguments"]["ElseSteps"]] == [
        "TrainingRulesFired"]
    fired = json.dumps(steps["TrainingRulesFired"]["Arguments"]["ErrorMessage"])
    assert "blocking.fired" in fired and "Training rule(s)" in fired

    # the gate is on validation accuracy; the test split's figure is what gets registered
    (condition,) = steps["CheckAccuracy"]["Arguments"]["Conditions"]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    assert condition["LeftValue"]["Std:JsonGet"] == {
        "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.ValidationReport"},
        "Path": "multiclass_classification_metrics.accuracy.value"}
    assert condition["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}
    branches = steps["CheckAccuracy"]["Arguments"]
    assert [s["Name"] for s in branches["IfSteps"]] == ["CheckImprovement"]
    assert [s["Name"] for s in branches["ElseSteps"]] == ["AccuracyTooLow"]
    # RequireImprovement: off, or Evaluate found the model better than the approved version
    (either,) = steps["CheckImprovement"]["Arguments"]["Conditions"]
    assert either["Type"] == "Or"
    off, better = either["Conditions"]
    assert off == {"Type": "Equals", "LeftValue": {"Get": "Parameters.RequireImprovement"},
                   "RightValue": "false"}
    assert better["LeftValue"]["Std:JsonGet"] == {
        "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
        "Path": "passes_require_improvement"} and better["RightValue"] is True
    branches = steps["CheckImprovement"]["Arguments"]
    assert [s["Name"] for s in branches["IfSteps"]] == ["RegisterModel-RegisterModel"]
    assert [s["Name"] for s in branches["ElseSteps"]] == ["NotBetterThanApproved"]
    # Evaluate gets the approved version's model (by default the placeholder: no comparison)
    evaluate = {i["InputName"]: i["S3Input"]["S3Uri"]
                for i in steps["Evaluate"]["Arguments"]["ProcessingInputs"]}
    assert evaluate["approved"] == {"Get": "Parameters.ApprovedModelDataUrl"}
    assert params["ApprovedModelDataUrl"]["DefaultValue"].endswith("/no-approved-version/")

    register = steps["RegisterModel-RegisterModel"]["Arguments"]
    assert register["ModelPackageGroupName"] == "DogBreedModels"
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    spec_ = register["InferenceSpecification"]
    assert spec_["SupportedContentTypes"] == list(spec.CONTENT_TYPES)
    (container,) = spec_["Containers"]
    assert "pytorch-inference:2.6.0" in container["Image"] and "-cpu-" in container["Image"]
    assert spec_["SupportedRealtimeInferenceInstanceTypes"] == list(spec.CPU_INFERENCE_INSTANCES)
    # only what the SDK's register() emits: the Pipelines service parses the arguments with
    # its own model; the GPU image is added by the deploy (UpdateModelPackage)
    assert "AdditionalInferenceSpecifications" not in register and "Tags" not in register
    assert container["ModelDataUrl"] == {"Get": "Steps.TrainFinal.ModelArtifacts.S3ModelArtifacts"}
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert "Outputs['evaluation']" in json.dumps(statistics["S3Uri"])
    assert "evaluation.json" in json.dumps(statistics["S3Uri"])  # the test split's metrics
    # the drift baseline the monitoring job judges the version's traffic against
    baseline = register["DriftCheckBaselines"]["ModelDataQuality"]["Statistics"]
    assert baseline["ContentType"] == "application/json"
    assert "Outputs['evaluation']" in json.dumps(baseline["S3Uri"])
    assert json.dumps(baseline["S3Uri"]).count("baseline.json") == 1
    # both figures on the version itself, as strings, for the approver and the deploy
    metadata = register["CustomerMetadataProperties"]
    for key, report in (("validation_accuracy", "ValidationReport"),
                        ("test_accuracy", "EvaluationReport")):
        (value,) = metadata[key]["Std:Join"]["Values"]
        assert value["Std:JsonGet"] == {
            "PropertyFile": {"Get": f"Steps.Evaluate.PropertyFiles.{report}"},
            "Path": "multiclass_classification_metrics.accuracy.value"}
    # ... and each training rule's verdict, the blocking findings and the profiler report
    assert metadata["rule:ExplodingTensor"]["Std:JsonGet"] == {
        "PropertyFile": {"Get": "Steps.TrainingRules.PropertyFiles.TrainingRulesReport"},
        "Path": "rules[4].status"}
    # the blocking findings, never empty ("none"): CreateModelPackage refuses an empty value
    assert "blocking.summary" in json.dumps(metadata["training_rules_blocking_fired"])
    assert "profiler-report.html" in json.dumps(metadata["profiler_report"])
    # the page the approver looks at, beside the metrics Studio shows
    assert json.dumps(metadata["evaluation_report"]).count("report.html") == 1
    assert "Outputs['evaluation']" in json.dumps(metadata["evaluation_report"])
    assert not any("Repack" in name for name in steps)  # no hidden repack job

    message = json.dumps(steps["AccuracyTooLow"]["Arguments"]["ErrorMessage"])
    assert "Parameters.AccuracyThreshold" in message and "ValidationReport" in message
    assert "Validation accuracy" in message


# Builds the definition in a process of its own, against moto's in-process AWS.
BUILD_IN_CHILD = f"""
import sys
from moto import mock_aws
with mock_aws():
    import boto3
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="{BUCKET}")
    from pipelines import run
    sys.exit(run.main(["--role-arn", "{ROLE}", "--bucket", "{BUCKET}",
                       "--definition-out", sys.argv[1], *sys.argv[2:]]))
"""


def build_in_child(tmp_path, out, *args, cwd=None, **env):
    import subprocess
    import sys

    from conftest import ROOT, offline_aws_env

    proc = subprocess.run([sys.executable, "-c", BUILD_IN_CHILD, str(out), *args],
                          cwd=cwd or ROOT,
                          env=offline_aws_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out.read_bytes()


def test_definition_is_identical_across_processes(tmp_path):
    """What CodeBuild does on every push: a new process, on another machine, builds the
    definition. String hashes (so the order of anything from a set()) differ between
    processes, the checkout lies elsewhere (the SDK hashes source paths into code S3 keys) and
    so may the temporary folder; the bytes must not change, or every upsert changes the
    definition and its steps miss the cache."""
    from test_readme import fresh_copy

    first = build_in_child(tmp_path, tmp_path / "a.json", PYTHONHASHSEED="1")
    elsewhere = fresh_copy(tmp_path / "another-checkout")
    (tmp_path / "tmp").mkdir()
    second = build_in_child(tmp_path, tmp_path / "b.json", cwd=elsewhere, PYTHONHASHSEED="2",
                            TMPDIR=str(tmp_path / "tmp"))
    assert first == second
    text = first.decode()
    assert "2026-" not in text and "2027-" not in text  # no timestamps in names or paths


def test_changed_scripts_change_every_step_that_runs_them(aws, tmp_path, monkeypatch):
    import shutil

    from steps import context

    before = steps_by_name(definition(tmp_path, name="a.json"))
    scripts = tmp_path / "scripts"
    shutil.copytree(context.SCRIPTS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "train.py").write_text((scripts / "train.py").read_text() + "\n# changed\n")
    monkeypatch.setattr("steps.context.SCRIPTS_DIR", str(scripts))
    after = steps_by_name(definition(tmp_path, name="b.json"))
    for name in ("Preprocess", "HPTuning", "TrainFinal", "Evaluate"):  # no stale cache hits
        assert before[name]["Arguments"] != after[name]["Arguments"], name


def test_build_options_switch_debugger_profiler_spot_and_instances(aws, tmp_path):
    d = definition(tmp_path, "--no-training-rules", "--no-profiler", "--spot",
                   "--training-instance-count", "2")
    steps = steps_by_name(d)
    assert "TrainingRules" not in steps and "CheckTrainingRules" not in steps
    assert [s["Name"] for s in d["Steps"]][-1] == "CheckAccuracy"
    train = steps["TrainFinal"]["Arguments"]
    assert "debugger-out" not in train["HyperParameters"]
    assert "profile-out" not in train["HyperParameters"]
    assert "DebugRuleConfigurations" not in train
    assert "ProfilerRuleConfigurations" not in train
    assert train.get("ProfilerConfig", {}).get("DisableProfiler", True) is True
    assert train["EnableManagedSpotTraining"] is True
    # spot jobs resume from checkpoints, under a prefix per execution (never shared)
    assert train["CheckpointConfig"]["S3Uri"] == {"Std:Join": {"On": "/", "Values": [
        f"s3://{BUCKET}/dogbreed/checkpoints", {"Get": "Execution.PipelineExecutionId"}]}}
    assert train["StoppingCondition"]["MaxWaitTimeInSeconds"] == {
        "Get": "Parameters.MaxRuntimeSeconds"}
    assert train["ResourceConfig"]["InstanceCount"] == 2  # train.py joins the hosts itself


def test_opt_in_sagemaker_debugger_and_managed_mlflow(aws, tmp_path):
    """For accounts that still have Debugger: its built-in rules (the TrainingRules' names),
    system monitoring and ProfilerReport, on top of our own rules step. With a managed MLflow
    server: TrainFinal's environment names it (no MlflowConfig: the SDK never emits one, and
    Pipelines refuses members the SDK does not emit), and the run named on the version."""
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"
    steps = steps_by_name(definition(tmp_path, "--sagemaker-debugger", "--mlflow-arn", arn))
    train = steps["TrainFinal"]["Arguments"]
    rules = {r["RuleConfigurationName"] for r in train["DebugRuleConfigurations"]}
    assert rules == set(spec.TRAINING_RULES)
    collections = {c["CollectionName"]: c["CollectionParameters"]
                   for c in train["DebugHookConfig"]["CollectionConfigurations"]}
    assert collections["losses"]["save_interval"] == "10"
    assert [r["RuleConfigurationName"] for r in train["ProfilerRuleConfigurations"]] == [
        "ProfilerReport"]
    assert train["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert "TrainingRules" in steps  # ours too
    run_name = {"Std:Join": {"On": "-", "Values": [
        "DogBreedBuild", "TrainFinal", {"Get": "Execution.PipelineExecutionId"}]}}
    assert "MlflowConfig" not in train
    assert train["Environment"] == {"MLFLOW_TRACKING_URI": arn,
                                    "MLFLOW_EXPERIMENT_NAME": "DogBreedBuild",
                                    "MLFLOW_RUN_NAME": run_name}
    metadata = steps["RegisterModel-RegisterModel"]["Arguments"]["CustomerMetadataProperties"]
    assert metadata["mlflow_run"] == run_name


def test_start_passes_parameters(aws, capsys):
    assert cli("--upsert", "--start", "--wait", "--param", "Epochs=3",
               "--param", "BaseModel=resnet18", "--param", "AccuracyThreshold=0.5") == 0
    out = capsys.readouterr().out
    assert "started execution" in out and "execution Succeeded" in out
    (execution,) = aws.list_pipeline_executions(PipelineName="DogBreedBuild")[
        "PipelineExecutionSummaries"]
    params = aws.list_pipeline_parameters_for_execution(
        PipelineExecutionArn=execution["PipelineExecutionArn"])["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in params} == {
        "Epochs": "3", "BaseModel": "resnet18", "AccuracyThreshold": "0.5"}
    # the old tuning path given a CPU trial instance: a note says to give it a GPU
    assert cli("--upsert", "--tuning-mode", "fine-tune", "--start",
               "--param", "TuningInstanceType=ml.m5.large") == 0
    assert "TuningInstanceType=ml.g4dn.xlarge" in capsys.readouterr().err
    assert cli("--upsert", "--tuning-mode", "fine-tune", "--start") == 0  # its GPU default
    assert "note:" not in capsys.readouterr().err
    # a setting that a tuning step tunes instead is named, not silently dropped
    assert cli("--upsert", "--tune-fine-tune", "--start", "--param",
               "FineTuneLearningRate=0.0002", "--param", "FineTuneBatchSize=16") == 0
    assert "note: FineTuneLearningRate not used: --tune-fine-tune tunes them" in \
        capsys.readouterr().err  # the batch is still TrainFinal's: not named


def test_the_tuning_mode_is_a_build_option_with_its_image_and_instance(aws, tmp_path):
    """SageMaker fixes the trials' image when the pipeline is built: fine-tune trials get the
    GPU image and a GPU instance by default, linear-probe ones the CPU image and ml.m5.large."""
    built = definition(tmp_path, "--tuning-mode", "fine-tune")
    job = steps_by_name(built)["HPTuning"]["Arguments"]["TrainingJobDefinition"]
    assert json.loads(job["StaticHyperParameters"]["mode"]) == "fine-tune"
    assert "pytorch-training:2.6.0-gpu-" in job["AlgorithmSpecification"]["TrainingImage"]
    defaults = {p["Name"]: p.get("DefaultValue") for p in built["Parameters"]}
    assert defaults["TuningInstanceType"] == "ml.g4dn.xlarge"
    # fine-tune trials tuned the fine-tune itself: TrainFinal takes their settings
    hp = json.dumps(steps_by_name(built)["TrainFinal"]["Arguments"]["HyperParameters"])
    for name in ("lr", "batch-size", "weight-decay", "label-smoothing"):
        assert f"Steps.HPTuning.BestTrainingJob.TunedHyperParameters['{name}']" in hp
    assert "backbone-lr" not in hp
    probe = {p["Name"]: p.get("DefaultValue") for p in definition(tmp_path, name="lp.json")[
        "Parameters"]}
    assert probe["TuningInstanceType"] == "ml.m5.large"


def test_tune_fine_tune_adds_fine_tuning_trials_from_the_best_probed_head(aws, tmp_path):
    """--tune-fine-tune: FineTuneTuning runs short fine-tuning trials from HPTuning's best head
    (its rate for a head, the head itself), as TrainFinal fine-tunes (instance type, image,
    layers, batch), over the fine-tune's own ranges; TrainFinal takes the best of them."""
    built = definition(tmp_path, "--tune-fine-tune")
    names = [s["Name"] for s in built["Steps"]]
    assert names.index("HPTuning") < names.index("FineTuneTuning") < names.index("TrainFinal")
    steps = steps_by_name(built)
    args = steps["FineTuneTuning"]["Arguments"]
    config = args["HyperParameterTuningJobConfig"]
    ranges = config["ParameterRanges"]["ContinuousParameterRanges"]
    assert {r["Name"] for r in ranges} == set(spec.FINE_TUNE_RANGES) == {
        "backbone-lr", "weight-decay", "label-smoothing"}
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == {
        "Get": "Parameters.MaxFineTuneJobs"}
    job = args["TrainingJobDefinition"]
    static = json.dumps(job["StaticHyperParameters"])
    assert json.loads(job["StaticHyperParameters"]["mode"]) == "fine-tune"
    assert "Steps.HPTuning.BestTrainingJob.TunedHyperParameters['lr']" in static
    for param in ("FineTuneTuningEpochs", "FineTuneBatchSize", "FineTuneLayers"):
        assert f"Parameters.{param}" in static
    head = next(c for c in job["InputDataConfig"] if c["ChannelName"] == "head")
    assert "Steps.HPTuning.BestTrainingJob.TrainingJobName" in json.dumps(head)
    assert {c["ChannelName"] for c in job["InputDataConfig"]} == {"train", "valid", "head"}
    train = steps["TrainFinal"]["Arguments"]
    assert job["HyperParameterTuningResourceConfig"]["InstanceType"] == \
        train["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert job["AlgorithmSpecification"]["TrainingImage"] == \
        train["AlgorithmSpecification"]["TrainingImage"]
    hp = json.dumps(train["HyperParameters"])
    for name in spec.FINE_TUNE_RANGES:
        assert f"Steps.FineTuneTuning.BestTrainingJob.TunedHyperParameters['{name}']" in hp
    assert "Parameters.FineTuneBatchSize" in hp and "Parameters.FineTuneLearningRate" not in hp
    # without the option: no such step, TrainFinal's settings are the FineTune* parameters
    plain = steps_by_name(definition(tmp_path, name="plain.json"))
    assert "FineTuneTuning" not in plain
    assert "Parameters.FineTuneLearningRate" in json.dumps(plain["TrainFinal"]["Arguments"])
    assert cli("--definition-out", str(tmp_path / "x.json"), "--tune-fine-tune",
               "--tuning-mode", "fine-tune") == 2


@pytest.mark.parametrize("args, message", [
    (["--start", "--param", "Epoks=3"], "unknown pipeline parameter 'Epoks'"),
    (["--start", "--param", "Epochs=three"], "Epochs must be integer"),
    (["--start", "--param", "BaseModel=vgg16"], "BaseModel must be one of"),
    (["--start", "--param", "AccuracyThreshold=85"], "fraction"),
    (["--start", "--param", "Epochs"], "must look like NAME=VALUE"),
    (["--start", "--param", "InputDataUrl=./data"], "must be an s3:// URI"),
    (["--start", "--param", "TrainingInstanceType=g4dn.xlarge"], "SageMaker instance type"),
    (["--start", "--param", "TuningMode=fine-tune"], "--tuning-mode fine-tune"),
    (["--start", "--param", "FeatureViews=40"], "FeatureViews must be <= 16"),
    # every image would be upsampled: refused before anything runs, in both backends
    (["--start", "--param", "ImageSize=384", "--param", "PreprocessImageSize=256"],
     "PreprocessImageSize 256 is smaller than the training crop ImageSize 384"),
    (["--local", "--param", "EvalImageSize=288", "--param", "PreprocessImageSize=256"],
     "smaller than the evaluation crop EvalImageSize 288"),
    (["--start", "--param", "EvalImageSize=8"], "EvalImageSize must be 0 or >= 16"),
    (["--upsert", "--param", "Epochs=3"], "add --start"),
    (["--start"], "does not exist"),
    ([], "nothing to do"),
    (["--local", "--start"], "does not combine"),
])
def test_bad_arguments_give_one_clear_line(aws, capsys, args, message):
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_aws_settings_give_one_clear_line(aws, monkeypatch, capsys):
    assert run.main(["--upsert", "--bucket", BUCKET]) == 2
    assert "no SageMaker execution role" in capsys.readouterr().err
    assert run.main(["--upsert", "--role-arn", "admin"]) == 2
    assert "not an IAM role ARN" in capsys.readouterr().err
    assert cli("--upsert", "--bucket", "no-such-bucket-here") == 2
    assert "no-such-bucket-here does not exist" in capsys.readouterr().err
    monkeypatch.setenv("DOGBREED_BUCKET", BUCKET)
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    assert run.main(["--definition-out", "/dev/null"]) == 0  # both from the environment
    capsys.readouterr()
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert cli("--upsert") == 2
    assert "no AWS region" in capsys.readouterr().err
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert cli("--upsert") == 2
    err = capsys.readouterr().err
    assert "no AWS credentials" in err and "Traceback" not in err


def test_buildspec_runs_the_tests_then_upserts_and_starts(tmp_path):
    import subprocess

    import yaml

    from conftest import ROOT

    doc = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert tuple(int(x) for x in str(doc["phases"]["install"]["runtime-versions"]["python"])
                 .split(".")) >= (3, 11)
    assert any("pytest" in c for c in doc["phases"]["pre_build"]["commands"])
    (script,) = doc["phases"]["build"]["commands"]
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in doc["env"]["variables"].items()},
           "DOGBREED_BUCKET": BUCKET, "PIPELINE_PARAMS": "Epochs=3 BaseModel=resnet18",
           "BUILD_OPTIONS": "--no-debugger-rules", "CODEBUILD_RESOLVED_SOURCE_VERSION": "abc123"}
    # run the shell script with the CLI replaced by a recorder of its arguments
    probe = script.replace(".venv/bin/python -m pipelines.run", "printf '%s\\n'")
    out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.split()
    args = run.build_parser().parse_args(out)
    assert args.upsert and args.start_if_data and args.no_training_rules
    assert args.bucket == BUCKET and args.pipeline_name == "DogBreedBuild"
    assert run.parse_params(args.param) == {"Epochs": 3, "BaseModel": "resnet18"}
    assert args.tag == ["source-version=abc123"]


def test_describe_or_none_tells_missing_from_other_errors(aws):
    from botocore.exceptions import ClientError

    from pipelines.aws import describe_or_none

    assert describe_or_none(lambda: aws.describe_pipeline(PipelineName="nope")) is None
    assert describe_or_none(lambda: {"found": 1}) == {"found": 1}

    def denied():
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                          "DescribePipeline")

    with pytest.raises(ClientError):  # not mistaken for "missing", so nothing is re-created
        describe_or_none(denied)


def test_ctrl_c_while_waiting_says_how_to_stop_the_execution(aws, monkeypatch, capsys):
    def interrupted(sm, arn, poll_seconds=30.0):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "follow", interrupted)
    assert cli("--upsert", "--start", "--wait") == 130
    out, err = capsys.readouterr()
    (execution,) = aws.list_pipeline_executions(PipelineName="DogBreedBuild")[
        "PipelineExecutionSummaries"]
    arn = execution["PipelineExecutionArn"]
    assert "Traceback" not in err
    assert f"execution {arn} goes on in SageMaker" in err
    assert f"aws sagemaker stop-pipeline-execution --pipeline-execution-arn {arn}" in err


def test_sdk_config_opts_out_of_telemetry_and_still_validates(aws):
    import jsonschema
    import sagemaker.utils

    from pipelines.aws import sdk_config

    config = sdk_config()
    assert config["SageMaker"]["PythonSDK"]["Modules"]["TelemetryOptOut"] is True
    sagemaker.utils.validate_sagemaker_config(config)
    with pytest.raises(jsonschema.ValidationError):
        sagemaker.utils.validate_sagemaker_config({"SchemaVersion": "1.0", "Bogus": 1})


def uploaded_sources(d: dict) -> dict:
    """Each job step's sourcedir.tar.gz, read back from S3: {step: {path: bytes}}."""
    import io
    import tarfile

    uris = {}
    for name, step in steps_by_name(d).items():
        args = step.get("Arguments", {})
        if step["Type"] == "Processing":
            (uri,) = [i["S3Input"]["S3Uri"] for i in args["ProcessingInputs"]
                      if i["InputName"] == "code"]
        elif step["Type"] in ("Training", "Tuning"):
            hps = args.get("HyperParameters") or args["TrainingJobDefinition"][
                "StaticHyperParameters"]
            uri = json.loads(hps["sagemaker_submit_directory"])
        else:
            continue
        uris[name] = uri
    sources = {}
    for name, uri in uris.items():
        bucket, _, key = uri[len("s3://"):].partition("/")
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            sources[name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                             if m.isfile()}
    return sources


def requirement_names(files: dict) -> set:
    text = files.get("requirements.txt", b"").decode()
    return {line.split("=")[0].split(">")[0].split("<")[0].strip() for line in text.splitlines()
            if line.strip() and not line.startswith("#")}


def test_each_job_installs_only_what_it_needs(aws, tmp_path):
    """The PyTorch DLCs have torch, torchvision, Pillow, numpy, scikit-learn, tqdm and psutil;
    smdebug (and its protobuf<=3.20.3 pin) goes only where the hook runs or is read."""
    sources = uploaded_sources(definition(tmp_path))
    assert set(sources) == {"Preprocess", "Features", "HPTuning", "TrainFinal", "TrainingRules",
                            "Evaluate"}
    for files in sources.values():
        assert "train.py" in files and "breedkit/model.py" in files  # the scripts, whole
        assert not any(name.startswith("requirements/") for name in files)
    assert requirement_names(sources["Preprocess"]) == set()
    assert requirement_names(sources["Features"]) == set()
    assert requirement_names(sources["HPTuning"]) == set()  # every trial: nothing to install
    assert requirement_names(sources["TrainFinal"]) == {"smdebug", "tensorboard"}
    assert requirement_names(sources["TrainingRules"]) == {"smdebug", "pandas", "matplotlib"}
    assert requirement_names(sources["Evaluate"]) == {"matplotlib"}
    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"
    tracked = uploaded_sources(definition(tmp_path, "--mlflow-arn", arn, name="mlflow.json"))
    assert requirement_names(tracked["TrainFinal"]) == {"smdebug", "tensorboard",
                                                        "mlflow-skinny", "sagemaker-mlflow"}


def test_the_pipeline_description_does_not_import_torch():
    """pipelines.spec is read by every command, deploying and registering included."""
    import subprocess
    import sys

    from conftest import ROOT

    probe = subprocess.run([sys.executable, "-c", "import sys, pipelines.spec, pipelines.run; "
                            "print(sorted(m for m in ('torch', 'torchvision') if m in "
                            "sys.modules))"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert probe.stdout.strip() == "[]", probe.stderr


def test_staged_job_sources_are_checked_before_they_are_reused(tmp_path):
    """The staging folder's name is predictable: a tampered or half-written one is restaged,
    never uploaded as it is."""
    import shutil

    from pipelines.spec import SCRIPTS_DIR
    from steps.sources import job_sources

    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "train.py").write_text((scripts / "train.py").read_text() + "\n# this test\n")
    staged = job_sources(str(scripts), "evaluate.txt")
    original = (staged / "train.py").read_bytes()
    (staged / "train.py").write_text("import os; os.system('steal the credentials')\n")
    (staged / "extra.py").write_text("print('not ours')\n")
    again = job_sources(str(scripts), "evaluate.txt")
    assert (again / "train.py").read_bytes() == original
    assert not (again / "extra.py").exists()
    (again / "requirements.txt").unlink()  # half-written
    assert (job_sources(str(scripts), "evaluate.txt") / "requirements.txt").is_file()
    shutil.rmtree(again)


def test_ctrl_c_while_building_is_one_line(aws, monkeypatch, capsys):
    def interrupted(ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipelines.build.build_pipeline", interrupted)
    assert cli("--upsert") == 130
    err = capsys.readouterr().err
    assert err.strip() == "stopped (Ctrl-C); run the same command again to finish"
    with pytest.raises(Exception):  # nothing half-made in SageMaker
        aws.describe_pipeline(PipelineName="DogBreedBuild")


def test_the_ci_leg_runs_the_scripts_under_the_dlcs_own_torch():
    """The jobs run SageMaker's PyTorch image of spec.FRAMEWORK_VERSION: .ci/run's second leg
    installs that torch (requirements-dlc.txt) and runs the container scripts' tests."""
    from conftest import ROOT

    pins = dict(line.split("#")[0].strip().split("==") for line in
                (ROOT / "requirements-dlc.txt").read_text().splitlines()
                if "==" in line.split("#")[0])
    assert pins["torch"] == spec.FRAMEWORK_VERSION
    ci = (ROOT / ".ci/run").read_text()
    assert "requirements-dlc.txt" in ci and "tests/test_train.py" in ci
