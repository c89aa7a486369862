"""The README's two set-up commands stay true: CI runs the second, this test runs the first."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from conftest import ROOT, read_json

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
    for step in steps[2:]:  # already installed: run the job itself, writing to a temp folder
        argv = shlex.split(step.replace("out/", f"{tmp_path}/"))
        assert argv[0] == ".venv/bin/python"
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{step}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    report = read_json(tmp_path / "evaluation/evaluation.json")
    accuracy = report["multiclass_classification_metrics"]["accuracy"]["value"]
    assert accuracy > 0.8  # ten digit classes: chance is 0.1
    assert (tmp_path / "model/code/inference.py").is_file()
