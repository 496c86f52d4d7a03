"""Time as the engine sees it: one injectable clock for every wait.

Backoff, Retry-After pauses and the rate limit all wait through a ``Clock``, so tests
pass a clock that advances instantly and take no real seconds.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """A monotonic time source in seconds and a way to wait on it."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """The process's monotonic clock and anyio's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class FakeClock:
    """A clock for tests: ``sleep`` advances time at once and records each wait."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        # Yield to other tasks, as a real sleep would.
        await anyio.lowlevel.checkpoint()
