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
import time
from types import FrameType

#: The exit status of an interrupted command (``errors.ExitCode.INTERRUPTED``, which is not
#: imported here so that this module stays light).
INTERRUPTED = 130


# Returns None and not NoReturn, because importing typing alone takes several milliseconds.
def console_main() -> None:
    """Import and run the command line; exit 130 with one line on a signal while importing."""
    _hold_standard_streams()

    # SIGTERM stops the import as a Ctrl-C does, and gets its handling back before any
    # command runs, so that the commands see the usual handling. One that the process
    # started with ignored stays ignored (see interrupts.STOP_SIGNALS).
    started_with = signal.getsignal(signal.SIGTERM)
    if started_with != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        from .cli import console_main as run_command
    except KeyboardInterrupt:
        # Nothing has been parsed, sent or written yet, so there is nothing to resume.
        try:
            sys.stderr.write(_interrupted_line() + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os._exit(INTERRUPTED)
    signal.signal(signal.SIGTERM, signal.SIG_DFL if started_with is None else started_with)
    run_command()


def _interrupt(number: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _interrupted_line() -> str:
    """Return the line for a signal while starting, as a JSON log line under --log-format json."""
    message = "interrupted while starting; nothing was done"
    try:
        from .logs import asks_json_logs, json_line
    except KeyboardInterrupt:
        return f"tm-export: {message}"
    if not asks_json_logs(sys.argv[1:]):
        return f"tm-export: {message}"
    return json_line(
        time.time(), "error", "tm_export", message, event="error", exit_code=INTERRUPTED
    )


def _hold_standard_streams() -> None:
    """Open the null device on each of file descriptors 0, 1 and 2 that is closed.

    A socket opened later would otherwise take the lowest free number, and uvloop aborts
    the process (exit 134) when it closes a socket numbered 0 to 2, as a job started with
    stdin closed found. For stdout the device is opened read-only, so that writing the
    data there still fails and is reported (exit 1). A closed stderr means no logs are
    wanted: they go to the device, and the exit code stays the export's.
    """
    for number, name, flags in (
        (0, "stdin", os.O_RDONLY),
        (1, "stdout", os.O_RDONLY),
        (2, "stderr", os.O_WRONLY),
    ):
        try:
            os.fstat(number)
        except OSError:
            opened = os.open(os.devnull, flags)
            if opened != number:
                os.dup2(opened, number)
                os.close(opened)
            # Python sets a stream whose descriptor was closed at start-up to None, which
            # click and logging cannot write to.
            if getattr(sys, name) is None:
                mode = "r" if number == 0 else "w"
                # It stays open for the life of the process, as the standard streams do.
                stream = open(number, mode, encoding="utf-8", closefd=False)  # noqa: SIM115
                setattr(sys, name, stream)
