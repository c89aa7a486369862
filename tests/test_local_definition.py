"""One definition, two executors: the local engine runs the JSON that --upsert sends.

Quick runs on cut-down definitions (Preprocess alone, a condition on its manifest): the
container layout the definition names, edits of a built definition, the cache, and what the
engine refuses. The whole pipeline runs in test_local_engine.py.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import zipfile

import pytest

from conftest import make_image_folder
from pipelines import run, spec
from pipelines.local.engine import LocalEngine, all_steps
from pipelines.local.expressions import Resolver
from pipelines.localrun import build_definition, stage_input

ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default build options' definition, built for the local store of one home."""
    root = tmp_path_factory.mktemp("definition")
    home = root / "home"
    definition = build_definition(run.build_parser().parse_args(["--local"]), home)
    return {"root": root, "home": home, "definition": definition,
            "data": make_image_folder(root / "data", 8)}


def only(definition: dict, *names: str, extra=()) -> dict:
    """The definition with only the named top-level steps (and any extra ones)."""
    definition = copy.deepcopy(definition)
    return {**definition, "Steps": [s for s in definition["Steps"] if s["Name"] in names]
            + list(extra)}


def step(definition: dict, name: str) -> dict:
    return {s["Name"]: s for s in all_steps(definition["Steps"])}[name]


def home_with_code(built, folder):
    """A home of its own whose object store holds the code the build uploaded."""
    import shutil

    shutil.copytree(built["home"] / "s3", folder / "s3")
    return folder


def local(home, definition_file, *params):
    return run.main(["--local", "--home", str(home), "--definition", str(definition_file),
                     *[f"--param={p}" for p in params]])


def manifest_of(home) -> dict:
    (path,) = (home / "s3").glob("*/DogBreedBuild/*/Preprocess/output/manifest/manifest.json")
    return json.loads(path.read_text())


def test_a_zip_input_reaches_preprocess_without_the_processors_own_folders(built, tmp_path,
                                                                           capsys):
    """The FrameworkProcessor mounts its code and entrypoint under /opt/ml/processing/input;
    the data input must not be that folder (a zip was 'no usable images' in SageMaker)."""
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for image in sorted(built["data"].rglob("*.jpg")):
            zf.write(image, image.relative_to(built["data"]).as_posix())
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps(only(built["definition"], "Preprocess")))
    home = home_with_code(built, tmp_path / "home")
    code = local(home, path, f"InputDataUrl={archive}", "PreprocessImageSize=24",
                 "ImageSize=20")
    out = capsys.readouterr().out
    assert code == 0, out
    manifest = manifest_of(home)
    assert manifest["counts"]["train"]["total"] + manifest["counts"]["valid"]["total"] + \
        manifest["counts"]["test"]["total"] == 24
    assert not [s for s in manifest["skipped"] if s["file"].startswith(("code/", "entrypoint"))]
    # the job ran the code the SDK uploaded, with the container layout of the request
    (request_file,) = home.glob("pipelines/DogBreedBuild/*/Preprocess/request.json")
    request = json.loads(request_file.read_text())
    assert request["ProcessingJobName"].startswith("dogbreed-preprocess-")
    assert request["ProcessingInputs"][0]["S3Input"]["S3Uri"].startswith("s3://dogbreed-local/")
    job = request_file.parent / "job" / "opt" / "ml" / "processing"
    assert (job / "input" / "code" / "preprocess.py").is_file()


def test_an_edited_definition_is_run_as_edited_and_the_cache_follows_the_data(built, tmp_path,
                                                                              capsys):
    definition = only(built["definition"], "Preprocess")
    arguments = step(definition, "Preprocess")["Arguments"]["AppSpecification"]
    position = arguments["ContainerArguments"].index("--image-size") + 1
    arguments["ContainerArguments"][position] = "20"  # was Get Parameters.PreprocessImageSize
    crop = arguments["ContainerArguments"].index("--crop-size") + 1
    arguments["ContainerArguments"][crop] = "16"  # was Get Parameters.ImageSize
    step(definition, "Preprocess")["PropertyFiles"] = [
        {"PropertyFileName": "Manifest", "OutputName": "manifest", "FilePath": "manifest.json"}]
    count = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Preprocess.PropertyFiles.Manifest"},
                             "Path": "counts.train.total"}}
    condition = {"Name": "EnoughImages", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": count,
                        "RightValue": {"Get": "Parameters.AccuracyThreshold"}}],
        "IfSteps": [{"Name": "Enough", "Type": "Fail", "Arguments": {"ErrorMessage": {
            "Std:Join": {"On": " ", "Values": ["enough:", count]}}}}],
        "ElseSteps": [{"Name": "TooFew", "Type": "Fail", "Arguments": {"ErrorMessage": "too few"}}]}}
    definition["Steps"].append(condition)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(definition))
    home = home_with_code(built, tmp_path / "home")
    data = tmp_path / "data"
    make_image_folder(data, 8)

    assert local(home, path, f"InputDataUrl={data}", "AccuracyThreshold=0.5") == 1
    out = capsys.readouterr().out
    assert "[Enough] failed" in out and "enough: " in out
    (image,) = list((home / "s3").glob("*/DogBreedBuild/*/Preprocess/output/train/*/*.jpg"))[:1]
    from PIL import Image

    assert min(Image.open(image).size) == 20  # the edited argument, not the parameter's 36

    # the threshold is read at run time; the cache keys on the request and the data
    assert local(home, path, f"InputDataUrl={data}", "AccuracyThreshold=1000") == 1
    out = capsys.readouterr().out
    assert "[Preprocess] cache hit" in out and "[TooFew] failed" in out and "too few" in out
    (data / "001.Red_square" / "000.jpg").write_bytes(
        (data / "002.Green_disc" / "000.jpg").read_bytes())  # changed data, same URI
    assert local(home, path, f"InputDataUrl={data}", "AccuracyThreshold=1000") == 1
    assert "[Preprocess] cache hit" not in capsys.readouterr().out

    # --describe shows where each step's request is
    assert run.main(["--local", "--home", str(home), "--list"]) == 0
    execution = capsys.readouterr().out.splitlines()[1].split()[0]
    assert run.main(["--local", "--home", str(home), "--describe", execution]) == 0
    shown = capsys.readouterr().out
    assert "request:" in shown and "Preprocess/request.json" in shown


def test_a_request_the_api_would_refuse_fails_its_step_with_botocores_message(built, tmp_path,
                                                                             capsys):
    definition = only(built["definition"], "Preprocess")
    resources = step(definition, "Preprocess")["Arguments"]["ProcessingResources"]
    resources["ClusterConfig"]["VolumeSizeInGB"] = 0
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(definition))
    home = home_with_code(built, tmp_path / "home")
    assert local(home, path, f"InputDataUrl={built['data']}") == 1
    out = capsys.readouterr().out
    assert "SageMaker would refuse its CreateProcessingJob request" in out
    assert "ProcessingResources.ClusterConfig.VolumeSizeInGB" in out
    db = sqlite3.connect(tmp_path / "home" / "engine.sqlite")
    assert db.execute("SELECT status FROM steps").fetchall() == [("Failed",)]


def test_what_the_engine_does_not_run_is_named_before_anything_runs(built, tmp_path, capsys):
    lambda_step = {"Name": "Notify", "Type": "Lambda", "Arguments": {}}
    for extra, named in (([lambda_step], "type Lambda is not supported"),
                         ([{"Name": "Odd", "Type": "Fail", "Arguments": {"ErrorMessage": {
                             "Std:Concat": ["a"]}}}], "pipeline function Std:Concat")):
        path = tmp_path / "unsupported.json"
        path.write_text(json.dumps(only(built["definition"], "Preprocess", extra=extra)))
        assert local(tmp_path / "home", path) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err
    assert not (tmp_path / "home" / "engine.sqlite").exists()
    assert run.main(["--local", "--home", str(tmp_path / "home"), "--param=InputDataUrl=ftp://x"
                     ]) == 2
    assert "scheme is not supported" in capsys.readouterr().err


def test_no_registration_metadata_value_can_resolve_empty(built):
    """CreateModelPackage refuses an empty CustomerMetadataProperties value, and
    blocking.fired is empty exactly when registration happens."""
    from pipelines.shapes import validate_arguments

    register = step(built["definition"], "RegisterModel-RegisterModel")
    files = {"TrainingRulesReport": {
        "blocking": {"count": 0, "fired": "", "rules": ["ExplodingTensor"], "summary": "none"},
        "rules": [{"rule": r, "status": "NoIssuesFound"} for r in spec.TRAINING_RULES]},
        "ValidationReport": {"multiclass_classification_metrics": {"accuracy": {"value": 0.9}}},
        "EvaluationReport": {"multiclass_classification_metrics": {"accuracy": {"value": 0.8}},
                             "comparison_summary": "none (no approved version)"}}
    outputs = {"ProcessingOutputConfig": {"Outputs": [
        {"OutputName": n, "S3Output": {"S3Uri": f"s3://b/{n}"}} for n in ("rules",
                                                                         "evaluation")]}}
    resolver = Resolver({"ModelApprovalStatus": "PendingManualApproval",
                         "ApprovedModelVersion": "none"}, {},
                        lambda s: {**outputs, "ModelArtifacts": {"S3ModelArtifacts": "s3://b/m"}},
                        lambda s, name: files[name])
    request = resolver.resolve(register["Arguments"])
    assert all(len(v) >= 1 for v in request["CustomerMetadataProperties"].values())
    assert request["CustomerMetadataProperties"]["training_rules_blocking_fired"] == "none"
    assert request["CustomerMetadataProperties"]["accuracy_delta"] == "none (no approved version)"
    assert validate_arguments("CreateModelPackage", request) == []


def test_local_and_upsert_build_the_same_definition_but_for_bucket_role_and_account(
        built, fake_aws, tmp_path):
    import boto3

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="dogbreed-test-bucket")
    out = tmp_path / "cloud.json"
    assert run.main(["--role-arn", ROLE, "--bucket", "dogbreed-test-bucket",
                     "--definition-out", str(out)]) == 0
    cloud = out.read_text()
    local_text = json.dumps(built["definition"], indent=2, sort_keys=True) + "\n"
    replaced = (local_text.replace("dogbreed-local", "dogbreed-test-bucket")
                .replace("arn:aws:iam::000000000000:role/DogBreedLocalEngine", ROLE))
    assert replaced == cloud


def test_staging_is_the_data_stage_code_and_skips_what_is_unchanged(tmp_path):
    data = make_image_folder(tmp_path / "data", 2)
    home = tmp_path / "home"
    uri, digest = stage_input(str(data), home, "dogbreed-local", "dogbreed")
    assert uri.startswith("s3://dogbreed-local/dogbreed/data/data-") and uri.endswith("/")
    stored = sorted(p.relative_to(home / "s3").as_posix() for p in
                    (home / "s3" / "dogbreed-local").rglob("*.jpg"))
    assert len(stored) == 6
    before = {p: p.stat().st_mtime_ns for p in (home / "s3" / "dogbreed-local").rglob("*.jpg")}
    again, same = stage_input(str(data), home, "dogbreed-local", "dogbreed")
    assert (again, same) == (uri, digest)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing re-uploaded
    engine = LocalEngine(home)
    assert len(engine.objects.objects(uri)) == 6


def test_the_engine_imports_no_sagemaker_sdk():
    """The CLI builds the definition; the engine runs JSON (and botocore's shapes)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys, pipelines.local.engine, pipelines.local.objectstore; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sagemaker', 'steps')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_keys_container_paths_and_step_names_stay_inside_their_folders(built, tmp_path,
                                                                       capsys):
    from pipelines.local.jobs import JobSetupError, Layout
    from pipelines.local.objectstore import ObjectStore, StoreError

    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "pw").write_text("x")
    store = ObjectStore(tmp_path / "home" / "s3")
    for uri in ("s3://b/../../secret/", "s3://b/a/../../../secret/pw"):
        with pytest.raises(StoreError):
            store.download(uri, tmp_path / "out")
    with pytest.raises(JobSetupError):
        Layout(tmp_path / "job").local("/opt/ml/processing/../../../../x")
    definition = only(built["definition"], "Preprocess")
    definition["Steps"][0]["Name"] = "../Preprocess"
    path = tmp_path / "named.json"
    # as `aws sagemaker describe-pipeline` prints it: the definition as a string
    path.write_text(json.dumps({"PipelineDefinition": json.dumps(definition)}))
    assert local(tmp_path / "home", path) == 2
    assert "step name '../Preprocess'" in capsys.readouterr().err
    path.write_text("[1, 2]")
    assert local(tmp_path / "home", path) == 2
    assert "not a pipeline definition" in capsys.readouterr().err
