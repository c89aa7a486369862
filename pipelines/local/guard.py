"""Run one job so that it dies with the engine that started it.

    python guard.py ENGINE_PID -- COMMAND [ARG ...]

The engine starts each job's script through this small process, as the leader of a new process
group (session) that holds the script and everything the script starts (data loader workers,
pools). The guard waits for the script and exits as it did. If the engine goes away, even by
``kill -9``, the guard kills the whole group: on Linux the kernel tells it at once
(``PR_SET_PDEATHSIG``), elsewhere it notices within half a second (its parent pid changes).
The engine's own SIGTERM to the group reaches the script directly; the guard keeps waiting,
so the script may finish its clean-up.

Standard library only: it starts before anything else of the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

POLL_SECONDS = 0.5
ORPHANED = signal.SIGUSR2  # what the kernel sends the guard when the engine dies (Linux)


def _kill_group(*_):
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the guard too: nothing of the job is left


def _ask_for_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(ORPHANED), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid check below still catches it


def main(argv: list[str]) -> int:
    engine_pid, separator, *command = argv
    if separator != "--" or not command:
        print("usage: guard.py ENGINE_PID -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    signal.signal(ORPHANED, _kill_group)
    _ask_for_parent_death_signal()
    # a handler, not SIG_IGN: an ignored signal would stay ignored in the script after exec
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    if os.getppid() != int(engine_pid):  # the engine died before the guard was ready
        _kill_group()
    child = subprocess.Popen(command)
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if os.getppid() != int(engine_pid):
                _kill_group()
    if code < 0:  # killed by a signal: end the same way, so the engine sees what happened
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
