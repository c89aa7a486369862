"""The local endpoint under load with hostile requests mixed in: a bad request fails alone.

    python bench/endpoint_load.py                       # 10,000 requests, 16 clients, 5% hostile
    python bench/endpoint_load.py --requests 1000 --arch resnet18     # a quick run

Starts the local endpoint (``pipelines.deploy.server``, on 127.0.0.1 only) on a model directory
of 133 classes with random weights (speed and memory do not depend on them), then:

  baseline   one client sending good requests alone (``--baseline`` of them): requests/s;
  load       ``--requests`` requests from ``--clients`` keep-alive clients, ``--hostile`` of
             them hostile: garbage bytes, animated GIFs (raw and in JSON), pixel bombs (a
             258 KB PNG of 9000x9000 pixels, alone and eight in one JSON body), JSON nested
             100,000 levels deep, and bodies over the server's 16 MB limit.

Good requests are a 500x375 JPEG (the typical dogImages photo), raw or in JSON. Prints good
requests' non-200 count (aim 0), hostile requests' 5xx count (aim 0) and their statuses, good
requests' p50/p99 latency, requests/s against the one-client baseline, and the server's RSS at
start (after warm-up), peak (the kernel's high-water mark) and end (aims: peak under 2 GB, end
within 10% of start). Bounded: at most ``--requests`` requests and ``--max-seconds`` of load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from endpoint import jpeg, make_model  # noqa: E402  bench/endpoint.py

from pipelines.deploy.endpoints import start_server, stop  # noqa: E402
from pipelines.deploy.server import MAX_BODY_BYTES  # noqa: E402
from pipelines.spec import parameter  # noqa: E402


def pixel_bomb(width: int = 9000, height: int = 9000) -> bytes:
    """A real PNG of width x height black pixels: ~258 KB on the wire, 243 MB decoded."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (len(payload).to_bytes(4, "big") + kind + payload
                + zlib.crc32(kind + payload).to_bytes(4, "big"))

    packer = zlib.compressobj(9)
    row = b"\0" * (3 * width + 1)  # filter byte + RGB
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def animated_gif(photo: bytes) -> bytes:
    first = Image.open(io.BytesIO(photo)).convert("RGB")
    buf = io.BytesIO()
    first.save(buf, "GIF", save_all=True, append_images=[first.rotate(180)])
    return buf.getvalue()


def as_json(*images: bytes) -> bytes:
    return json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()


def requests_plan(count: int, hostile_share: float, seed: int = 0) -> list[tuple]:
    """(kind, hostile, body, content type) for each request, in a seeded random order."""
    photo = jpeg()
    gif, bomb = animated_gif(photo), pixel_bomb()
    rng = random.Random(seed)
    garbage = [rng.randbytes(rng.randint(1, 64 * 1024)) for _ in range(8)]
    good = [("jpeg", False, photo, "image/jpeg"), ("json", False, as_json(photo),
                                                     "application/json")]
    hostile = [
        ("garbage", True, None, "image/jpeg"),
        ("gif", True, gif, "image/png"),
        ("gif in json", True, as_json(gif), "application/json"),
        ("pixel bomb", True, bomb, "image/png"),
        ("8 bombs in json", True, as_json(*[bomb] * 8), "application/json"),
        ("nested json", True, b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "application/json"),
        ("oversized", True, b"\xff\xd8" + b"\0" * (MAX_BODY_BYTES + 2**20), "image/jpeg"),
    ]
    plan = []
    for _ in range(count):
        if rng.random() < hostile_share:
            kind, bad, body, ctype = rng.choice(hostile)
            plan.append((kind, bad, body if body is not None else rng.choice(garbage), ctype))
        else:
            plan.append(good[0] if rng.random() < 0.9 else good[1])
    return plan


class Rss:
    """The server's resident memory, sampled every 20 ms; peak from the kernel's VmHWM."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server process (all its threads) so far."""
        import os

        fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def machine_cpu_seconds() -> tuple[float, int]:
        """CPU seconds every process on the machine has used (all cores), and the core count."""
        import os

        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # not idle/iowait
        return busy / os.sysconf("SC_CLK_TCK"), os.cpu_count()

    def read(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    value = int(line.split()[1])
                    return value * 1024 if line.rstrip().endswith("kB") else value
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append(self.read())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Clients:
    """``n`` threads with one keep-alive connection each, working through a plan together."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n

    def run(self, plan: list[tuple], max_seconds: float) -> tuple[list[tuple], float]:
        """[(kind, hostile, status or error, seconds)] for the requests sent, and the wall time."""
        lock, results, position = threading.Lock(), [], [0]
        deadline = time.perf_counter() + max_seconds

        def worker():
            conn = None
            while time.perf_counter() < deadline:
                with lock:
                    if position[0] >= len(plan):
                        return
                    kind, hostile, body, ctype = plan[position[0]]
                    position[0] += 1
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                start = time.perf_counter()
                try:
                    conn.request("POST", "/invocations", body=body,
                                 headers={"Content-Type": ctype})
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                    if response.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as exc:
                    status = f"connection {type(exc).__name__}"
                    conn.close()
                    conn = None
                with lock:
                    results.append((kind, hostile, status, time.perf_counter() - start))

        threads = [threading.Thread(target=worker) for _ in range(self.n)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--hostile", type=float, default=0.05, help="share of hostile requests")
    p.add_argument("--baseline", type=int, default=200, help="one-client good requests")
    p.add_argument("--max-seconds", type=float, default=1800, help="the load phase stops here")
    p.add_argument("--arch", default=parameter("BaseModel").default)
    p.add_argument("--image-size", type=int, default=parameter("ImageSize").default)
    p.add_argument("--server-args", default="", help="extra server options, e.g. '--threads 2'")
    args = p.parse_args()
    plan = requests_plan(args.requests, args.hostile)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "model", args.arch, args.image_size)
        proc, url, _, _ = start_server(Path(tmp), "load", str(model_dir), 0,
                                    extra_args=tuple(args.server_args.split()))
        port = int(url.rsplit(":", 1)[1])
        try:
            good = [item for item in plan if not item[1]]
            rss = Rss(proc.pid)
            cpu = rss.cpu_seconds()
            base, base_seconds = Clients(port, 1).run(good[:args.baseline], args.max_seconds)
            base_cpu = (rss.cpu_seconds() - cpu) / len(base)
            # warm-up: every batch size the load will bring, before the start is measured
            Clients(port, args.clients).run(good[:8 * args.clients], 120)
            time.sleep(2)  # idle, as at the end: the server gives freed memory back after 1 s
            start_rss = rss.read()
            cpu, client_cpu = rss.cpu_seconds(), time.process_time()
            machine_cpu, cores = rss.machine_cpu_seconds()
            with rss:
                results, seconds = Clients(port, args.clients).run(plan, args.max_seconds)
                server_cpu = rss.cpu_seconds() - cpu
                client_cpu = time.process_time() - client_cpu
                machine_cpu = rss.machine_cpu_seconds()[0] - machine_cpu
                threads = rss.read("Threads")
                load_cpu = server_cpu / len(results)
                time.sleep(2)  # let the last answers and frees settle
            end_rss, peak_rss = rss.read(), max(rss.read("VmHWM"), *rss.samples)
        finally:
            stop(proc.pid)
    base_rps = len(base) / base_seconds
    rps = len(results) / seconds
    good_results = [r for r in results if not r[1]]
    hostile_results = [r for r in results if r[1]]
    bad_good = Counter(str(r[2]) for r in good_results if r[2] != 200)
    hostile_5xx = [r for r in hostile_results
                   if not isinstance(r[2], int) or r[2] >= 500]
    latencies = [r[3] for r in good_results if r[2] == 200]
    by_kind = {}
    for kind, _, status, _ in hostile_results:
        by_kind.setdefault(kind, Counter())[str(status)] += 1
    print(f"{args.arch} {args.image_size} px; server args: {args.server_args or '(defaults)'}; "
          f"{len(results)} of {args.requests} requests sent in {seconds:.1f} s "
          f"({len(hostile_results)} hostile) by {args.clients} clients")
    print(f"good requests not answered 200: {sum(bad_good.values())} {dict(bad_good)}")
    print(f"hostile requests answered 5xx (or dropped): {len(hostile_5xx)}")
    for kind, statuses in sorted(by_kind.items()):
        print(f"  {kind}: {dict(statuses)}")
    if latencies:
        p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
        print(f"good requests' latency: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(f"throughput: {rps:.1f} requests/s with {args.clients} clients, {base_rps:.1f} with one "
          f"client alone: {rps / base_rps:.2f}x")
    print(f"server CPU per request: {1000 * load_cpu:.1f} ms with {args.clients} clients, "
          f"{1000 * base_cpu:.1f} ms with one client (CPU time is less disturbed than wall time "
          f"by other jobs on a shared machine)")
    capacity = cores * seconds
    print(f"the {cores} cores during the load: server {server_cpu / capacity:.0%}, the bench's "
          f"clients {client_cpu / capacity:.0%}, other processes "
          f"{max(0.0, machine_cpu - server_cpu - client_cpu) / capacity:.0%}, idle "
          f"{max(0.0, 1 - machine_cpu / capacity):.0%}; server threads at the end: {threads}")
    mib = 2**20
    print(f"server RSS: start {start_rss / mib:.0f} MiB, peak {peak_rss / mib:.0f} MiB, end "
          f"{end_rss / mib:.0f} MiB ({(end_rss - start_rss) / start_rss:+.1%} against the start); "
          f"median while loaded {statistics.median(rss.samples or [0]) / mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
