"""The local engine's records in SQLite: executions, steps, tuning trials and the step cache."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pipelines.sqlite import connect, initialize

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    parameters TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL REFERENCES executions(id), name TEXT NOT NULL,
    status TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, seconds REAL,
    cache_key TEXT, cached_from TEXT, outputs TEXT NOT NULL DEFAULT '{}', error TEXT,
    log_path TEXT, PRIMARY KEY (execution_id, name)
);
CREATE TABLE IF NOT EXISTS trials (
    execution_id TEXT NOT NULL, number INTEGER NOT NULL, state TEXT NOT NULL,
    hyperparameters TEXT NOT NULL, value REAL, intermediate TEXT NOT NULL DEFAULT '[]',
    log_path TEXT, PRIMARY KEY (execution_id, number)
);
CREATE TABLE IF NOT EXISTS step_cache (
    pipeline TEXT NOT NULL, step TEXT NOT NULL, cache_key TEXT NOT NULL,
    execution_id TEXT NOT NULL, outputs TEXT NOT NULL, created_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, step, cache_key)
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, home: Path):
        self.path = Path(home) / "engine.sqlite"
        initialize(self.path, _SCHEMA)

    @contextlib.contextmanager
    def _db(self):
        db = connect(self.path)
        try:
            yield db
        finally:
            db.close()

    def new_execution(self, pipeline: str, parameters: dict) -> str:
        execution_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + \
            uuid.uuid4().hex[:6]
        with self._db() as db:
            db.execute("INSERT INTO executions (id, pipeline, status, parameters, started_at) "
                       "VALUES (?, ?, 'Executing', ?, ?)",
                       (execution_id, pipeline, json.dumps(parameters), now()))
        return execution_id

    def end_execution(self, execution_id: str, status: str, error: str | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE executions SET status = ?, ended_at = ?, error = ? WHERE id = ?",
                       (status, now(), error, execution_id))

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

    def record_trial(self, execution_id: str, number: int, state: str, hyperparameters: dict,
                     value: float | None, intermediate: list, log_path: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (execution_id, number, state, json.dumps(hyperparameters), value,
                        json.dumps(intermediate), log_path))

    def cached(self, pipeline: str, step: str, cache_key: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT execution_id, outputs FROM step_cache WHERE pipeline = ? "
                             "AND step = ? AND cache_key = ?", (pipeline, step, cache_key)
                             ).fetchone()
        if row is None:
            return None
        return {"execution_id": row["execution_id"], "outputs": json.loads(row["outputs"])}

    def remember(self, pipeline: str, step: str, cache_key: str, execution_id: str,
                 outputs: dict) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO step_cache VALUES (?, ?, ?, ?, ?, ?)",
                       (pipeline, step, cache_key, execution_id, json.dumps(outputs), now()))

    def execution(self, execution_id: str) -> dict:
        with self._db() as db:
            row = db.execute("SELECT * FROM executions WHERE id = ?", (execution_id,)).fetchone()
            steps = db.execute("SELECT * FROM steps WHERE execution_id = ? ORDER BY started_at",
                               (execution_id,)).fetchall()
            trials = db.execute("SELECT * FROM trials WHERE execution_id = ? ORDER BY number",
                                (execution_id,)).fetchall()
        return {**dict(row), "steps": [dict(s) for s in steps],
                "trials": [dict(t) for t in trials]}
