"""Create, update, start and follow the build pipeline in SageMaker.

    python -m pipelines.run --upsert                       # create or update DogBreedBuild
    python -m pipelines.run --upsert --start --wait \\
        --param Epochs=5 --param BaseModel=resnet18         # and run it, following the steps
    python -m pipelines.run --definition-out pipeline.json  # only write the definition
    python -m pipelines.run --upsert --batch               # DogBreedBatch: Batch Transform of
    python -m pipelines.run --start --batch --wait \\       # the newest Approved version
        --param BatchInputUrl=s3://bucket/photos/

The role comes from --role-arn, $SAGEMAKER_ROLE_ARN, or the Studio execution role; the bucket
from --bucket, $DOGBREED_BUCKET, or SageMaker's default bucket. Standard AWS configuration
(profiles, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) applies. Building the definition calls nothing
in AWS but the upload of the scripts to S3. ``--local`` runs the same pipeline on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

from pipelines import spec
from pipelines.aws import CliError

TERMINAL = ("Succeeded", "Failed", "Stopped")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    act = p.add_argument_group("actions")
    act.add_argument("--upsert", action="store_true", help="create or update the pipeline")
    act.add_argument("--start", action="store_true", help="start an execution")
    act.add_argument("--start-if-data", action="store_true",
                     help="start an execution only when InputDataUrl (the parameter given, or "
                          "the pipeline's default prefix) holds data; otherwise say so and exit "
                          "0 (what CodeBuild runs: a first push before any data is staged)")
    act.add_argument("--wait", action="store_true",
                     help="follow the execution until it ends; exit 1 if it fails")
    act.add_argument("--definition-out", metavar="FILE", help="write the definition JSON here")
    act.add_argument("--batch", action="store_true",
                     help=f"the batch-scoring pipeline {spec.BATCH_PIPELINE_NAME} (BatchModel -> "
                          f"BatchScore: a Batch Transform of a registered version over the "
                          f"s3:// prefix BatchInputUrl) instead of the build pipeline; "
                          f"--upsert sets its version parameters to the newest Approved "
                          f"version (the default of scheduled runs), --start passes them")
    act.add_argument("--version", type=int,
                     help="with --batch: this version of the group, not the newest Approved")
    act.add_argument("--local", action="store_true",
                     help="build the definition --upsert sends and run it on this machine (no "
                          "AWS, no Docker); with --definition-out, also write it")
    act.add_argument("--definition", metavar="FILE",
                     help="with --local: run this definition JSON as given (e.g. from aws "
                          "sagemaker describe-pipeline-definition-for-execution)")
    act.add_argument("--list", action="store_true",
                     help="with --local: list past local executions, newest first")
    act.add_argument("--describe", metavar="EXECUTION",
                     help="with --local: one local execution's steps (status, cache source, "
                          "log, error) and tuning trials; an id or a unique prefix of one")
    p.add_argument("--home", help="local engine state (default $DOGBREED_HOME or ./.dogbreed)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter for --start (repeatable): "
                        + ", ".join(x.name for x in spec.PARAMETERS))
    aws = p.add_argument_group("AWS")
    aws.add_argument("--role-arn")
    aws.add_argument("--region")
    aws.add_argument("--profile")
    aws.add_argument("--bucket")
    aws.add_argument("--prefix", default=spec.DEFAULT_PREFIX, help="S3 key prefix")
    aws.add_argument("--pipeline-name",
                     help=f"default {spec.DEFAULT_PIPELINE_NAME} ({spec.BATCH_PIPELINE_NAME} "
                          f"with --batch)")
    aws.add_argument("--model-package-group", default=spec.DEFAULT_MODEL_PACKAGE_GROUP)
    aws.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                     help="tag for the pipeline, its jobs and registered versions (repeatable)")
    build = p.add_argument_group("build options (fixed in the definition)")
    build.add_argument("--no-training-rules", "--no-debugger-rules", action="store_true",
                       dest="no_training_rules",
                       help="no training hook, no TrainingRules step and no rule gate")
    build.add_argument("--no-profiler", action="store_true",
                       help="no profiling data and profiler report from TrainFinal")
    build.add_argument("--sagemaker-debugger", action="store_true",
                       help="also SageMaker Debugger's built-in rules, system monitoring and "
                            "ProfilerReport on TrainFinal (only for AWS accounts that still have "
                            "Debugger: it is closed to new customers)")
    build.add_argument("--mlflow-arn", default="", metavar="ARN",
                       help="SageMaker managed MLflow tracking server: TrainFinal logs its run "
                            "there (MLFLOW_TRACKING_URI in its environment)")
    build.add_argument("--mlflow", action="store_true",
                       help="--local: log tuning trials and TrainFinal as MLflow runs to "
                            "$MLFLOW_TRACKING_URI or <home>/mlflow (pip install -e '.[mlflow]')")
    build.add_argument("--tuning-mode", choices=list(spec.TUNING_MODES),
                       default=spec.DEFAULT_TUNING_MODE,
                       help="what the tuning trials train: linear-probe (the head on cached "
                            "features, CPU image and instance; LP-FT) or fine-tune (the whole "
                            "network on images, GPU image and instance)")
    build.add_argument("--tune-fine-tune", action="store_true",
                       help="after the linear-probe trials, MaxFineTuneJobs short fine-tuning "
                            "trials from the best probed head (FineTuneTuning, on "
                            "TrainingInstanceType) tune TrainFinal's backbone rate, weight decay "
                            "and label smoothing, which FineTune* parameters fix otherwise")
    build.add_argument("--spot", action="store_true",
                       help="managed spot training (TrainFinal resumes from S3 checkpoints)")
    build.add_argument("--training-instance-count", type=int, default=1,
                       help="instances for TrainFinal; > 1 trains data-parallel across them")
    return p


def default_pipeline_name(args) -> str:
    """--pipeline-name, by default DogBreedBuild, or DogBreedBatch with --batch."""
    if args.pipeline_name is None:
        args.pipeline_name = spec.BATCH_PIPELINE_NAME if args.batch else spec.DEFAULT_PIPELINE_NAME
    return args.pipeline_name


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"{what} {item!r} must look like NAME=VALUE")
        pairs[name.strip()] = value
    return pairs


def parse_params(items: list[str], batch: bool = False) -> dict:
    parameters = spec.BATCH_PARAMETERS if batch else spec.PARAMETERS
    try:
        return {name: spec.coerce_parameter(name, value, parameters)
                for name, value in parse_pairs(items, "--param").items()}
    except ValueError as exc:
        raise CliError(str(exc)) from None


def make_context(args, session, role_arn: str, bucket: str, tags: list | None = None):
    from sagemaker.workflow.pipeline_context import PipelineSession

    from steps.context import BuildContext, BuildOptions

    from pipelines.aws import sdk_config

    pipeline_session = PipelineSession(boto_session=session, sagemaker_config=sdk_config())
    pipeline_session._default_bucket = bucket  # no ListBuckets/CreateBucket at build time
    options = BuildOptions(training_rules=not args.no_training_rules,
                           profiler=not args.no_profiler, spot=args.spot,
                           sagemaker_debugger=args.sagemaker_debugger,
                           mlflow_arn=args.mlflow_arn,
                           training_instance_count=args.training_instance_count,
                           tuning_mode=args.tuning_mode, tune_fine_tune=args.tune_fine_tune)
    return BuildContext(session=pipeline_session, role_arn=role_arn, bucket=bucket,
                        prefix=args.prefix.strip("/"), pipeline_name=default_pipeline_name(args),
                        model_package_group=args.model_package_group, options=options,
                        tags=list(tags or []))


def ensure_model_package_group(sm, name: str, tags: list[dict]) -> None:
    from pipelines.aws import describe_or_none

    group = describe_or_none(lambda: sm.describe_model_package_group(ModelPackageGroupName=name))
    if group is None:
        kwargs = {"Tags": tags} if tags else {}
        sm.create_model_package_group(
            ModelPackageGroupName=name,
            ModelPackageGroupDescription="Dog breed classifiers from the DogBreedBuild pipeline",
            **kwargs)
        print(f"created model package group {name}")


def follow(sm, execution_arn: str, poll_seconds: float = 30.0) -> str:
    """Print step status changes until the execution ends; return its final status."""
    from botocore.exceptions import ClientError

    seen: dict[str, str] = {}
    steps_supported = True
    while True:
        status = sm.describe_pipeline_execution(
            PipelineExecutionArn=execution_arn)["PipelineExecutionStatus"]
        if steps_supported:
            try:
                steps = sm.list_pipeline_execution_steps(
                    PipelineExecutionArn=execution_arn, SortOrder="Ascending")
                for step in steps.get("PipelineExecutionSteps", []):
                    name, state = step["StepName"], step["StepStatus"]
                    if seen.get(name) != state:
                        seen[name] = state
                        reason = step.get("FailureReason")
                        print(f"  {name:<28} {state}" + (f": {reason}" if reason else ""),
                              flush=True)
            except (ClientError, NotImplementedError) as exc:
                steps_supported = False
                print(f"  (step statuses unavailable: {exc})", flush=True)
        if status in TERMINAL:
            return status
        time.sleep(poll_seconds)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("sagemaker", "botocore.credentials"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")
    try:
        return _run(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # create/update/start are single calls: re-running completes them
        print("stopped (Ctrl-C); run the same command again to finish", file=sys.stderr)
        return 130


def _run(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    default_pipeline_name(args)
    if args.version is not None and not args.batch:
        raise CliError("--version chooses the version the batch pipeline scores with: add "
                       "--batch")
    if args.tune_fine_tune and args.tuning_mode != "linear-probe":
        raise CliError("--tune-fine-tune adds fine-tuning trials from the best probed head: it "
                       "follows linear-probe trials (--tuning-mode fine-tune trials tune the "
                       "fine-tune already)")
    if args.local:
        return _run_local(args)
    if args.list or args.describe or args.definition:
        raise CliError("--list, --describe and --definition are for the local engine: add "
                       "--local")
    if args.start_if_data and args.batch:
        raise CliError("--start-if-data is for the build pipeline; start the batch pipeline "
                       "with --start --batch")
    if args.start_if_data:
        args.start = True
    if not (args.upsert or args.start or args.definition_out or args.wait):
        raise CliError("nothing to do: pass --upsert, --start, --wait or --definition-out")
    if args.wait and not args.start:
        raise CliError("--wait follows an execution started with --start")
    if args.training_instance_count < 1:
        raise CliError("--training-instance-count must be at least 1")
    params = parse_params(args.param, args.batch)
    url = params.get("InputDataUrl")
    if url is not None and not url.startswith("s3://"):
        raise CliError(f"InputDataUrl must be an s3:// URI for SageMaker (stage local data with "
                       f"python -m pipelines.data.stage), got {url!r}")
    if params and not args.start:
        raise CliError("--param sets parameters of an execution: add --start")
    if args.start and not args.batch and spec.size_problem(params):
        raise CliError(spec.size_problem(params))
    advice = spec.tuning_advice(params, args.tuning_mode) \
        if args.start and args.upsert and not args.batch else ""
    if advice:
        print(advice, file=sys.stderr)
    unused = "" if args.batch else spec.unused_parameters_note(params, args.tuning_mode,
                                                               args.tune_fine_tune)
    if unused:
        print(unused, file=sys.stderr)
    tags = [{"Key": k, "Value": v} for k, v in parse_pairs(args.tag, "--tag").items()]

    from pipelines.aws import boto_session, describe_aws_error, resolve_bucket, resolve_role

    try:
        session = boto_session(args.region, args.profile)
        sm = session.client("sagemaker")
        pipeline = None
        if args.upsert or args.definition_out:
            role_arn = resolve_role(args.role_arn)
            bucket = resolve_bucket(session, args.bucket)
            pipeline = _build(args, session, role_arn, bucket, tags)
            if args.definition_out:  # (upsert builds the definition itself)
                definition = pipeline.definition()
                Path(args.definition_out).write_text(
                    json.dumps(json.loads(definition), indent=2, sort_keys=True) + "\n")
                print(f"wrote the definition of {args.pipeline_name} to {args.definition_out}")
            if args.upsert:
                if not args.batch:
                    ensure_model_package_group(sm, args.model_package_group, tags)
                exists = _pipeline_exists(sm, args.pipeline_name)
                response = pipeline.upsert(role_arn=role_arn, tags=tags or None,
                                           description=_description(args))
                if not args.batch:
                    put_no_approved_version(session.client("s3"), bucket, args.prefix)
                print(f"{'updated' if exists else 'created'} pipeline {args.pipeline_name}: "
                      f"{response['PipelineArn']}")
        if args.start and args.start_if_data:
            url = params.get("InputDataUrl") or \
                f"s3://{resolve_bucket(session, args.bucket)}/{args.prefix.strip('/')}/data/"
            if not _holds_data(session.client("s3"), url):
                print(f"not started: {url} holds no data yet; stage it with python -m "
                      f"pipelines.data.stage (e.g. dogImages) and push again, or start with "
                      f"--start --param InputDataUrl=s3://...")
                return 0
        if args.start:
            if not _pipeline_exists(sm, args.pipeline_name):
                raise CliError(f"pipeline {args.pipeline_name} does not exist in "
                               f"{session.region_name}: create it with --upsert")
            if args.batch:
                params = {**_version_parameters(args, session), **params}
            elif "ApprovedModelDataUrl" not in params:
                params = {**approved_parameters(session, args.model_package_group), **params}
            response = sm.start_pipeline_execution(
                PipelineName=args.pipeline_name,
                PipelineParameters=[{"Name": k, "Value": _as_text(v)} for k, v in params.items()])
            arn = response["PipelineExecutionArn"]
            print(f"started execution {arn}")
            if args.wait:
                try:
                    status = follow(sm, arn)
                except KeyboardInterrupt:
                    print(f"stopped waiting; execution {arn} goes on in SageMaker. To stop "
                          f"it: aws sagemaker stop-pipeline-execution --pipeline-execution-arn "
                          f"{arn}", file=sys.stderr)
                    return 130
                print(f"execution {status}")
                if status != "Succeeded":
                    detail = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
                    reason = detail.get("FailureReason")
                    if reason:
                        print(f"reason: {reason}", file=sys.stderr)
                    return 1
    except (ClientError, BotoCoreError) as exc:
        raise CliError(describe_aws_error(exc)) from None
    return 0


def _build(args, session, role_arn: str, bucket: str, tags: list):
    """The pipeline of ``args``: the build pipeline, or with --batch the batch pipeline with
    the chosen version's parameters as defaults."""
    from pipelines.build import build_batch_pipeline, build_pipeline

    ctx = make_context(args, session, role_arn, bucket, tags)
    if not args.batch:
        return build_pipeline(ctx)
    from steps import batch

    version = _version_parameters(args, session)
    ctx.params = batch.make_parameters(batch.default_input_url(ctx), version)
    return build_batch_pipeline(ctx)


def _version_parameters(args, session) -> dict:
    """ModelPackageArn, InferenceImage and ModelDataUrl of --version or the newest Approved
    version, said on stderr."""
    from pipelines import transform

    package = transform.sagemaker_package(session, args.model_package_group, args.version)
    print(f"batch scoring with {args.model_package_group} version "
          f"{package['ModelPackageVersion']} ({package['ModelApprovalStatus']})",
          file=sys.stderr)
    return transform.version_parameters(package)


def put_no_approved_version(s3, bucket: str, prefix: str) -> None:
    """The placeholder ApprovedModelDataUrl points to by default (spec.NO_APPROVED_VERSION)."""
    folder, name, body = spec.NO_APPROVED_VERSION
    s3.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{folder}/{name}", Body=body)


def approved_parameters(session, group: str) -> dict:
    """The newest Approved version, for Evaluate's comparison ({} when there is none)."""
    from pipelines import transform

    def find():
        package = transform.sagemaker_package(session, group)
        return {**transform.version_parameters(package),
                "ModelPackageVersion": package["ModelPackageVersion"]}
    from botocore.exceptions import ClientError

    try:
        found = transform.approved_for_comparison(find)
    except ClientError as exc:  # a stack from before the comparison: its role may not look
        if exc.response.get("Error", {}).get("Code") not in ("AccessDenied",
                                                             "AccessDeniedException"):
            raise
        print(f"note: the newest Approved version of {group} cannot be looked up "
              f"({exc.response['Error']['Code']}): Evaluate compares with nothing. Update the "
              f"stack (infra/template.yaml lets the build role ListModelPackages and "
              f"DescribeModelPackage)", file=sys.stderr)
        return {}
    if found:
        print(f"Evaluate compares the new model with {group} version "
              f"{found['ApprovedModelVersion']} (Approved)", file=sys.stderr)
    return found


def _description(args) -> str:
    if args.batch:
        return "Dog breed batch scoring: a Batch Transform of a registered version"
    return "Dog breed classifier: preprocess, tune, train, evaluate, register"


def _run_local(args) -> int:
    if args.upsert or args.start or args.start_if_data or args.wait:
        raise CliError("--local runs the pipeline here; it does not combine with --upsert, "
                       "--start or --wait")
    from pipelines.registry import home_dir

    if args.list or args.describe:
        return _show_local(args, home_dir(args.home))
    if args.training_instance_count != 1:
        raise CliError("--local trains on this machine: --training-instance-count is for "
                       "SageMaker")
    # a definition of ours: our parameters, checked here; another one's: its own types
    if args.batch and args.definition:
        raise CliError("--definition runs the definition given; --batch builds the batch "
                       "pipeline's: pass one of them")
    if args.batch:  # a local folder of images is staged into the local object store
        pairs = parse_pairs(args.param, "--param")
        folder = pairs.pop("BatchInputUrl", None)
        params = parse_params([f"{k}={v}" for k, v in pairs.items()], batch=True)
        if folder is not None:
            params["BatchInputUrl"] = folder
    else:  # a definition of ours: our parameters, checked here; another one's: its own types
        params = (parse_pairs(args.param, "--param") if args.definition else
                  parse_params(args.param))
    if not (args.batch or args.definition) and spec.size_problem(params):
        raise CliError(spec.size_problem(params))
    advice = "" if args.batch else "\n".join(filter(None, (
        spec.tuning_advice(params, args.tuning_mode),
        spec.unused_parameters_note(params, args.tuning_mode, args.tune_fine_tune))))
    if advice and not args.definition:
        print(advice, file=sys.stderr)
    from pipelines.local.engine import DefinitionError, HomeError, summary
    from pipelines.local.tracking import tracking_uri
    from pipelines.localrun import run_local

    home = home_dir(args.home)
    check_stores(home)  # a damaged record is said before anything runs
    try:
        uri = tracking_uri(home, args.mlflow)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        result = run_local(args, home, params, echo=lambda line: print(line, flush=True),
                           tracking_uri=uri)
    except (DefinitionError, HomeError) as exc:
        raise CliError(str(exc)) from None
    print(summary(result), flush=True)
    return 0 if result.status == "Succeeded" else 130 if result.status == "Stopped" else 1


def check_stores(home: Path) -> None:
    """Open the engine's records and the registry, where they exist: a damaged one is a
    CliError naming it."""
    from pipelines.local.store import Store
    from pipelines.registry import DB_FILE, LocalRegistry
    from pipelines.sqlite import DamagedStore

    try:
        if (home / "engine.sqlite").exists():
            Store(home)
        if (home / DB_FILE).exists():
            LocalRegistry(home)
    except DamagedStore as exc:
        raise CliError(str(exc)) from None


def _show_local(args, home: Path) -> int:
    """--list / --describe: what the engine recorded, after marking executions whose engine
    died as Failed."""
    from pipelines.local.history import describe_execution, list_executions
    from pipelines.local.store import Store, UnknownExecution

    if args.param:
        raise CliError("--list and --describe only show executions; they take no --param")
    if not (home / "engine.sqlite").is_file():  # (and do not create the home)
        if args.describe:
            raise CliError(f"no local executions under {home} (choose the home with --home "
                           f"or $DOGBREED_HOME)")
        print(f"no local executions under {home}")
        return 0
    check_stores(home)
    store = Store(home)
    store.fail_orphans()
    try:
        print(list_executions(store) if args.list else
              describe_execution(store, args.describe), flush=True)
    except UnknownExecution as exc:
        raise CliError(str(exc)) from None
    return 0


def _holds_data(s3, url: str) -> bool:
    bucket, _, key = url[len("s3://"):].partition("/")
    return s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0) > 0


def _as_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _pipeline_exists(sm, name: str) -> bool:
    from pipelines.aws import describe_or_none

    return describe_or_none(lambda: sm.describe_pipeline(PipelineName=name)) is not None


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
