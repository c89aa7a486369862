"""Scheduled monitoring of a SageMaker endpoint (boto3): what the deploy sets up after prod
goes live. SageMaker Model Monitor is closed to new customers (and its built-in monitors are for
tabular data), so the deploy schedules a plain processing job of its own:

- an EventBridge Scheduler schedule ``<prefix>-monitor-<stage>`` (every ``monitor_hours``,
  hourly by default) whose universal target calls ``sagemaker:CreateProcessingJob``: the job runs
  ``scripts/monitor.py`` (uploaded with the ``breedkit`` modules it imports, content-addressed,
  under ``s3://<bucket>/<prefix>/monitoring/code/<digest>/``) in the version's own CPU
  inference image, on the endpoint's capture prefix, against the version's drift baseline (the
  package's DriftCheckBaselines ModelDataQuality statistics), for the window that ends at the
  scheduled time. Its report goes to ``s3://<bucket>/<prefix>/monitoring/<endpoint>/<run id>/``.
- CloudWatch Logs metric filters on ``/aws/sagemaker/ProcessingJobs`` that turn the job's
  metrics line (``{"dogbreed_monitor": 1, ...}``) into CloudWatch metrics, namespace
  ``DogBreed/Monitor``, dimensions EndpointName and ModelVersion: the template's drift alarm
  watches ``Drift`` and tells the notification topic.

The schedule is created or updated at every deploy (each version has its own baseline); a
version without a baseline, or an endpoint without capture, gets no schedule (one that exists is
deleted, so it cannot fail hourly). The job's request is checked against botocore's
CreateProcessingJob shape before the schedule is written. No numpy or SDK: the deploy job
installs only boto3.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from breedkit.monitorspec import DIMENSIONS, MARKER, METRICS, NAMESPACE  # noqa: F401
from pipelines.shapes import validate_arguments

LOG_GROUP = "/aws/sagemaker/ProcessingJobs"
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# what monitor.py imports, and nothing more (tests/test_monitor.py runs it from these alone)
CODE_FILES = ("monitor.py", "breedkit/__init__.py", "breedkit/capture.py", "breedkit/drift.py",
              "breedkit/contract.py", "breedkit/images.py", "breedkit/monitorspec.py")
# keeps the capture prefix non-empty until the first request is captured: a processing job
# whose S3 input matches no object fails. Small enough to stay out of the template's expiry
# rule for captured data (ObjectSizeGreaterThan).
PLACEHOLDER = "_monitoring-placeholder"
PLACEHOLDER_BODY = b"keep\n"
ROOT = "/opt/ml/processing"
RUN_ID = "<aws.scheduler.execution-id>"  # EventBridge Scheduler fills these in at each run
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
# SageMaker writes a capture file minutes after its first request: a run judges the window that
# ended this long before its scheduled time, so that the window's files are complete
LAG = "15m"
UNIVERSAL_TARGET = "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
MAX_JOB_NAME = 63
EXECUTION_ID_LENGTH = 16  # e.g. d32c5kddcf5bb8c3 (EventBridge Scheduler's documentation)


class MonitoringError(Exception):
    pass


def iso_now() -> str:
    """Now, as the window's floor: the runs judge only traffic since this version's deploy."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule_name(prefix: str, stage: str) -> str:
    return f"{prefix}-monitor-{stage}"


def capture_destination(bucket: str, prefix: str, stage: str) -> str:
    """DataCaptureConfig's DestinationS3Uri: SageMaker adds ``/<endpoint>/<variant>/yyyy/..``."""
    return f"s3://{bucket}/{prefix}/data-capture/{stage}"


def job_name_prefix(prefix: str, stage: str) -> str:
    """``<prefix>-monitor-<stage>-``, shortened so the run id still fits SageMaker's 63."""
    room = MAX_JOB_NAME - EXECUTION_ID_LENGTH - len(f"-monitor-{stage}-")
    return f"{prefix[:room].rstrip('-')}-monitor-{stage}-"


def baseline_of(package: dict) -> str | None:
    """The S3 URI of the version's drift baseline, None for a version registered without."""
    try:
        return package["DriftCheckBaselines"]["ModelDataQuality"]["Statistics"]["S3Uri"]
    except (KeyError, TypeError):
        return None


def upload_code(s3, bucket: str, prefix: str) -> str:
    """The monitoring script and the modules it imports, under a key of their content."""
    files = {name: (SCRIPTS / name).read_bytes() for name in CODE_FILES}
    digest = hashlib.sha256(json.dumps({k: hashlib.sha256(v).hexdigest()
                                        for k, v in files.items()}, sort_keys=True).encode())
    key = f"{prefix}/monitoring/code/{digest.hexdigest()[:16]}"
    for name, body in files.items():
        s3.put_object(Bucket=bucket, Key=f"{key}/{name}", Body=body)
    return f"s3://{bucket}/{key}/"


def processing_request(*, endpoint: str, stage: str, version: int, prefix: str, bucket: str,
                       role_arn: str, image: str, code_uri: str, baseline_uri: str,
                       hours: int, instance_type: str, deployed: str) -> dict:
    """CreateProcessingJob's request, with EventBridge Scheduler's run id and scheduled time
    where each run fills them in."""
    def s3_input(name: str, uri: str) -> dict:
        return {"InputName": name, "S3Input": {
            "S3Uri": uri, "LocalPath": f"{ROOT}/input/{name}", "S3DataType": "S3Prefix",
            "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}}

    capture = f"{capture_destination(bucket, prefix, stage)}/{endpoint}/"
    return {
        "ProcessingJobName": job_name_prefix(prefix, stage) + RUN_ID,
        "RoleArn": role_arn,
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": ["python3", f"{ROOT}/input/code/monitor.py"],
            "ContainerArguments": [
                "--capture-dir", f"{ROOT}/input/capture", "--baseline", f"{ROOT}/input/baseline",
                "--output-dir", f"{ROOT}/output", "--since", f"{hours}h",
                "--until", SCHEDULED_TIME, "--lag", LAG, "--not-before", deployed,
                "--endpoint", endpoint,
                "--model-version", str(version)]},
        "ProcessingInputs": [s3_input("code", code_uri), s3_input("capture", capture),
                             s3_input("baseline", baseline_uri)],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "monitor", "S3Output": {
            "S3Uri": f"s3://{bucket}/{prefix}/monitoring/{endpoint}/{RUN_ID}",
            "LocalPath": f"{ROOT}/output", "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 30}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Tags": [{"Key": "EndpointName", "Value": endpoint},
                 {"Key": "ModelPackageVersion", "Value": str(version)}],
    }


def check_request(request: dict) -> None:
    """What SageMaker would refuse in the request, with a run's values filled in."""
    filled = json.loads(json.dumps(request).replace(RUN_ID, "d32c5kddcf5bb8c3")
                        .replace(SCHEDULED_TIME, "2026-12-06T15:00:00Z"))
    problems = validate_arguments("CreateProcessingJob", filled)
    if problems:
        raise MonitoringError("the monitoring job's request would be refused: "
                              + "; ".join(problems))


def metrics_pattern(prefix: str) -> str:
    """The metrics lines of this prefix's endpoints (another stack's share the log group)."""
    return f'{{ $.{MARKER} = 1 && $.EndpointName = "{prefix}-*" }}'


def ensure_metric_filters(logs, prefix: str) -> None:
    """One metric filter per metric of the job's metrics line (PutMetricFilter replaces a
    filter of the same name). The log group exists once any processing job ran; a new account
    may not have it yet."""
    try:
        logs.create_log_group(logGroupName=LOG_GROUP)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    for metric in METRICS:
        logs.put_metric_filter(
            logGroupName=LOG_GROUP, filterName=f"{prefix}-monitor-{metric}",
            filterPattern=metrics_pattern(prefix),
            metricTransformations=[{
                "metricName": metric, "metricNamespace": NAMESPACE,
                "metricValue": f"$.{metric}",
                "dimensions": {name: f"$.{name}" for name in DIMENSIONS}}])


def _existing(scheduler, name: str) -> dict | None:
    try:
        return scheduler.get_schedule(Name=name)
    except scheduler.exceptions.ResourceNotFoundException:
        return None


def _deployed_since(existing: dict | None, version: int) -> str | None:
    """The window floor of an existing schedule of the same version (a re-run of the deploy
    keeps it: the version has served since then), else None."""
    try:
        args = json.loads(existing["Target"]["Input"])["AppSpecification"]["ContainerArguments"]
        named = dict(zip(args[::2], args[1::2]))
    except (TypeError, KeyError, ValueError):
        return None
    return named.get("--not-before") if named.get("--model-version") == str(version) else None


def delete_schedule(scheduler, name: str, echo) -> None:
    """Delete the schedule if there is one. A caller not allowed to (a deploy role of a stack
    from before monitoring) is told so in a line: the endpoint is live either way."""
    from botocore.exceptions import ClientError

    try:
        scheduler.delete_schedule(Name=name)
    except scheduler.exceptions.ResourceNotFoundException:
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("AccessDeniedException",
                                                             "AccessDenied"):
            raise
        echo(f"could not check for an old monitoring schedule {name} (not allowed: update the "
             f"stack from infra/template.yaml); delete it if there is one")
        return
    echo(f"deleted the monitoring schedule {name}")


def schedule(session, *, endpoint: str, stage: str, package: dict, prefix: str, bucket: str,
             role_arn: str, scheduler_role_arn: str, capture: bool, hours: int,
             instance_type: str, echo=print) -> str | None:
    """Create or update the endpoint's monitoring schedule; its name, or None (after saying
    why) when the endpoint cannot be monitored."""
    scheduler = session.client("scheduler")
    name = schedule_name(prefix, stage)
    version = int(package["ModelPackageVersion"])
    baseline = baseline_of(package)
    reason = None if capture else "data capture is off"
    if baseline is None:
        reason = f"version {version} has no drift baseline (registered before 2026-12)"
    if reason:
        echo(f"{endpoint}: not monitored: {reason}")
        delete_schedule(scheduler, name, echo)
        return None
    image = package["InferenceSpecification"]["Containers"][0]["Image"]
    s3 = session.client("s3")
    code = upload_code(s3, bucket, prefix)
    dest = capture_destination(bucket, prefix, stage).removeprefix(f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key=f"{dest}/{endpoint}/{PLACEHOLDER}", Body=PLACEHOLDER_BODY)
    existing = _existing(scheduler, name)
    request = processing_request(endpoint=endpoint, stage=stage, version=version, prefix=prefix,
                                 bucket=bucket, role_arn=role_arn, image=image, code_uri=code,
                                 baseline_uri=baseline, hours=hours,
                                 instance_type=instance_type,
                                 deployed=_deployed_since(existing, version) or iso_now())
    check_request(request)
    ensure_metric_filters(session.client("logs"), prefix)
    settings = dict(
        Name=name, ScheduleExpression=f"rate({hours} hour{'s' if hours > 1 else ''})",
        FlexibleTimeWindow={"Mode": "OFF"}, State="ENABLED",
        Description=f"monitors {endpoint} (version {version}) against its drift baseline",
        Target={"Arn": UNIVERSAL_TARGET, "RoleArn": scheduler_role_arn,
                "Input": json.dumps(request), "RetryPolicy": {"MaximumRetryAttempts": 2}})
    if existing is None:
        scheduler.create_schedule(**settings)
    else:
        scheduler.update_schedule(**settings)
    echo(f"{endpoint}: monitored every {hours} h against version {version}'s baseline "
         f"(schedule {name}; metrics in CloudWatch {NAMESPACE})")
    return name
