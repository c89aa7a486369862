"""MLflow for the local engine (``--mlflow``): where runs go, the experiment, and the tuning
step's parent run. Imported only when tracking is on; training jobs log their own runs
(scripts/breedkit/tracking.py)."""

from __future__ import annotations

import os
from pathlib import Path

MLFLOW_DIR = "mlflow"  # under the engine's home


def tracking_uri(home: Path, enabled: bool) -> str | None:
    """$MLFLOW_TRACKING_URI if set, else with ``enabled`` a SQLite store under the home."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if not enabled:
        return None
    folder = home / MLFLOW_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


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
