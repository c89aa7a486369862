"""Run one SageMaker job locally, from its request, with the container layout it names.

Each job gets a root folder of its own, and every container path ``/opt/ml/...`` of the
request is that path under the root: processing inputs at their ``LocalPath``, training channels
under ``/opt/ml/input/data/<channel>``, ``/opt/ml/input/config/hyperparameters.json``, the
model and output folders. The job's code is what the SDK uploaded (``sourcedir.tar.gz`` in the
object store), extracted where the container would extract it; the script runs with this
machine's Python, so the job's ``requirements.txt`` is not installed (the project's
environment has what the jobs need). After a job, its outputs are uploaded where SageMaker puts
them: each ProcessingOutput at its S3Uri; a training job's ``model.tar.gz`` and
``output.tar.gz`` at ``<S3OutputPath>/<TrainingJobName>/output/``.

Each job runs under guard.py in a process group of its own, which dies with the engine, even a
killed one. A failure reason the script writes to ``SM_OUTPUT_DIR/failure`` comes back like
SageMaker's FailureReason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from breedkit import archives

from .expressions import Unsupported
from .objectstore import ObjectStore, StoreError

GUARD = Path(__file__).with_name("guard.py")
CONTAINER_ROOT = "/opt/ml"
MAX_CODE_BYTES = 512 * 1024 * 1024  # a sourcedir.tar.gz, unpacked


@dataclass
class JobResult:
    returncode: int
    failure_reason: str | None
    log_path: Path


class JobStopped(Exception):
    """The job was terminated on purpose (pruning, Ctrl-C)."""


class JobSetupError(Exception):
    """The job cannot start: an input is missing from the store, its code cannot be read."""


class Layout:
    """Container paths of one job, under its root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def local(self, container_path: str) -> Path:
        if not container_path.startswith("/") or ".." in container_path.split("/"):
            raise JobSetupError(f"container path {container_path!r} is not absolute, or has "
                                f"'..' parts")
        return self.root / container_path.lstrip("/")

    def map_argument(self, value: str) -> str:
        """An argument naming a container path (``/opt/ml/...``) names the job's folder."""
        if value == CONTAINER_ROOT or value.startswith(CONTAINER_ROOT + "/"):
            return str(self.local(value))
        return value


# -- processing ---------------------------------------------------------------------------

def run_processing(request: dict, root: Path, store: ObjectStore, log_path: Path) -> JobResult:
    layout = Layout(root)
    code_dirs = {}
    for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
        if "S3Output" not in item:
            raise Unsupported(f"processing output {item.get('OutputName')}: only S3Output "
                              f"outputs are supported")
    for item in request.get("ProcessingInputs", []):
        if "S3Input" not in item:
            raise Unsupported(f"processing input {item.get('InputName')}: only S3Input "
                              f"inputs are supported")
        s3 = item["S3Input"]
        if s3.get("S3InputMode", "File") != "File" or s3.get("S3CompressionType",
                                                              "None") != "None":
            raise Unsupported(f"processing input {item.get('InputName')}: only File mode "
                              f"without compression is supported")
        target = layout.local(s3["LocalPath"])
        target.mkdir(parents=True, exist_ok=True)
        if not _download(store, s3["S3Uri"], target):
            raise JobSetupError(f"input {item.get('InputName')}: nothing at {s3['S3Uri']} in "
                                f"the local object store ({store.path(s3['S3Uri'])})")
        code_dirs[s3["LocalPath"].rstrip("/")] = target
    app = request["AppSpecification"]
    script, cwd = _processing_entrypoint(app.get("ContainerEntrypoint") or [], layout)
    args = [layout.map_argument(a) for a in app.get("ContainerArguments") or []]
    for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
        layout.local(item["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
    job_env = {**(request.get("Environment") or {}),
               "SM_OUTPUT_DIR": str(layout.local("/opt/ml/output"))}
    result = run_script(script, args, log_path, env=job_env, cwd=cwd)
    if result.returncode == 0:
        for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            out = item["S3Output"]
            store.put_folder(layout.local(out["LocalPath"]), out["S3Uri"])
    return result


_RUNPROC_CD = re.compile(r"^cd\s+(\S+)\s*$", re.M)
_RUNPROC_TAR = re.compile(r"^tar\s+-xzf\s+(\S+)\s*$", re.M)
_RUNPROC_RUN = re.compile(r"^(?:python3?|python\S*)\s+(\S+)\s+\"\$@\"\s*$", re.M)


def _processing_entrypoint(entrypoint: list, layout: Layout) -> tuple[Path, Path]:
    """The script a processing job runs, and its working folder.

    Two entrypoints are understood: the FrameworkProcessor's ``/bin/bash .../runproc.sh``
    (which changes into the code folder, unpacks ``sourcedir.tar.gz``, installs
    requirements.txt and runs ``python <script> "$@"``), and ``python3 <script>``
    (ScriptProcessor)."""
    shown = " ".join(entrypoint) or "(none)"
    if len(entrypoint) == 2 and Path(entrypoint[0]).name in ("bash", "sh"):
        runproc = layout.local(entrypoint[1])
        if not runproc.is_file():
            raise JobSetupError(f"entrypoint {entrypoint[1]} is not among the job's inputs")
        text = runproc.read_text(errors="replace")
        cd, tar, run = (_RUNPROC_CD.search(text), _RUNPROC_TAR.search(text),
                        _RUNPROC_RUN.search(text))
        if not (cd and run):
            raise Unsupported(f"entrypoint {shown}: not the SageMaker SDK's runproc.sh "
                              f"(cd <code>, tar -xzf, python <script> \"$@\")")
        code = layout.local(cd.group(1))
        if tar:
            extract_code(code / tar.group(1), code)
        return code / run.group(1), code
    if len(entrypoint) == 2 and Path(entrypoint[0]).name.startswith("python"):
        script = layout.local(entrypoint[1])
        return script, script.parent
    raise Unsupported(f"processing entrypoint {shown} (supported: the SageMaker SDK's "
                      f"FrameworkProcessor runproc.sh, or python3 <script>)")


def extract_code(archive: Path, folder: Path) -> None:
    """A job's sourcedir.tar.gz, unpacked with tarfile's ``data`` filter (no links out,
    absolute paths or devices) and a size bound."""
    if not archive.is_file():
        raise JobSetupError(f"the job's code {archive.name} is not among its inputs")
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        if sum(m.size for m in members) > MAX_CODE_BYTES:
            raise JobSetupError(f"{archive} unpacks to more than {MAX_CODE_BYTES} bytes")
        archives.extract(tar, folder, members)


# -- training -----------------------------------------------------------------------------

def decode_hyperparameter(value: str) -> str:
    """What the training toolkit passes on: JSON-decoded where it is JSON (the SDK writes
    strings as ``"\\"train.py\\""``), the text as it is otherwise."""
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(decoded, bool):
        return str(decoded).lower()
    return decoded if isinstance(decoded, str) else json.dumps(decoded)


def run_training(request: dict, root: Path, store: ObjectStore, log_path: Path, *,
                 env: dict | None = None, threads: int | None = None,
                 on_line: Callable[[str], bool | None] | None = None) -> tuple[JobResult, dict]:
    """Run a CreateTrainingJob request; returns the result and what its Describe* response
    adds (ModelArtifacts, the output data's location)."""
    layout = Layout(root)
    name = request["TrainingJobName"]
    hps = {k: decode_hyperparameter(v) for k, v in (request.get("HyperParameters") or {}).items()}
    program, submit = hps.get("sagemaker_program"), hps.get("sagemaker_submit_directory")
    if not program or not submit:
        raise Unsupported(f"training job {name}: the engine runs the SageMaker SDK's framework "
                          f"jobs (sagemaker_program and sagemaker_submit_directory "
                          f"hyperparameters); the image {request['AlgorithmSpecification'].get('TrainingImage')} alone cannot run here")
    code = layout.local("/opt/ml/code")
    code.mkdir(parents=True, exist_ok=True)
    try:
        archive = store.path(submit)
    except StoreError as exc:
        raise JobSetupError(f"training job {name}: {exc}") from None
    extract_code(archive, code)
    channels = {}
    for channel in request.get("InputDataConfig") or []:
        source = channel["DataSource"].get("S3DataSource")
        if source is None or channel.get("InputMode", "File") not in ("File", None) or \
                channel.get("CompressionType", "None") != "None":
            raise Unsupported(f"channel {channel['ChannelName']}: only S3 sources in File mode "
                              f"without compression are supported")
        target = layout.local(f"/opt/ml/input/data/{channel['ChannelName']}")
        target.mkdir(parents=True, exist_ok=True)
        if not _download(store, source["S3Uri"], target):
            raise JobSetupError(f"channel {channel['ChannelName']}: nothing at "
                                f"{source['S3Uri']} in the local object store")
        channels[channel["ChannelName"]] = target
    model_dir, output_dir = layout.local("/opt/ml/model"), layout.local("/opt/ml/output")
    for folder in (model_dir, output_dir / "data"):
        folder.mkdir(parents=True, exist_ok=True)
    # what the training toolkit passes to the script: not its own (sagemaker_*) nor the
    # tuning job's _tuning_objective_metric
    user_hps = {k: v for k, v in hps.items()
                if not k.startswith("sagemaker_") and k != "_tuning_objective_metric"}
    config = layout.local("/opt/ml/input/config")
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters") or {},
                                                            indent=1))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c["ChannelName"]: {"TrainingInputMode": "File"} for c in
         request.get("InputDataConfig") or []}, indent=1))
    job_env = dict(request.get("Environment") or {})
    job_env.update({f"SM_CHANNEL_{c.upper()}": str(p) for c, p in channels.items()})
    job_env.update({
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_HPS": json.dumps(user_hps),
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_CURRENT_HOST": "algo-1",
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_TRAINING_ENV": json.dumps({"job_name": name, "hyperparameters": user_hps}),
        # no CheckpointConfig: no checkpoints, as in SageMaker (train.py reads this file)
        "SM_CHECKPOINT_CONFIG_FILE": str(config / "checkpointconfig.json"),
    })
    checkpoint = request.get("CheckpointConfig")
    if checkpoint:
        local = checkpoint.get("LocalPath") or "/opt/ml/checkpoints"
        (config / "checkpointconfig.json").write_text(json.dumps(
            {"LocalPath": str(layout.local(local)), "S3Uri": checkpoint["S3Uri"]}))
    job_env.update(env or {})
    args = []
    for key, value in user_hps.items():
        args += [f"--{key}", layout.map_argument(value)]
    result = run_script(code / program, args, log_path, env=job_env, cwd=code,
                        threads=threads, on_line=on_line)
    artifacts = {}
    if result.returncode == 0:
        prefix = f"{request['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}/output"
        model = root / "model.tar.gz"
        _tar(model_dir, model)
        store.put_file(model, f"{prefix}/model.tar.gz")
        artifacts["ModelArtifacts"] = {"S3ModelArtifacts": f"{prefix}/model.tar.gz"}
        if any((output_dir / "data").iterdir()):
            _tar(output_dir / "data", root / "output.tar.gz")
            store.put_file(root / "output.tar.gz", f"{prefix}/output.tar.gz")
        board = request.get("TensorBoardOutputConfig")
        if board:
            local = layout.local(board.get("LocalPath") or "/opt/ml/output/tensorboard")
            if local.is_dir():
                store.put_folder(local, f"{board['S3OutputPath'].rstrip('/')}/{name}")
    return result, artifacts


def _tar(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(item, arcname=item.name)


def _download(store: ObjectStore, uri: str, target: Path) -> int:
    try:
        return store.download(uri, target)
    except StoreError as exc:
        raise JobSetupError(str(exc)) from None


def metrics_from_log(log_path: Path, definitions: list[dict]) -> list[dict]:
    """FinalMetricDataList: the last value each metric's regex found in the log."""
    found = {}
    compiled = [(d["Name"], re.compile(d["Regex"])) for d in definitions or []]
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            for name, regex in compiled:
                for match in regex.finditer(line):
                    try:
                        found[name] = float(match.group(1))
                    except (IndexError, ValueError):
                        pass
    return [{"MetricName": n, "Value": v} for n, v in found.items()]


# -- the process --------------------------------------------------------------------------

def run_script(script: Path, args: list[str], log_path: Path, *, env: dict | None = None,
               cwd: Path | None = None, threads: int | None = None,
               on_line: Callable[[str], bool | None] | None = None) -> JobResult:
    """Run ``script`` with this Python; ``on_line`` may return True to stop the job
    (pruning)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("SM_") and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    if threads:
        full_env["OMP_NUM_THREADS"] = str(threads)
    output_dir = Path(full_env.get("SM_OUTPUT_DIR", log_path.parent / "output"))
    output_dir.mkdir(parents=True, exist_ok=True)
    full_env["SM_OUTPUT_DIR"] = str(output_dir)
    failure_file = output_dir / "failure"
    if failure_file.exists():
        failure_file.unlink()
    stopped = False
    with open(log_path, "w", encoding="utf-8") as log:
        command = [sys.executable, str(script), *args]
        log.write(f"# {shlex.join(command)}\n")
        proc = subprocess.Popen([sys.executable, str(GUARD), str(os.getpid()), "--", *command],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=full_env, cwd=str(cwd or log_path.parent),
                                start_new_session=True)
        try:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if on_line is not None and on_line(line.rstrip("\n")):
                    stopped = True
                    _terminate(proc)
                    break
            proc.wait()
        except BaseException:  # Ctrl-C or an engine error: never leave the job running
            _terminate(proc)
            raise
    if stopped:
        raise JobStopped(str(script))
    reason = failure_file.read_text().strip() if failure_file.is_file() else None
    if proc.returncode and not reason:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        reason = tail[0]
    return JobResult(proc.returncode, reason, log_path)


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
