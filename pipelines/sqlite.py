"""SQLite connections shared by the registry and the local engine's records.

Several processes (parallel pipeline runs, tuning trials) use one database file: it is put in
WAL mode once, when created, and every connection waits up to a minute for a writer. Changing
the journal mode needs an exclusive lock that SQLite does not wait for, so creation retries.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)  # autocommit
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys=ON")
    return db


def initialize(path: str | Path, schema: str, attempts: int = 200) -> None:
    """Create the tables (idempotent) and switch to WAL, retrying while another process
    holds the lock."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        db = connect(path)
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02 + random.random() * 0.08)
        finally:
            db.close()
