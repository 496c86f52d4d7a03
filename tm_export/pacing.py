"""Politeness towards the server: a request budget and a host-wide pause."""

from __future__ import annotations

from .clock import Clock

#: Seconds a request may start ahead of its slot.
TOLERANCE = 0.001


class RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart, across the whole run.

    Slots are handed out in call order, so no burst exceeds the budget in any window.
    """

    def __init__(self, rate: float, clock: Clock) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._next_slot = 0.0

    async def wait_turn(self, not_before: float = 0.0) -> None:
        """Wait for the next free slot, one at ``not_before`` (monotonic seconds) or later."""
        now = self._clock.monotonic()
        slot = max(self._next_slot, now, not_before)
        self._next_slot = slot + self._interval
        # A wait under a millisecond costs an event-loop turn and spreads almost nothing.
        # The slots stay spaced, so the rate over any second is still the budget.
        if slot - now > TOLERANCE:
            await self._clock.sleep(slot - now)


class HostGate:
    """Holds every request to the host until a ``Retry-After`` pause has passed.

    A 429 or 503 with ``Retry-After`` means the server is overloaded, not one URL, so the
    pause applies to all requests, not only the one that received it.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Extend the pause to at least ``seconds`` from now."""
        self._paused_until = max(self._paused_until, self._clock.monotonic() + seconds)

    @property
    def opens_at(self) -> float:
        """The monotonic time at which the pause ends; in the past when there is none."""
        return self._paused_until

    def is_open(self) -> bool:
        return self._paused_until <= self._clock.monotonic()

    async def wait_open(self) -> None:
        while (remaining := self._paused_until - self._clock.monotonic()) > 0:
            await self._clock.sleep(remaining)
