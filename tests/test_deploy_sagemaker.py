"""Deployment to SageMaker endpoints, against moto.

moto lacks UpdateEndpoint, so the update path runs against a stand-in that records the call
and switches the endpoint's config; invoke_endpoint answers come from moto's result queue.
"""

from __future__ import annotations

import json

import boto3
import pytest
import requests

from conftest import create_model_package
from pipelines import deploy

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
GROUP = "DogBreedModels"
GOOD = json.dumps({"predictions": [{"label": "Affenpinscher", "class": "001.Affenpinscher",
                                    "index": 0, "probability": 0.9, "top_k": []}]})


def queue_results(*bodies):
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
                  json={"results": [{"Body": b, "ContentType": "application/json"}
                                    for b in bodies]})


@pytest.fixture
def aws(fake_aws, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    boto3.client("s3").create_bucket(Bucket="deploy-bucket")
    sm = boto3.client("sagemaker")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    for i in range(2):
        create_model_package(sm, GROUP, f"s3://deploy-bucket/model-{i + 1}.tar.gz")
    updates = []
    real_client = boto3.Session.client

    def client(self, service, *args, **kwargs):
        c = real_client(self, service, *args, **kwargs)
        if service == "sagemaker":
            def update_endpoint(EndpointName, EndpointConfigName, **rest):  # noqa: N803
                updates.append({"EndpointName": EndpointName,
                                "EndpointConfigName": EndpointConfigName, **rest})
                tags = c.list_tags(ResourceArn=c.describe_endpoint(
                    EndpointName=EndpointName)["EndpointArn"])["Tags"]
                c.delete_endpoint(EndpointName=EndpointName)
                c.create_endpoint(EndpointName=EndpointName,
                                  EndpointConfigName=EndpointConfigName, Tags=tags)
            c.update_endpoint = update_endpoint
        return c

    monkeypatch.setattr(boto3.Session, "client", client)
    yield {"sm": sm, "updates": updates}


def arn(sm, version):
    packages = sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    return next(p["ModelPackageArn"] for p in packages if p["ModelPackageVersion"] == version)


def cli(*args):
    return deploy.main(["--bucket", "deploy-bucket", *args])


def tags(sm, endpoint):
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=sm.describe_endpoint(
        EndpointName=endpoint)["EndpointArn"])["Tags"]}


def test_staging_then_prod_then_blue_green_update(aws, capsys):
    sm = aws["sm"]
    assert cli() == 0
    assert "no Approved version" in capsys.readouterr().out
    assert cli("--stage", "prod") == 1
    assert "deploy to staging first" in capsys.readouterr().err

    sm.update_model_package(ModelPackageArn=arn(sm, 1), ModelApprovalStatus="Approved")
    queue_results(GOOD)
    assert cli() == 0
    assert "dogbreed-staging: DogBreedModels version 1 InService" in capsys.readouterr().out
    endpoint = sm.describe_endpoint(EndpointName="dogbreed-staging")
    assert endpoint["EndpointConfigName"] == "dogbreed-staging-v1"
    assert tags(sm, "dogbreed-staging") == {"ModelPackageArn": arn(sm, 1),
                                            "ModelPackageVersion": "1", "SmokeTest": "passed"}
    model = sm.describe_model(ModelName="dogbreed-v1")
    assert model["PrimaryContainer"]["ModelPackageName"] == arn(sm, 1)
    config = sm.describe_endpoint_config(EndpointConfigName="dogbreed-staging-v1")
    assert config["DataCaptureConfig"]["EnableCapture"] is True
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    alarms = boto3.client("cloudwatch").describe_alarms()["MetricAlarms"]
    assert [a["AlarmName"] for a in alarms] == ["dogbreed-staging-5xx"]

    assert cli() == 0  # idempotent
    assert "already serves DogBreedModels version 1" in capsys.readouterr().out

    queue_results(GOOD)
    assert cli("--stage", "prod") == 0
    assert sm.describe_endpoint(EndpointName="dogbreed-prod")["EndpointConfigName"] == \
        "dogbreed-prod-v1"
    targets = boto3.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]
    assert [t["ResourceId"] for t in targets] == ["endpoint/dogbreed-prod/variant/AllTraffic"]
    policies = boto3.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policies[0]["PolicyType"] == "TargetTrackingScaling"

    # version 2 approved: the newest approved goes to staging with a blue/green update
    sm.update_model_package(ModelPackageArn=arn(sm, 2), ModelApprovalStatus="Approved")
    assert cli() == 0
    (update,) = aws["updates"]
    assert update["EndpointConfigName"] == "dogbreed-staging-v2"
    assert "BlueGreenUpdatePolicy" in update["DeploymentConfig"]
    assert update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"] == [
        {"AlarmName": "dogbreed-staging-5xx"}]
    assert tags(sm, "dogbreed-staging")["ModelPackageVersion"] == "2"
    assert sm.describe_endpoint(EndpointName="dogbreed-prod")["EndpointConfigName"] == \
        "dogbreed-prod-v1"  # prod moves only when asked


def test_failed_smoke_test_exits_non_zero(aws, capsys):
    sm = aws["sm"]
    sm.update_model_package(ModelPackageArn=arn(sm, 1), ModelApprovalStatus="Approved")
    queue_results("<html>not the JSON we serve</html>")
    assert cli("--prefix", "broken") == 1
    err = capsys.readouterr().err
    assert "smoke test of broken-staging version 1 failed" in err
    assert tags(sm, "broken-staging")["SmokeTest"] == "failed"
    assert cli("--prefix", "broken", "--stage", "prod") == 1  # never promoted
    assert "has not passed its smoke test" in capsys.readouterr().err


def test_missing_role_is_one_clear_line(aws, monkeypatch, capsys):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN")
    assert cli() == 2
    err = capsys.readouterr().err
    assert "no SageMaker execution role" in err and "Traceback" not in err
