"""The README's two set-up commands stay true: CI runs the second, this test runs the first."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

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


# what a clone never has: .gitignore's entries (anywhere, or at the root only), git's folder
NOT_IN_A_CLONE = (".git", ".venv", ".venv-dlc", ".dogbreed", "__pycache__", "*.pyc", "*.egg-info",
                  "build", "dist", ".pytest_cache", ".ruff_cache")
NOT_IN_A_CLONE_AT_ROOT = ("data", "out")


def _not_in_a_clone(folder: str, names: list[str]) -> set[str]:
    ignored = shutil.ignore_patterns(*NOT_IN_A_CLONE)(folder, names)
    if Path(folder) == ROOT:
        ignored |= set(names) & set(NOT_IN_A_CLONE_AT_ROOT)
    return ignored


def fresh_copy(dest: Path) -> Path:
    """The repository as a newcomer's clone has it: tracked and new files, nothing ignored.
    Without git metadata (a source archive, a CI that copies files), the tree less what a
    clone never has."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        shutil.copytree(ROOT, dest, ignore=_not_in_a_clone)
        return dest
    for rel in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / rel
        if source.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    return dest


def test_main_command_runs_end_to_end(tmp_path):
    """From a fresh clone's root, exactly as written: default home, no DOGBREED_HOME."""
    steps = COMMANDS[0].split(" && ")
    assert steps[:2] == ["python3 -m venv .venv", ".venv/bin/pip install -e ."]
    (job,) = steps[2:]  # already installed: run the job itself, with the installed packages
    argv = shlex.split(job)
    assert argv[:4] == [".venv/bin/python", "-m", "pipelines.run", "--local"]
    clone = fresh_copy(tmp_path / "clone")
    assert not (clone / ".dogbreed").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOGBREED_", "AWS_"))}
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=clone, capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert ": Succeeded" in proc.stdout and "registered: version 1" in proc.stdout
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", proc.stdout).group(1))
    assert accuracy > 0.8  # ten digit classes: chance is 0.1
    assert "NoIssuesFound" in proc.stdout and "profiler_report:" in proc.stdout
    assert (clone / ".dogbreed" / "registry.sqlite").is_file()  # the default home, in the clone
