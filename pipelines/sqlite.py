"""SQLite connections shared by the registry and the local engine's records.

Several processes (parallel pipeline runs, tuning trials) use one database file: it is put in
WAL mode once, when created, and every connection waits up to a minute for a writer. Changing
the journal mode needs an exclusive lock that SQLite does not wait for, so creation retries.
Each store is checked when it is opened (``PRAGMA quick_check``): a damaged file is a
``DamagedStore`` naming it and what to do, never a raw sqlite traceback halfway through a run.
"""

from __future__ import annotations

import contextlib

import random
import sqlite3
import time
from pathlib import Path


class DamagedStore(Exception):
    """A state store (an SQLite file of ours) that cannot be read: the message names the file
    and what to do."""


def check(path: str | Path, advice: str) -> None:
    """Raise DamagedStore unless ``path`` (when it exists) is a readable, intact database."""
    path = Path(path)
    if not path.exists():
        return
    try:
        # read-write: a read-only connection cannot open a WAL database whose -shm another
        # process is creating; the check itself writes nothing
        db = sqlite3.connect(path, timeout=60)
        try:
            found = [row[0] for row in db.execute("PRAGMA quick_check")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc):  # busy, not damaged: the writer's check is its own
            return
        found = [str(exc)]
    if found != ["ok"]:
        detail = "; ".join(found[:3])
        raise DamagedStore(f"{path} is damaged ({detail}): {advice}")


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)  # autocommit
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` (one writer at a time): committed when the block ends, unless the
    block rolled back itself; rolled back when it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if db.in_transaction:
        db.execute("COMMIT")


def add_column(path: str | Path, table: str, name: str, definition: str) -> None:
    """``ALTER TABLE table ADD COLUMN name definition`` unless the column is there (stores
    written by an older version); another process adding it first is fine."""
    db = connect(path)
    try:
        if name in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            return
        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise
    finally:
        db.close()


def initialize(path: str | Path, schema: str, attempts: int = 200, *,
               advice: str = "move it aside and run again (a new, empty one is created)"
               ) -> None:
    """Check the store (``advice``: what to do if it is damaged), create the tables
    (idempotent) and switch to WAL, retrying while another process holds the lock."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    check(path, advice)
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
