"""Shared fixtures: generated image folders and one small trained model for the whole session."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

# What CodeBuild's build job runs before --upsert (buildspec.yml: pytest -m build): the
# definition, its requests, IAM, the template and the CLI, on requirements-build.txt (no torch).
BUILD_TESTS = ("test_pipeline.py", "test_definition_shapes.py", "test_iam_build.py",
               "test_iamcheck.py", "test_infra.py", "test_cli_moto_server.py",
               "test_codebuild_env.py", "test_cli_pipes.py", "test_deploy_sagemaker.py")


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


if not _importable("torch"):  # the build job's environment: the other tests need training
    collect_ignore = sorted(p.name for p in Path(__file__).parent.glob("test_*.py")
                            if p.name not in BUILD_TESTS)


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in BUILD_TESTS:
            item.add_marker(pytest.mark.build)

# A learnable task: each class is a coloured shape on a random grey background.
CLASS_STYLES = {
    "001.Red_square": ((210, 40, 40), "rectangle"),
    "002.Green_disc": ((40, 190, 60), "ellipse"),
    "003.Blue_bar": ((40, 60, 210), "bar"),
}


def draw_example(style, rng: random.Random, size=(48, 40)) -> Image.Image:
    (r, g, b), shape = style
    w, h = size
    grey = rng.randint(60, 200)
    img = Image.new("RGB", size, (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    x, y = rng.randint(0, w // 3), rng.randint(0, h // 3)
    jitter = lambda v: max(0, min(255, v + rng.randint(-25, 25)))  # noqa: E731
    colour = (jitter(r), jitter(g), jitter(b))
    if shape == "rectangle":
        draw.rectangle([x, y, x + w // 2, y + h // 2], fill=colour)
    elif shape == "ellipse":
        draw.ellipse([x, y, x + w // 2, y + h // 2], fill=colour)
    else:
        draw.rectangle([x, 0, x + w // 5, h - 1], fill=colour)
    return img


def make_image_folder(root: Path, per_class: int, *, seed: int = 0, size=(48, 40),
                      classes=None, fmt: str = "JPEG") -> Path:
    """<root>/<class>/<i>.jpg for the generated classes."""
    rng = random.Random(seed)
    for name in classes or CLASS_STYLES:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = "jpg" if fmt == "JPEG" else fmt.lower()
            draw_example(CLASS_STYLES[name], rng, size).save(folder / f"{i:03d}.{ext}", fmt)
    return root


def make_split_folders(root: Path, train: int, valid: int, test: int = 0, seed: int = 0,
                       size=(48, 40)) -> Path:
    for offset, (split, n) in enumerate((("train", train), ("valid", valid), ("test", test))):
        if n:
            make_image_folder(root / split, n, seed=seed * 10 + offset, size=size)
    return root


def run_script(name: str, *args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run scripts/<name> as SageMaker would: a fresh interpreter, arguments, SM_* variables."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "2")
    for key in list(full_env):
        if key.startswith("SM_") or key in ("SMDEBUG_CONFIG_FILE_PATH", "WORLD_SIZE", "RANK"):
            del full_env[key]
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)],
                          capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout)


def train_env(tmp: Path, data: Path) -> dict:
    return {"SM_CHANNEL_TRAIN": str(data / "train"), "SM_CHANNEL_VALID": str(data / "valid"),
            "SM_MODEL_DIR": str(tmp / "model"), "SM_OUTPUT_DATA_DIR": str(tmp / "output")}


SMALL_TRAINING = ("--arch", "resnet18", "--pretrained", "false", "--image-size", "32",
                  "--batch-size", "16", "--lr", "0.003", "--workers", "0")


@pytest.fixture(scope="session")
def split_data(tmp_path_factory) -> Path:
    """train (30/class), valid (10/class), test (10/class) of the generated task."""
    return make_split_folders(tmp_path_factory.mktemp("data"), 30, 10, 10)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, split_data):
    """One small model trained through train.py, shared by evaluation and inference tests."""
    tmp = tmp_path_factory.mktemp("trained")
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "5",
                      "--checkpoint-dir", tmp / "ckpt", env=train_env(tmp, split_data))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"dir": tmp, "model": tmp / "model", "output": tmp / "output", "log": proc.stdout,
            "data": split_data}


# Every source botocore's credential and region chains read (environment, profiles and their
# files, web identity, SSO, credential_process, the container provider CodeBuild and ECS use,
# instance metadata, boto2 config) and every endpoint override: all AWS_* variables go.
NOT_AWS_VARIABLES = ("BOTO_CONFIG", "SAGEMAKER_ROLE_ARN", "DOGBREED_ROLE_ARN", "DOGBREED_BUCKET")


def offline_aws_env(tmp_path: Path, base: dict | None = None, **extra) -> dict:
    """An environment (for a subprocess) where AWS is fake: test credentials, us-east-1, no
    profile files, no container or instance credentials, none of the project's variables."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("AWS_") and k not in NOT_AWS_VARIABLES}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
               BOTO_CONFIG=str(tmp_path / "no-boto-config"), SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env.update(extra)
    return env


@pytest.fixture
def fake_aws(monkeypatch, tmp_path):
    """Offline AWS for this process: moto for every service and ``offline_aws_env``. Inside
    CodeBuild (container credentials, AWS_REGION) as on a laptop (profiles, SSO)."""
    from moto import mock_aws

    wanted = offline_aws_env(tmp_path)
    for name in list(os.environ):
        if name not in wanted:
            monkeypatch.delenv(name)
    for name, value in wanted.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


INFERENCE_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-{}-py312"


def create_model_package(sm, group: str, model_data: str,
                         status: str = "PendingManualApproval", *, gpu: bool = False,
                         **extra) -> str:
    """A PyTorch-inference model package in ``group`` (SageMaker's shape); returns its ARN.
    ``gpu``: with the ``gpu`` AdditionalInferenceSpecification the build registers."""
    def specification(device):
        return {"Containers": [{"Image": INFERENCE_IMAGE.format(device),
                                "ModelDataUrl": model_data}],
                "SupportedContentTypes": ["image/jpeg"],
                "SupportedResponseMIMETypes": ["application/json"]}
    if gpu:
        extra["AdditionalInferenceSpecifications"] = [
            {"Name": "gpu", **specification("gpu"),
             "SupportedRealtimeInferenceInstanceTypes": ["ml.g4dn.xlarge", "ml.g5.xlarge"]}]
    return sm.create_model_package(
        ModelPackageGroupName=group, ModelApprovalStatus=status,
        InferenceSpecification=specification("cpu"), **extra)["ModelPackageArn"]


@pytest.fixture
def fake_endpoints(monkeypatch):
    """SageMaker's endpoint states on moto (tests/fake_endpoints.py), in-process and for a
    ThreadedMotoServer of this process."""
    from fake_endpoints import FakeEndpoints

    return FakeEndpoints().install(monkeypatch)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(autouse=True)
def no_mlflow_server(monkeypatch):
    """Tests never log to a tracking server the developer's environment names: train.py and
    the local engine log MLflow runs whenever MLFLOW_TRACKING_URI is set."""
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)


PROJECT_PACKAGES = ("pipelines", "breedkit", "steps")


def requirement_modules(requirements: str) -> set[str]:
    """The top-level modules a CodeBuild job has that installs the project with --no-deps and
    ``requirements`` (a file at the root) with everything those require, and the stdlib."""
    from importlib import metadata

    from packaging.requirements import Requirement

    wanted = [Requirement(line.split("#")[0]) for line in
              (ROOT / requirements).read_text().splitlines()
              if line.split("#")[0].strip()]
    closure: set[str] = set()
    seen: set[tuple] = set()
    while wanted:
        wish = wanted.pop()
        name = wish.name.lower().replace("_", "-")
        extras = sorted(wish.extras)
        if (name, tuple(extras)) in seen:
            continue
        seen.add((name, tuple(extras)))
        closure.add(name)
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": e})
                                                 for e in ["", *extras]):
                wanted.append(requirement)
    installed = {module for module, dists in metadata.packages_distributions().items()
                 if any(d.lower().replace("_", "-") in closure for d in dists)}
    return set(sys.stdlib_module_names) | installed | set(PROJECT_PACKAGES)


BLOCKER = '''"""Written by the tests: only what a {requirements} job installs is importable."""
import sys

ALLOWED = {allowed!r}


class _OnlyTheRequirements:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ALLOWED and not top.startswith("_"):
            raise ModuleNotFoundError(f"No module named {{name!r}} "
                                      "(blocked: not in {requirements})", name=name)
        return None


sys.meta_path.insert(0, _OnlyTheRequirements())

import importlib.util  # noqa: E402

_find_spec = importlib.util.find_spec


def _find_spec_of_installed(name, package=None):  # a blocked module is not installed: None
    if name.partition(".")[0] not in ALLOWED and not name.startswith("_"):
        return None
    return _find_spec(name, package)


importlib.util.find_spec = _find_spec_of_installed
'''


def import_blocker(folder: Path, requirements: str) -> Path:
    """A folder for PYTHONPATH whose sitecustomize lets a process import only what a job
    installing ``requirements`` has (and the tests' own helper modules)."""
    folder.mkdir(parents=True, exist_ok=True)
    helpers = {p.stem for p in Path(__file__).parent.glob("*.py")}
    (folder / "sitecustomize.py").write_text(BLOCKER.format(
        allowed=sorted(requirement_modules(requirements) | helpers), requirements=requirements))
    return folder
