"""Deploy an approved model package to SageMaker real-time endpoints (boto3).

Used by ``python -m pipelines.deploy`` (without --local). Names and tags say which model
package version a resource serves:

    Model           <prefix>-v<version>
    EndpointConfig  <prefix>-<stage>-v<version>
    Endpoint        <prefix>-<stage>        tags: ModelPackageArn, ModelPackageVersion, SmokeTest

Updates use a blue/green deployment with automatic rollback on a CloudWatch alarm (5xx errors
of the endpoint); production gets target-tracking autoscaling on invocations per instance.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from pipelines.aws import describe_or_none

VARIANT = "AllTraffic"


@dataclass
class DeploySettings:
    prefix: str
    group: str
    role_arn: str
    bucket: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    data_capture: bool = True
    max_instances: int = 4
    invocations_per_instance: int = 100


class SageMakerDeployError(Exception):
    pass


def _tags(sm, arn: str) -> dict:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn).get("Tags", [])}


def smoke_payload() -> bytes:
    from pipelines.deploy import smoke_image

    return json.dumps({"image": base64.b64encode(smoke_image()).decode()}).encode()


def smoke_test(runtime, endpoint: str) -> str | None:
    try:
        response = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                           Accept="application/json", Body=smoke_payload())
        answer = json.loads(response["Body"].read())
        (prediction,) = answer["predictions"]
        assert prediction["label"] and 0 <= float(prediction["probability"]) <= 1
    except Exception as exc:  # noqa: BLE001 - any failure is a failed smoke test
        return f"{type(exc).__name__}: {exc}"
    return None


def ensure_model(sm, s: DeploySettings, package: dict) -> str:
    name = f"{s.prefix}-v{package['ModelPackageVersion']}"
    if not describe_or_none(lambda: sm.describe_model(ModelName=name)):
        sm.create_model(ModelName=name, ExecutionRoleArn=s.role_arn,
                        PrimaryContainer={"ModelPackageName": package["ModelPackageArn"]},
                        Tags=[{"Key": "ModelPackageArn", "Value": package["ModelPackageArn"]},
                              {"Key": "ModelPackageVersion",
                               "Value": str(package["ModelPackageVersion"])}])
    return name


def ensure_endpoint_config(sm, s: DeploySettings, stage: str, model: str, version: int) -> str:
    name = f"{s.prefix}-{stage}-v{version}"
    if not describe_or_none(lambda: sm.describe_endpoint_config(EndpointConfigName=name)):
        kwargs = {}
        if s.data_capture:
            kwargs["DataCaptureConfig"] = {
                "EnableCapture": True, "InitialSamplingPercentage": 100,
                "DestinationS3Uri": f"s3://{s.bucket}/{s.prefix}/data-capture/{stage}",
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": VARIANT, "ModelName": model,
                                 "InstanceType": s.instance_type,
                                 "InitialInstanceCount": s.instance_count}],
            Tags=[{"Key": "ModelPackageVersion", "Value": str(version)}], **kwargs)
    return name


def rollback_alarm(cloudwatch, endpoint: str) -> str:
    name = f"{endpoint}-5xx"
    cloudwatch.put_metric_alarm(
        AlarmName=name, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint},
                    {"Name": "VariantName", "Value": VARIANT}],
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="notBreaching")
    return name


def register_autoscaling(autoscaling, s: DeploySettings, endpoint: str) -> None:
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    autoscaling.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=s.instance_count, MaxCapacity=max(s.instance_count, s.max_instances))
    autoscaling.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(s.invocations_per_instance),
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300, "ScaleOutCooldown": 60})


def deploy(session, s: DeploySettings, stage: str, package: dict, echo=print) -> bool:
    """Create or update ``<prefix>-<stage>`` to serve ``package``; True when changed."""
    sm = session.client("sagemaker")
    runtime = session.client("sagemaker-runtime")
    endpoint = f"{s.prefix}-{stage}"
    version = int(package["ModelPackageVersion"])
    model = ensure_model(sm, s, package)
    config = ensure_endpoint_config(sm, s, stage, model, version)
    current = describe_or_none(lambda: sm.describe_endpoint(EndpointName=endpoint))
    if current and current["EndpointConfigName"] == config and \
            current["EndpointStatus"] == "InService":
        echo(f"{endpoint} already serves {s.group} version {version}: nothing to do")
        return False
    alarm = rollback_alarm(session.client("cloudwatch"), endpoint)
    tags = [{"Key": "ModelPackageArn", "Value": package["ModelPackageArn"]},
            {"Key": "ModelPackageVersion", "Value": str(version)},
            {"Key": "SmokeTest", "Value": "pending"}]
    if current is None:
        echo(f"{endpoint}: creating with {s.group} version {version}")
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tags)
    else:
        echo(f"{endpoint}: blue/green update from {current['EndpointConfigName']} to {config}")
        sm.update_endpoint(
            EndpointName=endpoint, EndpointConfigName=config,
            DeploymentConfig={
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE",
                                                    "WaitIntervalInSeconds": 300},
                    "TerminationWaitInSeconds": 300},
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": alarm}]}})
        sm.add_tags(ResourceArn=current["EndpointArn"], Tags=tags)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint,
                                              WaiterConfig={"Delay": 30, "MaxAttempts": 120})
    arn = sm.describe_endpoint(EndpointName=endpoint)["EndpointArn"]
    problem = smoke_test(runtime, endpoint)
    if problem:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "SmokeTest", "Value": "failed"}])
        if current is not None:  # put the previous version back
            sm.update_endpoint(EndpointName=endpoint,
                               EndpointConfigName=current["EndpointConfigName"])
            raise SageMakerDeployError(f"smoke test of {endpoint} version {version} failed "
                                       f"({problem}); rolled back to "
                                       f"{current['EndpointConfigName']}")
        raise SageMakerDeployError(f"smoke test of {endpoint} version {version} failed: "
                                   f"{problem}")
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "SmokeTest", "Value": "passed"}])
    if stage == "prod":
        register_autoscaling(session.client("application-autoscaling"), s, endpoint)
    echo(f"{endpoint}: {s.group} version {version} InService (smoke test passed)")
    return True


def staged_package(session, s: DeploySettings) -> dict:
    """The package serving in staging, which must have passed its smoke test."""
    sm = session.client("sagemaker")
    endpoint = f"{s.prefix}-staging"
    current = describe_or_none(lambda: sm.describe_endpoint(EndpointName=endpoint))
    if current is None:
        raise SageMakerDeployError(f"{endpoint} does not exist: deploy to staging first")
    tags = _tags(sm, current["EndpointArn"])
    if tags.get("SmokeTest") != "passed":
        raise SageMakerDeployError(f"{endpoint} has not passed its smoke test; production only "
                                   f"gets a version that passed staging")
    return sm.describe_model_package(ModelPackageName=tags["ModelPackageArn"])
