"""The manifest journal: an append-only JSON Lines file that proves what a run committed.

Format: one JSON object per line. The first line is the run header (``"t": "run"``);
later lines record sessions, committed pages, finished partitions, run ends, deleted
projects and canonical rewrites. A line is valid once its newline is on disk. Each group
of lines is appended only after the data it refers to was fsynced, and the journal is
fsynced after each group.

Reading tolerates exactly one kind of damage: an unfinished last line (no newline), the
normal result of a crash during an append, possibly padded with NUL bytes by the file
system after a power loss. It is dropped. Any other damage raises ``ManifestError``
and nothing is changed, because guessing would risk losing or duplicating records.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .crashpoints import crash_due
from .errors import ManifestError, StorageError

logger = logging.getLogger("tm_export.journal")

FORMAT = 1


@dataclass(frozen=True, slots=True)
class JournalContents:
    """The valid entries of a journal and the byte length they occupy."""

    entries: list[dict[str, Any]]
    valid_bytes: int
    dropped_bytes: int


@dataclass(frozen=True, slots=True)
class JournalExtent:
    """The byte length of a journal's complete lines, and of the unfinished line after them."""

    valid_bytes: int
    dropped_bytes: int


#: Bytes of journal parsed at once: large enough for orjson's one-call fast path, small
#: enough that a journal of millions of entries is never held as dicts all at once.
CHUNK_BYTES = 1 << 20


def read_journal(path: Path) -> JournalContents:
    """Read and check every entry of the journal at ``path``.

    Raises:
        ManifestError: the journal is empty, has no valid header, or a complete line is damaged.
    """
    extent, entries = scan_journal(path)
    return JournalContents(list(entries), extent.valid_bytes, extent.dropped_bytes)


def scan_journal(path: Path) -> tuple[JournalExtent, Iterator[dict[str, Any]]]:
    """Check the journal at ``path`` and return its extent and an iterator over its entries.

    The entries are parsed a chunk at a time as the iterator advances, so memory keeps one
    chunk of them, not the whole journal.

    Raises:
        ManifestError: the journal is empty or has no complete line. The iterator raises
            it for a missing header or a damaged complete line, naming the line.
    """
    data = path.read_bytes()
    recovery = (
        f"Nothing was changed. If you have a backup of {path.name}, restore it and run again; "
        "otherwise 'tm-export run RECIPE --start-over' begins a new run in a new folder beside "
        "this one"
    )
    if not data:
        raise ManifestError(
            f"{path}: the manifest is empty, so what this run committed cannot be proven. "
            f"{recovery}"
        )

    end = data.rfind(b"\n") + 1
    if end == 0:
        raise _no_header(path, recovery)
    tail = len(data) - end
    if tail:
        logger.warning(
            "dropped an unfinished last manifest entry of %d bytes (left by an interrupted "
            "write); its data is not counted as committed",
            tail,
        )
    return JournalExtent(valid_bytes=end, dropped_bytes=tail), _entries(path, data, end, recovery)


def _entries(path: Path, data: bytes, end: int, recovery: str) -> Iterator[dict[str, Any]]:
    """Yield the entries of ``data[:end]``, whole lines parsed a chunk at a time."""
    start = 0
    line_number = 0
    while start < end:
        stop = data.find(b"\n", min(start + CHUNK_BYTES, end) - 1) + 1
        chunk = data[start:stop]
        entries = _parse_all(chunk)
        if entries is None:
            lines = chunk.split(b"\n")[:-1]
            entries = [
                _parse_line(path, line_number + index, line, recovery)
                for index, line in enumerate(lines, 1)
            ]
        if start == 0 and (entries[0].get("t") != "run" or entries[0].get("format") != FORMAT):
            raise _no_header(path, recovery)
        line_number += len(entries)
        start = stop
        yield from entries


def _no_header(path: Path, recovery: str) -> ManifestError:
    return ManifestError(
        f"{path}:1: the manifest has no valid header, so it is damaged or not a "
        f"tm-export manifest. {recovery}"
    )


def _parse_line(path: Path, number: int, line: bytes, recovery: str) -> dict[str, Any]:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise ManifestError(
            f"{path}:{number}: manifest line {number} is damaged (not JSON). {recovery}"
        ) from None
    if not isinstance(entry, dict) or "t" not in entry:
        raise ManifestError(
            f"{path}:{number}: manifest line {number} is not a manifest entry. {recovery}"
        )
    return entry


def _parse_all(complete: bytes) -> list[dict[str, Any]] | None:
    """Parse every line in one call, the fast path for a journal with no damage.

    Returns None when any line is not a manifest entry, so the caller parses line by line
    and names the damaged one.
    """
    if not complete:
        return None
    count = complete.count(b"\n")
    try:
        # Whole lines end with a newline; turning the newlines into commas makes one array.
        entries = orjson.loads(b"[" + complete[:-1].replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(entries) != count or not all(isinstance(e, dict) and "t" in e for e in entries):
        return None
    return entries  # type: ignore[no-any-return]


class Journal:
    """Appends entries to the manifest journal, durably."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self._file = file

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> Journal:
        """Write a new journal whose first line is ``header``, atomically.

        The header goes to a temporary file that is fsynced and renamed into place, so a
        crash leaves either no manifest or a manifest with a whole header.
        """
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as file:
                file.write(orjson.dumps({"t": "run", "format": FORMAT, **header}) + b"\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            fsync_folder(path.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise StorageError(f"{path}: cannot create the manifest: {error.strerror}") from error
        return cls.open(path, valid_bytes=path.stat().st_size)

    @classmethod
    def open(cls, path: Path, *, valid_bytes: int) -> Journal:
        """Open an existing journal for appending, first cutting off an unfinished last line."""
        try:
            # Unbuffered, so a failed write leaves nothing behind in a Python buffer.
            file = path.open("r+b", buffering=0)
            # Only when needed: a truncate to the same size still changes the file's times.
            if os.fstat(file.fileno()).st_size != valid_bytes:
                file.truncate(valid_bytes)
            file.seek(valid_bytes)
        except OSError as error:
            raise StorageError(f"{path}: cannot open the manifest: {error.strerror}") from error
        return cls(path, file)

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Write ``entries`` and fsync them; blocking, so the engine calls it in a worker thread.

        Raises:
            StorageError: the write or fsync failed; the file is cut back to its previous end.
        """
        if not entries:
            return
        data = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
        before = self._file.tell()
        try:
            if crash_due("mid-manifest-append"):
                self._file.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
            os.fsync(self._file.fileno())
        except OSError as error:
            self._cut_back(before)
            raise StorageError(
                f"{self.path}: cannot write the manifest: {error.strerror}; "
                "it still records the last committed state"
            ) from error

    def _cut_back(self, size: int) -> None:
        try:
            self._file.truncate(size)
            self._file.seek(size)
        except OSError:
            logger.error(
                "cannot cut %s back to %d bytes; the next run drops the unfinished entry",
                self.path,
                size,
            )

    def close(self) -> None:
        self._file.close()


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (new or renamed files in it) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
