"""The two CodeBuild commands as real processes against a moto *server* (AWS_ENDPOINT_URL).

The other AWS tests call the CLIs' main() inside moto's in-process mock; these run
``python -m pipelines.run --upsert`` and ``python -m pipelines.deploy`` exactly as
buildspec.yml and buildspec-deploy.yml do, with boto3 pointed at an emulated AWS endpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
import requests

from conftest import ROOT, create_model_package
from pipelines import spec

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
BUCKET = "server-bucket"
GROUP = "DogBreedModels"


@pytest.fixture
def server(tmp_path):
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(url + "/moto-api/reset").raise_for_status()  # moto's state is per process
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SAGEMAKER_", "DOGBREED_"))}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               SAGEMAKER_ROLE_ARN=ROLE, SAGEMAKER_SUPPRESS_V2_WARNING="1")
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    session.client("s3", endpoint_url=url).create_bucket(Bucket=BUCKET)
    yield {"url": url, "env": env, "sm": session.client("sagemaker", endpoint_url=url)}
    moto.stop()


def run(server, module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=server["env"],
                          capture_output=True, text=True, timeout=300)


def test_upsert_as_codebuild_runs_it(server):
    """Create, then update (a second push): the output says what was done and nothing else.
    Any request leaving for the internet (the SDK's telemetry) goes to a closed local port, so
    an attempt shows up as its traceback whether or not this machine is online."""
    from pipelines.deploy.endpoints import free_port

    server["env"].update(HTTPS_PROXY=f"http://127.0.0.1:{free_port()}",
                         NO_PROXY="127.0.0.1,localhost")
    server["env"].pop("SAGEMAKER_SUPPRESS_V2_WARNING")  # CodeBuild does not set it either
    for verb in ("created", "updated"):
        proc = run(server, "pipelines.run", "--bucket", BUCKET, "--upsert", "--start")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == ""
        lines = proc.stdout.splitlines()
        if verb == "created":
            assert lines.pop(0) == "created model package group DogBreedModels"
        assert len(lines) == 2, proc.stdout
        assert lines[0].startswith(f"{verb} pipeline DogBreedBuild: arn:aws:sagemaker:")
        assert lines[1].startswith("started execution arn:aws:sagemaker:")
    pipeline = server["sm"].describe_pipeline(PipelineName="DogBreedBuild")
    assert pipeline["RoleArn"] == ROLE
    definition = json.loads(pipeline["PipelineDefinition"])
    names = {step["Name"] for step in definition["Steps"]}
    assert {spec.STEP.PREPROCESS, spec.STEP.TUNE, spec.STEP.TRAIN, spec.STEP.EVALUATE} <= names
    assert [p["Name"] for p in definition["Parameters"]] == [p.name for p in spec.PARAMETERS]


def test_deploy_as_codebuild_runs_it(server):
    sm = server["sm"]
    proc = run(server, "pipelines.deploy", "--bucket", BUCKET, "--stage", "staging")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no Approved version" in proc.stdout  # the group is created by the upsert
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    arn = create_model_package(sm, GROUP, f"s3://{BUCKET}/model.tar.gz", "Approved")
    answer = {"predictions": [{"label": "Beagle", "class": "016.Beagle", "index": 15,
                               "probability": 0.8, "top_k": []}]}
    requests.post(server["url"] + "/moto-api/static/sagemaker/endpoint-results",
                  json={"results": [{"Body": json.dumps(answer),
                                     "ContentType": "application/json"}]}).raise_for_status()
    proc = run(server, "pipelines.deploy", "--bucket", BUCKET, "--stage", "staging")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dogbreed-staging: DogBreedModels version 1 InService" in proc.stdout
    endpoint = sm.describe_endpoint(EndpointName="dogbreed-staging")
    assert endpoint["EndpointStatus"] == "InService"
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(
        ResourceArn=endpoint["EndpointArn"])["Tags"]}
    assert tags == {"ModelPackageArn": arn, "ModelPackageVersion": "1", "SmokeTest": "passed"}
    # a second run is idempotent; a smoke test with no queued answer would have failed
    proc = run(server, "pipelines.deploy", "--bucket", BUCKET, "--stage", "staging")
    assert proc.returncode == 0 and "already serves DogBreedModels version 1" in proc.stdout
