"""Deploy the newest approved model version: staging first, smoke-tested, then production.

    python -m pipelines.deploy --local                  # newest Approved -> <prefix>-staging
    python -m pipelines.deploy --local --stage prod     # what passed staging -> <prefix>-prod
    python -m pipelines.deploy --local --watch          # deploy each newly approved version
    python -m pipelines.deploy --stage staging          # the same on SageMaker (boto3)

Staging always gets the newest Approved version: rejecting the live version and deploying again
rolls back to the newest version still approved (with none left, the endpoint is left as it is
and the command fails). A failed smoke test leaves the previous version serving and exits 1;
deploying the version already live (and smoke-tested) changes nothing. Production only ever
gets the version that passed staging. ``--outputs FILE`` writes shell KEY=VALUE lines about the
deployed version (for CodePipeline's approval message; MODEL_PACKAGE_VERSION=none when the run
deployed nothing).

Locally, an endpoint is a background ``pipelines.deploy.server`` process on 127.0.0.1 (see
``python -m pipelines.deploy.endpoints list``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from pipelines import spec

OUTPUT_KEYS = ("MODEL_PACKAGE_GROUP", "MODEL_PACKAGE_VERSION", "MODEL_PACKAGE_ARN",
               "VALIDATION_ACCURACY", "TEST_ACCURACY", "ENDPOINT_NAME")


NOTHING = "none"  # MODEL_PACKAGE_VERSION when a run deployed nothing


def write_outputs(path: str | None, values: dict) -> None:
    if path:
        Path(path).write_text("".join(f"{key}={shlex.quote(str(values[key]))}\n"
                                      for key in OUTPUT_KEYS))


def nothing_deployed(args) -> dict:
    """Outputs of a run that deployed nothing: the pipeline's variables still resolve, and
    prod, given ``--expect-version none``, has nothing to promote."""
    return {**{key: NOTHING for key in OUTPUT_KEYS}, "MODEL_PACKAGE_GROUP": args.group,
            "ENDPOINT_NAME": f"{args.prefix}-{args.stage}"}


def expected_version(text: str) -> int | str:
    if text == NOTHING:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a version number or {NOTHING}, got {text!r}") from None


def deploy_once(args, stage: str, echo=print) -> int:
    from pipelines.deploy import local

    package = local.deploy_stage(args.home, args.group, args.prefix, stage, echo,
                                 capture_percent=capture_percent(args))
    write_outputs(args.outputs, nothing_deployed(args) if package is None
                  else local.outputs(package, f"{args.prefix}-{stage}"))
    return 0


def capture_percent(args) -> int:
    return 0 if args.no_data_capture else args.capture_percent


def percent(text: str) -> int:
    """A whole percentage: SageMaker's InitialSamplingPercentage is an integer."""
    if not text.isdigit() or not 0 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"a whole percentage from 0 to 100, got {text!r}")
    return int(text)


def hours(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 24:
        raise argparse.ArgumentTypeError(f"a whole number of hours from 1 to 24, got {text!r}")
    return int(text)


def deploy_local(args) -> int:
    from pipelines.deploy.endpoints import EndpointError
    from pipelines.deploy.local import DeployError
    from pipelines.registry import RegistryError
    from pipelines.sqlite import DamagedStore

    try:
        if not args.watch:
            return deploy_once(args, args.stage)
        print(f"watching {args.group} for approved versions (Ctrl-C to stop)", flush=True)
        while True:  # the local stand-in for the EventBridge rule on approvals
            try:
                deploy_once(args, "staging")
                if args.stage == "prod":
                    deploy_once(args, "prod")
            except (DeployError, EndpointError, RegistryError) as exc:  # keep watching
                print(f"error: {exc}", file=sys.stderr, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130
    except DamagedStore as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (DeployError, EndpointError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def settings(args, session):
    from pipelines.aws import resolve_bucket, resolve_role
    from pipelines.deploy.sagemaker import DeploySettings

    return DeploySettings(prefix=args.prefix, group=args.group,
                          role_arn=resolve_role(args.role_arn),
                          bucket=resolve_bucket(session, args.bucket),
                          instance_type=args.instance_type, instance_count=args.instance_count,
                          capture_percent=capture_percent(args),
                          capture_kms_key=args.capture_kms_key or
                          os.environ.get("DATA_CAPTURE_KMS_KEY") or None,
                          monitor_role_arn=args.monitor_role_arn or
                          os.environ.get("MONITOR_ROLE_ARN") or None,
                          monitor_hours=args.monitor_every_hours,
                          poll_seconds=args.poll_seconds)


def deploy_sagemaker(args, echo=print) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.aws import CliError, boto_session, describe_aws_error
    from pipelines.deploy import sagemaker

    if args.watch:
        print("error: --watch is for --local; in AWS the EventBridge rule on approvals starts "
              "the deploy (infra/)", file=sys.stderr)
        return 2
    if args.expect_version is not None and args.stage != "prod":
        print("error: --expect-version goes with --stage prod: it names the version approved "
              "for production", file=sys.stderr)
        return 2
    if args.expect_version == NOTHING:
        echo("staging deployed nothing in this run: nothing to promote")
        write_outputs(args.outputs, nothing_deployed(args))
        return 0
    try:
        session = boto_session(args.region, args.profile)
        package = sagemaker.deploy_stage(session, settings(args, session), args.stage, echo,
                                         expect_version=args.expect_version)
        write_outputs(args.outputs, nothing_deployed(args) if package is None else
                      sagemaker.outputs(session, package, f"{args.prefix}-{args.stage}"))
        return 0
    except KeyboardInterrupt:
        print(f"error: stopped waiting for {args.prefix}-{args.stage}; what SageMaker was doing "
              f"to it goes on: run the deploy again to finish (it waits for the endpoint, then "
              f"checks and smoke-tests it)", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sagemaker.SageMakerDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {describe_aws_error(exc)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--local", action="store_true", help="deploy to local endpoints")
    p.add_argument("--stage", choices=("staging", "prod"), default="staging")
    p.add_argument("--watch", action="store_true",
                   help="keep polling the registry and deploy each newly approved version")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    p.add_argument("--group", default=spec.DEFAULT_MODEL_PACKAGE_GROUP)
    p.add_argument("--prefix", default=spec.DEFAULT_PREFIX, help="endpoint name prefix")
    p.add_argument("--home", help="default $DOGBREED_HOME or ./.dogbreed")
    p.add_argument("--outputs", metavar="FILE",
                   help="after a successful deploy, write KEY=VALUE shell lines: "
                        + ", ".join(OUTPUT_KEYS))
    p.add_argument("--capture-percent", type=percent, default=100,
                   help="the share of this stage's requests captured (images and answers) for "
                        "monitoring, 0-100 (default 100); captured images are users' data")
    p.add_argument("--no-data-capture", action="store_true", help="the same as "
                                                                  "--capture-percent 0")
    aws = p.add_argument_group("SageMaker (without --local)")
    aws.add_argument("--region")
    aws.add_argument("--profile")
    aws.add_argument("--role-arn")
    aws.add_argument("--bucket", help="for data capture")
    aws.add_argument("--instance-type", default="ml.m5.large",
                     help="ml.g*/ml.p* types use the package's GPU inference image")
    aws.add_argument("--instance-count", type=int, default=1)
    aws.add_argument("--expect-version", type=expected_version, metavar="N",
                     help="with --stage prod: deploy only if staging still serves version N "
                          "(the version the approver saw); 'none': staging deployed nothing, "
                          "so there is nothing to promote")
    aws.add_argument("--capture-kms-key", help="KMS key that encrypts the captured data "
                                               "(default $DATA_CAPTURE_KMS_KEY)")
    aws.add_argument("--monitor-role-arn",
                     help="EventBridge Scheduler's role: prod gets a monitoring schedule "
                          "(default $MONITOR_ROLE_ARN; none: not monitored)")
    aws.add_argument("--monitor-every-hours", type=hours, default=1,
                     help="how often prod's traffic is judged, 1-24 (default 1)")
    aws.add_argument("--poll-seconds", type=float, default=20.0,
                     help="seconds between endpoint status checks and smoke requests")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.outputs:
        folder = Path(args.outputs).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            print(f"error: cannot write --outputs {args.outputs}: {folder} is not a writable "
                  f"folder", file=sys.stderr)
            return 2
    if args.local and args.expect_version is not None:
        print("error: --expect-version is for the SageMaker deploy pipeline; locally, "
              "--stage prod promotes what serves in staging", file=sys.stderr)
        return 2
    return deploy_local(args) if args.local else deploy_sagemaker(args)
