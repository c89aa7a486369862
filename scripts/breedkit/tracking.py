"""What happened in training, for the tools users already have: TensorBoard and MLflow.

- TensorBoard (``--tensorboard-dir``): per epoch the losses, accuracies, learning rate, step
  time split (data vs compute) and system use (CPU, memory, GPU memory); every
  ``norm_interval`` steps each layer's weight and gradient L2 norm. In SageMaker the folder is
  the training job's TensorBoardOutputConfig path, synced to S3 for SageMaker's managed
  TensorBoard; locally ``tensorboard --logdir <home>`` shows every execution and trial.
- MLflow, only where a tracking server is named (``MLFLOW_TRACKING_URI``; SageMaker's
  MlflowConfig): one run per training job with its hyperparameters, per-epoch metrics, the
  training summary and the model folder as artifacts. ``MLFLOW_PARENT_RUN_ID`` makes it a child
  run (tuning trials under their tuning run); ``MLFLOW_RUN_NAME`` and
  ``MLFLOW_EXPERIMENT_NAME`` name it. Without a tracking URI MLflow is never imported.

Only the main process of a multi-process job writes. Neither tool is required: if its package
cannot be imported, training goes on and says so once.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("breedkit.tracking")

RUN_ID_FILE = "mlflow_run.json"  # in the output data: the run the model came from


class Tracker:
    def __init__(self, tensorboard_dir: str = "", enabled: bool = True,
                 norm_interval: int = 20):
        self.norm_interval = max(1, norm_interval)
        self.step = 0
        self._tb = self._mlflow = None
        self.run_id = None
        if not enabled:
            return
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                os.makedirs(tensorboard_dir, exist_ok=True)
                self._tb = SummaryWriter(tensorboard_dir)
            except ImportError as exc:
                log.warning("TensorBoard events not written: %s (pip install tensorboard)", exc)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            self._start_mlflow()

    # -- MLflow ----------------------------------------------------------------------------------

    def _start_mlflow(self) -> None:
        try:
            import mlflow
        except ImportError as exc:
            log.warning("MLFLOW_TRACKING_URI is set but MLflow cannot be imported (%s); "
                        "pip install mlflow-skinny (and sagemaker-mlflow for a SageMaker "
                        "tracking server)", exc)
            return
        tags = {}
        parent = os.environ.get("MLFLOW_PARENT_RUN_ID")
        if parent:
            tags["mlflow.parentRunId"] = parent
        job = os.environ.get("TRAINING_JOB_NAME")
        if job:
            tags["sagemaker.training_job"] = job
        run = mlflow.start_run(run_name=os.environ.get("MLFLOW_RUN_NAME") or None, tags=tags)
        self._mlflow, self.run_id = mlflow, run.info.run_id
        log.info("MLflow run %s at %s", self.run_id, mlflow.get_tracking_uri())

    def params(self, values: dict) -> None:
        if self._mlflow is not None:
            self._mlflow.log_params({k: v for k, v in values.items() if v is not None})
        if self._tb is not None:
            self._tb.add_text("hyperparameters", "\n".join(
                f"    {k} = {v}" for k, v in sorted(values.items())))

    # -- per step and per epoch ------------------------------------------------------------------

    def after_backward(self, model) -> None:
        """Every ``norm_interval`` training steps: each layer's weight and gradient L2 norm."""
        self.step += 1
        step = self.step
        if self._tb is None or step % self.norm_interval:
            return
        import torch

        names, weights, grads = [], [], []
        for name, param in model.named_parameters():
            if param.grad is not None and param.dim() > 1:  # layers, not biases or norms
                names.append(name)
                weights.append(param.detach())
                grads.append(param.grad.detach())
        if not names:
            return
        w = torch.stack([torch.linalg.vector_norm(t.float()) for t in weights]).tolist()
        g = torch.stack([torch.linalg.vector_norm(t.float()) for t in grads]).tolist()
        for name, wn, gn in zip(names, w, g):
            self._tb.add_scalar(f"weight_norm/{name}", wn, step)
            self._tb.add_scalar(f"gradient_norm/{name}", gn, step)

    def epoch(self, epoch: int, metrics: dict, timing: dict | None = None) -> None:
        values = dict(metrics)
        if timing:
            values.update(timing)
        values.update(_system_use())
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(_tb_tag(key), value, epoch)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=epoch)

    def finish(self, summary: dict, model_dir: str, output_dir: str) -> None:
        if self._mlflow is None:
            return
        import json

        self._mlflow.log_metrics({"best_valid_accuracy": summary["valid_accuracy"],
                                  "best_epoch": summary["best_epoch"]})
        self._mlflow.log_dict(summary, "training_summary.json")
        self._mlflow.log_artifacts(model_dir, artifact_path="model")
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, RUN_ID_FILE), "w") as fh:
            json.dump({"run_id": self.run_id, "tracking_uri": self._mlflow.get_tracking_uri(),
                       "experiment_id": self._mlflow.active_run().info.experiment_id}, fh)

    def close(self, failed: bool = False) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run(status="FAILED" if failed else "FINISHED")


def _tb_tag(key: str) -> str:
    for prefix in ("train_", "valid_"):
        if key.startswith(prefix):
            return f"{key[len(prefix):]}/{prefix[:-1]}"
    return {"lr": "learning_rate", "epoch_seconds": "time/epoch_seconds",
            "data_seconds": "time/data_seconds", "compute_seconds": "time/compute_seconds",
            "images_per_second": "time/images_per_second"}.get(key, f"system/{key}")


def _system_use() -> dict:
    values = {}
    try:
        import psutil

        values["process_rss_mb"] = psutil.Process().memory_info().rss / 2**20
        values["cpu_percent"] = psutil.cpu_percent(None)
        values["memory_percent"] = psutil.virtual_memory().percent
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            values["gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return values
