"""The SageMaker container contract: SM_* variables, /opt/ml paths, arguments, failure reports.

SageMaker passes hyperparameters as ``--name value`` arguments and locations as ``SM_*``
environment variables; a job that fails writes its reason to ``/opt/ml/output/failure`` so that
``DescribeTrainingJob`` / ``DescribeProcessingJob`` show it. These helpers make every script
follow that contract the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

log = logging.getLogger("breedkit")

# Hyperparameters SageMaker adds on its own; the training toolkit may pass them to the script.
_SAGEMAKER_INTERNAL_ARGS = ("--sagemaker_", "--_tuning_objective_metric", "--_")


class UserError(Exception):
    """A problem with the job's input or arguments that the user can fix.

    The message must say what is wrong, where, and what to do. Scripts turn it into one line on
    stderr, a SageMaker failure reason, and exit code 2, never a traceback.
    """


def env_path(name: str, default: str) -> str:
    """An ``SM_*`` location, falling back to the path SageMaker would use."""
    return os.environ.get(name) or default


CHECKPOINT_CONFIG = "/opt/ml/input/config/checkpointconfig.json"


def sagemaker_checkpoint_dir(environ=os.environ) -> str:
    """The folder SageMaker syncs to S3 for this job, or '' when it syncs none.

    SageMaker writes checkpointconfig.json only for jobs created with a CheckpointConfig (the
    pipeline's TrainFinal with spot training). Tuning trials and other jobs have none: what they
    would write there is never copied anywhere, so they write no checkpoints.
    """
    import json

    path = environ.get("SM_CHECKPOINT_CONFIG_FILE") or CHECKPOINT_CONFIG
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return ""
    return str(config.get("LocalPath") or "/opt/ml/checkpoints") if isinstance(config, dict) else ""


def str2bool(value: str | bool) -> bool:
    """Parse booleans the way SageMaker passes them (``true``/``True``/``1``...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse arguments, ignoring the internal hyperparameters SageMaker may add.

    Any other unknown argument is an error: a misspelt hyperparameter must not be ignored.
    """
    args, unknown = parser.parse_known_args(argv)
    rest = []
    skip_value = False
    for item in unknown:
        if skip_value:
            skip_value = False
            continue
        if item.startswith(_SAGEMAKER_INTERNAL_ARGS):
            skip_value = "=" not in item
            continue
        rest.append(item)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)


def write_failure_reason(message: str) -> None:
    """Record the reason where SageMaker looks for it (only inside a SageMaker job)."""
    out_dir = os.environ.get("SM_OUTPUT_DIR") or "/opt/ml/output"
    if not os.path.isdir(out_dir):
        return
    try:
        with open(os.path.join(out_dir, "failure"), "w", encoding="utf-8") as fh:
            fh.write(message[:1024])
    except OSError:
        pass


def run_main(main: Callable[[Sequence[str] | None], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Run a script's main(): user errors become one clear line and exit code 2."""
    try:
        code = main(argv)
    except UserError as exc:
        text = str(exc)
        if "Original Traceback" in text:  # raised in a DataLoader worker: keep the message only
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        print(f"ERROR: {text}", file=sys.stderr, flush=True)
        write_failure_reason(text)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # an internal error: keep the traceback, but tell SageMaker too
        write_failure_reason(f"{type(exc).__name__}: {exc}")
        raise
    return int(code or 0)


def cpu_count() -> int:
    """CPUs this process may use (respects affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
