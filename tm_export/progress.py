"""Progress snapshots: what the engine reports while a run goes on.

The engine builds a ``Progress`` at a fixed interval and hands it to a callback; how it is
shown (a live table on a terminal, a plain line in CI logs) is the command line's business.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamProgress:
    """Counts of one stream so far, this session and earlier ones together."""

    name: str
    done: int
    skipped: int
    failed: int
    known: int | None
    """Partitions the stream has in all, when known before its parent streams finish."""
    pages: int
    records: int
    duplicates: int

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a running export."""

    elapsed: float
    """Seconds since this session started."""
    requests: int
    retries: int
    streams: tuple[StreamProgress, ...]

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self, stream: StreamProgress) -> float | None:
        """Estimate the seconds left for ``stream`` from its pace so far, when its size is known."""
        if stream.known is None or stream.finished == 0 or self.elapsed <= 0:
            return None
        rate = stream.finished / self.elapsed
        return max(stream.known - stream.finished, 0) / rate
