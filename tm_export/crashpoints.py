"""Crash points: places where the crash tests kill the process, named by an environment variable.

``TM_EXPORT_CRASH_AT`` is ``NAME`` or ``NAME:N``: the process kills itself with SIGKILL on the
N-th pass through the crash point ``NAME``. Only the crash tests set it; without it every
check returns at once. The points are ``mid-page-write``, ``after-data-fsync``,
``mid-manifest-append``, ``after-manifest-append``, ``run-folder-built`` (a new run's
folder made, under its hidden name) and ``canonical-entry-written`` (a stream file's
canonical entry committed, before its sorted copy is renamed into place).
"""

from __future__ import annotations

import os
import signal

_CRASH_COUNTS: dict[str, int] = {}

#: Read once: the check runs for every page, and the crash tests set the variable in the
#: environment of the process they start, never later.
_CRASH_AT = os.environ.get("TM_EXPORT_CRASH_AT", "")


def crash_due(name: str) -> bool:
    """Count a pass through crash point ``name``; return True when the process must die here."""
    if not _CRASH_AT:
        return False
    point, _, count = _CRASH_AT.partition(":")
    if point != name:
        return False
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    return _CRASH_COUNTS[name] == int(count or 1)


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``crash_due(name)``."""
    if crash_due(name):
        os.kill(os.getpid(), signal.SIGKILL)
