"""AWS set-up for the command-line tools: session, region, credentials, role and bucket.

Honours the standard AWS configuration (profiles, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, ...).
Anything missing or wrong becomes a ``CliError`` whose message says what to do; the tools print
it as one line and exit with code 2.
"""

from __future__ import annotations

import logging
import os
import re

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
# The SDK logs at INFO, on stdout, which config files it did not find ("Not applying SDK
# defaults from location ..."): chatter in a CLI's output. Warnings and errors still show.
logging.getLogger("sagemaker.config").setLevel(logging.WARNING)

ROLE_ENV = ("SAGEMAKER_ROLE_ARN", "DOGBREED_ROLE_ARN")
BUCKET_ENV = "DOGBREED_BUCKET"
STUDIO_METADATA = "/opt/ml/metadata/resource-metadata.json"
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class CliError(Exception):
    """A user-fixable problem: printed as one line, exit code 2."""


def boto_session(region: str | None = None, profile: str | None = None):
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise CliError(f"AWS profile {profile!r} not found: check ~/.aws/config or drop "
                       f"--profile") from None
    if not session.region_name:
        raise CliError("no AWS region: pass --region, set AWS_DEFAULT_REGION, or set a region "
                       "in your AWS profile")
    if session.get_credentials() is None:
        raise CliError("no AWS credentials found: run 'aws configure' (or 'aws sso login'), "
                       "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM "
                       "role is attached")
    return session


def resolve_role(role_arn: str | None) -> str:
    """--role-arn, then $SAGEMAKER_ROLE_ARN / $DOGBREED_ROLE_ARN, then the Studio role."""
    for candidate in (role_arn, *(os.environ.get(name) for name in ROLE_ENV)):
        if candidate:
            if not _ROLE_ARN.match(candidate):
                raise CliError(f"{candidate!r} is not an IAM role ARN "
                               f"(arn:aws:iam::<account>:role/<name>)")
            return candidate
    if os.path.isfile(STUDIO_METADATA):
        import sagemaker

        try:
            return sagemaker.get_execution_role()
        except Exception as exc:  # noqa: BLE001 - any failure means: tell the user
            raise CliError(f"cannot read the Studio execution role ({exc}); pass --role-arn"
                           ) from None
    raise CliError("no SageMaker execution role: pass --role-arn, or set SAGEMAKER_ROLE_ARN "
                   "(a role SageMaker can assume, with access to the bucket)")


def resolve_bucket(session, bucket: str | None) -> str:
    """--bucket, then $DOGBREED_BUCKET, then SageMaker's default sagemaker-<region>-<account>."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = bucket or os.environ.get(BUCKET_ENV)
    if bucket:
        if bucket.startswith("s3://"):
            bucket = bucket[5:].strip("/")
        if not _BUCKET.match(bucket):
            raise CliError(f"{bucket!r} is not a valid S3 bucket name")
    else:
        try:
            account = session.client("sts").get_caller_identity()["Account"]
        except (ClientError, BotoCoreError) as exc:
            raise CliError(f"cannot find the AWS account for the default bucket ({exc}); "
                           f"pass --bucket") from None
        bucket = f"sagemaker-{session.region_name}-{account}"
    try:
        session.client("s3").head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise CliError(f"S3 bucket {bucket} does not exist: create it ('aws s3 mb "
                           f"s3://{bucket}') or pass --bucket") from None
        raise CliError(f"cannot use S3 bucket {bucket}: {code or exc}") from None
    return bucket


def sdk_config() -> dict:
    """The user's SageMaker SDK defaults (config.yaml files, if any) with telemetry off.

    Pass it as ``sagemaker_config`` to the SDK's sessions. Telemetry would otherwise send a
    request per SDK call (and an sts:GetCallerIdentity) and log a traceback when it cannot
    reach its endpoint, as inside a private CodeBuild network.
    """
    from sagemaker.config import load_sagemaker_config

    _validate_sdk_config_once_per_schema()
    config = load_sagemaker_config() or {}
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault(
        "Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def _validate_sdk_config_once_per_schema() -> None:
    """Make the SDK's config lookups cheap again.

    With any config (ours, or a user's config.yaml), the SDK validates it at every lookup with
    ``jsonschema.validate``, which first checks the SDK's own schema against the JSON Schema
    metaschema: 0.25 s a lookup, about 110 lookups per definition, 1 s -> 8 s per build. This
    does what ``jsonschema.validate`` does (best-matching error raised), with the schema
    checked once.
    """
    try:
        import jsonschema
        import sagemaker.utils
        from sagemaker.config.config_schema import SAGEMAKER_PYTHON_SDK_CONFIG_SCHEMA as schema
        validate = sagemaker.utils.validate_sagemaker_config
    except (ImportError, AttributeError):  # another SDK 2.x layout: slower, still correct
        return
    if getattr(validate, "schema_checked_once", False):
        return
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)

    def validate_sagemaker_config(sagemaker_config: dict = None):
        error = jsonschema.exceptions.best_match(validator.iter_errors(sagemaker_config))
        if error is not None:
            raise error

    validate_sagemaker_config.schema_checked_once = True
    sagemaker.utils.validate_sagemaker_config = validate_sagemaker_config


def describe_or_none(call) -> dict | None:
    """``call()`` (a SageMaker Describe*), or None when the resource does not exist.

    SageMaker answers a missing resource with ResourceNotFound or, for most Describe calls,
    ValidationException ("Could not find ..."); other errors (access denied, throttling) raise.
    """
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ResourceNotFound",
                                                         "ValidationException"):
            return None
        raise


def exit_code(action) -> int:
    """``action()``'s exit code (None: 0), with a CliError or an AWS error printed as one
    ``error:`` line and exit code 2: how our AWS commands end."""
    import sys

    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return action() or 0
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {describe_aws_error(exc)}", file=sys.stderr)
    return 2


def describe_aws_error(exc) -> str:
    """One line for a botocore error."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    if isinstance(exc, NoCredentialsError):
        return ("no AWS credentials found: run 'aws configure', or set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region or set AWS_DEFAULT_REGION"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "AWS call")
        return f"{operation} failed: {error.get('Code', '')}: {error.get('Message', exc)}"
    return f"AWS error: {exc}"
