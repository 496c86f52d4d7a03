"""The partitions a stream's workers walk, handed out one at a time to whichever asks first.

A stream whose partitions the recipe lists shares one iterator between its workers. A
stream fed by a parent reads the parent's values here. One worker at a time waits for
the next value, and the others wait for that worker. The partitions that one value starts
(the value times the recipe's static parameters) then reach every idle worker at once.
No task sits between the values and the workers, because a hand-off per partition would
cost an event-loop turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

J = TypeVar("J")
V = TypeVar("V")


class JobSource(Generic[J, V]):
    """A source of jobs: an iterator, or values that each expand into jobs."""

    def __init__(
        self,
        jobs: Iterator[J] | None = None,
        *,
        values: MemoryObjectReceiveStream[V] | None = None,
        expand: Callable[[V], Iterable[J]] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Take jobs from ``jobs``, or expand each item of ``values`` into jobs.

        ``on_end`` is called once, when ``values`` has no more items.
        """
        if (jobs is None) == (values is None):
            raise ValueError("invalid job source: give either jobs or values, not both or neither")
        self._jobs = jobs
        self._values = values
        self._expand = expand
        self._on_end = on_end
        self._queued: deque[J] = deque()
        self._reading = False
        self._ended = False
        self._end_found = False
        """Set when ``drain`` found the end while a worker was reading. That worker may have
        received a last value, so the end counts only once it has queued that value's jobs."""
        self._changed: anyio.Event | None = None

    async def next(self) -> J | None:
        """Return the next job, or None once there are no more."""
        if self._jobs is not None:
            return next(self._jobs, None)

        while not self._queued:
            if self._ended:
                return None
            if self._reading:
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()
                continue

            self._reading = True
            try:
                await self._read()
            finally:
                self._reading = False
                if self._end_found:
                    self._end()
                if self._changed is not None:
                    self._changed.set()
                    self._changed = None
        return self._queued.popleft()

    def drain(self) -> None:
        """Queue the jobs of every value left, once the sender has closed its end.

        The values then wait in the buffer, except one that a reading worker may have
        received already, so none is awaited. ``on_end`` runs as soon as every value is queued,
        rather than when the workers reach the last one.
        """
        assert self._values is not None and self._expand is not None
        while not self._ended:
            try:
                value = self._values.receive_nowait()
            except anyio.EndOfStream:
                if self._reading:
                    self._end_found = True
                    return
                self._end()
            except anyio.WouldBlock:
                # The sender is still open: only a closed sender makes the values final.
                return
            except anyio.ClosedResourceError:
                # The receiving stream has stopped (a fatal error closed its channels), so
                # its values would never be walked.
                return
            else:
                self._queued.extend(self._expand(value))

    async def _read(self) -> None:
        """Queue the jobs of the next value, or note that no more values come."""
        assert self._values is not None and self._expand is not None
        try:
            try:
                value = self._values.receive_nowait()
            except anyio.WouldBlock:
                value = await self._values.receive()
        except anyio.EndOfStream:
            self._end()
            return
        self._queued.extend(self._expand(value))

    def _end(self) -> None:
        # A worker waiting for a value and ``drain`` can both find the end; it counts once.
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            self._on_end()
