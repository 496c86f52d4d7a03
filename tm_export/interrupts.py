"""Stopping a run on SIGINT, SIGTERM and SIGHUP, whenever they come.

The engine acts on them in two blocks (``watch``): while it sends requests, and while it
describes a finished run. Outside those blocks (reading the recipe, opening a long
manifest, the step between the two), Python's default handling would act at once,
wherever the program is. Under the event loop a Ctrl-C can then be taken for a
cancellation and ignored, and a SIGTERM ends the process. So the run command notes the
first signal in place of that (``deferred``), and the next block acts on it as soon as it
starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from .errors import ExitCode

#: The signals a run stops on: SIGINT, SIGTERM and SIGHUP (its terminal closed), less those
#: that the process started with ignored. A shell starts a script's background job
#: (``cmd &``) with SIGINT ignored, so that a Ctrl-C meant for the foreground leaves the job
#: running, and ``nohup`` ignores SIGHUP; the run keeps both.
STOP_SIGNALS = tuple(
    number
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if signal.getsignal(number) != signal.SIG_IGN
)

_pending: str | None = None
"""The first signal noted while no block watched, by name."""
_active = False
"""True inside ``deferred``."""
_target: Callable[[str], None] | None = None
"""The callback that the loop's handlers call while a ``watch`` block runs."""
_repeats = 0
"""Stop signals received after the one that a block acted on."""

logger = logging.getLogger("tm_export.interrupts")


def _note(number: int, frame: FrameType | None) -> None:
    global _pending
    if _pending is None:
        _pending = signal.Signals(number).name


@contextmanager
def deferred() -> Iterator[None]:
    """Note the stop signals in place of acting on them, for the ``with`` block.

    The handlers in place before are put back at the end, so a command run in-process (as
    the tests do) leaves its caller's handling as it was.
    """
    global _pending, _active, _repeats
    _pending = None
    _repeats = 0
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        signal.signal(number, _note)
    _active = True
    try:
        yield
    finally:
        _active = False
        for number, handler in previous.items():
            signal.signal(number, handler)
        _pending = None


def resume_deferring() -> None:
    """Note signals again once the event loop has closed, which put back the defaults.

    Does nothing outside ``deferred``, where the default handling stays.
    """
    if _active:
        for number in STOP_SIGNALS:
            signal.signal(number, _note)


def take_pending() -> str | None:
    """Return the name of a signal noted since ``deferred`` began, and forget it."""
    global _pending
    name, _pending = _pending, None
    return name


def pending() -> str | None:
    """Return the name of a signal noted since ``deferred`` began, if any."""
    return _pending


@contextmanager
def watch(on_signal: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_signal`` with the name of the first stop signal while the block runs.

    Must run in the event loop's thread. A signal noted before the block (see ``deferred``)
    is passed on at once. The loop's handlers stay in place after the block, and note a
    signal that arrives between two blocks, or that the loop reads only after a block
    ended, for the next block. After the first signal that a block acts on, the next ones
    are repeats (see ``_repeat``).
    """
    global _target
    loop = asyncio.get_running_loop()
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, _dispatch, loop, number)

    # Outside ``deferred`` (the engine used as a library) a note can only be left over from
    # an earlier run in this process, so it is dropped.
    earlier = take_pending()
    if earlier is not None and _active:
        _stop_watching(loop)
        on_signal(earlier)
        yield
        return

    _target = on_signal
    try:
        yield
    finally:
        _target = None


def _dispatch(loop: asyncio.AbstractEventLoop, number: int) -> None:
    """Pass a signal to the running ``watch`` block, or note it for the next one."""
    global _target, _pending
    name = signal.Signals(number).name
    target, _target = _target, None
    if target is None:
        if _pending is None:
            _pending = name
        return
    _stop_watching(loop)
    target(name)


def _stop_watching(loop: asyncio.AbstractEventLoop) -> None:
    """Take the next stop signals as repeats of the one a block acts on."""
    for number in STOP_SIGNALS:
        loop.add_signal_handler(number, _repeat, number)


def _repeat(number: int) -> None:
    """Act on a stop signal that comes while the run is already stopping.

    The second one only logs: GNU timeout and many CI runners send their signal to the
    process and again to its process group, so one stop arrives twice. A third ends the
    process at once with exit 130, which is as safe as a kill: every committed page stays.
    """
    global _repeats
    _repeats += 1
    name = signal.Signals(number).name
    if _repeats == 1:
        logger.warning("received %s again: still stopping; a third signal stops at once", name)
        return
    logger.error("received %s a third time: stopping at once; committed pages are kept", name)
    _exit_now()


def _exit_now() -> None:
    """End the process with exit 130 once the logs are flushed, skipping every cleanup."""
    logging.shutdown()
    os._exit(ExitCode.INTERRUPTED)
