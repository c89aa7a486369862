"""A light training profiler for local runs (SageMaker's framework profiling is deprecated for
PyTorch >= 2.0): system use over time and each step's time split into data loading,
forward/backward and optimizer. ``--profile-out DIR`` writes

    system.jsonl   every ``interval`` s: time, CPU %, process memory, system memory %, GPU %
                   and GPU memory where there is a GPU
    steps.jsonl    per training step: epoch, step, images, data_s, forward_backward_s,
                   optimizer_s

which breedkit/profiler_report.py turns into an HTML report (the TrainingRules step).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class NullProfiler:
    enabled = False

    def sync(self) -> None:
        pass

    def record_step(self, **fields) -> None:
        pass

    def close(self) -> None:
        pass


class Profiler(NullProfiler):
    enabled = True

    def __init__(self, out_dir: str | os.PathLike, device, interval: float = 0.5):
        import psutil

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.interval = interval
        self.start = time.time()
        self._steps = open(self.dir / "steps.jsonl", "w", encoding="utf-8")
        self._system = open(self.dir / "system.jsonl", "w", encoding="utf-8")
        self._process = psutil.Process()
        self._psutil = psutil
        self._stop = threading.Event()
        self._process.cpu_percent(None)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Wait for queued GPU work, so the split between phases is true (profiling only)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def record_step(self, **fields) -> None:
        fields["t"] = round(time.time() - self.start, 4)
        self._steps.write(json.dumps(fields) + "\n")

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            record = {"t": round(time.time() - self.start, 3),
                      "cpu_percent": self._psutil.cpu_percent(None),
                      "process_cpu_percent": self._process.cpu_percent(None),
                      "process_rss_mb": self._process.memory_info().rss / 2**20,
                      "memory_percent": self._psutil.virtual_memory().percent}
            if self.device.type == "cuda":
                import torch

                record["gpu_memory_mb"] = torch.cuda.memory_allocated(self.device) / 2**20
                try:
                    record["gpu_percent"] = torch.cuda.utilization(self.device)
                except Exception:  # noqa: BLE001 - needs pynvml
                    pass
            self._system.write(json.dumps(record) + "\n")
            self._system.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._steps.close()
        self._system.close()
