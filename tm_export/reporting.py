"""Showing progress: a live table on a terminal, a plain status line elsewhere."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TextIO

from .progress import Progress, StreamProgress
from .words import counted

logger = logging.getLogger("tm_export.progress")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02d}m" if hours else f"{minute}m{second:02d}s"


def _partitions(stream: StreamProgress) -> str:
    known = "?" if stream.known is None else str(stream.known)
    return f"{stream.finished}/{known}"


def _requests(progress: Progress) -> str:
    requests = counted(progress.requests, "request")
    return f"{requests} ({progress.requests_per_second:.1f}/s)"


def status_line(progress: Progress) -> str:
    """Return one line that sums up a snapshot, for logs that people skim."""
    parts = [
        f"{stream.name} {_partitions(stream)} partitions {counted(stream.records, 'record')}"
        for stream in progress.streams
    ]
    return (
        f"{_duration(progress.elapsed)} elapsed, {_requests(progress)}, "
        f"{counted(progress.retries, 'retry', 'retries')}; " + "; ".join(parts)
    )


class PlainReporter:
    """Logs one status line per snapshot (the engine sends one per interval)."""

    def __call__(self, progress: Progress) -> None:
        logger.info(
            "progress: %s",
            status_line(progress),
            extra={
                "event": "progress",
                "elapsed": round(progress.elapsed, 3),
                "requests": progress.requests,
                "requests_per_second": round(progress.requests_per_second, 2),
                "retries": progress.retries,
                "streams": {
                    s.name: {
                        "partitions": s.finished,
                        "known": s.known,
                        "records": s.records,
                        "pages": s.pages,
                    }
                    for s in progress.streams
                },
            },
        )


class LiveReporter:
    """Redraws a table on the terminal for each snapshot: one row per stream."""

    def __init__(self, stream: TextIO) -> None:
        # rich is imported only for a terminal: a job's plain lines do not need it, and it
        # adds about 20 ms to every start.
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=stream, stderr=True)
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            transient=False,
            redirect_stderr=True,
            redirect_stdout=False,
        )

    def __enter__(self) -> LiveReporter:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._live.stop()

    def __call__(self, progress: Progress) -> None:
        from rich.table import Table

        table = Table(
            title=f"tm-export: {_requests(progress)}, "
            f"{counted(progress.retries, 'retry', 'retries')}, "
            f"{_duration(progress.elapsed)} elapsed"
        )
        for column in ("stream", "partitions", "pages", "records", "duplicates", "ETA"):
            table.add_column(column, justify="left" if column == "stream" else "right")
        for stream in progress.streams:
            table.add_row(
                stream.name,
                _partitions(stream),
                str(stream.pages),
                str(stream.records),
                str(stream.duplicates),
                _duration(progress.eta(stream)),
            )
        self._live.update(table, refresh=True)
