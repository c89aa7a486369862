"""Local endpoint latency and throughput against the model's raw forward time, same run.

Builds a resnet18 model directory for 133 classes at 224 px (random weights: speed does not
depend on them), then measures:
  raw      the model's own forward pass on one preprocessed image (batch 1), in-process;
  1 client p50/p99 latency of POST /invocations with a JPEG, one request at a time;
  8 clients requests/s with 8 concurrent clients, against a server with batching and against
           one serving requests one by one (--max-batch 1).
Prints the p50 overhead over the raw forward and the batching speed-up.

    python bench/endpoint.py [--requests 200]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from breedkit.images import decode_tensor  # noqa: E402
from breedkit.model import build_model, save_model_dir  # noqa: E402
from breedkit.transforms import eval_transform  # noqa: E402
from pipelines.endpoint import start_server  # noqa: E402


def make_model(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", 133)
    return save_model_dir(path, model, arch="resnet18", class_names=[f"{i:03d}.Breed_{i}"
                                                                      for i in range(133)],
                          image_size=224)


def jpeg() -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).resize(
        (340, 256), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def raw_forward_ms(model_dir: Path, body: bytes, repeats: int) -> float:
    from breedkit.model import load_model

    model, config = load_model(model_dir)
    model.to(memory_format=torch.channels_last)
    x = eval_transform(224)(decode_tensor(body)).unsqueeze(0)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latencies(url: str, body: bytes, n: int, clients: int) -> tuple[list[float], float]:
    session = requests.Session()

    def call(_):
        start = time.perf_counter()
        r = session.post(url + "/invocations", data=body, headers={"Content-Type": "image/jpeg"})
        r.raise_for_status()
        return time.perf_counter() - start

    for _ in range(5):
        call(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = list(pool.map(call, range(n)))
    return times, n / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    args = p.parse_args()
    body = jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model")
        raw = raw_forward_ms(model_dir, body, 50)
        print(f"threads={torch.get_num_threads()} resnet18 224px, raw forward (batch 1): "
              f"{raw:.1f} ms")
        proc, url, _ = start_server(Path(tmp), "batching", str(model_dir), 0)
        try:
            one, _ = latencies(url, body, args.requests, 1)
            p50, p99 = (1000 * float(np.percentile(one, q)) for q in (50, 99))
            print(f"1 client:  p50 {p50:.1f} ms, p99 {p99:.1f} ms, overhead over raw forward "
                  f"{p50 - raw:.1f} ms ({(p50 - raw) / raw:.0%})")
            many, batched_rps = latencies(url, body, args.requests, 8)
            print(f"8 clients, batching:   {batched_rps:.1f} requests/s, p50 "
                  f"{1000 * statistics.median(many):.1f} ms, p99 "
                  f"{1000 * float(np.percentile(many, 99)):.1f} ms")
        finally:
            proc.terminate()
            proc.wait()
        proc, url, _ = start_server(Path(tmp), "one-by-one", str(model_dir), 0,
                                    extra_args=("--max-batch", "1"))
        try:
            _, single_rps = latencies(url, body, args.requests, 8)
            print(f"8 clients, one by one: {single_rps:.1f} requests/s")
        finally:
            proc.terminate()
            proc.wait()
        print(f"batching speed-up with 8 clients: {batched_rps / single_rps:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
