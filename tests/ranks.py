"""Run a function in N CPU processes joined by a gloo process group (torch.distributed).

``run_ranks(fn, n, tmp_path, *args)`` starts ``fn(rank, world_size, *args)`` in n spawned
processes and returns each rank's return value (pickled through a file), or the exception text
it raised. A rank that has not answered after ``timeout`` seconds (a hang in a collective)
fails the test; once every rank has answered, ranks stuck in the group's teardown are killed
after 10 s (torch 2.6's gloo: pytorch#75097).
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
    partial = Path(out) / f"rank{rank}.partial"
    with open(partial, "wb") as fh:
        pickle.dump(result, fh)
    os.replace(partial, Path(out) / f"rank{rank}.pkl")  # whole, once it is there
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
    files = [out / f"rank{rank}.pkl" for rank in range(world_size)]
    finished_at = None
    while True:
        try:
            if ctx.join(timeout=1):
                break
        except mp.ProcessExitedException:
            if not all(f.exists() for f in files):
                raise
        if all(f.exists() for f in files):
            # every rank has answered; what is left is the group's teardown, which under torch
            # 2.6's gloo now and then hangs or aborts once a peer has gone (pytorch#75097):
            # not what these tests are about
            finished_at = finished_at or time.monotonic()
            if time.monotonic() - finished_at > 10:
                for proc in ctx.processes:
                    proc.kill()
                break
        elif time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            raise AssertionError(f"ranks still running after {timeout}s: a collective hangs")
    results = []
    for rank in range(world_size):
        with open(out / f"rank{rank}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results
