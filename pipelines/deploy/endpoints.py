"""Managed local endpoints: background ``pipelines.deploy.server`` processes, recorded under
the home.

    python -m pipelines.deploy.endpoints list
    python -m pipelines.deploy.endpoints invoke dogbreed-staging dog.jpg [--content-type TYPE]
    python -m pipelines.deploy.endpoints delete dogbreed-staging

Endpoints are started by ``python -m pipelines.deploy --local``; each record says which model
package version it serves, its URL and process.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.registry import home_dir
from pipelines.sqlite import connect, initialize

_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY, url TEXT NOT NULL, pid INTEGER NOT NULL, model_group TEXT NOT NULL,
    version INTEGER NOT NULL, model_data TEXT NOT NULL, log_path TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


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


class Endpoints:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = home_dir(home)
        self.path = self.home / "endpoints.sqlite"
        initialize(self.path, _SCHEMA)

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
            db.execute("INSERT OR REPLACE INTO endpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (endpoint.name, endpoint.url, endpoint.pid, endpoint.model_group,
                        endpoint.version, endpoint.model_data, endpoint.log_path,
                        endpoint.updated_at))
        finally:
            db.close()

    def remove(self, name: str) -> None:
        db = connect(self.path)
        try:
            db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        finally:
            db.close()


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
                 ) -> tuple[subprocess.Popen, str, Path]:
    """A new serving process on a free 127.0.0.1 port; returns once /ping answers 200."""
    port = free_port()
    log_path = home / "endpoints" / f"{name}-v{version}-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.deploy.server",
                                 "--model-data", model_data, "--port", str(port), *extra_args],
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
        stop(proc.pid)
        reason = text.strip() or f"see {log_path}"
        raise EndpointError(f"endpoint {name} (version {version}) did not become healthy: "
                            f"{reason[:300]}")
    return proc, url, log_path


def stop(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def invoke(url: str, body: bytes, content_type: str, timeout: float = 60.0):
    import requests

    return requests.post(url + "/invocations", data=body,
                         headers={"Content-Type": content_type, "Accept": "application/json"},
                         timeout=timeout)


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
    args = p.parse_args(argv)
    endpoints = Endpoints(args.home)
    try:
        if args.command == "list":
            items = endpoints.all()
            if not items:
                print("no local endpoints")
            for e in items:
                state = "InService" if alive(e) else "Failed (not answering)"
                print(f"{e.name:<24} {state:<24} {e.model_group} v{e.version}  {e.url}")
            return 0
        endpoint = endpoints.get(args.name)
        if endpoint is None:
            known = ", ".join(e.name for e in endpoints.all()) or "none"
            raise EndpointError(f"no local endpoint named {args.name} (known: {known})")
        if args.command == "delete":
            stop(endpoint.pid)
            endpoints.remove(endpoint.name)
            print(f"deleted {endpoint.name}")
            return 0
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
