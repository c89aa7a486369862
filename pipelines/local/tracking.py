"""MLflow for the local engine (``--mlflow``): where runs go, the experiment, and the tuning
step's parent run. Imported only when tracking is on; training jobs log their own runs
(scripts/breedkit/tracking.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

MLFLOW_DIR = "mlflow"  # under the engine's home


def tracking_uri(home: Path, enabled: bool) -> str | None:
    """Where the engine's MLflow runs go, or None for no tracking.

    ``enabled`` (``--mlflow``): $MLFLOW_TRACKING_URI, else a SQLite store under the home; MLflow
    must be installed (ValueError says how). Without it, a tracking URI in the environment
    alone turns tracking on only where MLflow can be imported (else a warning).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not (enabled or uri):
        return None
    if not _mlflow_installed():
        message = ("MLflow tracking needs MLflow, which is not installed: "
                   "pip install -e '.[mlflow]'")
        if enabled:
            raise ValueError(f"--mlflow: {message}")
        print(f"warning: MLFLOW_TRACKING_URI is set but MLflow cannot be imported; runs are not "
              f"tracked ({message})", file=sys.stderr)
        return None
    if uri:
        return uri
    folder = home / MLFLOW_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def _mlflow_installed() -> bool:
    if "mlflow" in sys.modules:  # None there means an import that failed (or was blocked)
        return sys.modules["mlflow"] is not None
    return importlib.util.find_spec("mlflow") is not None


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError(f"MLflow tracking needs MLflow ({exc}): pip install -e '.[mlflow]'"
                          ) from None
    return MlflowClient(uri)


def experiment_id(uri: str, name: str, home: Path) -> str:
    """The experiment named after the pipeline, created with its artifacts under the home."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=(
            home / MLFLOW_DIR / "artifacts" / name).as_uri() if uri.startswith("sqlite:")
            else None)
    except Exception:  # noqa: BLE001 - created by a concurrent run meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_parent_run(uri: str, experiment: str, name: str) -> str:
    return _client(uri).create_run(experiment, run_name=name).info.run_id


def end_parent_run(uri: str, run_id: str) -> None:
    _client(uri).set_terminated(run_id)
