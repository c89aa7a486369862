"""The local engine's records in SQLite: executions, steps, tuning trials and the step cache.

An execution is ``Executing`` only while its engine process lives: the engine holds an
exclusive lock on ``<home>/locks/<execution>.lock`` (released by the system however the
process ends), and ``fail_orphans`` marks executions whose lock nobody holds as Failed. The
lock file also holds room for a note: where the records themselves cannot be written (a full
disk), the engine writes the reason there in place, and the next start records it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pipelines.sqlite import add_column, connect, initialize, write_transaction

NOTE_BYTES = 1024  # written when the lock is taken, so a note later needs no new disk blocks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    parameters TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, error TEXT,
    engine_pid INTEGER
);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL REFERENCES executions(id), name TEXT NOT NULL,
    status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, seconds REAL,
    cache_key TEXT, cached_from TEXT, outputs TEXT NOT NULL DEFAULT '{}', error TEXT,
    log_path TEXT, PRIMARY KEY (execution_id, name)
);
CREATE TABLE IF NOT EXISTS tuning_trials (
    execution_id TEXT NOT NULL, step TEXT NOT NULL, number INTEGER NOT NULL,
    state TEXT NOT NULL, hyperparameters TEXT NOT NULL, value REAL,
    intermediate TEXT NOT NULL DEFAULT '[]', log_path TEXT,
    PRIMARY KEY (execution_id, step, number)
);
CREATE TABLE IF NOT EXISTS step_cache (
    pipeline TEXT NOT NULL, step TEXT NOT NULL, cache_key TEXT NOT NULL,
    execution_id TEXT NOT NULL, outputs TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, step, cache_key)
);
"""


def _move_trials(path: Path) -> None:
    """Homes written before a pipeline could hold two tuning steps kept their trials in
    ``trials``, numbered per execution: they were all HPTuning's. Moved once, in one
    transaction (another process moving them first is fine); a home with nothing to move is
    only read."""
    db = connect(path)
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trials'"
    try:
        if not db.execute(exists).fetchone():
            return
        with write_transaction(db):
            if db.execute(exists).fetchone():
                db.execute("INSERT OR IGNORE INTO tuning_trials SELECT execution_id, "
                           "'HPTuning', number, state, hyperparameters, value, intermediate, "
                           "log_path FROM trials")
                db.execute("DROP TABLE trials")
    finally:
        db.close()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class UnknownExecution(Exception):
    """No execution matches an id (or id prefix) asked for."""


class Store:
    def __init__(self, home: Path):
        self.path = Path(home) / "engine.sqlite"
        self.locks = Path(home) / "locks"
        initialize(self.path, _SCHEMA, advice=(
            f"move it aside (mv {self.path} {self.path}.damaged) and run again: a new one is "
            f"created, with no execution history or step cache (the outputs under "
            f"{Path(home) / 'pipelines'} stay)"))
        add_column(self.path, "executions", "engine_pid", "INTEGER")  # homes before 2026-11
        _move_trials(self.path)  # homes before 2026-12
        self._held: dict[str, int] = {}  # execution id -> its lock's file descriptor

    @contextlib.contextmanager
    def _db(self):
        db = connect(self.path)
        try:
            yield db
        finally:
            db.close()

    def new_execution(self, pipeline: str, parameters: dict) -> str:
        """A new Executing execution, locked by this process until ``end_execution``."""
        execution_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + \
            uuid.uuid4().hex[:6]
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path(execution_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new file: nobody else holds it
            os.write(fd, b" " * NOTE_BYTES)
            with self._db() as db:
                db.execute("INSERT INTO executions (id, pipeline, status, parameters, "
                           "started_at, engine_pid) VALUES (?, ?, 'Executing', ?, ?, ?)",
                           (execution_id, pipeline, json.dumps(parameters), now(),
                            os.getpid()))
        except BaseException:  # (a full disk): no execution, and no lock left behind
            os.close(fd)
            with contextlib.suppress(OSError):
                self._lock_path(execution_id).unlink()
            raise
        self._held[execution_id] = fd
        return execution_id

    def end_execution(self, execution_id: str, status: str, error: str | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE executions SET status = ?, ended_at = ?, error = ? WHERE id = ?",
                       (status, now(), error, execution_id))
        fd = self._held.pop(execution_id, None)
        if fd is not None:  # only after the status: see fail_orphans
            with contextlib.suppress(FileNotFoundError):
                self._lock_path(execution_id).unlink()
            os.close(fd)

    def leave_note(self, execution_id: str, reason: str) -> None:
        """The records cannot be written: leave ``reason`` in the execution's lock file (in
        the room reserved for it) and release the lock, for the next start to record."""
        fd = self._held.pop(execution_id, None)
        if fd is None:
            return
        try:
            os.pwrite(fd, reason.encode()[:NOTE_BYTES].ljust(NOTE_BYTES), 0)
        except OSError:
            pass  # the next start says the engine died, which is true too
        finally:
            os.close(fd)

    def _note(self, execution_id: str) -> str:
        try:
            return self._lock_path(execution_id).read_bytes().decode(errors="replace").strip()
        except OSError:
            return ""

    def _lock_path(self, execution_id: str) -> Path:
        return self.locks / f"{execution_id}.lock"

    def _engine_alive(self, execution_id: str) -> bool:
        """Whether some process holds the execution's lock (its engine, alive)."""
        try:
            fd = os.open(self._lock_path(execution_id), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # (releases the lock if this process just took it)
        return False

    def fail_orphans(self) -> list[dict]:
        """Mark Failed every Executing execution whose engine is gone (killed, crashed, the
        machine restarted), and its Executing steps; return those executions."""
        with self._db() as db:
            running = db.execute("SELECT id, engine_pid FROM executions WHERE status = "
                                 "'Executing' ORDER BY started_at, rowid").fetchall()
        failed = []
        for row in running:
            if self._engine_alive(row["id"]):
                continue
            pid = row["engine_pid"]
            engine = f"engine process {pid}" if pid is not None else "its engine process"
            note = self._note(row["id"])
            error = (f"{note} (recorded at the next start: the engine could not write its "
                     f"records)") if note else (
                f"{engine} died while this execution was running (killed or crashed); "
                f"run the pipeline again: completed steps are reused from the cache")
            with self._db() as db:
                db.execute("BEGIN IMMEDIATE")
                # the status condition: an engine that just ended has its real status already
                marked = db.execute("UPDATE executions SET status = 'Failed', ended_at = ?, "
                                    "error = ? WHERE id = ? AND status = 'Executing'",
                                    (now(), error, row["id"])).rowcount
                if marked:
                    db.execute("UPDATE steps SET status = 'Failed', ended_at = ?, error = ? "
                               "WHERE execution_id = ? AND status = 'Executing'",
                               (now(), error, row["id"]))
                db.execute("COMMIT")
            with contextlib.suppress(FileNotFoundError):
                self._lock_path(row["id"]).unlink()
            if marked:
                failed.append({"id": row["id"], "engine_pid": pid, "error": error})
        return failed

    def start_step(self, execution_id: str, name: str, log_path: str | None = None) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO steps (execution_id, name, status, started_at, "
                       "log_path) VALUES (?, ?, 'Executing', ?, ?)",
                       (execution_id, name, now(), log_path))

    def end_step(self, execution_id: str, name: str, status: str, seconds: float, *,
                 outputs: dict | None = None, cache_key: str | None = None,
                 cached_from: str | None = None, error: str | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE steps SET status = ?, ended_at = ?, seconds = ?, outputs = ?, "
                       "cache_key = ?, cached_from = ?, error = ? WHERE execution_id = ? AND "
                       "name = ?", (status, now(), seconds, json.dumps(outputs or {}), cache_key,
                                    cached_from, error, execution_id, name))

    def record_trial(self, execution_id: str, step: str, number: int, state: str,
                     hyperparameters: dict, value: float | None, intermediate: list,
                     log_path: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO tuning_trials VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (execution_id, step, number, state, json.dumps(hyperparameters), value,
                        json.dumps(intermediate), log_path))

    def cached(self, pipeline: str, step: str, cache_key: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT execution_id, outputs, created_at FROM step_cache WHERE "
                             "pipeline = ? "
                             "AND step = ? AND cache_key = ?", (pipeline, step, cache_key)
                             ).fetchone()
        if row is None:
            return None
        return {"execution_id": row["execution_id"], "outputs": json.loads(row["outputs"]),
                "created_at": row["created_at"]}

    def remember(self, pipeline: str, step: str, cache_key: str, execution_id: str,
                 outputs: dict) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO step_cache VALUES (?, ?, ?, ?, ?, ?)",
                       (pipeline, step, cache_key, execution_id, json.dumps(outputs), now()))

    def executions(self, limit: int | None = None) -> list[dict]:
        """Newest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM executions ORDER BY started_at DESC, rowid DESC "
                              "LIMIT ?", (-1 if limit is None else limit,)).fetchall()
        return [dict(r) for r in rows]

    def find_execution(self, wanted: str) -> str:
        """The id of the execution named by ``wanted``: its id or a unique prefix of it."""
        with self._db() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM executions WHERE id = ? OR "
                                            "substr(id, 1, length(?)) = ? ORDER BY id DESC",
                                            (wanted, wanted, wanted))]
        if wanted in ids:
            return wanted
        if len(ids) == 1 and wanted:
            return ids[0]
        if ids:
            raise UnknownExecution(f"{wanted!r} matches {len(ids)} executions "
                                   f"({', '.join(ids[:5])}): give more of the id")
        recent = [e["id"] for e in self.executions(limit=5)]
        hint = f"the latest: {', '.join(recent)}" if recent else "there are none yet"
        raise UnknownExecution(f"no execution {wanted} in {self.path}; {hint}")

    def execution(self, execution_id: str) -> dict:
        with self._db() as db:
            row = db.execute("SELECT * FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if row is None:
                raise UnknownExecution(f"no execution {execution_id} in {self.path}")
            steps = db.execute("SELECT * FROM steps WHERE execution_id = ? ORDER BY started_at, "
                               "rowid",
                               (execution_id,)).fetchall()
            trials = db.execute(
                "SELECT t.* FROM tuning_trials t LEFT JOIN steps s ON s.execution_id = "
                "t.execution_id AND s.name = t.step WHERE t.execution_id = ? ORDER BY "
                "s.started_at, t.step, t.number", (execution_id,)).fetchall()
        return {**dict(row), "steps": [dict(s) for s in steps],
                "trials": [dict(t) for t in trials]}
