"""What every command-line entry point shares (`hashscan` here; `hashsvc` and `indexer` import it).

`hashsvc_client` is the one package all three can import (the server depends on it, never the
reverse), so the shared behaviour lives here rather than in a copy per program.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

# The status a shell reports for a program killed by SIGPIPE; scripts using `set -o pipefail`
# can tell "the reader went away" from a failure.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def console_main(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a `main` so that a closed stdout (`hashsvc keys list | head -1`) ends the program
    quietly with EXIT_BROKEN_PIPE, as `cat` does, instead of a traceback.

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError wherever it
    happens; catching it here covers every command. Output still buffered is flushed inside
    the handler, and stdout then points at /dev/null, so the interpreter's own flush at exit
    cannot raise it again.
    """

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                code = main(*args, **kwargs)
            finally:  # also when argparse exits after --help: its text may still be buffered
                sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return EXIT_BROKEN_PIPE
        return code

    return run
