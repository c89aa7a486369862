"""Run a container script as a subprocess under SageMaker's container contract.

Training jobs get the SM_* variables a SageMaker training container sets (channels, model and
output folders, hyperparameters) and their hyperparameters as ``--name value`` arguments;
processing jobs get their arguments with container paths mapped to local folders. Output goes
to a log file (and, line by line, to a callback); a failure reason written by the script to
``SM_OUTPUT_DIR/failure`` is returned like SageMaker's FailureReason. Each job runs under
guard.py in a process group of its own, which dies with the engine, even a killed one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.spec import SCRIPTS_DIR

GUARD = Path(__file__).with_name("guard.py")


@dataclass
class JobResult:
    returncode: int
    failure_reason: str | None
    log_path: Path


class JobStopped(Exception):
    """The job was terminated on purpose (pruning, Ctrl-C)."""


def training_contract(channels: dict[str, Path], model_dir: Path, output_dir: Path,
                      hyperparameters: dict) -> tuple[dict, list[str]]:
    env = {f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()}
    env.update({
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_HPS": json.dumps({k: str(v) for k, v in hyperparameters.items()}),
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_CURRENT_HOST": "algo-1",
    })
    args = []
    for name, value in hyperparameters.items():
        args += [f"--{name}", str(value)]
    return env, args


def map_paths(arguments: list[str], mapping: dict[str, Path]) -> list[str]:
    """Replace container paths (longest first) with local folders."""
    out = []
    for arg in arguments:
        for container in sorted(mapping, key=len, reverse=True):
            if arg == container or arg.startswith(container + "/"):
                arg = str(mapping[container]) + arg[len(container):]
                break
        out.append(arg)
    return out


def run_script(script: str, args: list[str], log_path: Path, *, env: dict | None = None,
               threads: int | None = None, on_line: Callable[[str], bool | None] | None = None
               ) -> JobResult:
    """Run scripts/<script>; ``on_line`` may return True to stop the job (pruning)."""
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
        command = [sys.executable, str(Path(SCRIPTS_DIR) / script), *args]
        proc = subprocess.Popen([sys.executable, str(GUARD), str(os.getpid()), "--", *command],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=full_env, cwd=str(log_path.parent),
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
        raise JobStopped(script)
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
