"""The README's two set-up commands stay true: CI runs the second, this test runs the first."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT

README = (ROOT / "README.md").read_text()
SETUP = README.split("## Set up on a fresh machine", 1)[1].split("\n#", 1)[0]
COMMANDS = re.findall(r"```bash\n(.*?)\n```", SETUP, re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    assert len(COMMANDS) == 2
    assert all("\n" not in c for c in COMMANDS)  # one line each, to copy and paste
    main, tests = COMMANDS
    assert main.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert "pytest" in tests
    assert tests in (ROOT / ".ci/run").read_text()


def test_main_command_runs_end_to_end(tmp_path):
    steps = COMMANDS[0].split(" && ")
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
    (job,) = steps[2:]  # already installed: run the job itself, with its home in a temp folder
    argv = shlex.split(job)
    assert argv[:4] == [".venv/bin/python", "-m", "pipelines.run", "--local"]
    env = {**os.environ, "DOGBREED_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert ": Succeeded" in proc.stdout and "registered: version 1" in proc.stdout
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.8  # ten digit classes: chance is 0.1
    assert "NoIssuesFound" in proc.stdout and "profiler_report:" in proc.stdout
