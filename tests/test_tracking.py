"""TensorBoard events and MLflow runs from train.py, read back with each tool's own reader."""

from __future__ import annotations

import json

from conftest import SMALL_TRAINING, run_script, train_env


def test_tensorboard_events_readable_by_tensorboard(tmp_path, split_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--max-steps-per-epoch", "4",
                      "--checkpoint-dir", "", "--tensorboard-dir", tmp_path / "tb",
                      "--debugger-save-interval", "2", env=train_env(tmp_path, split_data))
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("loss/train", "loss/valid", "accuracy/train", "accuracy/valid", "learning_rate",
                "time/data_seconds", "time/compute_seconds", "system/process_rss_mb"):
        assert tag in tags, sorted(tags)
    assert [e.step for e in events.Scalars("accuracy/valid")] == [1, 2]
    weights = [t for t in tags if t.startswith("weight_norm/")]
    grads = [t for t in tags if t.startswith("gradient_norm/")]
    assert weights and grads and len(weights) == len(grads)
    assert [e.step for e in events.Scalars(grads[0])] == [2, 4, 6, 8]  # every 2 of 8 steps
    assert all(e.value > 0 for e in events.Scalars(weights[0]))


def test_no_mlflow_import_without_a_tracking_uri(tmp_path, split_data):
    """MLflow is optional: without a tracking URI train.py never imports it."""
    import os
    import subprocess
    import sys

    from conftest import SCRIPTS

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(train_env(tmp_path, split_data))
    check = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys\nsys.argv = sys.argv[1:]\n"
         "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
         "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
         "assert 'mlflow' not in sys.modules, 'mlflow was imported'\nprint('no mlflow')",
         str(SCRIPTS / "train.py"), *SMALL_TRAINING, "--epochs", "1", "--max-steps-per-epoch",
         "1", "--checkpoint-dir", ""], env=env, capture_output=True, text=True)
    assert check.returncode == 0 and "no mlflow" in check.stdout, check.stderr[-2000:]


def test_mlflow_run_with_params_metrics_model_and_parent(tmp_path, split_data):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tuning",
                                          artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="HPTuning").info.run_id
    env = train_env(tmp_path, split_data)
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_ID=experiment,
               MLFLOW_PARENT_RUN_ID=parent, MLFLOW_RUN_NAME="trial-0")
    proc = run_script("train.py", *SMALL_TRAINING, "--epochs", "2", "--max-steps-per-epoch", "2",
                      "--checkpoint-dir", "", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = [r for r in client.search_runs([experiment])
              if r.info.run_id != parent]
    assert run.info.run_name == "trial-0" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["lr"] == "0.003" and run.data.params["arch"] == "resnet18"
    history = client.get_metric_history(run.info.run_id, "valid_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert "best_valid_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model.pth" in artifacts, artifacts
    recorded = json.loads((tmp_path / "output" / "mlflow_run.json").read_text())
    assert recorded["run_id"] == run.info.run_id
