"""Data capture for the local endpoint: SageMaker's record format and folder layout
(``breedkit.capture``), written under the home so that ``python -m pipelines.monitor`` reads
it as the monitoring job reads an endpoint's capture prefix in S3.

    <capture dir>/<endpoint>/AllTraffic/yyyy/mm/dd/hh/<server start>-<pid>.jsonl

A sampled share of the requests is captured (``percent``; 0 captures nothing). Records are
written by one thread of their own, off the request's path; while the disk is slower than the
traffic, at most ``MAX_PENDING`` records wait and the rest are dropped (and counted), so
capture never holds up or grows the server. A request's image stays in memory only until its
record is written.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from breedkit.capture import hour_dir, make_record

log = logging.getLogger("serving")
MAX_PENDING = 256


class Capture:
    def __init__(self, root: str | os.PathLike, endpoint: str, percent: float,
                 seed: int | None = None):
        if not 0 <= percent <= 100:
            raise ValueError(f"the capture percentage must be 0 to 100, got {percent}")
        self.root, self.endpoint, self.percent = Path(root), endpoint, percent
        self.rng = random.Random(seed)
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture")
        self.lock = threading.Lock()
        self.pending = self.written = self.dropped = 0
        self.started = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.handle, self.hour = None, None

    def offer(self, body: bytes, content_type: str, answer: str) -> None:
        """Capture this request (if sampled): queued for the writer thread."""
        if self.percent <= 0 or self.rng.random() * 100 >= self.percent:
            return
        with self.lock:
            if self.pending >= MAX_PENDING:
                self.dropped += 1
                return
            self.pending += 1
        try:
            self.writer.submit(self._write, body, content_type, answer,
                               datetime.now(timezone.utc))
        except RuntimeError:  # a request answered while the server shuts down
            with self.lock:
                self.pending -= 1

    def _write(self, body: bytes, content_type: str, answer: str, when: datetime) -> None:
        try:
            folder = hour_dir(self.root, self.endpoint, when)
            if folder != self.hour:
                self._close()
                folder.mkdir(parents=True, exist_ok=True)
                self.handle = open(folder / f"{self.started}-{os.getpid()}.jsonl", "a",
                                   encoding="utf-8")
                self.hour = folder
            self.handle.write(json.dumps(make_record(body, content_type, answer, when=when))
                              + "\n")
            self.handle.flush()  # a reader (the monitor) sees whole records
            self.written += 1
        except OSError as exc:
            with self.lock:
                self.dropped += 1
            log.warning("data capture: a record could not be written (%s)", exc)
        finally:
            with self.lock:
                self.pending -= 1

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def close(self) -> None:
        """Write what is queued, then close the file."""
        self.writer.shutdown(wait=True)
        self._close()
        if self.dropped:
            log.warning("data capture: %d records were dropped (disk slower than the traffic, "
                        "or unwritable)", self.dropped)
