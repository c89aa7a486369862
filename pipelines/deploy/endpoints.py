"""Managed local endpoints: background ``pipelines.deploy.server`` processes, recorded under
the home.

    python -m pipelines.deploy.endpoints list
    python -m pipelines.deploy.endpoints invoke dogbreed-staging dog.jpg [--content-type TYPE]
    python -m pipelines.deploy.endpoints delete dogbreed-staging

    python -m pipelines.deploy.endpoints clean     # stop servers no record names

Endpoints are started by ``python -m pipelines.deploy --local``; each record says which model
package version it serves, its URL, process and folder. A server unpacks its model under
``<home>/endpoints/run/<name>-v<version>-<port>/``, removed when the server is stopped. One
deploy at a time per home (``<home>/locks/deploy.lock``); until a record names it, a server
stops by itself when the deploy that started it ends (killed, crashed), and any server of ours
that no record names is listed, and stopped by the next deploy or by ``clean``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.registry import home_dir
from pipelines.sqlite import DamagedStore, add_column, connect, initialize

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, pid INTEGER NOT NULL, model_group TEXT NOT NULL,
    version INTEGER NOT NULL, model_data TEXT NOT NULL, log_path TEXT NOT NULL,
    updated_at TEXT NOT NULL, workdir TEXT NOT NULL DEFAULT ''
);
"""
SERVER_MODULE = "pipelines.deploy.server"


class EndpointError(Exception):
    pass


@dataclass
class Endpoint:
    name: str
    url: str
    pid: int
    model_group: str
    version: int
    model_data: str
    log_path: str
    updated_at: str
    workdir: str = ""  # where its server unpacked the model ("" in records before 2026-12)


@dataclass
class Server:
    """A model server process of ours, found among the system's processes."""
    pid: int
    workdir: str
    model_data: str


class Endpoints:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = home_dir(home)
        self.path = self.home / "endpoints.sqlite"
        self.run_dir = self.home / "endpoints" / "run"
        initialize(self.path, _SCHEMA, advice=(
            f"move it aside (mv {self.path} {self.path}.damaged): the endpoints it named "
            f"are then untracked, and python -m pipelines.deploy.endpoints clean stops them"))
        add_column(self.path, "endpoints", "workdir", "TEXT NOT NULL DEFAULT ''")  # before 2026-12

    @contextlib.contextmanager
    def deploying(self, echo=print):
        """One deploy (or delete, or clean) at a time on this home: waits for the one going
        on, then holds ``<home>/locks/deploy.lock`` (the system releases it however the
        process ends)."""
        path = self.home / "locks" / "deploy.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                echo(f"waiting for the deploy going on in this home (process {holder})")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def get(self, name: str) -> Endpoint | None:
        db = connect(self.path)
        try:
            row = db.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        finally:
            db.close()
        return Endpoint(**dict(row)) if row else None

    def all(self) -> list[Endpoint]:
        db = connect(self.path)
        try:
            rows = db.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        finally:
            db.close()
        return [Endpoint(**dict(r)) for r in rows]

    def put(self, endpoint: Endpoint) -> None:
        db = connect(self.path)
        try:
            db.execute("INSERT OR REPLACE INTO endpoints (name, url, pid, model_group, version, "
                       "model_data, log_path, updated_at, workdir) VALUES (?, ?, ?, ?, ?, ?, ?, "
                       "?, ?)", (endpoint.name, endpoint.url, endpoint.pid, endpoint.model_group,
                                 endpoint.version, endpoint.model_data, endpoint.log_path,
                                 endpoint.updated_at, endpoint.workdir))
        finally:
            db.close()

    def remove(self, name: str) -> None:
        db = connect(self.path)
        try:
            db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        finally:
            db.close()

    def servers(self) -> list[Server]:
        """The model servers of this home that are running: those started with a folder
        under ``<home>/endpoints/run``, or (deploys before 2026-12) started by a deploy, in
        a session of their own, serving a model under the home. A server you started by hand
        (no ``--workdir`` of ours, not a session leader) is never counted."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            words = _server_words(pid)
            if not words:
                continue
            workdir, model_data = _option(words, "--workdir"), _option(words, "--model-data")
            if _under(workdir, self.run_dir, pid) or (
                    not workdir and _session_leader(pid) and _under(model_data, self.home, pid)):
                found.append(Server(pid, workdir, model_data))
        return found

    def untracked(self) -> list[Server]:
        """Servers of ours that no record names."""
        recorded = {e.pid for e in self.all()}
        return [s for s in self.servers() if s.pid not in recorded]

    def sweep(self, echo=print) -> int:
        """Stop the servers no record names and remove the folders no record or server
        names; how many servers it stopped. Only while holding ``deploying()``: a deploy's own
        new server is not recorded until it passed its smoke test."""
        stopped = 0
        for server in self.untracked():
            stop(server.pid, server.workdir or None)
            stopped += 1
            echo(f"stopped untracked model server (process {server.pid}, "
                 f"{server.workdir or server.model_data})")
        if self.run_dir.is_dir():
            named = {e.workdir for e in self.all()} | {s.workdir for s in self.servers()}
            for folder in self.run_dir.iterdir():
                if str(folder) not in named:
                    shutil.rmtree(folder, ignore_errors=True)
        return stopped


def _option(words: list[str], name: str) -> str:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return ""


def _under(path: str, folder: Path, pid: int) -> bool:
    """Whether ``path``, as process ``pid`` sees it (relative to its working folder), is
    under ``folder``."""
    if not path:
        return False
    try:
        full = Path(path) if os.path.isabs(path) else Path(os.readlink(f"/proc/{pid}/cwd")) / path
        return full.resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def _session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _server_words(pid: int) -> list[str]:
    """The command line of ``pid`` if it is a live model server of ours, else []."""
    proc = Path(f"/proc/{pid}")
    try:
        words = [w.decode(errors="replace") for w in (proc / "cmdline").read_bytes().split(b"\0")]
        if SERVER_MODULE in words and _state(proc) != "Z":
            return words
    except OSError:  # it ended meanwhile, or is not ours to read
        pass
    return []


def _state(proc: Path) -> str:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(url: str, timeout: float = 2.0) -> tuple[int, str]:
    import requests

    try:
        r = requests.get(url + "/ping", timeout=timeout)
        return r.status_code, r.text
    except requests.RequestException as exc:
        return 0, str(exc)


def alive(endpoint: Endpoint) -> bool:
    try:
        os.kill(endpoint.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return ping(endpoint.url)[0] == 200


def start_server(home: Path, name: str, model_data: str, version: int,
                 wait_seconds: float = 180.0, extra_args: tuple = ()
                 ) -> tuple[subprocess.Popen, str, Path, Path]:
    """A new serving process on a free 127.0.0.1 port, unpacking under
    ``<home>/endpoints/run``; returns ``(process, url, log, folder)`` once /ping answers 200.
    Until ``<home>/endpoints.sqlite`` records it, the server ends when this process does."""
    port = free_port()
    log_path = home / "endpoints" / f"{name}-v{version}-{port}.log"
    workdir = home / "endpoints" / "run" / f"{name}-v{version}-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", SERVER_MODULE,
                                 "--model-data", model_data, "--port", str(port),
                                 "--workdir", str(workdir),
                                 "--record", str(home / "endpoints.sqlite"),
                                 "--started-by", str(os.getpid()), *extra_args],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[2]))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + wait_seconds
    status, text = 0, ""
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        status, text = ping(url)
        if status == 200 or (status == 503 and "failed" in text):
            break
        time.sleep(0.2)
    if status != 200:
        stop(proc.pid, workdir)
        reason = text.strip() or f"see {log_path}"
        raise EndpointError(f"endpoint {name} (version {version}) did not become healthy: "
                            f"{reason[:300]}")
    return proc, url, log_path, workdir


def stop(pid: int, workdir: str | os.PathLike | None = None) -> None:
    """Stop the server ``pid`` (its process group), then remove its folder. A pid that is no
    longer a model server (the server died and the pid was reused) is left alone."""
    try:
        if _server_words(pid):
            _stop(pid)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _signal(pid: int, sig: int) -> bool:
    """Signal the server's process group (it leads one: started in a session of its own), or
    the process alone; False when it is gone."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, sig)
            return True
        except ProcessLookupError:
            continue
        except PermissionError:
            return False
    return False


def _gone(pid: int) -> bool:
    try:  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return _state(Path(f"/proc/{pid}")) == "Z"
    except OSError:
        return True


def _stop(pid: int) -> None:
    if not _signal(pid, signal.SIGTERM):
        return
    for _ in range(50):
        if _gone(pid):
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)


def invoke(url: str, body: bytes, content_type: str, timeout: float = 60.0):
    import requests

    return requests.post(url + "/invocations", data=body,
                         headers={"Content-Type": content_type, "Accept": "application/json"},
                         timeout=timeout)


def _named(endpoints: Endpoints, name: str) -> Endpoint:
    endpoint = endpoints.get(name)
    if endpoint is None:
        known = ", ".join(e.name for e in endpoints.all()) or "none"
        raise EndpointError(f"no local endpoint named {name} (known: {known})")
    return endpoint


def list_endpoints(endpoints: Endpoints) -> int:
    items = endpoints.all()
    if not items:
        print("no local endpoints")
    for e in items:
        state = "InService" if alive(e) else "Failed (not answering)"
        print(f"{e.name:<24} {state:<24} {e.model_group} v{e.version}  {e.url}")
    for server in endpoints.untracked():
        print(f"untracked model server (process {server.pid}, "
              f"{server.workdir or server.model_data}): no record names it (a deploy still "
              f"starting it, or one that died); python -m pipelines.deploy.endpoints clean "
              f"stops it")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.deploy.endpoints",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="default $DOGBREED_HOME or ./.dogbreed")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    inv = sub.add_parser("invoke")
    inv.add_argument("name")
    inv.add_argument("file")
    inv.add_argument("--content-type", help="default: from the file name")
    rm = sub.add_parser("delete")
    rm.add_argument("name")
    sub.add_parser("clean", help="stop the model servers of this home that no record names")
    args = p.parse_args(argv)
    try:
        endpoints = Endpoints(args.home)
    except DamagedStore as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            return list_endpoints(endpoints)
        if args.command == "clean":
            with endpoints.deploying():
                if not endpoints.sweep():
                    print("no untracked model servers")
            return 0
        if args.command == "delete":
            with endpoints.deploying():  # the record as it is once no deploy is changing it
                endpoint = _named(endpoints, args.name)
                stop(endpoint.pid, endpoint.workdir or None)
                endpoints.remove(endpoint.name)
            print(f"deleted {endpoint.name}")
            return 0
        endpoint = _named(endpoints, args.name)
        path = Path(args.file)
        if not path.is_file():
            raise EndpointError(f"{path} is not a file")
        content_type = args.content_type or mimetypes.guess_type(path.name)[0] or \
            "application/x-image"
        import requests

        try:
            response = invoke(endpoint.url, path.read_bytes(), content_type)
        except requests.RequestException as exc:
            raise EndpointError(
                f"{endpoint.name} at {endpoint.url} is not answering ({type(exc).__name__}); "
                f"deploy it again with python -m pipelines.deploy --local") from None
        try:
            print(json.dumps(response.json(), indent=2))
        except ValueError:
            print(response.text)
        return 0 if response.ok else 1
    except EndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from pipelines import cli

    cli.run(main)
