"""Log output on stderr: plain text for people, or one JSON object per line for machines.

JSON lines have the fields ``time`` (UTC, ISO 8601), ``level`` (lower case), ``logger``,
``message``, and for structured events ``event`` (``progress``, ``summary`` or ``error``)
with the event's own fields: ``elapsed`` (seconds), ``requests``, ``requests_per_second``,
``retries`` and ``streams`` for progress; ``summary`` (the object ``run --json`` prints) for
the summary; ``exit_code`` for the error that ends a run.
Secrets are masked before either format sees a message.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, TextIO

import orjson

from .redact import RedactingFilter, Redactor

#: Fields a log call may pass in ``extra`` that the JSON format copies into the line.
EXTRA_FIELDS = (
    "event",
    "elapsed",
    "requests",
    "requests_per_second",
    "retries",
    "streams",
    "summary",
    "exit_code",
)


class CurrentStderr:
    """A file-like object that always writes to the current ``sys.stderr``.

    A live display replaces ``sys.stderr`` while it runs, so log lines printed meanwhile go
    above the display instead of through it.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def asks_json_logs(args: list[str]) -> bool:
    """Tell whether command-line ``args`` choose --log-format json; the last choice counts."""
    chosen = "text"
    for number, arg in enumerate(args):
        if arg.startswith("--log-format="):
            chosen = arg.removeprefix("--log-format=")
        elif arg == "--log-format" and number + 1 < len(args):
            chosen = args[number + 1]
    return chosen == "json"


def json_line(created: float, level: str, logger: str, message: str, **fields: Any) -> str:
    """Return one log line in the JSON format."""
    line: dict[str, Any] = {
        "time": dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        **fields,
    }
    return orjson.dumps(line).decode()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name) for name in EXTRA_FIELDS if hasattr(record, name)}
        level = record.levelname.lower()
        return json_line(record.created, level, record.name, record.getMessage(), **fields)


def setup_logging(
    *, level: int, json_format: bool, redactor: Redactor, stream: TextIO | None = None
) -> None:
    """Send the ``tm_export`` loggers to stderr in the chosen format, secrets masked."""
    handler = logging.StreamHandler(stream or CurrentStderr())
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("tm-export: %(levelname)s: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger("tm_export")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
