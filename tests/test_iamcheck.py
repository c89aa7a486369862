"""tests/iamcheck.py: the call recorder (in-process and in a child), the call -> permission mapping,
the template resolver and the IAM evaluator."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import iamcheck
from conftest import ROOT
from iamcheck import (check_calls, is_allowed, read_calls, record_calls, recording_env,
                      required_permissions, role_statements)

ACCOUNT = "123456789012"
SM = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecutionRole"
TO_SAGEMAKER = {"iam:PassedToService": "sagemaker.amazonaws.com"}


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def call(service, operation, **params):
    return {"service": service, "operation": operation, "region": "us-east-1", "params": params}


# --- the evaluator ---------------------------------------------------------------------------

def test_wildcards_match_actions_case_insensitively_and_resources_case_sensitively():
    statements = [allow(["sagemaker:Describe*", "s3:Get?bject"], ["arn:aws:s3:::bkt/*", f"{SM}:*"])]
    assert is_allowed(statements, "sagemaker:DescribePipeline", f"{SM}:pipeline/p")
    assert is_allowed(statements, "SageMaker:describepipeline", f"{SM}:pipeline/p")
    assert is_allowed(statements, "s3:GetObject", "arn:aws:s3:::bkt/a/b")
    assert not is_allowed(statements, "s3:GetObjectAcl", "arn:aws:s3:::bkt/a")  # ? is one char
    assert not is_allowed(statements, "s3:GetObject", "arn:aws:s3:::Bkt/a")  # case-sensitive
    assert not is_allowed(statements, "sagemaker:CreatePipeline", f"{SM}:pipeline/p")
    assert not is_allowed(statements, "sagemaker:DescribePipeline", f"{SM[:-1]}9:pipeline/p")


def test_an_explicit_deny_wins_over_any_allow():
    statements = [allow("s3:*", "*"), {"Effect": "Deny", "Action": "s3:DeleteObject",
                                       "Resource": "arn:aws:s3:::bkt/keep/*"}]
    assert is_allowed(statements, "s3:DeleteObject", "arn:aws:s3:::bkt/tmp/x")
    assert not is_allowed(statements, "s3:DeleteObject", "arn:aws:s3:::bkt/keep/x")
    assert not is_allowed([], "s3:GetObject", "arn:aws:s3:::bkt/x")  # implicit deny


def test_an_action_without_resource_level_permissions_needs_resource_star():
    (needed,) = required_permissions(call("sagemaker", "ListModelPackages",
                                          ModelPackageGroupName="DogBreedModels"))
    assert needed == ("sagemaker:ListModelPackages", "*")
    assert not is_allowed([allow("sagemaker:List*", f"{SM}:*")], *needed)
    assert is_allowed([allow("sagemaker:List*", "*")], *needed)


def test_not_action_and_not_resource():
    statements = [{"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret/*"}]
    assert is_allowed(statements, "s3:GetObject", "arn:aws:s3:::bkt/x")
    assert not is_allowed(statements, "s3:GetObject", "arn:aws:s3:::secret/x")
    assert not is_allowed(statements, "iam:PassRole", ROLE)
    assert not is_allowed([{"Effect": "Allow", "Resource": "*"}], "s3:GetObject", "*")  # no Action
    assert not is_allowed([{"Effect": "Allow", "Action": "*"}], "s3:GetObject", "*")  # no Resource


def test_pass_role_is_allowed_only_to_the_service_the_condition_names():
    statements = [allow("iam:PassRole", ROLE, Condition={
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}})]
    assert is_allowed(statements, "iam:PassRole", ROLE, TO_SAGEMAKER)
    assert not is_allowed(statements, "iam:PassRole", ROLE,
                          {"iam:PassedToService": "events.amazonaws.com"})
    assert not is_allowed(statements, "iam:PassRole", ROLE)  # key absent: the condition is false
    statements += [allow("sagemaker:CreatePipeline", f"{SM}:pipeline/*")]
    assert check_calls([call("sagemaker", "CreatePipeline", PipelineName="P", RoleArn=ROLE)],
                       statements) == []
    put_targets = call("events", "PutTargets", Rule="r", Targets=[{"Id": "t", "RoleArn": ROLE}])
    assert check_calls([put_targets], statements + [allow("events:PutTargets", "*")]) == [
        f"iam:PassRole on {ROLE} (called by events.PutTargets)"]


def test_log_groups_and_schedules_are_named_from_their_requests():
    """CloudWatch Logs names its resource in camelCase (logGroupName), EventBridge Scheduler
    as Name in a group that defaults to "default": a grant on one log group or one schedule
    name must not be judged against "any" (which only a wildcard grant allows)."""
    from iamcheck import required_permissions

    logs = call("logs", "PutMetricFilter", logGroupName="/aws/sagemaker/ProcessingJobs",
                filterName="f", filterPattern="p", metricTransformations=[])
    assert required_permissions(logs) == [(
        "logs:PutMetricFilter",
        "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/ProcessingJobs")]
    schedule = call("scheduler", "CreateSchedule", Name="dogbreed-monitor-prod",
                    Target={"Arn": "x", "RoleArn": ROLE})
    assert required_permissions(schedule) == [
        ("scheduler:CreateSchedule",
         "arn:aws:scheduler:us-east-1:123456789012:schedule/default/dogbreed-monitor-prod"),
        ("iam:PassRole", ROLE)]
    grant = [allow("scheduler:CreateSchedule", "arn:aws:scheduler:us-east-1:123456789012:"
                                               "schedule/default/dogbreed-monitor-*"),
             allow("iam:PassRole", ROLE, Condition={
                 "StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}})]
    assert check_calls([schedule], grant) == []


def test_condition_operators_for_missing_keys_and_if_exists():
    def holds(condition, context):
        statement = allow("s3:GetObject", "*", Condition=condition)
        return is_allowed([statement], "s3:GetObject", "*", context)
    assert holds({"StringNotEquals": {"aws:Key": "x"}}, {})  # negated: absent key matches
    assert not holds({"StringLike": {"aws:Key": "a*"}}, {})
    assert holds({"StringLikeIfExists": {"aws:Key": "a*"}}, {})
    assert not holds({"StringLikeIfExists": {"aws:Key": "a*"}}, {"aws:key": "b"})
    assert holds({"StringLike": {"aws:Key": ["b*", "a*"]}}, {"AWS:KEY": "abc"})  # values ORed
    assert holds({"ArnLike": {"aws:SourceArn": f"{SM}:*"}}, {"aws:SourceArn": f"{SM}:pipeline/p"})
    assert holds({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "True"})
    assert holds({"Null": {"aws:Key": "true"}}, {})
    with pytest.raises(NotImplementedError):
        holds({"NumericLessThan": {"aws:Key": "1"}}, {"aws:Key": "0"})


# --- calls -> permissions --------------------------------------------------------------------

@pytest.mark.parametrize("recorded, expected", [
    (call("s3", "ListBuckets"), [("s3:ListAllMyBuckets", "*")]),
    (call("s3", "HeadObject", Bucket="bkt", Key="a/b"), [("s3:GetObject", "arn:aws:s3:::bkt/a/b")]),
    (call("s3", "ListObjectsV2", Bucket="bkt", Prefix="a/"),
     [("s3:ListBucket", "arn:aws:s3:::bkt")]),
    (call("s3", "UploadPart", Bucket="bkt", Key="k", Body="<stream>"),
     [("s3:PutObject", "arn:aws:s3:::bkt/k")]),
    (call("s3", "DeleteObjects", Bucket="bkt", Delete={"Objects": [{"Key": "x"}, {"Key": "y"}]}),
     [("s3:DeleteObject", "arn:aws:s3:::bkt/x"), ("s3:DeleteObject", "arn:aws:s3:::bkt/y")]),
    (call("sts", "GetCallerIdentity"), []),
    (call("sagemaker-runtime", "InvokeEndpoint", EndpointName="Dogbreed-Staging", Body="<bytes>"),
     [("sagemaker:InvokeEndpoint", f"{SM}:endpoint/dogbreed-staging")]),
    (call("sagemaker", "CreatePipeline", PipelineName="DogBreedBuild", RoleArn=ROLE,
          Tags=[{"Key": "k", "Value": "v"}]),
     [("sagemaker:CreatePipeline", f"{SM}:pipeline/dogbreedbuild"),
      ("sagemaker:AddTags", f"{SM}:pipeline/dogbreedbuild"), ("iam:PassRole", ROLE)]),
    (call("sagemaker", "ListTags", ResourceArn=f"{SM}:pipeline/DogBreedBuild"),
     [("sagemaker:ListTags", f"{SM}:pipeline/dogbreedbuild")]),
    (call("sagemaker", "DescribeModelPackage", ModelPackageName=f"{SM}:model-package/dogs/3"),
     [("sagemaker:DescribeModelPackage", f"{SM}:model-package/dogs/3")]),
    (call("sagemaker", "UpdateEndpoint", EndpointName="ep", EndpointConfigName="cfg"),
     [("sagemaker:UpdateEndpoint", f"{SM}:endpoint/ep"),
      ("sagemaker:UpdateEndpoint", f"{SM}:endpoint-config/cfg")]),
    (call("sagemaker", "CreateModel", ModelName="m", ExecutionRoleArn=ROLE,
          PrimaryContainer={"ModelPackageName": f"{SM}:model-package/dogs/3"}),
     [("sagemaker:CreateModel", f"{SM}:model/m"), ("iam:PassRole", ROLE)]),
    (call("application-autoscaling", "PutScalingPolicy", ServiceNamespace="sagemaker",
          ResourceId="endpoint/ep/variant/AllTraffic", PolicyName="p"),
     [("application-autoscaling:PutScalingPolicy",
       f"arn:aws:application-autoscaling:us-east-1:{ACCOUNT}:scalable-target/*")]
     + [(f"cloudwatch:{a}", f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:*")
        for a in ("PutMetricAlarm", "DescribeAlarms", "DeleteAlarms")]),
])
def test_required_permissions(recorded, expected):
    assert required_permissions(recorded, ACCOUNT) == expected


def test_registering_an_endpoint_for_auto_scaling_needs_what_aws_checks_server_side():
    register = call("application-autoscaling", "RegisterScalableTarget",
                    ServiceNamespace="sagemaker", ResourceId="endpoint/ep/variant/AllTraffic",
                    MinCapacity=1, MaxCapacity=2,
                    ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    actions = [action for action, _ in required_permissions(register)]
    assert actions == ["application-autoscaling:RegisterScalableTarget",
                       "sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
                       "sagemaker:UpdateEndpointWeightsAndCapacities",
                       "iam:CreateServiceLinkedRole"]
    slr = {"StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}}
    documented = [  # the policy of SageMaker's "Auto scaling prerequisites" page
        allow(["sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
               "sagemaker:UpdateEndpointWeightsAndCapacities"], "*"),
        allow("application-autoscaling:*", "*"),
        allow("iam:CreateServiceLinkedRole", "arn:aws:iam::*:role/aws-service-role/sagemaker."
              "application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_"
              "SageMakerEndpoint", Condition=slr)]
    assert check_calls([register], documented) == []
    narrowed = documented[:1] + [allow("application-autoscaling:*", "*"),
                                 allow("sagemaker:Describe*", f"{SM}:endpoint/ep")]
    assert any(line.startswith("sagemaker:DescribeEndpointConfig on")
               for line in check_calls([register], narrowed[1:]))
    assert any(line.startswith("iam:CreateServiceLinkedRole on")
               for line in check_calls([register], narrowed))


# --- the template ----------------------------------------------------------------------------

INLINE_TEMPLATE = """
Parameters:
  PipelineName: {Type: String, Default: DogBreedBuild}
  Strict: {Type: String, Default: "false"}
Conditions:
  IsStrict: !Equals [!Ref Strict, "true"]
  IsLax: !Not [{Condition: IsStrict}]
Resources:
  Bucket: {Type: AWS::S3::Bucket}
  JobRole: {Type: AWS::IAM::Role, Properties: {RoleName: job-role}}
  BuildRole:
    Type: AWS::IAM::Role
    Properties:
      Policies:
        - PolicyName: build
          PolicyDocument:
            Statement:
              - Effect: Allow
                Action: [sagemaker:CreatePipeline, sagemaker:DescribePipeline]
                Resource: !Sub "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:*"
              - Effect: Allow
                Action: s3:GetObject
                Resource: [!GetAtt Bucket.Arn, !Sub "${Bucket.Arn}/*"]
              - Effect: Allow
                Action: iam:PassRole
                Resource: !GetAtt JobRole.Arn
                Condition: {StringEquals: {iam:PassedToService: sagemaker.amazonaws.com}}
              - !If
                - IsLax
                - Effect: Allow
                  Action: "s3:List*"
                  Resource: !Join ["", ["arn:aws:s3:::", !Ref Bucket]]
                - !Ref AWS::NoValue
  Extra:
    Type: AWS::IAM::Policy
    Properties:
      Roles: [!Ref BuildRole]
      PolicyDocument:
        Statement:
          - Effect: Deny
            Action: "s3:*"
            Resource: !Select [1, [x, !Sub "${Bucket.Arn}/secret/*"]]
"""


def test_role_statements_resolve_intrinsics_conditions_and_attached_policies(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(INLINE_TEMPLATE)
    statements = role_statements(template, "BuildRole", "eu-west-1", ACCOUNT,
                                 physical_names={"Bucket": "my-bucket"})
    arn = f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:pipeline/dogbreedbuild"
    assert statements[0]["Resource"] == f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:*"
    assert statements[1]["Resource"] == ["arn:aws:s3:::my-bucket", "arn:aws:s3:::my-bucket/*"]
    assert statements[2]["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/job-role"
    assert statements[3] == {"Effect": "Allow", "Action": "s3:List*",
                             "Resource": "arn:aws:s3:::my-bucket"}
    assert statements[4]["Resource"] == "arn:aws:s3:::my-bucket/secret/*"
    assert len(role_statements(template, "BuildRole", parameters={"Strict": "true"})) == 4

    calls = [{**call("sagemaker", "CreatePipeline", PipelineName="DogBreedBuild",
                     RoleArn=f"arn:aws:iam::{ACCOUNT}:role/job-role"), "region": "eu-west-1"},
             {**call("sagemaker", "ListTags", ResourceArn=arn), "region": "eu-west-1"},
             call("s3", "GetObject", Bucket="my-bucket", Key="data/x"),
             call("s3", "GetObject", Bucket="my-bucket", Key="secret/x")]
    assert check_calls(calls, statements, ACCOUNT) == [
        f"sagemaker:ListTags on {arn} (called by sagemaker.ListTags)",
        "s3:GetObject on arn:aws:s3:::my-bucket/secret/x (called by s3.GetObject)"]


def test_roles_whose_permissions_are_not_in_the_template_are_refused(tmp_path):
    template = tmp_path / "template.yaml"
    template.write_text(INLINE_TEMPLATE.replace(
        "Properties: {RoleName: job-role}",
        "Properties: {RoleName: job-role, ManagedPolicyArns: [arn:aws:iam::aws:policy/Admin]}"))
    with pytest.raises(iamcheck.NotEvaluable):
        role_statements(template, "JobRole")
    with pytest.raises(ValueError, match="not an AWS::IAM::Role"):
        role_statements(template, "Bucket")


# the template's parameters that have no default, as a stack would be created with them
STACK_PARAMETERS = {"RepositoryUrl": "https://github.com/example/dogbreed-mlops.git",
                    "RepositoryId": "example/dogbreed-mlops",
                    "ConnectionArn": "arn:aws:codeconnections:us-east-1:123456789012:"
                                     "connection/0a1b2c3d-1111-2222-3333-444455556666"}


def test_the_real_template_resolves_and_its_build_role_may_create_the_pipeline():
    template = ROOT / "infra/template.yaml"
    for role in ("SageMakerExecutionRole", "BuildProjectRole", "DeployProjectRole",
                 "ApprovalRuleRole"):
        assert role_statements(template, role, parameters=STACK_PARAMETERS)
    build = role_statements(template, "BuildProjectRole", parameters=STACK_PARAMETERS)
    assert is_allowed(build, "sagemaker:CreatePipeline", f"{SM}:pipeline/dogbreedbuild")
    assert is_allowed(build, "iam:PassRole", ROLE, TO_SAGEMAKER)
    assert check_calls([call("sagemaker", "CreatePipeline", PipelineName="DogBreedBuild",
                             RoleArn=ROLE)], build) == []
    # the deploy may add a GPU specification to a version, never approve one
    deploy = role_statements(template, "DeployProjectRole", parameters=STACK_PARAMETERS)
    package = f"{SM}:model-package/dogbreedmodels/3"
    add = call("sagemaker", "UpdateModelPackage", ModelPackageArn=package,
               AdditionalInferenceSpecificationsToAdd=[{"Name": "gpu"}])
    approve = call("sagemaker", "UpdateModelPackage", ModelPackageArn=package,
                   ModelApprovalStatus="Approved")
    assert check_calls([add], deploy) == []
    assert check_calls([approve], deploy) != []


# --- recording ---------------------------------------------------------------------------------

def test_record_calls_sees_every_botocore_call_in_this_process(fake_aws):
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    with record_calls() as calls:
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="k", Body=b"abc")
        s3.list_buckets()
    s3.list_buckets()  # after the block: not recorded
    assert [(c["service"], c["operation"], c["region"]) for c in calls] == [
        ("s3", "CreateBucket", "us-east-1"), ("s3", "PutObject", "us-east-1"),
        ("s3", "ListBuckets", "us-east-1")]
    assert calls[1]["params"] == {"Bucket": "bkt", "Key": "k", "Body": "<bytes: 3>"}


CHILD = """
import datetime, io, sys
import boto3
from moto import mock_aws
import already_on_path  # from the PYTHONPATH the child was given
with mock_aws():
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bkt")
    s3.list_buckets()
    s3.put_object(Bucket="bkt", Key="k", Body=io.BytesIO(b"abc"), Metadata={"n": "1"})
    s3.put_object(Bucket="bkt", Key="when", Body=b"x", Expires=datetime.datetime(2030, 1, 2))
print("child done", already_on_path.VALUE)
"""


def test_a_child_process_records_its_calls_keeps_pythonpath_and_other_sitecustomize(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "already_on_path.py").write_text("VALUE = 'kept'\n")
    (existing / "sitecustomize.py").write_text(
        "import os\nos.environ['OTHER_SITECUSTOMIZE'] = 'ran'\n")
    (tmp_path / "child.py").write_text(textwrap.dedent(CHILD) +
                                       "import os\nprint(os.environ.get('OTHER_SITECUSTOMIZE'))\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k not in ("SAGEMAKER_ROLE_ARN", "DOGBREED_BUCKET")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", PYTHONPATH=str(existing),
               AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    out = tmp_path / "calls.jsonl"
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py")], cwd=tmp_path,
                          env={**env, **recording_env(out, env)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Error in sitecustomize" not in proc.stderr
    assert proc.stdout.split() == ["child", "done", "kept", "ran"]
    calls = read_calls(out)
    assert [(c["service"], c["operation"]) for c in calls] == [
        ("s3", "CreateBucket"), ("s3", "ListBuckets"), ("s3", "PutObject"), ("s3", "PutObject")]
    assert calls[2]["params"]["Body"] == "<stream>"
    assert calls[3]["params"]["Expires"] == "2030-01-02T00:00:00"
    needed = [p for c in calls for p in required_permissions(c)]
    assert ("s3:CreateBucket", "arn:aws:s3:::bkt") in needed
    assert ("s3:ListAllMyBuckets", "*") in needed
    assert read_calls(tmp_path / "never-written.jsonl") == []


GRANDCHILD = """
import boto3
from botocore.stub import Stubber
sm = boto3.client("sagemaker", region_name="eu-west-1", aws_access_key_id="x",
                  aws_secret_access_key="x")
with Stubber(sm) as stub:
    stub.add_response("list_tags", {"Tags": []})
    sm.list_tags(ResourceArn="arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p")
"""


def test_grandchildren_are_recorded_too_and_no_other_sitecustomize_is_needed(tmp_path):
    out = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {GRANDCHILD!r}])"
    proc = subprocess.run(
        [sys.executable, "-c", child],
        env={**env, **recording_env(out, env)}, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p"
    assert read_calls(out) == [{"service": "sagemaker", "operation": "ListTags",
                                "region": "eu-west-1", "params": {"ResourceArn": arn}}]
