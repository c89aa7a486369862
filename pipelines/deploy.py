"""Deploy the newest approved model version: staging first, smoke-tested, then production.

    python -m pipelines.deploy --local                  # newest Approved -> <prefix>-staging
    python -m pipelines.deploy --local --stage prod     # what passed staging -> <prefix>-prod
    python -m pipelines.deploy --local --watch          # deploy each newly approved version

Locally, an endpoint is a background ``pipelines.serving`` process on 127.0.0.1 (see
``python -m pipelines.endpoint list``). A new version starts beside the old one, is
smoke-tested, and only then replaces it (blue/green): a failed smoke test leaves the previous
version serving and exits 1. Deploying the version already live changes nothing. Production
only ever gets the version that passed staging.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from datetime import datetime, timezone

from pipelines import spec
from pipelines.endpoint import (Endpoint, EndpointError, Endpoints, alive, invoke,
                                start_server, stop)
from pipelines.registry import LocalRegistry, RegistryError, home_dir


class DeployError(Exception):
    pass


def smoke_image() -> bytes:
    """A small JPEG: the smoke test checks the serving path, not the model's accuracy."""
    from PIL import Image

    img = Image.linear_gradient("L").convert("RGB").resize((96, 80))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    return buf.getvalue()


def smoke_test(url: str) -> str | None:
    """None if the endpoint answers a JPEG with well-formed predictions, else the problem."""
    try:
        response = invoke(url, smoke_image(), "image/jpeg")
    except Exception as exc:  # noqa: BLE001 - any failure is a failed smoke test
        return f"request failed: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        (prediction,) = response.json()["predictions"]
        assert prediction["label"] and 0 <= prediction["probability"] <= 1
        assert prediction["top_k"]
    except Exception:  # noqa: BLE001
        return f"unexpected answer: {response.text[:200]}"
    return None


def deploy_local(home, group: str, name: str, version: int, model_data: str, echo=print) -> bool:
    """Blue/green: start the new version, smoke-test it, then switch and stop the old one.
    Returns True when something changed."""
    endpoints = Endpoints(home)
    current = endpoints.get(name)
    if current and current.version == version and alive(current):
        echo(f"{name} already serves {group} version {version} at {current.url}: nothing to do")
        return False
    echo(f"{name}: starting {group} version {version}")
    proc, url, log_path = start_server(home_dir(home), name, model_data, version)
    problem = smoke_test(url)
    if problem:
        stop(proc.pid)
        still = f"; version {current.version} keeps serving" if current and alive(current) \
            else ""
        raise DeployError(f"smoke test of {name} version {version} failed: {problem}{still}")
    endpoints.put(Endpoint(name, url, proc.pid, group, version, model_data, str(log_path),
                           datetime.now(timezone.utc).isoformat(timespec="seconds")))
    if current:
        stop(current.pid)
    echo(f"{name}: {group} version {version} InService at {url} (smoke test passed)")
    return True


def deploy_once(args, stage: str, echo=print) -> int:
    registry = LocalRegistry(args.home)
    home = home_dir(args.home)
    staging, prod = f"{args.prefix}-staging", f"{args.prefix}-prod"
    if stage == "staging":
        package = registry.latest_approved(args.group)
        if package is None:
            echo(f"no Approved version in {args.group} yet: approve one with "
                 f"python -m pipelines.registry approve VERSION")
            return 0
        deploy_local(home, args.group, staging, package.version, package.model_data, echo)
        return 0
    staged = Endpoints(home).get(staging)
    if staged is None or not alive(staged):
        raise DeployError(f"nothing serving in {staging}: deploy to staging first (prod only "
                          f"gets a version that passed staging)")
    package = registry.describe(args.group, staged.version)
    if package.approval_status != "Approved":
        raise DeployError(f"{args.group} version {staged.version} is {package.approval_status} "
                          f"now; it will not go to production")
    deploy_local(home, args.group, prod, staged.version, staged.model_data, echo)
    return 0


def deploy_sagemaker(args, echo=print) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.aws import (CliError, boto_session, describe_aws_error, resolve_bucket,
                               resolve_role)
    from pipelines.registry import SageMakerRegistry
    from pipelines.sagemaker_deploy import (DeploySettings, SageMakerDeployError, deploy,
                                            staged_package)

    if args.watch:
        print("error: --watch is for --local; in AWS the EventBridge rule on approvals starts "
              "the deploy (infra/)", file=sys.stderr)
        return 2
    try:
        session = boto_session(args.region, args.profile)
        settings = DeploySettings(prefix=args.prefix, group=args.group,
                                  role_arn=resolve_role(args.role_arn),
                                  bucket=resolve_bucket(session, args.bucket),
                                  instance_type=args.instance_type,
                                  instance_count=args.instance_count,
                                  data_capture=not args.no_data_capture)
        sm = session.client("sagemaker")
        if args.stage == "staging":
            newest = SageMakerRegistry(session).latest_approved(args.group)
            if newest is None:
                echo(f"no Approved version in {args.group} yet: approve one with "
                     f"python -m pipelines.registry --sagemaker approve VERSION")
                return 0
            package = sm.describe_model_package(ModelPackageName=newest.arn)
        else:
            package = staged_package(session, settings)
            if package["ModelApprovalStatus"] != "Approved":
                raise SageMakerDeployError(
                    f"{args.group} version {package['ModelPackageVersion']} is "
                    f"{package['ModelApprovalStatus']} now; it will not go to production")
        deploy(session, settings, args.stage, package, echo)
        return 0
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SageMakerDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as exc:
        print(f"error: {describe_aws_error(exc)}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
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
    aws = p.add_argument_group("SageMaker (without --local)")
    aws.add_argument("--region")
    aws.add_argument("--profile")
    aws.add_argument("--role-arn")
    aws.add_argument("--bucket", help="for data capture")
    aws.add_argument("--instance-type", default="ml.m5.large")
    aws.add_argument("--instance-count", type=int, default=1)
    aws.add_argument("--no-data-capture", action="store_true")
    args = p.parse_args(argv)
    if not args.local:
        return deploy_sagemaker(args)
    try:
        if not args.watch:
            return deploy_once(args, args.stage)
        print(f"watching {args.group} for approved versions (Ctrl-C to stop)", flush=True)
        while True:  # the local stand-in for the EventBridge rule on approvals
            try:
                deploy_once(args, "staging")
                if args.stage == "prod":
                    deploy_once(args, "prod")
            except (DeployError, EndpointError) as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 130
    except (DeployError, EndpointError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
