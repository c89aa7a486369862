"""Deployment to SageMaker endpoints, against moto with SageMaker's endpoint states
(tests/fake_endpoints.py: Creating, Updating, RollingBack, Failed, UpdateEndpoint).

Waiting is deterministic: each DescribeEndpoint moves the fake one step on, and time.sleep is
recorded instead of slept.
"""

from __future__ import annotations

import json
import shlex

import boto3
import pytest

from conftest import INFERENCE_IMAGE, create_model_package
from pipelines.deploy import cli as deploy

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
GROUP = "DogBreedModels"
STAGING = "dogbreed-staging"
GOOD = json.dumps({"predictions": [{"label": "Affenpinscher", "class": "001.Affenpinscher",
                                    "index": 0, "probability": 0.9, "top_k": []}]})
BAD = "<html>not the JSON we serve</html>"


@pytest.fixture
def aws(fake_aws, fake_endpoints, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    sleeps = []
    monkeypatch.setattr("time.sleep", sleeps.append)
    boto3.client("s3").create_bucket(Bucket="deploy-bucket")
    sm = boto3.client("sagemaker")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    for i in range(2):
        create_model_package(sm, GROUP, f"s3://deploy-bucket/model-{i + 1}.tar.gz")
    for version in (1, 2):  # both serve well unless a test says otherwise
        for stage in ("staging", "prod"):
            fake_endpoints.serve(f"dogbreed-{stage}-v{version}", GOOD)
    yield {"sm": sm, "fake": fake_endpoints, "sleeps": sleeps}


def arn(sm, version):
    packages = sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    return next(p["ModelPackageArn"] for p in packages if p["ModelPackageVersion"] == version)


def approve(sm, *versions, status="Approved"):
    for version in versions:
        sm.update_model_package(ModelPackageArn=arn(sm, version), ModelApprovalStatus=status)


def cli(*args):
    return deploy.main(["--bucket", "deploy-bucket", *args])


def tags(sm, endpoint=STAGING):
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=sm.describe_endpoint(
        EndpointName=endpoint)["EndpointArn"])["Tags"]}


def config_of(sm, endpoint=STAGING):
    return sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]


def scalable_targets():
    return boto3.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]


def test_staging_then_prod_then_blue_green_update(aws, capsys):
    sm, fake = aws["sm"], aws["fake"]
    assert cli() == 0
    assert "no Approved version" in capsys.readouterr().out
    assert cli("--stage", "prod") == 1
    assert "deploy to staging first" in capsys.readouterr().err

    approve(sm, 1)
    assert cli() == 0
    assert "dogbreed-staging: DogBreedModels version 1 InService" in capsys.readouterr().out
    assert config_of(sm) == "dogbreed-staging-v1"
    assert tags(sm) == {"ModelPackageArn": arn(sm, 1), "ModelPackageVersion": "1",
                        "SmokeTest": "passed"}
    model = sm.describe_model(ModelName="dogbreed-v1")
    assert model["PrimaryContainer"] == {"ModelPackageName": arn(sm, 1)}
    config = sm.describe_endpoint_config(EndpointConfigName="dogbreed-staging-v1")
    assert config["DataCaptureConfig"]["EnableCapture"] is True
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    alarms = boto3.client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert [a["AlarmName"] for a in alarms] == ["dogbreed-staging-5xx"]
    assert aws["sleeps"] and set(aws["sleeps"]) == {20.0}  # waited in 20 s polls (Creating)

    assert cli() == 0  # idempotent
    assert "already serves DogBreedModels version 1" in capsys.readouterr().out

    assert cli("--stage", "prod") == 0
    assert config_of(sm, "dogbreed-prod") == "dogbreed-prod-v1"
    assert [t["ResourceId"] for t in scalable_targets()] == [
        "endpoint/dogbreed-prod/variant/AllTraffic"]
    policies = boto3.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policies[0]["PolicyType"] == "TargetTrackingScaling"

    # version 2 approved: the newest approved goes to staging with a blue/green update
    approve(sm, 2)
    fake.invocations.clear()
    assert cli("--poll-seconds", "0.5") == 0
    (update,) = fake.updates
    assert update["EndpointConfigName"] == "dogbreed-staging-v2"
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["WaitIntervalInSeconds"] == 300
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"] == [
        {"AlarmName": "dogbreed-staging-5xx"}]
    assert tags(sm)["ModelPackageVersion"] == "2" and tags(sm)["SmokeTest"] == "passed"
    assert config_of(sm, "dogbreed-prod") == "dogbreed-prod-v1"  # prod moves only when asked
    # smoke requests at every poll while the update baked, then the final check
    assert fake.invocations == [(STAGING, "Updating")] * 2 + [(STAGING, "InService")]
    assert aws["sleeps"][-2:] == [0.5, 0.5]


def test_failed_smoke_test_exits_non_zero(aws, capsys):
    sm = aws["sm"]
    approve(sm, 1)
    aws["fake"].serve("broken-staging-v1", BAD)
    assert cli("--prefix", "broken") == 1
    err = capsys.readouterr().err
    assert "smoke test of broken-staging version 1 failed" in err
    assert tags(sm, "broken-staging")["SmokeTest"] == "failed"
    assert cli("--prefix", "broken", "--stage", "prod") == 1  # never promoted
    assert "has not passed its smoke test" in capsys.readouterr().err


def test_smoke_failure_after_an_update_puts_the_old_version_back(aws, capsys):
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    assert cli() == 0
    approve(sm, 2)
    fake.serve("dogbreed-staging-v2", BAD)
    assert cli() == 1
    err = capsys.readouterr().err
    assert "smoke test of dogbreed-staging version 2 failed" in err
    assert "rolled back to dogbreed-staging-v1" in err
    assert config_of(sm) == "dogbreed-staging-v1"
    assert tags(sm) == {"ModelPackageArn": arn(sm, 1), "ModelPackageVersion": "1",
                        "SmokeTest": "passed"}


def update_staging_to_version_2(aws, outcome: str) -> int:
    """Version 1 live in staging, then version 2 approved and deployed with this outcome."""
    approve(aws["sm"], 1)
    assert cli() == 0
    approve(aws["sm"], 2)
    aws["fake"].next_update(outcome)
    return cli()


def test_an_alarm_rollback_is_an_error_and_the_tags_keep_the_old_version(aws, capsys):
    sm = aws["sm"]
    assert update_staging_to_version_2(aws, "rollback") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "rolled back to dogbreed-staging-v1" in err
    assert config_of(sm) == "dogbreed-staging-v1"
    assert tags(sm) == {"ModelPackageArn": arn(sm, 1), "ModelPackageVersion": "1",
                        "SmokeTest": "passed"}
    assert cli("--stage", "prod") == 0  # production gets what staging serves: version 1
    assert config_of(sm, "dogbreed-prod") == "dogbreed-prod-v1"


def test_a_version_whose_smoke_test_failed_is_tested_again_not_skipped(aws, capsys):
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    fake.serve("dogbreed-staging-v1", BAD)
    assert cli() == 1
    assert tags(sm)["SmokeTest"] == "failed"
    fake.serve("dogbreed-staging-v1", GOOD)  # e.g. a dependency it called is back
    assert cli() == 0
    out = capsys.readouterr().out
    assert "has not passed its smoke test: testing it" in out and "nothing to do" not in out
    assert tags(sm)["SmokeTest"] == "passed"


def test_a_failed_endpoint_is_deleted_and_created_again(aws, capsys):
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    fake.next_create("fail")
    assert cli() == 1
    assert "creating dogbreed-staging with DogBreedModels version 1 failed" in \
        capsys.readouterr().err
    assert sm.describe_endpoint(EndpointName=STAGING)["EndpointStatus"] == "Failed"
    assert cli() == 0
    assert "is Failed" in capsys.readouterr().out
    assert sm.describe_endpoint(EndpointName=STAGING)["EndpointStatus"] == "InService"
    assert tags(sm)["SmokeTest"] == "passed"


def test_a_failed_update_is_repaired_by_the_next_run(aws, capsys):
    sm = aws["sm"]
    assert update_staging_to_version_2(aws, "fail") == 1
    assert "updating dogbreed-staging to DogBreedModels version 2 failed" in \
        capsys.readouterr().err
    assert tags(sm)["ModelPackageVersion"] == "1"  # the tags never claimed version 2
    assert cli() == 0
    assert config_of(sm) == "dogbreed-staging-v2" and tags(sm)["SmokeTest"] == "passed"


@pytest.mark.parametrize("status", ["Creating", "Updating"])
def test_an_endpoint_in_progress_is_waited_for_first(aws, capsys, status):
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    assert cli() == 0
    fake.set_status(STAGING, status, polls=3)  # e.g. another deploy's update
    approve(sm, 2)
    assert cli() == 0
    assert f"dogbreed-staging is {status}: waiting" in capsys.readouterr().out
    assert config_of(sm) == "dogbreed-staging-v2"


def test_prod_autoscaling_missing_after_a_failed_run_is_registered_next_time(aws, capsys):
    sm = aws["sm"]
    approve(sm, 1)
    assert cli() == 0 and cli("--stage", "prod") == 0
    scaling = boto3.client("application-autoscaling")
    scaling.deregister_scalable_target(  # as if the run had failed before registering it
        ServiceNamespace="sagemaker", ResourceId="endpoint/dogbreed-prod/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    assert cli("--stage", "prod") == 0
    assert "already serves" in capsys.readouterr().out
    assert [t["ResourceId"] for t in scalable_targets()] == [
        "endpoint/dogbreed-prod/variant/AllTraffic"]


def test_gpu_instance_types_get_the_gpu_inference_specification(aws, capsys):
    """The build registers the CPU image only (what the SDK emits); the first GPU deploy adds
    the GPU image to the version (UpdateModelPackage), the next ones name it."""
    sm, fake = aws["sm"], aws["fake"]
    gpu_arn = create_model_package(sm, GROUP, "s3://deploy-bucket/model-3.tar.gz", "Approved",
                                   CustomerMetadataProperties={"test_accuracy": "0.9"})
    fake.serve("dogbreed-staging-v3-gpu", GOOD)
    assert cli("--instance-type", "ml.g4dn.xlarge") == 0
    assert "added the 'gpu' inference specification" in capsys.readouterr().out
    package = sm.describe_model_package(ModelPackageName=gpu_arn)
    (added,) = package["AdditionalInferenceSpecifications"]
    assert added["Name"] == "gpu"
    assert added["Containers"][0]["Image"] == INFERENCE_IMAGE.format("gpu")
    assert added["Containers"][0]["ModelDataUrl"] == "s3://deploy-bucket/model-3.tar.gz"
    assert package["ModelApprovalStatus"] == "Approved"  # nothing else changed
    assert package["CustomerMetadataProperties"] == {"test_accuracy": "0.9"}
    model = sm.describe_model(ModelName="dogbreed-v3-gpu")
    assert model["PrimaryContainer"] == {"ModelPackageName": gpu_arn,
                                         "InferenceSpecificationName": "gpu"}
    config = sm.describe_endpoint_config(EndpointConfigName=config_of(sm))
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    assert cli("--instance-type", "ml.g4dn.xlarge") == 0  # a re-run adds nothing
    assert "added the" not in capsys.readouterr().out
    assert len(sm.describe_model_package(ModelPackageName=gpu_arn)[
        "AdditionalInferenceSpecifications"]) == 1

    # a package of an image with no GPU twin we know: one clear line
    approve(sm, 3, status="Rejected")
    other = sm.create_model_package(
        ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved",
        InferenceSpecification={"Containers": [{"Image": "123456789012.dkr.ecr.us-east-1."
                                                "amazonaws.com/custom:latest",
                                                "ModelDataUrl": "s3://deploy-bucket/m.tar.gz"}],
                                "SupportedContentTypes": ["image/jpeg"],
                                "SupportedResponseMIMETypes": ["application/json"]})
    assert other["ModelPackageArn"]
    assert cli("--instance-type", "ml.p3.2xlarge") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ml.p3.2xlarge is a GPU instance type") and "\n" not in err
    assert "no GPU image can be derived" in err and "--instance-type" in err


def test_rejecting_the_live_version_rolls_back_and_with_none_approved_fails(aws, capsys):
    sm = aws["sm"]
    approve(sm, 1, 2)
    assert cli() == 0 and config_of(sm) == "dogbreed-staging-v2"
    assert cli("--stage", "prod") == 0
    approve(sm, 2, status="Rejected")
    assert cli() == 0  # the newest still approved
    assert config_of(sm) == "dogbreed-staging-v1" and tags(sm)["ModelPackageVersion"] == "1"
    capsys.readouterr()

    approve(sm, 1, status="Rejected")
    assert cli() == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: dogbreed-staging serves DogBreedModels version 1, which is Rejected "
                   "now, and no Approved version remains: the endpoint is left as it is; "
                   "approve a version and deploy again")
    assert config_of(sm) == "dogbreed-staging-v1"
    assert cli("--stage", "prod") == 1  # prod keeps version 2, refusing the rejected 1
    assert "is Rejected now; it will not go to production" in capsys.readouterr().err
    assert config_of(sm, "dogbreed-prod") == "dogbreed-prod-v2"


def test_outputs_file_for_the_approval_message(aws, tmp_path):
    sm, fake = aws["sm"], aws["fake"]
    report = {"multiclass_classification_metrics": {"accuracy": {"value": 0.8734}}}
    boto3.client("s3").put_object(Bucket="deploy-bucket", Key="eval/evaluation.json",
                                  Body=json.dumps(report).encode())
    metrics = {"ModelQuality": {"Statistics": {
        "ContentType": "application/json", "S3Uri": "s3://deploy-bucket/eval/evaluation.json"}}}
    # registered before the build added CustomerMetadataProperties: the test split's metrics
    package = create_model_package(sm, GROUP, "s3://deploy-bucket/model-3.tar.gz", "Approved",
                                   ModelMetrics=metrics)
    fake.serve("dogbreed-staging-v3", GOOD)
    out = tmp_path / "deploy.env"
    assert cli("--outputs", str(out)) == 0
    values = dict(line.split("=", 1) for line in shlex.split(out.read_text()))
    assert values == {"MODEL_PACKAGE_GROUP": GROUP, "MODEL_PACKAGE_VERSION": "3",
                      "MODEL_PACKAGE_ARN": package, "VALIDATION_ACCURACY": "unknown",
                      "TEST_ACCURACY": "0.8734", "ENDPOINT_NAME": STAGING}

    # as the build registers versions now: both accuracies as CustomerMetadataProperties
    create_model_package(sm, GROUP, "s3://deploy-bucket/model-4.tar.gz", "Approved",
                         ModelMetrics=metrics, CustomerMetadataProperties={
                             "validation_accuracy": "0.9012", "test_accuracy": "0.8811"})
    fake.serve("dogbreed-staging-v4", GOOD)
    assert cli("--outputs", str(out)) == 0
    values = dict(line.split("=", 1) for line in shlex.split(out.read_text()))
    assert values["MODEL_PACKAGE_VERSION"] == "4"
    assert (values["VALIDATION_ACCURACY"], values["TEST_ACCURACY"]) == ("0.9012", "0.8811")


def test_missing_role_is_one_clear_line(aws, monkeypatch, capsys):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    assert cli() == 2
    err = capsys.readouterr().err
    assert "no SageMaker execution role" in err and "Traceback" not in err


def test_prod_refuses_a_version_other_than_the_one_approved_for_it(aws, capsys):
    """The deploy pipeline passes the version its approver saw; staging may have moved on."""
    sm = aws["sm"]
    approve(sm, 1)
    assert cli() == 0
    approve(sm, 2)
    assert cli() == 0  # staging: version 2, while the approval of version 1 is pending
    capsys.readouterr()
    assert cli("--stage", "prod", "--expect-version", "1") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: dogbreed-staging serves DogBreedModels version 2, not version "
                          "1 that was approved for production")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sm.list_endpoints(NameContains="dogbreed-prod")["Endpoints"] == []  # untouched
    assert cli("--stage", "prod", "--expect-version", "2") == 0
    assert config_of(sm, "dogbreed-prod") == "dogbreed-prod-v2"
    assert cli("--expect-version", "2") == 2  # a prod-only check
    assert "--expect-version goes with --stage prod" in capsys.readouterr().err


def test_a_run_that_deploys_nothing_gives_the_pipeline_nothing_to_promote(aws, tmp_path, capsys):
    """The deploy pipeline's first run (on creation) or a run with nothing approved: staging
    deploys nothing but still exports its variables, and prod then does nothing, green."""
    sm = aws["sm"]
    out = tmp_path / "deploy.env"
    assert cli("--outputs", str(out)) == 0
    values = dict(line.split("=", 1) for line in shlex.split(out.read_text()))
    assert values["MODEL_PACKAGE_VERSION"] == "none" and values["ENDPOINT_NAME"] == STAGING
    assert set(values) == set(deploy.OUTPUT_KEYS)
    capsys.readouterr()
    assert cli("--stage", "prod", "--expect-version", values["MODEL_PACKAGE_VERSION"]) == 0
    assert "staging deployed nothing in this run: nothing to promote" in capsys.readouterr().out
    assert sm.list_endpoints()["Endpoints"] == []


def test_changed_instance_settings_are_deployed_not_skipped(aws, capsys):
    """Instance type, count and data capture are the endpoint config's: a change is an update,
    even for the version already live."""
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    assert cli() == 0
    first = config_of(sm)
    fake.serve_all(GOOD)
    assert cli("--instance-count", "2") == 0
    assert "nothing to do" not in capsys.readouterr().out
    second = config_of(sm)
    assert second != first and second.startswith("dogbreed-staging-v1")
    variant = sm.describe_endpoint_config(EndpointConfigName=second)["ProductionVariants"][0]
    assert variant["InitialInstanceCount"] == 2
    assert cli("--instance-count", "2") == 0  # now it is live: nothing to do
    assert "already serves" in capsys.readouterr().out
    assert cli() == 0 and config_of(sm) == first  # back to the defaults: the first config


def test_prod_instance_type_change_deregisters_autoscaling_around_the_update(aws, capsys):
    """AWS refuses an instance-type change of an autoscaled variant until its scalable target
    is deregistered; the deploy does that and registers it again afterwards."""
    sm, fake = aws["sm"], aws["fake"]
    approve(sm, 1)
    assert cli() == 0 and cli("--stage", "prod") == 0
    assert len(scalable_targets()) == 1
    fake.serve_all(GOOD)
    capsys.readouterr()
    assert cli("--stage", "prod", "--instance-type", "ml.m5.xlarge") == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    assert "deregistering autoscaling" in out and "registering autoscaling" in out
    variant = sm.describe_endpoint_config(EndpointConfigName=config_of(sm, "dogbreed-prod"))[
        "ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.xlarge"
    assert len(scalable_targets()) == 1  # registered again


def test_ctrl_c_while_waiting_says_the_change_goes_on_and_how_to_finish(aws, monkeypatch,
                                                                        capsys):
    sm = aws["sm"]
    approve(sm, 1)

    def interrupted(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", interrupted)
    assert cli() == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: stopped waiting for dogbreed-staging")
    assert "run the deploy again" in err


def test_an_outputs_file_that_cannot_be_written_is_one_line(aws, tmp_path, capsys):
    approve(aws["sm"], 1)
    assert cli("--outputs", str(tmp_path / "no-such-folder" / "deploy.env")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write --outputs") and "Traceback" not in err


SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/MonitorScheduler"


def with_baseline(sm, version_uri: str, status="Approved") -> str:
    return create_model_package(sm, GROUP, version_uri, status, DriftCheckBaselines={
        "ModelDataQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": version_uri.replace(".tar.gz", "-baseline.json")}}})


def test_prod_is_monitored_on_a_schedule_against_the_versions_baseline(aws, capsys):
    """The deploy writes a schedule whose universal target starts the monitoring job, a request
    SageMaker would accept once EventBridge Scheduler fills in its run id; metric filters make
    the job's metrics line CloudWatch metrics; the next version's deploy moves the baseline."""
    from pipelines.deploy import monitoring
    from pipelines.shapes import validate_arguments

    sm, fake = aws["sm"], aws["fake"]
    with_baseline(sm, "s3://deploy-bucket/model-3.tar.gz")
    for stage in ("staging", "prod"):
        fake.serve(f"dogbreed-{stage}-v3", GOOD)
    monitored = ("--monitor-role-arn", SCHEDULER_ROLE, "--capture-percent", "25",
                 "--capture-kms-key", "alias/dogbreed-capture")
    assert cli(*monitored) == 0 and cli("--stage", "prod", *monitored) == 0
    out = capsys.readouterr().out
    assert "dogbreed-prod: monitored every 1 h against version 3's baseline" in out
    config = sm.describe_endpoint_config(EndpointConfigName="dogbreed-prod-v3")
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 25
    assert config["DataCaptureConfig"]["KmsKeyId"] == "alias/dogbreed-capture"

    scheduler = boto3.client("scheduler")
    names = [s["Name"] for s in scheduler.list_schedules()["Schedules"]]
    assert names == ["dogbreed-monitor-prod"]  # staging sees smoke tests only
    schedule = scheduler.get_schedule(Name="dogbreed-monitor-prod")
    assert schedule["ScheduleExpression"] == "rate(1 hour)"
    target = schedule["Target"]
    assert target["Arn"] == "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
    assert target["RoleArn"] == SCHEDULER_ROLE
    request = json.loads(target["Input"])
    filled = json.loads(target["Input"].replace("<aws.scheduler.execution-id>", "d32c5kddcf5bb8c3")
                        .replace("<aws.scheduler.scheduled-time>", "2026-12-06T15:00:00Z"))
    assert validate_arguments("CreateProcessingJob", filled) == []
    assert len(filled["ProcessingJobName"]) <= 63
    assert request["RoleArn"] == ROLE
    assert request["AppSpecification"]["ImageUri"] == INFERENCE_IMAGE.format("cpu")
    args = request["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--until") + 1] == "<aws.scheduler.scheduled-time>"
    assert args[args.index("--since") + 1] == "1h" and args[args.index("--model-version") + 1] == "3"
    assert args[args.index("--lag") + 1] == "15m"  # capture files are written minutes late
    # the runs judge only traffic since this version's deploy, and a re-run keeps that time
    deployed = args[args.index("--not-before") + 1]
    assert deployed.endswith("Z") and deployed[:4] == "20" + deployed[2:4]
    assert cli("--stage", "prod", *monitored) == 0
    again = json.loads(scheduler.get_schedule(Name="dogbreed-monitor-prod")["Target"]["Input"])
    assert again["AppSpecification"]["ContainerArguments"] == args
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    assert inputs["baseline"] == "s3://deploy-bucket/model-3-baseline.json"
    capture = inputs["capture"]
    assert capture == config["DataCaptureConfig"]["DestinationS3Uri"] + "/dogbreed-prod/"
    s3 = boto3.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="deploy-bucket")["Contents"]]
    # the capture prefix is never empty (a job whose input matches no object fails)
    assert capture.removeprefix("s3://deploy-bucket/") + monitoring.PLACEHOLDER in keys
    code = inputs["code"].removeprefix("s3://deploy-bucket/")
    assert sorted(k.removeprefix(code) for k in keys if k.startswith(code)) == \
        sorted(monitoring.CODE_FILES)

    filters = boto3.client("logs").describe_metric_filters(
        logGroupName="/aws/sagemaker/ProcessingJobs")["metricFilters"]
    assert {f["metricTransformations"][0]["metricName"] for f in filters} == \
        set(monitoring.METRICS)
    drift = next(f for f in filters if f["filterName"] == "dogbreed-monitor-Drift")
    # only this stack's endpoints' lines (another stack's share the log group)
    assert drift["filterPattern"] == '{ $.dogbreed_monitor = 1 && $.EndpointName = "dogbreed-*" }'
    assert drift["metricTransformations"][0]["metricNamespace"] == "DogBreed/Monitor"

    # a newer version in prod: the same schedule, on its baseline
    with_baseline(sm, "s3://deploy-bucket/model-4.tar.gz")
    for stage in ("staging", "prod"):
        fake.serve(f"dogbreed-{stage}-v4", GOOD)
    assert cli(*monitored) == 0 and cli("--stage", "prod", *monitored) == 0
    request = json.loads(scheduler.get_schedule(Name="dogbreed-monitor-prod")["Target"]["Input"])
    assert {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}[
        "baseline"] == "s3://deploy-bucket/model-4-baseline.json"
    new_args = request["AppSpecification"]["ContainerArguments"]
    assert new_args[new_args.index("--not-before") + 1] >= deployed  # version 4's own deploy

    # deployed without the scheduler role: the old schedule would judge this version by
    # another's baseline, so it goes
    with_baseline(sm, "s3://deploy-bucket/model-5.tar.gz")
    fake.serve_all(GOOD)
    assert cli() == 0 and cli("--stage", "prod") == 0
    out = capsys.readouterr().out
    assert "not monitored: no scheduler role" in out
    assert "deleted the monitoring schedule dogbreed-monitor-prod" in out
    assert scheduler.list_schedules()["Schedules"] == []
    assert cli("--stage", "prod", *monitored) == 0  # and is back with the role
    assert [s["Name"] for s in scheduler.list_schedules()["Schedules"]] == [
        "dogbreed-monitor-prod"]

    # capture turned off: the schedule goes (it would fail every hour)
    assert cli("--stage", "prod", "--monitor-role-arn", SCHEDULER_ROLE, "--no-data-capture") == 0
    assert "not monitored: data capture is off" in capsys.readouterr().out
    assert scheduler.list_schedules()["Schedules"] == []


def test_a_version_without_a_baseline_is_deployed_but_not_monitored(aws, capsys):
    sm = aws["sm"]
    approve(sm, 1)
    assert cli() == 0
    assert cli("--stage", "prod", "--monitor-role-arn", SCHEDULER_ROLE) == 0
    out = capsys.readouterr().out
    assert "dogbreed-prod: not monitored: version 1 has no drift baseline" in out
    assert "InService" in out
    assert boto3.client("scheduler").list_schedules()["Schedules"] == []


@pytest.mark.parametrize("value", ["0.4", "101", "-1", "ten"])
def test_the_capture_percentage_is_a_whole_number_sagemaker_takes(aws, capsys, value):
    """SageMaker's InitialSamplingPercentage is an integer: 0.4 would silently be 0 there."""
    with pytest.raises(SystemExit):
        cli("--capture-percent", value)
    assert "a whole percentage from 0 to 100" in capsys.readouterr().err


def test_a_deploy_role_without_scheduler_rights_still_deploys_prod(aws, capsys, monkeypatch):
    """A stack from before monitoring: no scheduler role and no scheduler permissions. The
    check for an old schedule is refused; prod is live, and the deploy says what to do."""
    from botocore.exceptions import ClientError

    from pipelines.deploy import monitoring

    def refused(scheduler, name, echo, original=monitoring.delete_schedule):
        def deny(**_):
            raise ClientError({"Error": {"Code": "AccessDeniedException",
                                         "Message": "not authorized"}}, "DeleteSchedule")
        monkeypatch.setattr(scheduler, "delete_schedule", deny)
        return original(scheduler, name, echo)

    monkeypatch.setattr(monitoring, "delete_schedule", refused)
    approve(aws["sm"], 1)
    assert cli() == 0 and cli("--stage", "prod") == 0
    out = capsys.readouterr().out
    assert "dogbreed-prod: DogBreedModels version 1 InService" in out
    assert "could not check for an old monitoring schedule dogbreed-monitor-prod" in out
