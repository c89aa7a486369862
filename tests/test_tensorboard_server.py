"""docs/local-engine.md's `tensorboard --logdir ...` works in the project's environment:
TensorBoard's server starts on a training job's events and serves a scalar (loopback only,
bounded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipelines.deploy.endpoints import free_port


def test_tensorboard_serves_the_events_a_job_writes(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "logs" / "TrainFinal"))
    for step, value in enumerate([0.5, 0.7, 0.9]):
        writer.add_scalar("valid/accuracy", value, step)
    writer.close()
    port = free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(exe), "--logdir", str(tmp_path / "logs"), "--host",
                               "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, values = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                url = f"{base}/data/plugin/scalars/scalars?run=TrainFinal&tag=valid/accuracy"
                with urllib.request.urlopen(url, timeout=5) as response:
                    values = [round(v[2], 3) for v in json.load(response)]
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.stdout.read()
        assert values == [0.5, 0.7, 0.9]
    finally:
        server.terminate()
        server.wait(timeout=30)
