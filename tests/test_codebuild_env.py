"""The AWS tests pass inside CodeBuild, where the build's own role is one HTTP call away.

CodeBuild hands credentials to a build through the container credential provider
(AWS_CONTAINER_CREDENTIALS_RELATIVE_URI) and sets AWS_REGION; neither is an access key, so a
fixture that clears only the AWS_ACCESS_KEY_ID family still finds credentials and a region
there. This runs the tests that check missing AWS settings in a child pytest under such an
environment, with the container credentials served from a local endpoint (the full-URI form:
the relative one always points at 169.254.170.2), and checks that no test used them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import BUILD_TESTS, ROOT, import_blocker

# Tests that would find the build's credentials or region if the fixtures let them through.
RELEVANT = ["tests/test_pipeline.py::test_missing_aws_settings_give_one_clear_line",
            "tests/test_pipeline.py::test_upsert_creates_then_updates",
            "tests/test_deploy_sagemaker.py::test_missing_role_is_one_clear_line",
            "tests/test_cli_moto_server.py::test_upsert_as_codebuild_runs_it"]


# the pytest plugins requirements-build.txt installs; this environment has others (anyio...)
BUILD_PLUGINS_ONLY = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
BUILD_PLUGINS = ["-p", "xdist.plugin", "-p", "pytest_timeout"]


def test_the_build_selection_needs_only_what_the_build_job_installs(tmp_path):
    """CodeBuild installs the project with --no-deps and requirements-build.txt, then runs
    ``pytest -m build``: every test of that selection imports with nothing more (no torch,
    torchvision, smdebug, optuna...), and the other tests are left out, not errors."""
    env = {**os.environ, **BUILD_PLUGINS_ONLY,
           "PYTHONPATH": str(import_blocker(tmp_path / "blocker", "requirements-build.txt"))}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert "blocked: not in requirements-build.txt" in probe.stderr  # the blocker works
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "build",
                           "-p", "no:cacheprovider", *BUILD_PLUGINS, "-n", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    selected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(selected) >= 100 and all(line.split("::")[0].rsplit("/", 1)[-1] in BUILD_TESTS
                                        for line in selected)
    assert "error" not in proc.stdout.splitlines()[-1]


def serve_container_credentials():
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            body = json.dumps({"AccessKeyId": "ASIACODEBUILDROLE", "SecretAccessKey": "secret",
                               "Token": "token", "Expiration": "2099-01-01T00:00:00Z"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def test_aws_tests_pass_under_codebuild_credentials_and_region(tmp_path):
    server, hits = serve_container_credentials()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}/v2/credentials/build-role"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_CONTAINER_CREDENTIALS_FULL_URI=uri, AWS_REGION="eu-west-1",
                   AWS_DEFAULT_REGION="eu-west-1", CODEBUILD_BUILD_ID="dogbreed-build:1",
                   CODEBUILD_RESOLVED_SOURCE_VERSION="0123abc", CODEBUILD_CI="true")
        import boto3  # the environment really carries credentials, as CodeBuild's does

        found = boto3.Session(region_name="eu-west-1").get_credentials()
        assert found is None or found.access_key != "ASIACODEBUILDROLE"  # this process: none
        probe = subprocess.run([sys.executable, "-c", "import boto3; print(boto3.Session()"
                                ".get_credentials().access_key)"], env=env, capture_output=True,
                               text=True, timeout=60)
        assert probe.stdout.strip() == "ASIACODEBUILDROLE", probe.stderr
        hits.clear()
        # and with only what the build job installs (requirements-build.txt: no torch)
        env.update(PYTHONPATH=str(import_blocker(tmp_path / "blocker", "requirements-build.txt")),
                   **BUILD_PLUGINS_ONLY)
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *BUILD_PLUGINS, "-n", "0", *RELEVANT], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert f"{len(RELEVANT)} passed" in proc.stdout
        assert hits == []  # no test reached the build's own credentials
    finally:
        server.shutdown()
