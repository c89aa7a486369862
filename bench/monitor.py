"""The monitoring job on 100,000 captured records: time and memory (scripts/monitor.py).

    python bench/monitor.py                         # 100,000 records (about 0.9 GB of capture)
    python bench/monitor.py --records 20000         # a quick run

Writes ``--records`` data-capture records (SageMaker's format, as the local endpoint writes them:
a 200x150 JPEG request, base64, and a top-5 answer of 133 classes) over 24 hour folders, plus a
baseline of 835 images, then runs ``scripts/monitor.py`` on the whole window in a process of its
own, twice: on a tenth of the records and on all of them.

Prints, for each: the wall time, records/s and the peak RSS of the process (the kernel's
high-water mark), and against the floor measured in the same run (a process that only reads
the same files and parses each line's JSON): the time ratio. Aims: under a minute for 100,000
records on 2 cores; the peak RSS of the full run within 10% of the tenth's (memory does not grow
with the window: class counts are exact, the rest are samples of at most 10,000).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from breedkit.capture import hour_dir, make_record  # noqa: E402
from breedkit.drift import make_baseline  # noqa: E402

CLASSES = [f"{i:03d}.Breed_{i}" for i in range(1, 134)]
END = datetime(2026, 12, 6, 0, 0, tzinfo=timezone.utc)

FLOOR = """
import json, sys
from pathlib import Path
n = 0
for path in sorted(Path(sys.argv[1]).rglob("*.jsonl")):
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
            n += 1
print(n)
"""


def photo(rng: np.random.Generator) -> bytes:
    """A 200x150 JPEG with smooth structure and noise (about 6-9 KB, as a photo of that size)."""
    x = np.linspace(0, 1, 200)[None, :, None]
    y = np.linspace(0, 1, 150)[:, None, None]
    base = rng.uniform(0.2, 1.0, 3) * (0.6 * x + 0.4 * y) + rng.uniform(0, 0.3, 3)
    noisy = np.clip(base + rng.normal(0, 0.05, (150, 200, 3)), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((noisy * 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def answer(rng: random.Random) -> str:
    top = rng.sample(range(len(CLASSES)), 5)
    probs = sorted((rng.random() for _ in top), reverse=True)
    total = sum(probs) / rng.uniform(0.6, 1.0)
    entries = [{"label": CLASSES[i][4:], "class": CLASSES[i], "index": i,
                "probability": round(p / total, 6)} for i, p in zip(top, probs)]
    return json.dumps({"predictions": [{**entries[0], "top_k": entries}]})


def write_capture(root: Path, records: int, pool: list[bytes], seed: int) -> None:
    rng = random.Random(seed)
    per_hour = -(-records // 24)
    written = 0
    for hour in range(24):
        when = END - timedelta(hours=24 - hour)
        folder = hour_dir(root, "dogbreed-prod", when)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "part.jsonl", "w") as fh:
            for i in range(min(per_hour, records - written)):
                record = make_record(rng.choice(pool), "image/jpeg", answer(rng),
                                     when=when + timedelta(seconds=i * 3600 / per_hour))
                fh.write(json.dumps(record) + "\n")
            written += min(per_hour, records - written)


def baseline(pool: list[bytes]) -> dict:
    from breedkit.capture import image_stats

    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(CLASSES)) * 0.05, size=835)
    stats = [image_stats(pool[i % len(pool)]) for i in range(835)]
    return make_baseline(CLASSES, probs, stats, 224, "valid")


PEAK = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(f"peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def timed(command: list[str]) -> tuple[float, float, str]:
    """Seconds, the command's peak RSS (MB, measured by a fresh parent of its own) and its
    output."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit("peak_kb=", 1)[1].split()[0])
    return seconds, peak_kb / 1024, proc.stdout


def run(work: Path, records: int, pool: list[bytes], base: Path) -> dict:
    capture = work / f"capture-{records}"
    start = time.perf_counter()
    write_capture(capture, records, pool, seed=records)
    size = sum(p.stat().st_size for p in capture.rglob("*.jsonl")) / 2**20
    print(f"{records:,} records written ({size:,.0f} MB) in {time.perf_counter() - start:.0f} s",
          flush=True)
    floor, _, counted = timed([sys.executable, "-c", FLOOR, str(capture)])
    assert int(counted) == records
    seconds, peak, out = timed([sys.executable, str(ROOT / "scripts/monitor.py"),
                                "--capture-dir", str(capture), "--baseline", str(base),
                                "--output-dir", str(work / f"out-{records}"),
                                "--since", "25h", "--until", END.isoformat()])
    report = json.loads((work / f"out-{records}" / "monitor.json").read_text())
    assert report["requests"] == records, report["requests"]
    shutil.rmtree(capture)
    return {"records": records, "seconds": seconds, "floor": floor, "peak_mb": peak,
            "drift": report["drift"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    pool = [photo(rng) for _ in range(300)]
    print(f"{len(pool)} distinct request images, {np.mean([len(b) for b in pool]) / 1024:.1f} KB "
          f"each on average", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as folder:
        work = Path(folder)
        base = work / "baseline.json"
        base.write_text(json.dumps(baseline(pool)))
        results = [run(work, max(1, args.records // 10), pool, base)]
        results.append(run(work, args.records, pool, base))
    print(f"\n{'records':>9} {'monitor s':>10} {'records/s':>10} {'floor s':>8} "
          f"{'ratio':>6} {'peak RSS MB':>12}")
    for r in results:
        print(f"{r['records']:>9,} {r['seconds']:>10.1f} {r['records'] / r['seconds']:>10,.0f} "
              f"{r['floor']:>8.1f} {r['seconds'] / r['floor']:>6.2f} {r['peak_mb']:>12.0f}")
    small, full = results
    print(f"\npeak RSS, full against a tenth: {full['peak_mb'] / small['peak_mb']:.2f} "
          f"(aim: at most 1.10); full run {full['seconds']:.1f} s (aim: under 60 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
