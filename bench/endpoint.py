"""Local endpoint latency and throughput against the model's raw forward time, same run.

Builds a model directory for 133 classes (random weights: speed does not depend on them), by
default the architecture and image size the pipeline trains (``BaseModel``, ``ImageSize`` in
pipelines/spec.py), and loads it with the artifact's own ``model_fn`` (same device, same memory
format as the endpoint). Then, in alternating rounds so that drift on a shared machine hits
both sides alike:

  raw          the model's forward pass on one preprocessed image (batch 1), in-process;
  1 client     latency of POST /invocations with a JPEG, one request at a time;
  8 clients    requests/s with 8 concurrent clients, against a server that batches and one
               that serves requests one by one (``--max-batch 1``).

Also prints the model's own images/s at batch 8 against batch 1 (in-process): the most any
batching server can gain from larger forward passes on this hardware.

The client is ``http.client`` with one keep-alive connection per client thread: the lightest
client Python has, so the figures describe the server (``requests`` adds ~0.5 ms of client
CPU per call, on the same cores when client and server share a machine).

    python bench/endpoint.py [--arch resnet18] [--image-size 224] [--rounds 5] [--requests 40]
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import inference  # noqa: E402  the artifact's handlers, as the endpoint loads them
from breedkit.model import build_model, save_model_dir  # noqa: E402
from pipelines.deploy.endpoints import start_server, stop  # noqa: E402
from pipelines.spec import parameter  # noqa: E402


def make_model(path: Path, arch: str = "resnet18", image_size: int = 224,
               preprocess_size: int = 0) -> Path:
    """``preprocess_size``: the size the pipeline's models record (serving repeats
    preprocessing's resize and JPEG encoding first); 0: none, serving resizes straight."""
    torch.manual_seed(0)
    model = build_model(arch, 133, image_size=image_size)
    return save_model_dir(path, model, arch=arch, image_size=image_size,
                          class_names=[f"{i:03d}.Breed_{i}" for i in range(133)],
                          extra={"preprocess_size": preprocess_size} if preprocess_size else {})


def jpeg(width: int = 500, height: int = 375, seed: int = 0) -> bytes:
    """A photo-like JPEG; 500x375 is the typical size of a dogImages photo."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class RawForward:
    """The endpoint's model, called in-process on preprocessed batches."""

    def __init__(self, model_dir: Path, body: bytes):
        self.loaded = inference.model_fn(str(model_dir))
        image = inference.input_fn(body, "image/jpeg")["images"][0]  # decoded and transformed
        self.one = image.unsqueeze(0).to(self.loaded.device)

    def seconds(self, batch: int, repeats: int) -> list[float]:
        x = self.one.expand(batch, -1, -1, -1).contiguous()
        cuda = self.loaded.device.type == "cuda"
        times = []
        with torch.inference_mode():
            for i in range(repeats + 2):  # two untimed warm-up calls
                start = time.perf_counter()
                self.loaded.model(x)
                if cuda:
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - start)
        return times


class Clients:
    """``n`` threads, each with its own keep-alive connection to the endpoint."""

    def __init__(self, url: str, body: bytes, n: int):
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.body, self.n = int(port), body, n
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(n)

    def _call(self, _=None) -> float:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port)
        start = time.perf_counter()
        conn.request("POST", "/invocations", body=self.body,
                     headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"endpoint answered {response.status}")
        return time.perf_counter() - start

    def run(self, requests: int) -> tuple[list[float], float]:
        """Latencies of ``requests`` calls spread over the threads, and requests/s."""
        list(self.pool.map(self._call, range(2 * self.n)))  # warm every connection
        start = time.perf_counter()
        times = list(self.pool.map(self._call, range(requests)))
        return times, requests / (time.perf_counter() - start)

    def close(self) -> None:
        self.pool.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=parameter("BaseModel").default)
    p.add_argument("--image-size", type=int, default=parameter("ImageSize").default)
    p.add_argument("--photo", default="500x375", help="request image size, WIDTHxHEIGHT")
    p.add_argument("--preprocess-size", type=int, default=-1,
                   help="the model's preprocess_size (-1: as the pipeline derives it, 256 for "
                        "224; 0: none, as models trained before serving parity)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=40, help="per round and measurement")
    args = p.parse_args()
    try:
        body = jpeg(*(int(v) for v in args.photo.lower().split("x")))
    except ValueError:
        p.error(f"--photo: expected WIDTHxHEIGHT such as 500x375, got {args.photo!r}")
    with tempfile.TemporaryDirectory() as tmp:
        from breedkit.transforms import stored_size

        stored = stored_size(0, args.image_size) if args.preprocess_size < 0 \
            else args.preprocess_size
        print(f"model preprocess_size: {stored or 'none (resized straight)'}")
        model_dir = make_model(Path(tmp) / "model", args.arch, args.image_size, stored)
        raw = RawForward(model_dir, body)
        print(f"device={raw.loaded.device} threads={torch.get_num_threads()} "
              f"{args.arch} {args.image_size} px, {args.photo} JPEG of {len(body)} bytes")
        servers = {name: start_server(Path(tmp), name, str(model_dir), 0, extra_args=extra)
                   for name, extra in (("batching", ()), ("one-by-one", ("--max-batch", "1")))}
        single = Clients(servers["batching"][1], body, 1)
        many = {name: Clients(url, body, 8) for name, (_, url, _, _) in servers.items()}
        raw_times, raw8_times, one_times = [], [], []
        rps = {name: [] for name in servers}
        try:
            for _ in range(args.rounds):
                raw_times += raw.seconds(1, args.requests)
                raw8_times += raw.seconds(8, max(3, args.requests // 8))
                one_times += single.run(args.requests)[0]
                for name, clients in many.items():
                    rps[name].append(clients.run(args.requests * 2)[1])
        finally:
            for clients in (single, *many.values()):
                clients.close()
            for proc, _, _, _ in servers.values():
                stop(proc.pid)
    ceiling = 8 * statistics.median(raw_times) / statistics.median(raw8_times)
    print(f"model alone: {1 / statistics.median(raw_times):.0f} images/s at batch 1, "
          f"{8 / statistics.median(raw8_times):.0f} at batch 8: batching can gain at most "
          f"~{ceiling:.2f}x from the forward pass here")
    forward = 1000 * statistics.median(raw_times)
    p50, p99 = (1000 * float(np.percentile(one_times, q)) for q in (50, 99))
    print(f"raw forward (batch 1): {forward:.1f} ms")
    print(f"1 client:  p50 {p50:.1f} ms, p99 {p99:.1f} ms, overhead over the raw forward "
          f"{p50 - forward:.1f} ms ({(p50 - forward) / forward:.0%})")
    batched, one_by_one = (statistics.median(rps[n]) for n in ("batching", "one-by-one"))
    print(f"8 clients: batching {batched:.1f} requests/s, one by one {one_by_one:.1f} "
          f"requests/s (medians of {args.rounds} rounds)")
    print(f"batching speed-up with 8 clients: {batched / one_by_one:.2f}x "
          f"(the model alone: {ceiling:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
