"""Deploy an approved model package to SageMaker real-time endpoints (boto3).

Used by ``python -m pipelines.deploy`` (without --local). Names and tags say which model
package version a resource serves:

    Model           <prefix>-v<version>[-gpu]
    EndpointConfig  <prefix>-<stage>-v<version>[-gpu]
    Endpoint        <prefix>-<stage>        tags: ModelPackageArn, ModelPackageVersion, SmokeTest

Staging gets the newest Approved version (an older one when the newest was rejected: a
rollback); production gets what passed staging. Updates are blue/green with automatic rollback
on a CloudWatch alarm (5xx errors of the endpoint): while the update bakes the smoke test
invokes the endpoint at every poll, so a bad version trips the alarm; once InService it checks
that the endpoint serves the new config (SageMaker may have rolled back) and the answer. The
tags change only once the endpoint serves the new version.

A run repairs what an earlier one left: it waits out an endpoint that is Creating or Updating,
deletes a Failed one and creates it again, smoke-tests a live version that never passed, and
registers production's autoscaling when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from pipelines import spec
from pipelines.aws import describe_or_none
from pipelines.deploy import monitoring, smoke

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
GPU_INSTANCE = re.compile(r"^ml\.(g|p)\d")  # ml.g4dn, ml.g5, ml.p3, ...: NVIDIA GPUs
GPU_SPEC = spec.GPU_INFERENCE_SPECIFICATION  # the package's AdditionalInferenceSpecification


@dataclass
class DeploySettings:
    prefix: str
    group: str
    role_arn: str
    bucket: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    capture_percent: float = 100.0  # of the requests captured (0: capture off)
    capture_kms_key: str | None = None  # encrypts the captured objects (the stack's key)
    monitor_role_arn: str | None = None  # EventBridge Scheduler's role: prod is monitored
    monitor_hours: int = 1
    monitor_instance_type: str = "ml.m5.large"
    max_instances: int = 4
    invocations_per_instance: int = 100
    poll_seconds: float = 20.0  # between DescribeEndpoint calls (and smoke requests)
    max_wait_seconds: float = 3600.0  # for one create, update or delete
    bake_seconds: int = 300  # blue/green: the new fleet takes traffic under the alarm
    termination_wait_seconds: int = 120  # the old fleet stays for a quick rollback


class SageMakerDeployError(Exception):
    pass


def endpoint_name(s: DeploySettings, stage: str) -> str:
    return f"{s.prefix}-{stage}"


def is_gpu(instance_type: str) -> bool:
    return bool(GPU_INSTANCE.match(instance_type))


def _tags(sm, arn: str) -> dict:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn).get("Tags", [])}


def version_tags(package: dict, smoke_test: str) -> list[dict]:
    return [{"Key": "ModelPackageArn", "Value": package["ModelPackageArn"]},
            {"Key": "ModelPackageVersion", "Value": str(package["ModelPackageVersion"])},
            {"Key": "SmokeTest", "Value": smoke_test}]


# --- what to deploy ----------------------------------------------------------------------------

def newest_approved(session, sm, s: DeploySettings, current: dict | None, echo) -> dict | None:
    """The package staging should serve; None (after saying so) when there is none and nothing
    is serving. An endpoint serving a version no longer approved, with nothing approved to
    replace it, is an error: it is left as it is."""
    from pipelines.registry import SageMakerRegistry

    newest = SageMakerRegistry(session).latest_approved(s.group)
    if newest is not None:
        return sm.describe_model_package(ModelPackageName=newest.arn)
    if current is None:
        echo(f"no Approved version in {s.group} yet: approve one with "
             f"python -m pipelines.registry --sagemaker approve VERSION")
        return None
    tags = _tags(sm, current["EndpointArn"])
    status = "no longer Approved"
    if tags.get("ModelPackageArn"):
        package = sm.describe_model_package(ModelPackageName=tags["ModelPackageArn"])
        status = package["ModelApprovalStatus"]
    raise SageMakerDeployError(
        f"{current['EndpointName']} serves {s.group} version "
        f"{tags.get('ModelPackageVersion', '?')}, which is {status} now, and no Approved version "
        f"remains: the endpoint is left as it is; approve a version and deploy again")


def staged_package(sm, s: DeploySettings) -> dict:
    """The package serving in staging: it must have passed its smoke test and still be
    Approved."""
    name = endpoint_name(s, "staging")
    current = describe_or_none(lambda: sm.describe_endpoint(EndpointName=name))
    if current is None:
        raise SageMakerDeployError(f"{name} does not exist: deploy to staging first")
    tags = _tags(sm, current["EndpointArn"])
    if tags.get("SmokeTest") != "passed":
        raise SageMakerDeployError(f"{name} has not passed its smoke test; production only "
                                   f"gets a version that passed staging")
    package = sm.describe_model_package(ModelPackageName=tags["ModelPackageArn"])
    if package["ModelApprovalStatus"] != "Approved":
        raise SageMakerDeployError(
            f"{s.group} version {package['ModelPackageVersion']} is "
            f"{package['ModelApprovalStatus']} now; it will not go to production")
    return package


# --- resources ---------------------------------------------------------------------------------

def gpu_image(cpu_image: str) -> str | None:
    """The GPU image of an AWS PyTorch inference image (``...:2.6.0-cpu-py312`` ->
    ``...:2.6.0-gpu-py312``), None for an image of another naming."""
    repository, _, tag = cpu_image.rpartition(":")
    if "/pytorch-inference" not in repository or "-cpu-" not in f"-{tag}-":
        return None
    return f"{repository}:{'-'.join('gpu' if part == 'cpu' else part for part in tag.split('-'))}"


def gpu_specification(package: dict) -> dict | None:
    """The package's CPU inference specification again, with the GPU image: what the deploy
    adds to a version the first time it goes to a GPU instance type (UpdateModelPackage's
    AdditionalInferenceSpecificationsToAdd, as the SDK's ModelPackage.add_inference_specification
    does). Not at registration: the Pipelines service parses RegisterModel's arguments with its
    own model, and SDK 2.x emits no AdditionalInferenceSpecifications there."""
    cpu = package["InferenceSpecification"]
    containers = []
    for item in cpu["Containers"]:
        image = gpu_image(item["Image"])
        if image is None:
            return None
        containers.append({k: v for k, v in {**item, "Image": image}.items()
                           if k in ("Image", "ModelDataUrl", "Environment", "Framework",
                                    "FrameworkVersion", "NearestModelName")})
    return {"Name": GPU_SPEC, "Description": "PyTorch GPU inference image, for GPU instance types",
            "Containers": containers,
            "SupportedContentTypes": list(cpu.get("SupportedContentTypes", [])),
            "SupportedResponseMIMETypes": list(cpu.get("SupportedResponseMIMETypes", [])),
            "SupportedRealtimeInferenceInstanceTypes": list(spec.GPU_INFERENCE_INSTANCES),
            "SupportedTransformInstanceTypes": [spec.GPU_INFERENCE_INSTANCES[0]]}


def container(sm, s: DeploySettings, package: dict) -> dict:
    """The model's container: the package's GPU inference specification on GPU instances
    (added to the version first if it has none)."""
    arn = package["ModelPackageArn"]
    if not is_gpu(s.instance_type):
        return {"ModelPackageName": arn}
    names = [entry.get("Name")
             for entry in package.get("AdditionalInferenceSpecifications", [])]
    if GPU_SPEC not in names:
        addition = gpu_specification(package)
        if addition is None:
            raise SageMakerDeployError(
                f"{s.instance_type} is a GPU instance type, but {s.group} version "
                f"{package['ModelPackageVersion']} serves an image that is not an AWS PyTorch "
                f"CPU inference image ({package['InferenceSpecification']['Containers'][0]['Image']}),"
                f" so no GPU image can be derived: deploy it with a CPU instance type "
                f"(--instance-type ml.m5.large)")
        sm.update_model_package(ModelPackageArn=arn,
                                AdditionalInferenceSpecificationsToAdd=[addition])
        print(f"added the '{GPU_SPEC}' inference specification ({addition['Containers'][0]['Image']}) "
              f"to {s.group} version {package['ModelPackageVersion']}", flush=True)
    return {"ModelPackageName": arn, "InferenceSpecificationName": GPU_SPEC}


def ensure_model(sm, s: DeploySettings, package: dict) -> str:
    version = package["ModelPackageVersion"]
    primary = container(sm, s, package)
    name = f"{s.prefix}-v{version}" + ("-gpu" if "InferenceSpecificationName" in primary else "")
    if not describe_or_none(lambda: sm.describe_model(ModelName=name)):
        sm.create_model(ModelName=name, ExecutionRoleArn=s.role_arn, PrimaryContainer=primary,
                        Tags=version_tags(package, "n/a")[:2])
    return name


def ensure_endpoint_config(sm, s: DeploySettings, stage: str, model: str, version: int) -> str:
    """``<prefix>-<stage>-v<N>[-gpu]``; when that config exists with other instance settings
    (type, count, data capture), a config of these settings with a short suffix of their own,
    so a changed setting is an update, not "nothing to do"."""
    variant = {"VariantName": VARIANT, "ModelName": model, "InstanceType": s.instance_type,
               "InitialInstanceCount": s.instance_count}
    capture = {"DataCaptureConfig": {
        "EnableCapture": True, "InitialSamplingPercentage": round(s.capture_percent),
        "DestinationS3Uri": monitoring.capture_destination(s.bucket, s.prefix, stage),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        **({"KmsKeyId": s.capture_kms_key} if s.capture_kms_key else {})}
    } if round(s.capture_percent) > 0 else {}
    name = f"{s.prefix}-{stage}-v{version}" + ("-gpu" if model.endswith("-gpu") else "")
    existing = describe_or_none(lambda: sm.describe_endpoint_config(EndpointConfigName=name))
    if existing and not _same_settings(existing, variant, capture):
        digest = hashlib.sha256(json.dumps([variant, capture], sort_keys=True).encode())
        name = f"{name}-{digest.hexdigest()[:6]}"
        existing = describe_or_none(lambda: sm.describe_endpoint_config(EndpointConfigName=name))
    if not existing:
        sm.create_endpoint_config(
            EndpointConfigName=name, ProductionVariants=[variant],
            Tags=[{"Key": "ModelPackageVersion", "Value": str(version)}], **capture)
    return name


def _same_settings(config: dict, variant: dict, capture: dict) -> bool:
    (existing,) = config["ProductionVariants"][:1] or [{}]
    same_variant = all(existing.get(k) == v for k, v in variant.items())
    had = config.get("DataCaptureConfig", {})
    wanted = capture.get("DataCaptureConfig", {})
    same_capture = all(had.get(key) == wanted.get(key) for key in (
        "EnableCapture", "DestinationS3Uri", "InitialSamplingPercentage", "KmsKeyId"))
    return same_variant and same_capture


def instance_type_of(sm, config: str) -> str:
    return sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0][
        "InstanceType"]


def rollback_alarm(cloudwatch, endpoint: str) -> str:
    name = f"{endpoint}-5xx"
    cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint},
                    {"Name": "VariantName", "Value": VARIANT}],
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    return name


def deregister_autoscaling(autoscaling, endpoint: str, echo) -> None:
    """Before an instance-type change: AWS refuses one on an autoscaled variant. (The next
    ``ensure_autoscaling`` registers it again; deregistering removes its policies too.)"""
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    where = dict(ServiceNamespace="sagemaker", ScalableDimension=SCALABLE_DIMENSION)
    if autoscaling.describe_scalable_targets(ResourceIds=[resource], **where)["ScalableTargets"]:
        echo(f"{endpoint}: deregistering autoscaling to change the instance type (registered "
             f"again after the update)")
        autoscaling.deregister_scalable_target(ResourceId=resource, **where)


def ensure_autoscaling(autoscaling, s: DeploySettings, endpoint: str, echo) -> None:
    """Target tracking on invocations per instance, registered unless it already is (a run
    that failed after the deploy left it out)."""
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    policy = f"{endpoint}-invocations"
    where = dict(ServiceNamespace="sagemaker", ScalableDimension=SCALABLE_DIMENSION)
    targets = autoscaling.describe_scalable_targets(ResourceIds=[resource], **where)
    policies = autoscaling.describe_scaling_policies(ResourceId=resource, PolicyNames=[policy],
                                                     **where)
    if targets["ScalableTargets"] and policies["ScalingPolicies"]:
        return
    echo(f"{endpoint}: registering autoscaling ({s.instance_count} to "
         f"{max(s.instance_count, s.max_instances)} instances)")
    autoscaling.register_scalable_target(
        ResourceId=resource, MinCapacity=s.instance_count,
        MaxCapacity=max(s.instance_count, s.max_instances), **where)
    autoscaling.put_scaling_policy(
        PolicyName=policy, ResourceId=resource, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(s.invocations_per_instance),
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60}, **where)


# --- waiting and smoke tests -------------------------------------------------------------------

def wait(sm, s: DeploySettings, name: str, while_updating=None) -> dict | None:
    """DescribeEndpoint every poll until the endpoint is no longer busy (None: it is gone);
    ``while_updating()`` runs at each poll that finds it Updating."""
    deadline = time.monotonic() + s.max_wait_seconds
    while True:
        described = describe_or_none(lambda: sm.describe_endpoint(EndpointName=name))
        status = described["EndpointStatus"] if described else None
        if status not in BUSY:
            return described
        if status == "Updating" and while_updating:
            while_updating()
        if time.monotonic() > deadline:
            raise SageMakerDeployError(f"{name} is still {status} after "
                                       f"{s.max_wait_seconds:.0f} s; run the deploy again later")
        time.sleep(s.poll_seconds)


def settle(sm, s: DeploySettings, name: str, echo) -> dict | None:
    """The endpoint once nothing is in progress on it; a Failed one is deleted (None)."""
    current = describe_or_none(lambda: sm.describe_endpoint(EndpointName=name))
    if current and current["EndpointStatus"] in BUSY:
        echo(f"{name} is {current['EndpointStatus']}: waiting for that to finish first")
        current = wait(sm, s, name)
    if current and current["EndpointStatus"] == "Failed":
        echo(f"{name} is Failed ({current.get('FailureReason', 'no reason given')}): deleting "
             f"it to create it again")
        sm.delete_endpoint(EndpointName=name)
        current = wait(sm, s, name)
    return current


def smoke_request(runtime, name: str) -> str | None:
    """None if the endpoint answers the smoke image well, else the problem."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = runtime.invoke_endpoint(EndpointName=name, ContentType="application/json",
                                           Accept="application/json",
                                           Body=smoke.json_payload())
        return smoke.problem_with(response["Body"].read())
    except (ClientError, BotoCoreError) as exc:
        return f"{type(exc).__name__}: {exc}"


# --- the deploy --------------------------------------------------------------------------------

class Deployment:
    """One stage's endpoint brought to one package version."""

    def __init__(self, session, s: DeploySettings, stage: str, package: dict, echo=print):
        self.session, self.s, self.stage, self.package, self.echo = \
            session, s, stage, package, echo
        self.sm = session.client("sagemaker")
        self.runtime = session.client("sagemaker-runtime")
        self.name = endpoint_name(s, stage)
        self.version = int(package["ModelPackageVersion"])
        self.label = f"{s.group} version {self.version}"

    def run(self, current: dict | None) -> None:
        model = ensure_model(self.sm, self.s, self.package)
        config = ensure_endpoint_config(self.sm, self.s, self.stage, model, self.version)
        if current is None:
            self.create(config)
        elif current["EndpointConfigName"] != config:
            self.update(current, config)
        elif self.passed(current):
            self.echo(f"{self.name} already serves {self.label}: nothing to do")
        else:
            self.echo(f"{self.name} serves {self.label}, which has not passed its smoke test: "
                      f"testing it")
            self.final_check(current["EndpointArn"], previous=None)
        if self.stage == "prod":
            ensure_autoscaling(self.session.client("application-autoscaling"), self.s,
                               self.name, self.echo)
            self.monitor()

    def monitor(self) -> None:
        """Prod's monitoring schedule, on this version's baseline (staging sees smoke tests)."""
        if not self.s.monitor_role_arn:
            self.echo(f"{self.name}: not monitored: no scheduler role (--monitor-role-arn, "
                      f"MONITOR_ROLE_ARN; the template's MonitorSchedulerRole)")
            # a schedule of an earlier deploy would judge this version by another's baseline
            monitoring.delete_schedule(self.session.client("scheduler"),
                                       monitoring.schedule_name(self.s.prefix, self.stage),
                                       self.echo)
            return
        try:
            monitoring.schedule(
                self.session, endpoint=self.name, stage=self.stage, package=self.package,
                prefix=self.s.prefix, bucket=self.s.bucket, role_arn=self.s.role_arn,
                scheduler_role_arn=self.s.monitor_role_arn,
                capture=round(self.s.capture_percent) > 0, hours=self.s.monitor_hours,
                instance_type=self.s.monitor_instance_type, echo=self.echo)
        except monitoring.MonitoringError as exc:
            raise SageMakerDeployError(f"{self.name} serves {self.label}, but its monitoring "
                                       f"was not set up: {exc}") from None

    def passed(self, current: dict) -> bool:
        tags = _tags(self.sm, current["EndpointArn"])
        return tags.get("SmokeTest") == "passed" and \
            tags.get("ModelPackageVersion") == str(self.version)

    def create(self, config: str) -> None:
        rollback_alarm(self.session.client("cloudwatch"), self.name)  # for later updates
        self.echo(f"{self.name}: creating with {self.label}")
        self.sm.create_endpoint(EndpointName=self.name, EndpointConfigName=config,
                                Tags=version_tags(self.package, "pending"))
        described = wait(self.sm, self.s, self.name)
        if described is None or described["EndpointStatus"] != "InService":
            reason = (described or {}).get("FailureReason", "it is gone")
            raise SageMakerDeployError(f"creating {self.name} with {self.label} failed: "
                                       f"{reason}; the next run deletes it and tries again")
        self.final_check(described["EndpointArn"], previous=None)

    def update(self, current: dict, config: str) -> None:
        old = current["EndpointConfigName"]
        old_tags = _tags(self.sm, current["EndpointArn"])
        alarm = rollback_alarm(self.session.client("cloudwatch"), self.name)
        if self.stage == "prod" and instance_type_of(self.sm, old) != self.s.instance_type:
            deregister_autoscaling(self.session.client("application-autoscaling"), self.name,
                                   self.echo)
        self.echo(f"{self.name}: blue/green update from {old} to {config} (smoke requests "
                  f"while it bakes)")
        self.sm.update_endpoint(
            EndpointName=self.name, EndpointConfigName=config,
            DeploymentConfig={
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": self.s.bake_seconds},
                    "TerminationWaitInSeconds": self.s.termination_wait_seconds},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]}})
        described = wait(self.sm, self.s, self.name,
                         while_updating=lambda: smoke_request(self.runtime, self.name))
        self.check_update(described, config)
        self.final_check(described["EndpointArn"], previous=(old, old_tags))

    def check_update(self, described: dict | None, config: str) -> None:
        if described is None or described["EndpointStatus"] != "InService":
            reason = (described or {}).get("FailureReason", "it is gone")
            raise SageMakerDeployError(f"updating {self.name} to {self.label} failed: {reason}; "
                                       f"the next run repairs it")
        if described["EndpointConfigName"] != config:
            reason = described.get("FailureReason") or "its 5xx alarm fired while it baked"
            raise SageMakerDeployError(
                f"{self.name}: the update to {self.label} was rolled back to "
                f"{described['EndpointConfigName']} by SageMaker ({reason}); the endpoint "
                f"serves the old version")

    def final_check(self, arn: str, previous: tuple[str, dict] | None) -> None:
        """Tag the endpoint with this version and smoke-test it; on failure put ``previous``
        (config name, tags) back."""
        self.sm.add_tags(ResourceArn=arn, Tags=version_tags(self.package, "pending"))
        problem = smoke_request(self.runtime, self.name)
        if not problem:
            self.sm.add_tags(ResourceArn=arn, Tags=[{"Key": "SmokeTest", "Value": "passed"}])
            self.echo(f"{self.name}: {self.label} InService (smoke test passed)")
            return
        self.sm.add_tags(ResourceArn=arn, Tags=[{"Key": "SmokeTest", "Value": "failed"}])
        if previous is None:
            raise SageMakerDeployError(f"smoke test of {self.name} version {self.version} "
                                       f"failed: {problem}")
        old, old_tags = previous
        self.sm.update_endpoint(EndpointName=self.name, EndpointConfigName=old)
        wait(self.sm, self.s, self.name)
        self.sm.add_tags(ResourceArn=arn, Tags=[{"Key": k, "Value": v}
                                                for k, v in old_tags.items()])
        raise SageMakerDeployError(f"smoke test of {self.name} version {self.version} failed "
                                   f"({problem}); rolled back to {old}")


def deploy_stage(session, s: DeploySettings, stage: str, echo=print,
                 expect_version: int | None = None) -> dict | None:
    """Bring ``<prefix>-<stage>`` to the version it should serve; that package, or None when
    there is nothing to deploy. ``expect_version`` (prod): the version approved for production,
    which staging must still serve."""
    sm = session.client("sagemaker")
    current = settle(sm, s, endpoint_name(s, stage), echo)
    if stage == "staging":
        package = newest_approved(session, sm, s, current, echo)
    else:
        package = staged_package(sm, s)
        if expect_version is not None and int(package["ModelPackageVersion"]) != expect_version:
            raise SageMakerDeployError(
                f"{endpoint_name(s, 'staging')} serves {s.group} version "
                f"{package['ModelPackageVersion']}, not version {expect_version} that was "
                f"approved for production; prod is left as it is (the newer version goes "
                f"through its own approval)")
    if package is None:
        return None
    Deployment(session, s, stage, package, echo).run(current)
    return package


def outputs(session, package: dict, endpoint: str) -> dict:
    """What CodePipeline's approval message shows about the deployed version. The build
    registers both accuracies as CustomerMetadataProperties; versions registered before that
    have the test split's only, as ModelQuality statistics."""
    metadata = package.get("CustomerMetadataProperties", {})
    return {"MODEL_PACKAGE_GROUP": package.get("ModelPackageGroupName", ""),
            "MODEL_PACKAGE_VERSION": str(package["ModelPackageVersion"]),
            "MODEL_PACKAGE_ARN": package["ModelPackageArn"],
            "VALIDATION_ACCURACY": metadata.get("validation_accuracy", "unknown"),
            "TEST_ACCURACY": metadata.get("test_accuracy") or registered_accuracy(session,
                                                                                  package),
            "ENDPOINT_NAME": endpoint}


def registered_accuracy(session, package: dict) -> str:
    """accuracy from the package's ModelQuality statistics (evaluation.json), or "unknown"."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        body = session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        return str(spec.accuracy_of(json.loads(body)))
    except (KeyError, TypeError, ValueError, ClientError, BotoCoreError):
        return "unknown"
