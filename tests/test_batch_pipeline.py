"""Batch scoring in SageMaker: the DogBreedBatch pipeline (BatchModel -> BatchScore, a Batch
Transform of a registered version) run by the local engine from the definition --upsert sends,
and the requests ``python -m pipelines.batch --sagemaker`` makes."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines import run as run_cli
from pipelines import shapes, spec
from pipelines.registry import LocalRegistry
from test_deploy_local import home  # noqa: F401 - a home and a trained model's archive

GROUP = spec.DEFAULT_MODEL_PACKAGE_GROUP


@pytest.fixture
def approved(home):  # noqa: F811
    registry = LocalRegistry(home["home"])
    registry.register(GROUP, str(home["archive"]), approval_status="Approved")
    return home


def test_the_batch_pipeline_scores_a_folder_locally_as_the_endpoint_answers(approved, tmp_path,
                                                                           capsys):
    photos = tmp_path / "photos"
    shutil.copytree(approved["data"] / "test", photos)
    good = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    (photos / "notes.txt").write_text("not an image")
    (photos / "truncated.jpg").write_bytes((photos / good[0]).read_bytes()[:200])
    out_def = tmp_path / "batch.json"
    code = run_cli.main(["--local", "--batch", "--home", str(approved["home"]),
                         "--param", f"BatchInputUrl={photos}", "--definition-out", str(out_def)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert f"[BatchScore] {len(good) + 2} records in s3://dogbreed-local/dogbreed/batch/output/" \
        in printed.out and "transform_output: " in printed.out
    definition = json.loads(out_def.read_text())
    assert [s["Type"] for s in definition["Steps"]] == ["Model", "Transform"]

    # each image's record is the endpoint's answer, named by its key below the input prefix;
    # the bad files are records saying why
    (execution,) = (approved["home"] / "s3" / "dogbreed-local" / "dogbreed" / "batch" /
                    "output").iterdir()
    records = {p.relative_to(execution).as_posix().removesuffix(".out"): json.loads(p.read_text())
               for p in execution.rglob("*.out")}
    assert set(records) == {*good, "notes.txt", "truncated.jpg"}
    assert records["notes.txt"]["error"]["status"] == 400
    assert records["truncated.jpg"]["error"]["status"] == 400
    assert records["truncated.jpg"]["error"]["message"].startswith("image: ")
    right = 0
    for name in good:
        (answer,) = records[name]["predictions"]
        assert len(answer["top_k"]) == 3  # 3 classes
        right += answer["class"] == name.split("/")[0]
    assert right >= 0.8 * len(good)  # a trained model, on images of its classes


# --- in SageMaker (moto) -------------------------------------------------------------------------

ROLE = "arn:aws:iam::123456789012:role/DogBreedSageMakerRole"


def batch_main(*args) -> int:
    from pipelines import batch

    return batch.main([*map(str, args)])


@pytest.fixture
def registry_with_versions(fake_aws):
    import boto3

    from conftest import create_model_package

    sm = boto3.client("sagemaker")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    create_model_package(sm, GROUP, "s3://models/v1/model.tar.gz", "Approved")
    create_model_package(sm, GROUP, "s3://models/v2/model.tar.gz", "Approved")
    create_model_package(sm, GROUP, "s3://models/v3/model.tar.gz")  # pending: never scores
    return sm


def test_sagemaker_batch_starts_a_transform_of_the_newest_approved_version(
        registry_with_versions, capsys):
    sm = registry_with_versions
    assert batch_main("--sagemaker", "--input", "s3://photos/in/", "--output",
                      "s3://scores/out/", "--role-arn", ROLE) == 0
    out = capsys.readouterr().out
    (job,) = sm.list_transform_jobs()["TransformJobSummaries"]
    described = sm.describe_transform_job(TransformJobName=job["TransformJobName"])
    assert f"{GROUP} version 2 scores s3://photos/in/" in out
    model = sm.describe_model(ModelName=described["ModelName"])
    assert model["PrimaryContainer"]["ModelPackageName"].endswith(f"{GROUP.lower()}/2")
    assert model["ExecutionRoleArn"] == ROLE
    assert described["TransformInput"]["DataSource"]["S3DataSource"] == {
        "S3DataType": "S3Prefix", "S3Uri": "s3://photos/in/"}
    assert described["TransformInput"]["ContentType"] == "application/x-image"
    assert described["TransformOutput"]["S3OutputPath"] == "s3://scores/out"
    assert described["Environment"]["ERRORS_IN_BODY"] == "true"
    assert described["BatchStrategy"] == "SingleRecord"

    # a second job of the same version reuses its model
    assert batch_main("--sagemaker", "--input", "s3://photos/more/", "--output",
                      "s3://scores/more/", "--role-arn", ROLE, "--version", "1") == 0
    assert len(sm.list_models()["Models"]) == 2  # v2's and v1's


@pytest.mark.parametrize("args, expected", [
    (("--input", "s3://photos/in/", "--output", "scores.csv"), "--output s3://"),
    (("--sagemaker", "--input", "photos/", "--output", "s3://o/"), "--input s3://"),
    (("--sagemaker", "--input", "s3://p/", "--output", "s3://o/", "--instance-count", "0"),
     "--instance-count must be at least 1"),
    (("--sagemaker", "--input", "s3://p/", "--output", "s3://o/", "--version", "9"),
     "version 9"),
])
def test_sagemaker_batch_refuses_what_a_transform_cannot_do(registry_with_versions, capsys,
                                                           args, expected):
    assert batch_main(*args, "--role-arn", ROLE) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_sagemaker_batch_without_an_approved_version_says_how_to_get_one(fake_aws, capsys):
    import boto3

    boto3.client("sagemaker").create_model_package_group(ModelPackageGroupName=GROUP)
    assert batch_main("--sagemaker", "--input", "s3://p/", "--output", "s3://o/",
                      "--role-arn", ROLE) == 2
    assert "no Approved version in DogBreedModels" in capsys.readouterr().err


def test_the_pipeline_and_the_command_send_the_same_transform(fake_aws, tmp_path):
    """One source of truth: the TransformStep's arguments are the command's request, but for
    the names and what the parameters give."""
    from pipelines import transform
    from pipelines.build import build_batch_pipeline
    from pipelines.run import build_parser, make_context
    from pipelines.aws import boto_session
    from steps import batch as batch_steps

    args = build_parser().parse_args(["--batch", "--definition-out", "x"])
    args.pipeline_name = spec.BATCH_PIPELINE_NAME
    ctx = make_context(args, boto_session(), ROLE, "bucket")
    version = {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:1:model-package/g/4",
               "InferenceImage": "image", "ModelDataUrl": "s3://m/model.tar.gz"}
    ctx.params = batch_steps.make_parameters(batch_steps.default_input_url(ctx), version)
    definition = json.loads(build_batch_pipeline(ctx).definition())
    step = next(s for s in definition["Steps"] if s["Type"] == "Transform")
    request = transform.transform_request("job", "model", "s3://in/", "s3://out",
                                          "ml.m5.xlarge", 1, "arn", [])

    def static(value):  # what is fixed in both, expressions and names left out
        if isinstance(value, dict):
            return {k: static(v) for k, v in value.items()
                    if not (isinstance(v, dict) and ({"Get", "Std:Join"} & set(v)))
                    and k not in ("TransformJobName", "ModelName", "MODEL_PACKAGE_ARN",
                                  "S3Uri", "S3OutputPath", "InstanceType", "InstanceCount")}
        return value
    assert static(step["Arguments"]) == static(request)
    assert static(step["Arguments"])["BatchStrategy"] == "SingleRecord"
    assert shapes.validate_definition(definition) == []

    # the template's execution role, which Pipelines runs the steps as, may make each request
    import iamcheck
    from test_infra import SM, SM_ROLE, TO_SAGEMAKER, statements

    role = statements("SageMakerExecutionRole")
    for kind in ("Model", "Transform"):
        action = f"sagemaker:{shapes.OPERATIONS[kind]}"
        assert iamcheck.is_allowed(role, action, f"{SM}:{kind.lower()}/dogbreed-batch-x"), action
    assert iamcheck.is_allowed(role, "sagemaker:StopTransformJob", f"{SM}:transform-job/x")
    assert iamcheck.is_allowed(role, "iam:PassRole", SM_ROLE, TO_SAGEMAKER)


def test_upsert_batch_pins_the_newest_approved_version_and_start_passes_it(
        registry_with_versions, capsys):
    import boto3

    sm = registry_with_versions
    boto3.client("s3").create_bucket(Bucket="bucket")
    base = ["--batch", "--role-arn", ROLE, "--bucket", "bucket"]
    assert run_cli.main(["--upsert", *base]) == 0
    definition = json.loads(sm.describe_pipeline(
        PipelineName=spec.BATCH_PIPELINE_NAME)["PipelineDefinition"])
    defaults = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert defaults["ModelPackageArn"].endswith(f"{GROUP.lower()}/2")
    assert defaults["ModelDataUrl"] == "s3://models/v2/model.tar.gz"
    assert defaults["BatchInputUrl"] == "s3://bucket/dogbreed/batch/input/"
    assert "version 2 (Approved)" in capsys.readouterr().err

    sm.update_model_package(ModelPackageArn=defaults["ModelPackageArn"].replace("/2", "/3"),
                            ModelApprovalStatus="Approved")
    assert run_cli.main(["--start", *base, "--param", "BatchInputUrl=s3://photos/x/"]) == 0
    (execution,) = sm.list_pipeline_executions(
        PipelineName=spec.BATCH_PIPELINE_NAME)["PipelineExecutionSummaries"]
    given = {p["Name"]: p["Value"] for p in sm.list_pipeline_parameters_for_execution(
        PipelineExecutionArn=execution["PipelineExecutionArn"])["PipelineParameters"]}
    assert given["ModelPackageArn"].endswith(f"{GROUP.lower()}/3")  # newest at start time
    assert given["BatchInputUrl"] == "s3://photos/x/"

    assert run_cli.main(["--start", *base, "--param", "BatchInputUrl=photos/"]) == 2
    assert "BatchInputUrl must be an s3:// URI" in capsys.readouterr().err
    assert run_cli.main(["--start", "--param", "BatchInputUrl=s3://p/"]) == 2
    assert "unknown pipeline parameter 'BatchInputUrl'" in capsys.readouterr().err


def test_a_start_whose_role_may_not_find_the_approved_version_still_starts(monkeypatch, capsys):
    """A stack from before the comparison: its build role may not ListModelPackages. The start
    goes on without a comparison, saying to update the stack; other AWS errors still stop it."""
    from botocore.exceptions import ClientError

    from pipelines import transform

    def denied(session, group, version=None):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                          "ListModelPackages")
    monkeypatch.setattr(transform, "sagemaker_package", denied)
    assert run_cli.approved_parameters(None, GROUP) == {}
    assert "cannot be looked up (AccessDeniedException)" in capsys.readouterr().err

    def throttled(session, group, version=None):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}},
                          "ListModelPackages")
    monkeypatch.setattr(transform, "sagemaker_package", throttled)
    with pytest.raises(ClientError):
        run_cli.approved_parameters(None, GROUP)
