"""The local engine under faults: a killed engine takes its jobs with it and its execution is
marked Failed by the next run; past executions can be listed and described; two runs started
at once on one home both finish."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_image_folder
from pipelines import run
from pipelines.local.store import Store
from pipelines.registry import LocalRegistry

TINY = {"BaseModel": "resnet18", "Pretrained": "false", "ImageSize": 16,
        "PreprocessImageSize": 16, "TuningEpochs": 1, "MaxTuningJobs": 1,
        "MaxParallelTuningJobs": 1, "Epochs": 1, "AccuracyThreshold": 0.0}

linux_only = pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                reason="finds the jobs through /proc")


def engine_command(home: Path, data: Path, *options, **params) -> list[str]:
    return [sys.executable, "-m", "pipelines.run", "--local", "--home", str(home),
            "--no-debugger-rules", "--no-profiler", *options, f"--param=InputDataUrl={data}",
            *[f"--param={k}={v}" for k, v in {**TINY, **params}.items()]]


def engine_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def processes_using(marker: str) -> dict[int, str]:
    """Live (not zombie) processes of this user whose environment mentions ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state not in ("Z", "X"):
            found[int(entry.name)] = cmdline
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@linux_only
def test_kill_9_of_the_engine_takes_its_jobs_and_the_next_run_marks_it_failed(tmp_path,
                                                                              capsys):
    data = make_image_folder(tmp_path / "data", 40)
    home = tmp_path / "home"
    engine_log = open(tmp_path / "engine.log", "w")
    # slow epochs (a trial writes to the engine's pipe, and dies of it, only once an epoch ends):
    # trials that fine-tune whole networks at 256 px
    engine = subprocess.Popen(engine_command(home, data, "--tuning-mode", "fine-tune",
                                             ImageSize=256, PreprocessImageSize=256,
                                             TuningEpochs=50, MaxTuningJobs=2,
                                             MaxParallelTuningJobs=2),
                              stdout=engine_log, stderr=subprocess.STDOUT, env=engine_env())
    try:
        wait_for(lambda: any("precision:" in f.read_text() for f in
                             home.glob("pipelines/*/*/HPTuning/trial-*/train.log")),
                 90, "a tuning trial to start training")
        assert any("train.py" in cmd for cmd in processes_using(str(home)).values())
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait()
        # every process the engine started (trial jobs and whatever they started) dies with it
        left = processes_using(str(home))
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes_using(str(home))
        assert not left, f"still running after the engine was killed: {left}"
    finally:
        for pid in processes_using(str(home)):  # old code: clean up what it left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if engine.poll() is None:
            engine.kill()
        engine_log.close()

    (execution,) = Store(home).executions()
    assert execution["status"] == "Executing"  # nobody has looked yet
    assert run.main(["--local", "--home", str(home), "--list"]) == 0
    out = capsys.readouterr().out
    assert execution["id"] in out and "Failed" in out
    record = Store(home).execution(execution["id"])
    assert record["status"] == "Failed"
    assert record["error"].startswith(f"engine process {engine.pid} died")
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["Preprocess"]["status"] == "Succeeded"
    assert steps["HPTuning"]["status"] == "Failed"
    assert f"engine process {engine.pid} died" in steps["HPTuning"]["error"]
    assert "Executing" not in {s["status"] for s in record["steps"]}


def test_list_and_describe_show_steps_cache_sources_logs_and_errors(tmp_path, capsys):
    home = tmp_path / "home"
    logs = tmp_path / "logs"
    for step in ("first/Preprocess", "second/Preprocess", "second/HPTuning"):
        (logs / step).mkdir(parents=True)
        (logs / step / "step.log").write_text("...\n")
    store = Store(home)
    first = store.new_execution("DogBreedBuild", {"Epochs": 1})
    store.start_step(first, "Preprocess", f"{logs}/first/Preprocess/step.log")
    store.end_step(first, "Preprocess", "Succeeded", 1.5)
    store.end_execution(first, "Succeeded")
    second = store.new_execution("DogBreedBuild", {"Epochs": 2})
    store.start_step(second, "Preprocess", f"{logs}/second/Preprocess/step.log")
    store.end_step(second, "Preprocess", "Succeeded", 0.1, cached_from=first)
    store.start_step(second, "HPTuning", f"{logs}/second/HPTuning/step.log")
    store.end_step(second, "HPTuning", "Failed", 2.0, error="no tuning trial completed")
    store.end_execution(second, "Failed", "HPTuning failed: no tuning trial completed")

    assert run.main(["--local", "--home", str(home), "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if first in line or second in line]
    assert len(rows) == 2 and second in rows[0]  # newest first
    assert "Failed" in rows[0] and "Succeeded" in rows[1]

    assert run.main(["--local", "--home", str(home), "--describe", second]) == 0
    out = capsys.readouterr().out
    assert f"execution {second}" in out and "Failed" in out
    pre = next(line for line in out.splitlines() if line.strip().startswith("Preprocess"))
    assert "Succeeded" in pre and f"cache hit ({first})" in pre
    assert f"{logs}/second/Preprocess/step.log" in pre
    tune = next(line for line in out.splitlines() if line.strip().startswith("HPTuning"))
    assert "Failed" in tune and f"{logs}/second/HPTuning/step.log" in tune
    assert "error: no tuning trial completed" in out
    assert '"Epochs": 2' in out or "Epochs=2" in out  # the parameters it ran with

    assert run.main(["--local", "--home", str(home), "--describe", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no execution nope" in err and second in err
    assert run.main(["--home", str(home), "--list"]) == 2  # local only
    assert "--local" in capsys.readouterr().err
    assert run.main(["--local", "--home", str(tmp_path / "fresh"), "--list"]) == 0
    assert "no local executions" in capsys.readouterr().out
    assert not (tmp_path / "fresh").exists()  # looking creates nothing


def test_two_runs_started_at_once_on_one_home_both_finish(tmp_path):
    data = make_image_folder(tmp_path / "data", 6, size=(24, 20))
    home = tmp_path / "home"
    procs = [subprocess.Popen(engine_command(home, data), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=engine_env())
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
    db = sqlite3.connect(home / "engine.sqlite")
    db.row_factory = sqlite3.Row
    executions = [dict(r) for r in db.execute("SELECT id, status FROM executions")]
    assert len(executions) == 2 and {e["status"] for e in executions} == {"Succeeded"}
    versions = sorted(p.version for p in LocalRegistry(home).list("DogBreedModels"))
    assert versions == [1, 2]
    lineage = {p.lineage["execution"] for p in LocalRegistry(home).list("DogBreedModels")}
    assert lineage == {e["id"] for e in executions}
    # each run wrote its own step folders; a step it did not run came from the other's cache
    for execution in executions:
        folder = home / "pipelines" / "DogBreedBuild" / execution["id"]
        for step in Store(home).execution(execution["id"])["steps"]:
            if step["cached_from"] is None:
                assert step["log_path"].startswith(str(folder)), step
                assert (folder / step["name"]).is_dir()
            else:
                assert step["cached_from"] in {e["id"] for e in executions} - {execution["id"]}


def test_runs_resolving_the_sample_data_at_once_see_the_same_finished_files(tmp_path):
    """Both runs render sklearn-digits into one cache: neither may read (or fingerprint) the
    folder while the other is still writing it. One of them is a slow writer here: it writes
    its last file two seconds after the others."""
    script = """if True:
        import sys, time
        from pathlib import Path
        from pipelines.data import sample
        from pipelines.local import inputs

        render = sample.render_sklearn_digits

        def slow_render(dest, *args, **kwargs):
            render(dest, *args, **kwargs)
            time.sleep(2)
            first = Path(dest) / "digit_0" / "0000.png"
            first.write_bytes(first.read_bytes())

        if sys.argv[2] == "slow":
            sample.render_sklearn_digits = slow_render
        path = inputs.resolve("sklearn-digits", Path(sys.argv[1]))
        print(inputs.fingerprint(path))
    """
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache), speed],
                              env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for speed in ("slow", "fast")]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    from pipelines.local import inputs

    final = inputs.fingerprint(cache / "sklearn-digits")
    assert [out.strip() for out, _ in results] == [final, final]
    assert sum(1 for _ in (cache / "sklearn-digits").rglob("*.png")) == 1797


def test_executions_started_in_the_same_second_list_newest_first(tmp_path, monkeypatch):
    """started_at has one-second resolution; the tie goes to insertion order, not to the
    random part of the id."""
    import uuid

    from pipelines.local import store as store_module

    suffixes = iter(["ffffff", "000000"])
    monkeypatch.setattr(store_module.uuid, "uuid4",
                        lambda: uuid.UUID(next(suffixes) + "00" * 13))
    monkeypatch.setattr(store_module, "now", lambda: "2026-11-24T01:00:00+00:00")
    store = Store(tmp_path / "home")
    older = store.new_execution("DogBreedBuild", {})
    newer = store.new_execution("DogBreedBuild", {})
    assert older.endswith("ffffff") and newer.endswith("000000")
    assert [e["id"] for e in store.executions()] == [newer, older]


@linux_only
def test_sigterm_of_the_engine_is_recorded_as_stopped_and_takes_its_job(tmp_path):
    data = make_image_folder(tmp_path / "data", 40)
    home = tmp_path / "home"
    engine = subprocess.Popen(engine_command(home, data, "--tuning-mode", "fine-tune",
                                             ImageSize=256, PreprocessImageSize=256,
                                             TuningEpochs=50),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=engine_env())
    try:
        wait_for(lambda: any("train.py" in cmd for cmd in processes_using(str(home)).values()),
                 120, "a tuning trial to start")
        engine.send_signal(signal.SIGTERM)  # as `timeout` or `kill` would
        out = engine.communicate(timeout=60)[0]
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 130, out
    assert "Traceback" not in out, out
    (execution,) = Store(home).executions()
    assert execution["status"] == "Stopped" and execution["error"] == "stopped by SIGTERM"
    steps = {s["name"]: s["status"] for s in Store(home).execution(execution["id"])["steps"]}
    assert steps["HPTuning"] == "Stopped" and "Executing" not in steps.values()
    assert wait_for(lambda: not processes_using(str(home)), 10, "the trial to end")
