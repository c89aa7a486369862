"""What every command line of ours does on the way out."""

from __future__ import annotations

import os
import sys
from typing import Callable

SIGPIPE_EXIT = 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def run(main: Callable[[], int | None]) -> None:
    """``sys.exit(main())``, quietly when the reader of our output goes away early
    (``... | head``, ``... | grep -q prod``): no BrokenPipeError traceback; a damaged state
    store is one ``error:`` line and exit 2."""
    from pipelines.sqlite import DamagedStore

    try:
        try:
            code = main()
        except SystemExit as exc:  # argparse's --help and errors: their output is still due
            code = exc.code
        except DamagedStore as exc:  # a state store of ours: one line, never a traceback
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush is silent
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(SIGPIPE_EXIT)
    sys.exit(code)
