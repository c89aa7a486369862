"""infra/template.yaml passes cfn-lint and wires what the workflow needs (CodeConnections source,
the deploy pipeline Source -> DeployStaging -> ApproveProd -> DeployProd, the EventBridge rules,
notifications, and roles that allow what each caller does and little more); buildspec-deploy.yml
runs the deploy command for the stage the pipeline names and exports what it deployed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

import iamcheck
from conftest import ROOT

TEMPLATE = ROOT / "infra/template.yaml"
REGION, ACCOUNT = "us-east-1", iamcheck.DEFAULT_ACCOUNT
CONNECTION = f"arn:aws:codeconnections:{REGION}:{ACCOUNT}:connection/0123abcd-4567-89ef-0123-456789abcdef"
PARAMS = {"ConnectionArn": CONNECTION, "RepositoryId": "my-org/dogbreed-mlops",
          "RepositoryUrl": "https://github.com/my-org/dogbreed-mlops.git"}
SM = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
SM_ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecutionRole"
TO_SAGEMAKER = {"iam:PassedToService": "sagemaker.amazonaws.com"}
PIPELINE_ARN = f"arn:aws:codepipeline:{REGION}:{ACCOUNT}:Pipeline"  # physical name = logical id
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:NotificationTopic"
EXPORTED = ["MODEL_PACKAGE_GROUP", "MODEL_PACKAGE_VERSION", "MODEL_PACKAGE_ARN",
            "VALIDATION_ACCURACY", "TEST_ACCURACY", "ENDPOINT_NAME"]


class CfnLoader(yaml.SafeLoader):
    pass


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: {
    suffix: loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode)
    else loader.construct_sequence(node)})


def raw():
    """The template with short-form intrinsics as {"Ref": ...}, {"GetAtt": ...}, unresolved."""
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def resolver(**parameters):
    """CloudFormation's view of the template for one deployment (tests/iamcheck.py's resolver:
    parameters, pseudo parameters, Conditions, !If with AWS::NoValue)."""
    doc = iamcheck._load_template(TEMPLATE)
    return iamcheck._Resolver(doc, REGION, ACCOUNT, {**PARAMS, **parameters}, None)


def resource(logical_id, **parameters):
    r = resolver(**parameters)
    return r.resolve(r.resources[logical_id])


def statements(role, **parameters):
    return iamcheck.role_statements(TEMPLATE, role, REGION, ACCOUNT, {**PARAMS, **parameters})


def cfn_lint(path) -> subprocess.CompletedProcess:
    # this environment's cfn-lint (another one on PATH may be of another version)
    exe = os.path.join(os.path.dirname(sys.executable), "cfn-lint")
    exe = exe if os.path.exists(exe) else shutil.which("cfn-lint")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=300)


def test_template_passes_cfn_lint_and_a_broken_one_does_not(tmp_path):
    proc = cfn_lint(TEMPLATE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("BlockPublicAcls: true",
                                                   "BlockPublicAclz: true"))
    assert cfn_lint(broken).returncode != 0


def test_template_wires_the_workflow():
    res = raw()["Resources"]
    bucket = res["ArtifactBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert res["ModelPackageGroup"]["Type"] == "AWS::SageMaker::ModelPackageGroup"
    assert res["BuildProject"]["Properties"]["Source"]["BuildSpec"] == "buildspec.yml"
    assert res["BuildProject"]["Properties"]["Triggers"]["Webhook"] is True
    assert res["DeployProject"]["Properties"]["Source"]["BuildSpec"] == "buildspec-deploy.yml"
    assumed = res["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert assumed["Statement"][0]["Principal"]["Service"] == "sagemaker.amazonaws.com"
    # no role may do everything, nor create, put or pass on any resource without a condition
    for role in ("SageMakerExecutionRole", "BuildProjectRole", "DeployProjectRole",
                 "PipelineRole", "ApprovalRuleRole"):
        for s in statements(role):
            actions = iamcheck._as_list(s["Action"])
            assert "*" not in actions, (role, s)
            writes = [a for a in actions if re.search(r":(Create|Put|Pass|Update|Delete)", a)]
            assert not (writes and s["Resource"] in ("*", ["*"]) and "Condition" not in s), (
                role, s)


# --- source: CodeConnections ------------------------------------------------------------------

def test_the_connection_is_the_build_projects_auth_and_the_pipelines_source():
    build = resource("BuildProject")
    assert build["Properties"]["Source"]["Type"] == "GITHUB"
    assert build["Properties"]["Source"]["Auth"] == {"Type": "CODECONNECTIONS",
                                                     "Resource": CONNECTION}
    # CodeBuild checks the connection permission when it creates the webhook
    depends = iamcheck._as_list(raw()["Resources"]["BuildProject"].get("DependsOn", []))
    assert any(raw()["Resources"][d]["Type"] in ("AWS::IAM::Policy", "AWS::IAM::RolePolicy")
               for d in depends)
    (source,) = stages()[0]["Actions"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    config = source["Configuration"]
    assert config["ConnectionArn"] == CONNECTION
    assert config["FullRepositoryId"] == "my-org/dogbreed-mlops"
    assert config["BranchName"] == "main"
    assert str(config["DetectChanges"]).lower() == "false"  # a push must not deploy


def test_connection_parameter_takes_both_arn_forms():
    pattern = raw()["Parameters"]["ConnectionArn"]["AllowedPattern"]
    assert re.fullmatch(pattern, CONNECTION)
    assert re.fullmatch(pattern, CONNECTION.replace("codeconnections", "codestar-connections"))
    assert not re.fullmatch(pattern, "arn:aws:iam::123456789012:role/x")
    assert re.fullmatch(raw()["Parameters"]["RepositoryId"]["AllowedPattern"], "org/repo")


def test_build_role_may_use_the_connection_and_only_that_one():
    for arn in (CONNECTION, CONNECTION.replace("codeconnections", "codestar-connections")):
        build = statements("BuildProjectRole", ConnectionArn=arn)
        prefix = arn.split(":")[2]
        for action in ("GetConnectionToken", "GetConnection", "UseConnection"):
            assert iamcheck.is_allowed(build, f"{prefix}:{action}", arn), (prefix, action)
        assert not iamcheck.is_allowed(build, f"{prefix}:UseConnection", arn[:-4] + "ffff")


# --- the deploy pipeline ----------------------------------------------------------------------

def stages(**parameters):
    return resource("Pipeline", **parameters)["Properties"]["Stages"]


def action(stage_name, **parameters):
    (found,) = [s for s in stages(**parameters) if s["Name"] == stage_name]
    (only,) = found["Actions"]
    return only


def test_pipeline_stages_deploy_staging_then_approval_then_prod():
    pipeline = resource("Pipeline")
    assert pipeline["Type"] == "AWS::CodePipeline::Pipeline"
    assert [s["Name"] for s in stages()] == ["Source", "DeployStaging", "ApproveProd",
                                             "DeployProd"]
    assert pipeline["Properties"]["ArtifactStore"] == {"Type": "S3", "Location": "artifactbucket"}
    source_output = stages()[0]["Actions"][0]["OutputArtifacts"][0]["Name"]
    for stage, value in (("DeployStaging", "staging"), ("DeployProd", "prod")):
        deploy = action(stage)
        assert deploy["ActionTypeId"]["Provider"] == "CodeBuild"
        assert deploy["Configuration"]["ProjectName"] == "DeployProject"  # Ref: the project
        variables = json.loads(deploy["Configuration"]["EnvironmentVariables"])
        assert variables[0] == {"name": "STAGE", "value": value, "type": "PLAINTEXT"}
        assert deploy["InputArtifacts"] == [{"Name": source_output}]
    # each stage captures its own share of requests; prod deploys only the version staging
    # served when it was approved
    shares = {"StagingCapturePercent": "25", "ProdCapturePercent": "5"}
    assert json.loads(action("DeployStaging", **shares)["Configuration"][
        "EnvironmentVariables"])[1:] == [
        {"name": "CAPTURE_PERCENT", "value": "25", "type": "PLAINTEXT"}]
    assert json.loads(action("DeployProd", **shares)["Configuration"][
        "EnvironmentVariables"])[1:] == [
        {"name": "CAPTURE_PERCENT", "value": "5", "type": "PLAINTEXT"},
        {"name": "EXPECTED_VERSION", "value": "#{Staging.MODEL_PACKAGE_VERSION}",
         "type": "PLAINTEXT"}]
    assert action("DeployStaging")["Namespace"] == "Staging"


def test_prod_approval_shows_what_staging_deployed_and_notifies():
    approve = action("ApproveProd")
    assert approve["ActionTypeId"] == {"Category": "Approval", "Owner": "AWS",
                                       "Provider": "Manual", "Version": "1"}
    custom = approve["Configuration"]["CustomData"]
    for name in EXPORTED[:2] + EXPORTED[3:]:
        assert f"#{{Staging.{name}}}" in custom, name
    assert len(custom) <= 500
    assert approve["Configuration"]["NotificationArn"] == TOPIC_ARN
    # every variable the pipeline references is one buildspec-deploy.yml exports
    exported = yaml.safe_load((ROOT / "buildspec-deploy.yml").read_text())["env"][
        "exported-variables"]
    used = re.findall(r"#\{Staging\.(\w+)\}", json.dumps(stages()))
    assert used and set(used) <= set(exported)


def test_without_required_approval_staging_promotes_to_prod_directly():
    assert [s["Name"] for s in stages(RequireProdApproval="false")] == [
        "Source", "DeployStaging", "DeployProd"]
    assert raw()["Parameters"]["RequireProdApproval"]["Default"] == "true"


def test_pipeline_role_runs_the_deploy_project_and_nothing_else():
    role = statements("PipelineRole")
    deploy = f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/DeployProject"
    build = f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/BuildProject"
    assert iamcheck.is_allowed(role, "codebuild:StartBuild", deploy)
    assert iamcheck.is_allowed(role, "codebuild:BatchGetBuilds", deploy)
    assert not iamcheck.is_allowed(role, "codebuild:StartBuild", build)
    assert iamcheck.is_allowed(role, "codeconnections:UseConnection", CONNECTION)
    assert iamcheck.is_allowed(role, "s3:PutObject", "arn:aws:s3:::artifactbucket/Pipeline/x")
    assert not iamcheck.is_allowed(role, "s3:DeleteObject", "arn:aws:s3:::artifactbucket/x")
    assert iamcheck.is_allowed(role, "sns:Publish", TOPIC_ARN)
    assert not iamcheck.is_allowed(role, "sns:Publish", TOPIC_ARN + "-other")


# --- EventBridge: approvals and rejections start the pipeline ---------------------------------

def test_approval_or_rejection_starts_the_deploy_pipeline():
    rule = resource("ApprovalRule")["Properties"]
    pattern = rule["EventPattern"]
    assert pattern["detail-type"] == ["SageMaker Model Package State Change"]
    assert sorted(pattern["detail"]["ModelApprovalStatus"]) == ["Approved", "Rejected"]
    assert pattern["detail"]["ModelPackageGroupName"] == ["DogBreedModels"]
    (target,) = rule["Targets"]
    assert target["Arn"] == PIPELINE_ARN
    assert target["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/ApprovalRuleRole"
    role = statements("ApprovalRuleRole")
    assert iamcheck.is_allowed(role, "codepipeline:StartPipelineExecution", PIPELINE_ARN)
    assert not iamcheck.is_allowed(role, "codepipeline:StartPipelineExecution",
                                   PIPELINE_ARN + "-other")
    assert not iamcheck.is_allowed(role, "codebuild:StartBuild",
                                   f"arn:aws:codebuild:{REGION}:{ACCOUNT}:project/DeployProject")
    assert [s["Action"] for s in role] == ["codepipeline:StartPipelineExecution"]


# --- notifications ----------------------------------------------------------------------------

def notification_rules():
    r = resolver()
    return {lid: r.resolve(res)["Properties"] for lid, res in r.resources.items()
            if res["Type"] == "AWS::Events::Rule"
            and any(t["Arn"] == TOPIC_ARN for t in r.resolve(res)["Properties"]["Targets"])}


def test_failures_and_pending_versions_are_notified():
    rules = notification_rules()
    by_type = {p["EventPattern"]["detail-type"][0]: p for p in rules.values()}
    assert sorted(by_type) == ["CodePipeline Pipeline Execution State Change",
                               "SageMaker Model Building Pipeline Execution Status Change",
                               "SageMaker Model Package State Change",
                               "SageMaker Processing Job State Change"]  # monitoring failed
    build = by_type["SageMaker Model Building Pipeline Execution Status Change"]["EventPattern"]
    assert build["detail"]["currentPipelineExecutionStatus"] == ["Failed"]
    wanted = f"{SM}:pipeline/DogBreedBuild"
    (arn_filter,) = build["detail"]["pipelineArn"]
    assert arn_filter in (wanted, wanted.lower(), {"equals-ignore-case": wanted})
    pending = by_type["SageMaker Model Package State Change"]["EventPattern"]["detail"]
    assert pending == {"ModelPackageGroupName": ["DogBreedModels"],
                       "ModelApprovalStatus": ["PendingManualApproval"]}
    deploy = by_type["CodePipeline Pipeline Execution State Change"]["EventPattern"]
    assert deploy["source"] == ["aws.codepipeline"]
    assert deploy["detail"] == {"state": ["FAILED"], "pipeline": ["Pipeline"]}
    for properties in rules.values():
        (target,) = properties["Targets"]
        template = target["InputTransformer"]["InputTemplate"]
        assert template.startswith('"') and template.endswith('"') and "\n" not in template
        for placeholder in re.findall(r"<(\w+)>", template):
            assert placeholder in target["InputTransformer"]["InputPathsMap"]
    # the topic lets exactly these rules publish; the email subscription is optional
    policy = resource("NotificationTopicPolicy")["Properties"]["PolicyDocument"]["Statement"]
    (events,) = [s for s in policy if s.get("Principal") == {"Service": "events.amazonaws.com"}]
    assert sorted(events["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(
        f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{lid}" for lid in rules)
    assert not resolver().condition("HasNotificationEmail")
    assert resolver(NotificationEmail="ops@example.com").condition("HasNotificationEmail")
    subscription = resource("NotificationSubscription", NotificationEmail="ops@example.com")
    assert subscription["Condition"] == "HasNotificationEmail"
    assert subscription["Properties"]["Protocol"] == "email"
    # an encrypted topic EventBridge can publish to: a customer-managed key that allows it
    topic = resource("NotificationTopic")["Properties"]
    assert topic["KmsMasterKeyId"] == "NotificationKey"
    key_policy = resource("NotificationKey")["Properties"]["KeyPolicy"]["Statement"]
    assert any(s.get("Principal") == {"Service": "events.amazonaws.com"} for s in key_policy)


# --- least privilege that still works ---------------------------------------------------------

def test_build_role_may_upsert_the_tagged_build_pipeline():
    build = statements("BuildProjectRole")
    for act in ("CreatePipeline", "UpdatePipeline", "DescribePipeline", "ListTags", "AddTags",
                "StartPipelineExecution"):
        assert iamcheck.is_allowed(build, f"sagemaker:{act}", f"{SM}:pipeline/dogbreedbuild"), act
    assert iamcheck.is_allowed(build, "iam:PassRole", SM_ROLE, TO_SAGEMAKER)
    assert not iamcheck.is_allowed(build, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin",
                                   TO_SAGEMAKER)
    assert not iamcheck.is_allowed(build, "sagemaker:DeleteEndpoint", f"{SM}:endpoint/dogbreed-prod")


def deploy_calls():
    """What deploying a version and registering prod autoscaling calls (botocore names)."""
    def call(service, operation, **params):
        return {"service": service, "operation": operation, "region": REGION, "params": params}
    group, package = "DogBreedModels", f"{SM}:model-package/dogbreedmodels/3"
    return [
        call("sagemaker", "ListModelPackages", ModelPackageGroupName=group,
             ModelApprovalStatus="Approved", SortOrder="Descending"),
        call("sagemaker", "DescribeModelPackage", ModelPackageName=package),
        call("s3", "GetObject", Bucket="artifactbucket", Key="runs/x/evaluation.json"),
        call("sagemaker", "CreateModel", ModelName="dogbreed-v3", ExecutionRoleArn=SM_ROLE,
             PrimaryContainer={"ModelPackageName": package}),
        call("sagemaker", "CreateEndpointConfig", EndpointConfigName="dogbreed-prod-v3",
             ProductionVariants=[]),
        call("sagemaker", "DescribeEndpoint", EndpointName="dogbreed-prod"),
        call("sagemaker", "DeleteEndpoint", EndpointName="dogbreed-prod"),
        call("sagemaker", "CreateEndpoint", EndpointName="dogbreed-prod",
             EndpointConfigName="dogbreed-prod-v3"),
        call("sagemaker", "UpdateEndpoint", EndpointName="dogbreed-prod",
             EndpointConfigName="dogbreed-prod-v3"),
        call("sagemaker", "AddTags", ResourceArn=f"{SM}:endpoint/dogbreed-prod", Tags=[]),
        call("sagemaker-runtime", "InvokeEndpoint", EndpointName="dogbreed-prod", Body="<bytes>"),
        call("cloudwatch", "PutMetricAlarm", AlarmName="dogbreed-prod-5xx"),
        call("cloudwatch", "DescribeAlarms", AlarmNames=["dogbreed-prod-5xx"]),
        call("cloudwatch", "DeleteAlarms", AlarmNames=["dogbreed-prod-5xx"]),
        call("application-autoscaling", "RegisterScalableTarget", ServiceNamespace="sagemaker",
             ResourceId="endpoint/dogbreed-prod/variant/AllTraffic",
             ScalableDimension="sagemaker:variant:DesiredInstanceCount"),
        call("application-autoscaling", "PutScalingPolicy", ServiceNamespace="sagemaker",
             PolicyName="dogbreed-prod-invocations",
             ResourceId="endpoint/dogbreed-prod/variant/AllTraffic"),
        call("application-autoscaling", "DescribeScalableTargets", ServiceNamespace="sagemaker"),
        call("application-autoscaling", "DescribeScalingPolicies", ServiceNamespace="sagemaker"),
    ]


def test_deploy_role_allows_deploying_and_autoscaling():
    deploy = statements("DeployProjectRole")
    slr = (f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling."
           "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
    assert iamcheck.is_allowed(deploy, "iam:CreateServiceLinkedRole", slr, {
        "iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"})
    assert not iamcheck.is_allowed(deploy, "iam:CreateServiceLinkedRole", slr, {
        "iam:AWSServiceName": "ec2.amazonaws.com"})
    assert iamcheck.is_allowed(deploy, "sagemaker:UpdateEndpointWeightsAndCapacities",
                               f"{SM}:endpoint/dogbreed-prod")
    assert iamcheck.is_allowed(deploy, "sagemaker:ListModelPackages", "*")
    assert iamcheck.is_allowed(deploy, "iam:PassRole", SM_ROLE, TO_SAGEMAKER)
    assert not iamcheck.is_allowed(deploy, "iam:PassRole", SM_ROLE)  # only to SageMaker
    assert not iamcheck.is_allowed(deploy, "sagemaker:DeleteEndpoint", f"{SM}:endpoint/other-prod")
    assert not iamcheck.is_allowed(deploy, "sagemaker:CreatePipeline", f"{SM}:pipeline/x")
    assert iamcheck.check_calls(deploy_calls(), deploy) == []


def test_mlflow_actions_only_with_a_tracking_server_and_only_on_it():
    server = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:mlflow-tracking-server/team"
    assert not iamcheck.is_allowed(statements("SageMakerExecutionRole"),
                                   "sagemaker-mlflow:CreateRun", server)
    role = statements("SageMakerExecutionRole", MlflowTrackingServerArn=server)
    assert iamcheck.is_allowed(role, "sagemaker-mlflow:CreateRun", server)
    assert iamcheck.is_allowed(role, "sagemaker-mlflow:LogBatch", server)
    assert not iamcheck.is_allowed(role, "sagemaker-mlflow:CreateRun",
                                   f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:"
                                   f"mlflow-tracking-server/other")


def test_the_endpoints_role_reads_its_rollback_alarms():
    """Endpoints run as the SageMaker role; blue/green auto-rollback needs
    cloudwatch:DescribeAlarms on the alarms (deployment guardrails), ours only."""
    role = statements("SageMakerExecutionRole")
    alarm = f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:dogbreed-prod-5xx"
    assert iamcheck.is_allowed(role, "cloudwatch:DescribeAlarms", alarm)
    assert not iamcheck.is_allowed(role, "cloudwatch:DescribeAlarms",
                                   f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:billing")


def test_sagemaker_role_may_pass_only_itself():
    role = statements("SageMakerExecutionRole")
    assert iamcheck.is_allowed(role, "iam:PassRole", SM_ROLE, TO_SAGEMAKER)
    assert not iamcheck.is_allowed(role, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/Admin",
                                   TO_SAGEMAKER)
    assert not iamcheck.is_allowed(role, "iam:PassRole", SM_ROLE,
                                   {"iam:PassedToService": "ec2.amazonaws.com"})


# --- buildspec-deploy.yml ---------------------------------------------------------------------

RECORDER = r'''#!/bin/sh
# stands in for "python -m pipelines.deploy": records its arguments, writes the outputs file
printf '%s\n' "$@" > "$RECORD"
[ -n "$FAIL" ] && exit "$FAIL"
while [ $# -gt 0 ]; do
  if [ "$1" = --outputs ]; then out="$2"; fi
  shift
done
cat > "$out" <<'END'
MODEL_PACKAGE_GROUP=DogBreedModels
MODEL_PACKAGE_VERSION=7
MODEL_PACKAGE_ARN='arn:aws:sagemaker:us-east-1:123456789012:model-package/dogbreedmodels/7'
VALIDATION_ACCURACY=0.8123
TEST_ACCURACY='0.80 (836 images; it'"'"'s fine)'
ENDPOINT_NAME=dogbreed-staging
END
'''


def run_deploy_buildspec(tmp_path, **env):
    doc = yaml.safe_load((ROOT / "buildspec-deploy.yml").read_text())
    (script,) = doc["phases"]["build"]["commands"]
    recorder = tmp_path / "recorder"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    probe = script.replace(".venv/bin/python -m pipelines.deploy", str(recorder))
    assert probe != script
    probe += "".join(f'\nprintf "%s=%s\\n" {v} "${{{v}}}"' for v in doc["env"]["exported-variables"])
    variables = {k: str(v) for k, v in doc["env"]["variables"].items()}
    full_env = {"PATH": "/usr/bin:/bin", **variables, "DOGBREED_BUCKET": "b",
                "RECORD": str(tmp_path / "args"), **env}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    proc = subprocess.run([doc["env"].get("shell", "sh"), "-c", probe], env=full_env,
                          capture_output=True, text=True, cwd=tmp_path)
    args = (tmp_path / "args").read_text().splitlines() if (tmp_path / "args").exists() else []
    return proc, args


def test_deploy_buildspec_deploys_the_stage_the_pipeline_names_and_exports_it(tmp_path):
    for stage in ("staging", "prod"):
        proc, args = run_deploy_buildspec(tmp_path, STAGE=stage)
        assert proc.returncode == 0, proc.stderr
        assert args[args.index("--stage") + 1] == stage
        assert args[args.index("--outputs") + 1] == "deploy-outputs.env"
        assert args[args.index("--bucket") + 1] == "b" and "--local" not in args
        assert args[args.index("--group") + 1] == "DogBreedModels"
        exported = dict(line.split("=", 1) for line in proc.stdout.splitlines()
                        if line.split("=", 1)[0] in EXPORTED)
        assert exported["MODEL_PACKAGE_VERSION"] == "7"
        assert exported["TEST_ACCURACY"] == "0.80 (836 images; it's fine)"
        assert exported["ENDPOINT_NAME"] == "dogbreed-staging"
    assert "--expect-version" not in args
    # the pipeline's DeployProd names the version the approver saw
    proc, args = run_deploy_buildspec(tmp_path, STAGE="prod", EXPECTED_VERSION="7")
    assert proc.returncode == 0 and args[args.index("--expect-version") + 1] == "7"
    # started by hand without STAGE: staging
    proc, args = run_deploy_buildspec(tmp_path, STAGE=None)
    assert proc.returncode == 0 and args[args.index("--stage") + 1] == "staging"
    # a failed deploy fails the build with its exit code, before anything is exported
    proc, args = run_deploy_buildspec(tmp_path, STAGE="prod", FAIL="3")
    assert proc.returncode == 3 and "MODEL_PACKAGE_VERSION=" not in proc.stdout


def test_the_deploy_command_takes_the_flags_the_buildspec_passes(tmp_path):
    """The real CLI accepts --outputs and writes the names the buildspec exports, sourceable."""
    from pipelines.deploy import cli

    helped = subprocess.run([sys.executable, "-m", "pipelines.deploy", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--outputs" in helped.stdout
    exported = yaml.safe_load((ROOT / "buildspec-deploy.yml").read_text())["env"][
        "exported-variables"]
    values = {k: f"it's {k} & $HOME" for k in exported}
    cli.write_outputs(str(tmp_path / "deploy-outputs.env"), values)
    shown = subprocess.run(["bash", "-c", "set -a; . ./deploy-outputs.env; set +a; env"],
                           cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert {k: v for k, v in (line.split("=", 1) for line in shown if "=" in line)
            if k in values} == values


def test_deploy_buildspec_exports_the_six_variables_and_installs_no_torch():
    doc = yaml.safe_load((ROOT / "buildspec-deploy.yml").read_text())
    assert doc["env"]["exported-variables"] == EXPORTED
    assert "PROMOTE_TO_PROD" not in doc["env"].get("variables", {})
    install = doc["phases"]["install"]["commands"]
    pip = [shlex.split(c) for c in install if "pip" in c and "install" in c]
    editable = [c for c in pip if "-e" in c]
    assert editable and all("--no-deps" in c for c in editable)
    assert any(c[c.index("-r") + 1] == "requirements-deploy.txt" for c in pip if "-r" in c)
    assert "torch" not in " ".join(install)


# --- monitoring --------------------------------------------------------------------------------

def test_captured_requests_expire_are_encrypted_and_prod_drift_notifies():
    rule, markers = resource("ArtifactBucket", CaptureRetentionDays="7")["Properties"][
        "LifecycleConfiguration"]["Rules"]
    assert rule["Prefix"] == "dogbreed/data-capture/" and rule["ExpirationInDays"] == "7"
    # the bucket is versioned: the delete markers expiry leaves are removed too
    assert markers["Prefix"] == rule["Prefix"] and markers["ExpiredObjectDeleteMarker"] is True
    # the monitoring job's placeholder (a few bytes) stays: its S3 input must not be empty
    from pipelines.deploy import monitoring
    assert len(monitoring.PLACEHOLDER_BODY) <= int(rule["ObjectSizeGreaterThan"])
    env = {v["Name"]: v["Value"] for v in resource("DeployProject")["Properties"][
        "Environment"]["EnvironmentVariables"]}
    assert env["MONITOR_ROLE_ARN"] == f"arn:aws:iam::{ACCOUNT}:role/MonitorSchedulerRole"
    assert env["DATA_CAPTURE_KMS_KEY"] == f"arn:aws:kms:{REGION}:{ACCOUNT}:key/DataCaptureKey"
    # the endpoints (the SageMaker role) write with the capture key, the job reads with it
    statements = iamcheck.role_statements(TEMPLATE, "SageMakerExecutionRole", parameters=PARAMS)
    key = env["DATA_CAPTURE_KMS_KEY"]
    for action_ in ("kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"):
        assert iamcheck.is_allowed(statements, action_, key), action_
    trust = resource("MonitorSchedulerRole")["Properties"]["AssumeRolePolicyDocument"]
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}

    alarm = resource("ProdDriftAlarm")["Properties"]
    (query,) = alarm["Metrics"]
    assert query["Expression"] == ('SELECT MAX(Drift) FROM SCHEMA("DogBreed/Monitor", '
                                   "EndpointName, ModelVersion) WHERE EndpointName = "
                                   "'dogbreed-prod'")
    assert monitoring.NAMESPACE == "DogBreed/Monitor" and "Drift" in monitoring.METRICS
    assert alarm["AlarmActions"] == [TOPIC_ARN] and alarm["TreatMissingData"] == "notBreaching"
    # two drifting runs of three: one false verdict (at most the job's alpha) pages nobody
    assert (alarm["DatapointsToAlarm"], alarm["EvaluationPeriods"]) == (2, 3)
    # a failed monitoring job publishes nothing, so its failure is told instead
    failed = resource("MonitoringFailedRule")["Properties"]
    assert failed["EventPattern"]["detail"] == {
        "ProcessingJobStatus": ["Failed"], "ProcessingJobName": [{"prefix": "dogbreed-monitor-"}]}
    assert failed["Targets"][0]["Arn"] == TOPIC_ARN
    assert monitoring.job_name_prefix("dogbreed", "prod").startswith("dogbreed-monitor-")
    # CloudWatch may publish the alarm to the encrypted topic
    policy = resource("NotificationTopicPolicy")["Properties"]["PolicyDocument"]["Statement"]
    (published,) = [s for s in policy if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert published["Condition"]["ArnEquals"]["aws:SourceArn"] == \
        f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:dogbreed-prod-drift"
    (rules,) = [s for s in policy if s["Principal"] == {"Service": "events.amazonaws.com"}]
    assert f"arn:aws:events:{REGION}:{ACCOUNT}:rule/MonitoringFailedRule" in \
        rules["Condition"]["ArnEquals"]["aws:SourceArn"]
    key_policy = resource("NotificationKey")["Properties"]["KeyPolicy"]["Statement"]
    assert any(s["Principal"] == {"Service": "cloudwatch.amazonaws.com"} for s in key_policy)
