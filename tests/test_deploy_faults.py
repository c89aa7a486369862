"""Local deploys under faults of state: a deploy killed mid-way, two deploys at once, a version
rejected while it is being deployed, a model archive gone from the registry's records, a server
fed half-sent or oversized requests. Afterwards no server of ours runs and no folder of ours is
left that the records do not name.

The model here is a stub ``code/inference.py`` (no torch): a server starts in well under a
second, and STUB_LOAD_SECONDS makes its model_fn slow where a test needs a deploy to be caught
mid-way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from pipelines.deploy import cli as deploy
from pipelines.deploy import endpoints as endpoint
from pipelines.deploy.endpoints import Endpoints
from pipelines.registry import LocalRegistry

GROUP = "DogBreedModels"
STUB = """\
import json, os, time

def model_fn(model_dir):
    time.sleep(float(os.environ.get("STUB_LOAD_SECONDS", "0")))
    return "stub"

def input_fn(body, content_type):
    return {"images": [body]}

def predict_fn(data, model):
    return [{"label": "001.Stub", "probability": 0.9,
             "top_k": [{"label": "001.Stub", "probability": 0.9}]} for _ in data["images"]]

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction})
"""


def stub_archive(path: Path) -> Path:
    code = path.parent / f"{path.stem}-inference.py"
    code.write_text(STUB)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(code, arcname="code/inference.py")
    return path


def servers_of(marker: str) -> list[int]:
    """Pids of the model servers whose command line names ``marker`` (a test's own path)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv]
        if "pipelines.deploy.server" in words and any(marker in w for w in words):
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.append(int(entry.name))
    return found


def wait_until(predicate, seconds: float = 20.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    registry = LocalRegistry(home)
    archive = stub_archive(tmp_path / "stub.tar.gz")
    registry.register(GROUP, str(archive), approval_status="Approved")
    yield {"home": home, "registry": registry, "archive": archive, "tmp": tmp_path}
    for pid in servers_of(str(tmp_path)):  # never leave servers behind, whatever failed
        endpoint.stop(pid)


def deploy_process(home, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.deploy", "--local", "--home",
                             str(home["home"]), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(home["tmp"]), **(env or {})})


def folders_of_ours(home: Path) -> set[str]:
    """Folders the servers use under the home, two levels down (logs are files and stay)."""
    root = home / "endpoints"
    return {str(p.relative_to(root)) for p in [*root.glob("*"), *root.glob("*/*")]
            if p.is_dir()}


def test_a_deploy_killed_before_it_records_its_server_leaves_no_server(home):
    proc = deploy_process(home, env={"STUB_LOAD_SECONDS": "4"})
    try:
        assert wait_until(lambda: servers_of(str(home["tmp"]))), proc.stdout.read()
        os.kill(proc.pid, signal.SIGKILL)  # before the server answers and is recorded
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert Endpoints(home["home"]).get("dogbreed-staging") is None
    assert wait_until(lambda: not servers_of(str(home["tmp"])), 15), \
        "the server of a deploy killed before recording it is still running"
    assert wait_until(lambda: not (home["home"] / "endpoints" / "run").exists()
                      or not any((home["home"] / "endpoints" / "run").iterdir()), 10)


def test_an_untracked_server_is_listed_and_the_next_deploy_stops_it(home, capsys):
    # a server of ours that no record names (as a deploy from before this change left them)
    run = home["home"] / "endpoints" / "run" / "dogbreed-staging-v1-0"
    run.mkdir(parents=True)
    stray = subprocess.Popen([sys.executable, "-m", "pipelines.deploy.server", "--model-data",
                              str(home["archive"]), "--port", str(endpoint.free_port()),
                              "--workdir", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_until(lambda: servers_of(str(home["tmp"])) == [stray.pid])
        assert endpoint.main(["--home", str(home["home"]), "list"]) == 0
        out = capsys.readouterr().out
        assert f"untracked model server (process {stray.pid}, {run})" in out
        assert "python -m pipelines.deploy.endpoints clean" in out

        assert deploy.main(["--local", "--home", str(home["home"])]) == 0
        out = capsys.readouterr().out
        assert f"stopped untracked model server (process {stray.pid}, {run})" in out
        staged = Endpoints(home["home"]).get("dogbreed-staging")
        assert servers_of(str(home["tmp"])) == [staged.pid]
        assert not run.exists()
    finally:
        stray.kill()
        stray.wait()


def test_two_deploys_at_once_leave_one_server_the_records_name(home):
    env = {"STUB_LOAD_SECONDS": "1"}
    first, second = deploy_process(home, env=env), deploy_process(home, env=env)
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    assert any("nothing to do" in out for out in outputs), outputs
    staged = Endpoints(home["home"]).get("dogbreed-staging")
    assert servers_of(str(home["tmp"])) == [staged.pid], outputs
    assert folders_of_ours(home["home"]) == {"run", f"run/{Path(staged.workdir).name}"}


def test_delete_stops_the_server_and_removes_its_unpacked_model(home):
    proc = deploy_process(home)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    staged = Endpoints(home["home"]).get("dogbreed-staging")
    workdir = Path(staged.workdir)
    assert workdir.parent == home["home"] / "endpoints" / "run"
    assert (workdir / "model" / "code" / "inference.py").is_file()  # unpacked under the home
    assert not list(home["tmp"].glob("endpoint-*"))  # not in the temporary folder
    assert endpoint.main(["--home", str(home["home"]), "delete", "dogbreed-staging"]) == 0
    assert not servers_of(str(home["tmp"]))
    assert folders_of_ours(home["home"]) <= {"run"} and not workdir.exists()
    assert not list(home["tmp"].glob("endpoint-*"))


def test_a_version_rejected_during_its_deploy_does_not_go_live(home, capsys, monkeypatch):
    from pipelines.deploy import local

    assert deploy.main(["--local", "--home", str(home["home"])]) == 0  # version 1 serves
    before = Endpoints(home["home"]).get("dogbreed-staging")
    registry = home["registry"]
    registry.register(GROUP, str(stub_archive(home["tmp"] / "two.tar.gz")),
                      approval_status="Approved")
    passed = local.smoke_test

    def smoke_then_reject(url):
        answer = passed(url)
        registry.set_status(GROUP, 2, "Rejected", "found a problem")  # between the polls
        return answer

    monkeypatch.setattr(local, "smoke_test", smoke_then_reject)
    capsys.readouterr()
    assert deploy.main(["--local", "--home", str(home["home"])]) == 1
    err = capsys.readouterr().err
    assert "version 2 is Rejected now" in err and "version 1 keeps serving" in err
    after = Endpoints(home["home"]).get("dogbreed-staging")
    assert (after.version, after.pid) == (1, before.pid)
    assert servers_of(str(home["tmp"])) == [before.pid]


def test_a_version_whose_archive_is_gone_or_changed_is_flagged_and_not_deployed(home, capsys):
    registry = home["registry"]
    second = stub_archive(home["tmp"] / "second.tar.gz")
    registry.register(GROUP, str(second), approval_status="Approved")
    second.unlink()
    home_arg = ["--home", str(home["home"])]
    from pipelines import registry as registry_cli

    assert registry_cli.main([*home_arg, "list"]) == 0
    out = capsys.readouterr().out
    assert "artifact missing" in out.splitlines()[1]  # version 2, newest first
    assert "artifact" not in out.splitlines()[2]  # version 1 is fine
    assert registry_cli.main([*home_arg, "describe", "2"]) == 0
    assert '"artifact_status": "missing' in capsys.readouterr().out
    assert deploy.main(["--local", *home_arg]) == 1
    err = capsys.readouterr().err
    assert f"{second} is gone" in err and "Traceback" not in err
    assert Endpoints(home["home"]).get("dogbreed-staging") is None

    home["archive"].write_bytes(home["archive"].read_bytes() + b"tampered")
    assert registry_cli.main([*home_arg, "describe", "1"]) == 0
    assert '"artifact_status": "changed' in capsys.readouterr().out
    registry.set_status(GROUP, 2, "Rejected")
    assert deploy.main(["--local", *home_arg]) == 1
    assert "changed since it was registered" in capsys.readouterr().err
    assert not servers_of(str(home["tmp"]))


def raw_request(port: int, data: bytes, wait: float) -> tuple[bytes, float]:
    """Send ``data`` and read until the server answers or closes: (answer, seconds)."""
    start = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
    return b"".join(chunks), time.time() - start


def test_the_server_times_out_half_sent_requests_and_logs_one_line_for_bad_headers(tmp_path):
    archive = stub_archive(tmp_path / "stub.tar.gz")
    port = endpoint.free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "pipelines.deploy.server",
                                   "--model-data", str(archive), "--port", str(port),
                                   "--workdir", str(tmp_path / "work"), "--header-timeout",
                                   "1", "--body-timeout", "1"], cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: endpoint.ping(f"http://127.0.0.1:{port}")[0] == 200)
        answer, seconds = raw_request(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n", 10)
        assert seconds < 5, "a half-sent header is kept open"
        answer, seconds = raw_request(port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Type: image/jpeg\r\n"
                                            b"Content-Length: 1000\r\n\r\n0123456789", 10)
        assert seconds < 5 and b" 408 " in answer.split(b"\r\n")[0], answer[:200]
        answer, _ = raw_request(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: "
                                + b"a" * 20000 + b"\r\n\r\n", 10)
        assert answer.split(b" ")[1].startswith(b"4"), answer[:200]
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=20)
    text = log.read_text()
    assert "Traceback" not in text, text
    bad = [line for line in text.splitlines() if "bad request" in line]
    assert len(bad) == 1 and "header" in bad[0].lower(), text
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_a_server_started_by_hand_and_a_reused_pid_are_left_alone(home, capsys):
    # the README's standalone server, on a model under the home: not ours to stop
    model = home["home"] / "models" / "stub.tar.gz"
    model.parent.mkdir(parents=True)
    model.write_bytes(home["archive"].read_bytes())
    by_hand = subprocess.Popen([sys.executable, "-m", "pipelines.deploy.server",
                                "--model-data", str(model), "--port",
                                str(endpoint.free_port())], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TMPDIR": str(home["tmp"])})
    sleeper = subprocess.Popen(["sleep", "60"])  # what a dead server's pid may now be
    try:
        assert wait_until(lambda: servers_of(str(home["tmp"])) == [by_hand.pid])
        assert endpoint.Endpoints(home["home"]).untracked() == []
        assert deploy.main(["--local", "--home", str(home["home"])]) == 0
        assert "untracked" not in capsys.readouterr().out
        assert by_hand.poll() is None
        endpoint.stop(sleeper.pid)
        assert sleeper.poll() is None, "stop() signalled a process that is not a model server"
    finally:
        for proc in (by_hand, sleeper):
            proc.terminate()
            proc.wait(timeout=20)
    assert not list(home["tmp"].glob("endpoint-*"))  # it removed what it unpacked
