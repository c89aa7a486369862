"""Every AWS call of the build project's commands is allowed by the role infra/template.yaml
gives that CodeBuild project.

moto enforces no IAM, so a missing permission would first show in a real account, on the
second push. This runs buildspec.yml's build script exactly (the CLI as the project's Python)
twice, as two pushes do (create, then update), against a moto server, records every call the
processes make (tests/iamcheck.py), and checks each action, passed role and dependent action
against the BuildProjectRole's statements.
"""

from __future__ import annotations

import subprocess
import sys

import boto3
import pytest
import requests
import yaml

import iamcheck
from conftest import ROOT, offline_aws_env

TEMPLATE = ROOT / "infra" / "template.yaml"
ACCOUNT = iamcheck.DEFAULT_ACCOUNT
BUCKET = "dogbreed-artifacts-test"
SAGEMAKER_ROLE = "DogBreedSageMakerRole"
PHYSICAL = {"ArtifactBucket": BUCKET, "SageMakerExecutionRole": SAGEMAKER_ROLE}
# the template's parameters without defaults, as a stack would be created
PARAMETERS = {"RepositoryUrl": "https://github.com/example/dogbreed-mlops.git",
              "RepositoryId": "example/dogbreed-mlops",
              "ConnectionArn": f"arn:aws:codeconnections:us-east-1:{ACCOUNT}:connection/"
                               "0a1b2c3d-1111-2222-3333-444455556666"}


@pytest.fixture
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto's backends are global to this process: start from an empty account, whatever
    # another test left there (else the group exists and its creation is never checked)
    requests.post(f"{url}/moto-api/reset").raise_for_status()
    yield url
    server.stop()


def build_script() -> tuple[str, dict]:
    doc = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    (script,) = doc["phases"]["build"]["commands"]
    return (script.replace(".venv/bin/python", sys.executable),
            {k: str(v) for k, v in doc["env"]["variables"].items()})


def test_two_pushes_make_only_calls_the_build_role_allows(moto_server, tmp_path):
    boto3.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
                  ).client("s3", endpoint_url=moto_server).create_bucket(Bucket=BUCKET)
    script, variables = build_script()
    # what the CodeBuild project sets (infra/template.yaml) and CodeBuild itself provides
    env = offline_aws_env(tmp_path, **variables, AWS_ENDPOINT_URL=moto_server,
                          SAGEMAKER_ROLE_ARN=f"arn:aws:iam::{ACCOUNT}:role/{SAGEMAKER_ROLE}",
                          DOGBREED_BUCKET=BUCKET, CODEBUILD_RESOLVED_SOURCE_VERSION="abc123")
    calls_file = tmp_path / "calls.jsonl"
    for push in ("first", "second"):
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300,
                              env={**env, **iamcheck.recording_env(calls_file, env)})
        assert proc.returncode == 0, f"{push} push: {proc.stdout}\n{proc.stderr}"
        if push == "first":  # no data staged yet: upserted, not started (no failure mail)
            assert "not started: s3://" in proc.stdout and "started execution" not in \
                proc.stdout
            aws = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t",
                                region_name="us-east-1")
            aws.client("s3", endpoint_url=moto_server).put_object(
                Bucket=BUCKET, Key="dogbreed/data/dogImages.zip", Body=b"zip")
            # a version approved since: the start passes it to Evaluate
            from conftest import create_model_package
            create_model_package(aws.client("sagemaker", endpoint_url=moto_server),
                                 "DogBreedModels", f"s3://{BUCKET}/m/model.tar.gz", "Approved")
        else:
            assert "started execution" in proc.stdout
            assert "Evaluate compares the new model with DogBreedModels version 1" in \
                proc.stderr
    calls = iamcheck.read_calls(calls_file)
    operations = {f"{c['service']}.{c['operation']}" for c in calls}
    # the paths that matter were really taken: create, update (tags merged), start, uploads
    assert {"sagemaker.CreatePipeline", "sagemaker.UpdatePipeline", "sagemaker.ListTags",
            "sagemaker.StartPipelineExecution", "sagemaker.CreateModelPackageGroup",
            "s3.PutObject", "sagemaker.ListModelPackages",
            "sagemaker.DescribeModelPackage"} <= operations, sorted(operations)
    statements = iamcheck.role_statements(TEMPLATE, "BuildProjectRole", account=ACCOUNT,
                                          physical_names=PHYSICAL, parameters=PARAMETERS)
    problems = iamcheck.check_calls(calls, statements, account=ACCOUNT)
    assert problems == [], "\n".join(problems)
