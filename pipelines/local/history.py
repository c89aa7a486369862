"""Past executions of the local engine, as ``python -m pipelines.run --local --list`` and
``--describe EXECUTION`` print them. A step's log is shown where the step wrote one (the
processing and training steps; a tuning step's are its trials')."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from .store import Store

ERROR_WIDTH = 90


def list_executions(store: Store, limit: int | None = None) -> str:
    executions = store.executions(limit)
    if not executions:
        return f"no executions in {store.path}"
    lines = [f"{'execution':<24} {'pipeline':<16} {'status':<10} {'started (UTC)':<20} "
             f"{'seconds':>8}  error"]
    for e in executions:
        lines.append(f"{e['id']:<24} {e['pipeline']:<16} {e['status']:<10} "
                     f"{_time(e['started_at']):<20} {_seconds(e):>8}  "
                     f"{_short(e['error'] or '')}")
    lines.append("details: python -m pipelines.run --local --describe EXECUTION")
    return "\n".join(lines)


def describe_execution(store: Store, execution_id: str) -> str:
    e = store.execution(store.find_execution(execution_id))
    lines = [f"execution {e['id']} of {e['pipeline']}: {e['status']}",
             f"  started {_time(e['started_at'])}, ended {_time(e['ended_at']) or '-'} (UTC)"
             + (f", engine process {e['engine_pid']}" if e.get("engine_pid") else "")]
    if e["error"]:
        lines.append(f"  error: {e['error']}")
    params = json.loads(e["parameters"])
    lines.append("  parameters: " + " ".join(f"{k}={v}" for k, v in sorted(params.items())))
    lines.append(f"  {'step':<16} {'status':<10} {'seconds':>8}  {'cache':<32} log")
    for s in e["steps"]:
        cache = f"cache hit ({s['cached_from']})" if s["cached_from"] else "ran"
        seconds = f"{s['seconds']:.1f}" if s["seconds"] is not None else "-"
        log = s["log_path"] if s["log_path"] and Path(s["log_path"]).exists() else "-"
        lines.append(f"  {s['name']:<16} {s['status']:<10} {seconds:>8}  {cache:<32} {log}")
        request = json.loads(s["outputs"] or "{}").get("request")
        if request and Path(request).exists():
            lines.append(f"  {'':<16} request: {request}")
        if s["error"]:
            lines.append(f"  {'':<16} error: {s['error']}")
    for t in e["trials"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        hps = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in json.loads(t["hyperparameters"]).items())
        lines.append(f"  {t['step']} trial {t['number']:<3} {t['state']:<10} objective "
                     f"{value}  {hps}  {t['log_path'] or ''}")
    return "\n".join(lines)


def _time(stamp: str | None) -> str:
    return stamp[:19].replace("T", " ") if stamp else ""


def _seconds(e: dict) -> str:
    if not e["ended_at"]:
        return "-"
    took = datetime.fromisoformat(e["ended_at"]) - datetime.fromisoformat(e["started_at"])
    return f"{took.total_seconds():.0f}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_WIDTH else text[:ERROR_WIDTH - 3] + "..."
