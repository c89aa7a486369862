"""infra/template.yaml passes checkov's CloudFormation security checks, except the findings listed
in ACCEPTED below, each with the reason it is accepted (the one written record of them: the
template carries no inline checkov:skip comments).

checkov pins old boto3/botocore, so it never goes into the project's virtual environment: this
test uses the one at $DOGBREED_CHECKOV_VENV, default ~/.cache/dogbreed/checkov-venv (under
$XDG_CACHE_HOME when set), and creates it there on first use (python -m venv, then pip install
the pinned checkov: about 50 s on a 2-core machine; each scan then takes about 4 s). Without
network access to install it the tests are skipped and say why. To use a checkov you already
have, point $DOGBREED_CHECKOV_VENV at its virtual environment (the folder holding bin/checkov);
the test deletes only a venv it created itself (marked .dogbreed-made).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

TEMPLATE = ROOT / "infra/template.yaml"
# pinned: a checkov release with new checks must not turn a push that changed nothing red (the
# tests run in CodeBuild before every upsert); raise it on purpose and review the new findings
CHECKOV_REQUIREMENT = "checkov==3.3.30"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dogbreed"
VENV = Path(os.environ.get("DOGBREED_CHECKOV_VENV") or CACHE / "checkov-venv")
MADE_HERE = VENV / ".dogbreed-made"  # this test created the venv (so it may delete it)
READY = VENV / ".dogbreed-ready"  # written once checkov installed completely

# (check id, resource) -> why the finding is accepted. Anything else checkov fails fails the test;
# an entry checkov no longer reports fails it too (remove it, so the record stays true).
ACCEPTED: dict[tuple[str, str], str] = {
    ("CKV_AWS_18", "AWS::S3::Bucket.AccessLogBucket"): (
        "S3 access logging on the access-log bucket itself: it only receives ArtifactBucket's "
        "server access logs (delivered by logging.s3.amazonaws.com, scoped by aws:SourceArn); "
        "logging it into itself would log its own log deliveries in a loop, and a third bucket "
        "would only move this finding. It is private, TLS-only, versioned and encrypted."),
}


@contextlib.contextmanager
def _locked(path: Path):
    """One pytest process at a time creates the shared venv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_UNAVAILABLE: list[str] = []  # why checkov could not be installed, once per session


def checkov_executable() -> Path:
    """bin/checkov of the checkov venv, created on first use; skips the test when it cannot be
    installed (no network, no venv module)."""
    if _UNAVAILABLE:
        pytest.skip(_UNAVAILABLE[0])
    exe = VENV / "bin" / "checkov"
    with _locked(VENV.parent / f"{VENV.name}.lock"):
        if READY.exists() and exe.exists() and READY.read_text().strip() == CHECKOV_REQUIREMENT:
            return exe
        if exe.exists() and not MADE_HERE.exists():
            return exe  # a venv with checkov that someone else made: use it as it is
        if MADE_HERE.exists():  # half-made, or made for another pin: start again
            shutil.rmtree(VENV)
        elif VENV.exists():  # never delete a folder this test did not create
            pytest.fail(f"{VENV} exists but holds no bin/checkov: remove it, or point "
                        "DOGBREED_CHECKOV_VENV at a virtual environment with checkov")
        python = shutil.which("python3") or sys.executable
        made = subprocess.run([python, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            _UNAVAILABLE.append(f"cannot create a venv for checkov at {VENV}: "
                                f"{made.stderr.strip()}")
            pytest.skip(_UNAVAILABLE[0])
        MADE_HERE.write_text("created by tests/test_template_scan.py\n")
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "1"]
        installed = subprocess.run(pip + [CHECKOV_REQUIREMENT], capture_output=True, text=True,
                                   timeout=1200)
        if installed.returncode != 0 or not exe.exists():
            shutil.rmtree(VENV, ignore_errors=True)  # made here, just now
            lines = (installed.stderr or installed.stdout).strip().splitlines()
            errors = [line for line in lines if line.startswith("ERROR")] or lines[-2:]
            _UNAVAILABLE.append(f"could not pip install {CHECKOV_REQUIREMENT!r} into {VENV} "
                                "(offline?): " + " | ".join(errors))
            pytest.skip(_UNAVAILABLE[0])
        READY.write_text(CHECKOV_REQUIREMENT + "\n")
        return exe


def failed_checks(report) -> list[dict]:
    """The FAILED checks of checkov's JSON output: one report dict for one framework, a list of
    them otherwise, or a bare summary when it found nothing to check."""
    reports = report if isinstance(report, list) else [report]
    return [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]


def run_checkov(path: Path) -> list[dict]:
    exe = checkov_executable()
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
           "LOG_LEVEL": "ERROR"}
    env.pop("BC_API_KEY", None)  # never send the template anywhere
    proc = subprocess.run(
        [str(exe), "-f", str(path), "--framework", "cloudformation", "--output", "json",
         "--quiet", "--compact", "--skip-download"],
        capture_output=True, text=True, timeout=600, env=env, cwd=path.parent)
    # exit 1 means "some check failed"; anything else non-zero is checkov itself failing
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    return failed_checks(json.loads(proc.stdout))


def test_template_passes_checkov_except_accepted_findings():
    failed = run_checkov(TEMPLATE)
    unexpected = [f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in failed
                  if (c["check_id"], c["resource"]) not in ACCEPTED]
    assert not unexpected, "checkov findings neither fixed nor accepted:\n" + "\n".join(unexpected)
    stale = sorted(set(ACCEPTED) - {(c["check_id"], c["resource"]) for c in failed})
    assert not stale, f"accepted findings checkov no longer reports (drop them): {stale}"
    assert all(len(reason) > 40 for reason in ACCEPTED.values())


def test_the_scan_catches_a_weakened_template(tmp_path):
    """The scan really looks at the template: public access allowed on the bucket fails it."""
    weakened = tmp_path / "template.yaml"
    weakened.write_text(TEMPLATE.read_text().replace("BlockPublicAcls: true",
                                                     "BlockPublicAcls: false"))
    assert "CKV_AWS_53" in {c["check_id"] for c in run_checkov(weakened)}
