"""Run a function in N CPU processes joined by a gloo process group (torch.distributed).

``run_ranks(fn, n, tmp_path, *args)`` starts ``fn(rank, world_size, *args)`` in n spawned
processes and returns each rank's return value (pickled through a file), or the exception text
it raised. A rank still running after ``timeout`` seconds (a hang in a collective) fails the test.
"""

from __future__ import annotations

import datetime
import os
import pickle
import sys
import time
import traceback
from pathlib import Path

import torch.multiprocessing as mp


def _entry(rank: int, world_size: int, store: str, out: str, fn, args) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=30))
    try:
        result = ("ok", fn(rank, world_size, *args))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    with open(Path(out) / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump(result, fh)
    dist.destroy_process_group()


def run_ranks(fn, world_size: int, tmp_path: Path, *args, timeout: float = 90) -> list:
    out = tmp_path / f"ranks-{time.monotonic_ns()}"
    out.mkdir()
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    ctx = mp.start_processes(_entry, args=(world_size, str(out / "store"), str(out), fn, args),
                             nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            raise AssertionError(f"ranks still running after {timeout}s: a collective hangs")
    results = []
    for rank in range(world_size):
        with open(out / f"rank{rank}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results
