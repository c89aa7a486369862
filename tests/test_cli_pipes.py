"""Every command line of ours exits quietly when its reader goes away early
(``python -m pipelines.deploy.endpoints list | grep -q prod``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

COMMANDS = [["pipelines.run", "--local", "--list", "--home", "{home}"],
            ["pipelines.registry", "--home", "{home}", "list"],
            ["pipelines.deploy.endpoints", "--home", "{home}", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_closed_pipe_is_no_traceback(command, tmp_path):
    command = [part.format(home=tmp_path / "home") for part in command]
    # the reader is gone before the command writes (as after `grep -q` matched)
    read, write = os.pipe()
    os.close(read)
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141
