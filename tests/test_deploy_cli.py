"""``python -m pipelines.deploy`` as CodeBuild runs it: real processes against a moto server with
SageMaker's endpoint states (tests/fake_endpoints.py), with only what deploying needs
installed, and every AWS call it makes checked against the deploy role of infra/template.yaml.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
import requests

import iamcheck
from conftest import ROOT, create_model_package, import_blocker

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/MonitorScheduler"
CAPTURE_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = "deploy-artifacts"
GROUP = "DogBreedModels"
GOOD = json.dumps({"predictions": [{"label": "Beagle", "class": "016.Beagle", "index": 15,
                                    "probability": 0.8, "top_k": []}]})
@pytest.fixture
def server(tmp_path, fake_endpoints):
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    requests.post(url + "/moto-api/reset").raise_for_status()  # moto's state is per process
    blocker = import_blocker(tmp_path / "blocker", "requirements-deploy.txt")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SAGEMAKER_", "DOGBREED_", "PYTHON"))}
    env.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
               AWS_EC2_METADATA_DISABLED="true", SAGEMAKER_ROLE_ARN=ROLE,
               PYTHONPATH=str(blocker))
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")
    s3 = session.client("s3", endpoint_url=url)
    s3.create_bucket(Bucket=BUCKET)
    report = {"multiclass_classification_metrics": {"accuracy": {"value": 0.85}}}
    s3.put_object(Bucket=BUCKET, Key="evaluation/evaluation.json", Body=json.dumps(report))
    sm = session.client("sagemaker", endpoint_url=url)
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    metrics = {"ModelQuality": {"Statistics": {
        "ContentType": "application/json",
        "S3Uri": f"s3://{BUCKET}/evaluation/evaluation.json"}}}
    for version in (1, 2):
        baselines = {"ModelDataQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": f"s3://{BUCKET}/evaluation/{version}/baseline.json"}}}
        create_model_package(sm, GROUP, f"s3://{BUCKET}/model-{version}.tar.gz",
                             ModelMetrics=metrics, DriftCheckBaselines=baselines)
        for stage in ("staging", "prod"):
            fake_endpoints.serve(f"dogbreed-{stage}-v{version}", GOOD)
    yield {"env": env, "sm": sm, "tmp": tmp_path, "fake": fake_endpoints}
    requests.post(url + "/moto-api/reset")
    moto.stop()


def deploy(server, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.deploy", "--bucket", BUCKET, "--poll-seconds", "0",
         "--outputs", str(server["tmp"] / "deploy.env"), *args],
        cwd=ROOT, env=env or server["env"], capture_output=True, text=True, timeout=120)


def set_status(sm, version, status):
    packages = sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]
    arn = next(p["ModelPackageArn"] for p in packages if p["ModelPackageVersion"] == version)
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)


def test_the_deploy_command_needs_none_of_the_training_packages(server):
    env = server["env"]
    probe = subprocess.run([sys.executable, "-c", "import numpy"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert "blocked: not in requirements-deploy.txt" in probe.stderr  # the blocker works
    help_ = subprocess.run([sys.executable, "-m", "pipelines.deploy", "--help"], env=env,
                           cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0 and "--outputs" in help_.stdout, help_.stderr
    set_status(server["sm"], 1, "Approved")
    proc = deploy(server, "--stage", "staging")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dogbreed-staging: DogBreedModels version 1 InService" in proc.stdout
    assert "TEST_ACCURACY=0.85" in (server["tmp"] / "deploy.env").read_text()
    requirements = [line.split("#")[0].strip().lower() for line in
                    (ROOT / "requirements-deploy.txt").read_text().splitlines()]
    assert sorted(filter(None, requirements)) == ["boto3", "requests"]


def test_every_aws_call_of_the_deploy_is_allowed_by_the_deploy_role(server):
    """Staging, prod (a failed create, then its repair), a re-run, an update, a rollback
    after a rejection, a prod instance-type change (autoscaling deregistered around it), and a
    GPU deploy (the version's GPU specification added), recorded."""
    sm, record = server["sm"], server["tmp"] / "calls.jsonl"
    env = {**server["env"], **iamcheck.recording_env(record, server["env"]),
           "MONITOR_ROLE_ARN": SCHEDULER_ROLE, "DATA_CAPTURE_KMS_KEY": CAPTURE_KEY}

    def ok(*args):
        proc = deploy(server, *args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    set_status(sm, 1, "Approved")
    assert "creating with" in ok("--stage", "staging")
    server["fake"].next_create("fail")
    assert deploy(server, "--stage", "prod", env=env).returncode == 1
    assert "deleting it to create it again" in ok("--stage", "prod")  # repairs
    assert "nothing to do" in ok("--stage", "staging")  # a re-run
    set_status(sm, 2, "Approved")
    assert "blue/green update" in ok("--stage", "staging")
    set_status(sm, 2, "Rejected")
    ok("--stage", "staging")  # rolls back to version 1
    assert sm.describe_endpoint(EndpointName="dogbreed-staging")["EndpointConfigName"] == \
        "dogbreed-staging-v1"
    server["fake"].serve_all(GOOD)
    assert "deregistering autoscaling" in ok("--stage", "prod", "--instance-type",
                                             "ml.m5.xlarge")
    ok("--stage", "prod", "--capture-percent", "0")  # capture off: the schedule is deleted
    # a GPU instance type: the version gets its GPU inference specification first
    assert "added the 'gpu' inference specification" in ok("--stage", "staging",
                                                           "--instance-type", "ml.g4dn.xlarge")

    calls = iamcheck.read_calls(record)
    operations = {f"{c['service']}.{c['operation']}" for c in calls}
    assert {"sagemaker.UpdateEndpoint", "sagemaker.DeleteEndpoint", "sagemaker.UpdateModelPackage",
            "sagemaker-runtime.InvokeEndpoint",
            "application-autoscaling.RegisterScalableTarget",
            "application-autoscaling.DeregisterScalableTarget", "s3.GetObject",
            "scheduler.CreateSchedule", "scheduler.UpdateSchedule", "scheduler.DeleteSchedule",
            "logs.PutMetricFilter", "s3.PutObject"} <= operations
    names = {"ArtifactBucket": BUCKET, "SageMakerExecutionRole": ROLE.rpartition("/")[2],
             "MonitorSchedulerRole": SCHEDULER_ROLE.rpartition("/")[2]}
    statements = iamcheck.role_statements(ROOT / "infra/template.yaml", "DeployProjectRole",
                                          physical_names=names)
    assert iamcheck.check_calls(calls, statements) == []

    # what the schedule's universal target calls, as the scheduler's role
    (schedule,) = [c for c in calls if c["operation"] == "CreateSchedule"]
    request = json.loads(schedule["params"]["Target"]["Input"].replace(
        "<aws.scheduler.execution-id>", "d32c5kddcf5bb8c3"))
    job = {"service": "sagemaker", "operation": "CreateProcessingJob", "region": "us-east-1",
           "params": request}
    scheduler_statements = iamcheck.role_statements(
        ROOT / "infra/template.yaml", "MonitorSchedulerRole", physical_names=names)
    assert iamcheck.check_calls([job], scheduler_statements) == []
