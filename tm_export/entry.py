"""The ``tm-export`` command's entry point, which imports the command line itself.

Importing the command line (click, aiohttp, the engine) took about 0.35 s when measured.
A Ctrl-C in that time would otherwise end the process with a KeyboardInterrupt traceback,
and a SIGTERM (a CI job's timeout) would end it by the signal. This module
imports nothing heavy of its own, so only the interpreter's start-up (about 10 ms,
measured the same way) comes before the handlers below.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

#: The exit status of an interrupted command (``errors.ExitCode.INTERRUPTED``, which is not
#: imported here so that this module stays light).
INTERRUPTED = 130


# Returns None and not NoReturn, because importing typing alone takes several milliseconds.
def console_main() -> None:
    """Import and run the command line; exit 130 with one line on a signal while importing."""
    # SIGTERM stops the import as a Ctrl-C does, and gets its default back before any
    # command runs, so that the commands see the usual handling.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from .cli import console_main as run_command
    except KeyboardInterrupt:
        # Nothing has been parsed, sent or written yet, so there is nothing to resume.
        try:
            sys.stderr.write("tm-export: interrupted while starting; nothing was done\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(INTERRUPTED)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    run_command()


def _interrupt(number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
