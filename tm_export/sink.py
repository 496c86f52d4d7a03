"""Stream files: one JSON Lines file per stream, appended page by page.

A stream file only grows during a run. Its committed end, the offset after the last
page the manifest records, is where a resumed run cuts it back to, so bytes written
after the last commit (a page in flight, half a line) disappear before new ones come.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import BinaryIO

import orjson

from .codec import Codec, decompress
from .errors import ManifestError, StorageError

logger = logging.getLogger("tm_export.sink")

#: Bytes held in memory per stream file before they go to the operating system.
WRITE_BUFFER = 1 << 20


class StreamFile:
    """An open stream file positioned at its end."""

    def __init__(self, path: Path, file: BinaryIO, size: int) -> None:
        self.path = path
        self._file = file
        self.size = size
        """Bytes written so far, committed or not."""

    @classmethod
    def open(
        cls, path: Path, committed_end: int, *, codec: Codec = "none", last_page_start: int = 0
    ) -> StreamFile:
        """Open (or create) the file and cut it back to ``committed_end``.

        For a compressed file, the last committed page (from ``last_page_start``) must be
        whole members that decompress to complete lines.

        Raises:
            ManifestError: the file is shorter than the committed end, or the committed end
                does not fall right after a whole JSON line. Nothing is changed then.
            StorageError: the file cannot be opened or cut.
        """
        try:
            file = path.open("r+b" if path.exists() else "w+b", buffering=WRITE_BUFFER)
        except OSError as error:
            raise StorageError(f"{path}: cannot open the stream file: {error.strerror}") from error

        try:
            actual = os.fstat(file.fileno()).st_size
            if codec == "none":
                _check_committed_end(path, file, actual, committed_end)
            else:
                _check_compressed_end(path, file, actual, committed_end, last_page_start, codec)
            if actual > committed_end:
                file.truncate(committed_end)
                logger.warning(
                    "cut %s back to its committed end at byte %d: removed %d uncommitted bytes",
                    path.name,
                    committed_end,
                    actual - committed_end,
                )
            file.seek(committed_end)
        except OSError as error:
            file.close()
            raise StorageError(
                f"{path}: cannot cut the stream file back: {error.strerror}"
            ) from error
        except ManifestError:
            file.close()
            raise
        return cls(path, file, committed_end)

    def append(self, data: bytes) -> tuple[int, int]:
        """Append whole lines and return their (start, end) byte offsets.

        Raises:
            StorageError: the write failed (disk full, I/O error).
        """
        start = self.size
        try:
            _inject_write_error(self.path)
            self._file.write(data)
        except OSError as error:
            raise StorageError(f"{self.path}: cannot write: {error.strerror}") from error
        self.size = start + len(data)
        return start, self.size

    def append_file(self, source: Path) -> tuple[int, int]:
        """Append the lines held in the file ``source`` and return their (start, end) offsets.

        Raises:
            StorageError: reading ``source`` or writing failed.
        """
        start = self.size
        try:
            _inject_write_error(self.path)
            with source.open("rb") as lines:
                while chunk := lines.read(1 << 20):
                    self._file.write(chunk)
                    self.size += len(chunk)
        except OSError as error:
            raise StorageError(f"{self.path}: cannot write: {error.strerror}") from error
        return start, self.size

    def flush(self) -> None:
        """Hand buffered bytes to the operating system.

        Raises:
            StorageError: the write failed (disk full, I/O error).
        """
        try:
            self._file.flush()
        except OSError as error:
            raise StorageError(f"{self.path}: cannot write: {error.strerror}") from error

    def fsync(self) -> None:
        """Wait until the flushed bytes are on disk; blocking, so call it in a worker thread."""
        try:
            os.fsync(self._file.fileno())
        except OSError as error:
            raise StorageError(f"{self.path}: cannot sync to disk: {error.strerror}") from error

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as error:
            logger.error("closing %s failed: %s", self.path, error.strerror)


def _check_compressed_end(
    path: Path, file: BinaryIO, actual: int, committed_end: int, start: int, codec: Codec
) -> None:
    if committed_end == 0:
        return
    where = f"{path}: the manifest says {committed_end} bytes are committed"
    advice = (
        "the file was changed outside tm-export; restore it from a backup, or run with "
        "--start-over to begin a new run beside this one"
    )
    if actual < committed_end:
        raise ManifestError(f"{where}, but the file has only {actual}; {advice}")
    file.seek(start)
    try:
        lines = decompress(file.read(committed_end - start), codec)
    except Exception as error:  # gzip and zstandard raise several unrelated types
        raise ManifestError(
            f"{where}, but the last committed page (bytes {start}..{committed_end}) does "
            f"not decompress ({error}); {advice}"
        ) from None
    if lines and not lines.endswith(b"\n"):
        raise ManifestError(
            f"{where}, but the last committed page does not end with a whole line; {advice}"
        )


#: Bytes read back from a committed end at first, to find the last line (grown as needed).
TAIL_WINDOW = 1 << 20


def _check_committed_end(path: Path, file: BinaryIO, actual: int, committed_end: int) -> None:
    if committed_end == 0:
        return
    where = f"{path}: the manifest says {committed_end} bytes are committed"
    advice = (
        "the file was changed outside tm-export; restore it from a backup, or run with "
        "--start-over to begin a new run beside this one"
    )
    if actual < committed_end:
        raise ManifestError(f"{where}, but the file has only {actual}; {advice}")

    # Read back the last committed line: it must end with a newline and parse. A record
    # may be longer than the first window, so the window grows until the line's start.
    window = min(committed_end, TAIL_WINDOW)
    while True:
        file.seek(committed_end - window)
        chunk = file.read(window)
        if not chunk.endswith(b"\n"):
            raise ManifestError(
                f"{where}, but byte {committed_end - 1} is not the end of a line; {advice}"
            )
        line_start = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
        if line_start > 0 or window == committed_end:
            break
        window = min(committed_end, window * 4)
    try:
        orjson.loads(chunk[line_start:])
    except orjson.JSONDecodeError:
        raise ManifestError(
            f"{where}, but the last committed line (ending at byte {committed_end}) "
            f"is not valid JSON; {advice}"
        ) from None


_WRITES = 0

#: Read once: the check runs for every append, and the disk-full tests set the variable in
#: the environment of the process they start, never later.
_DISK_FULL_AT = os.environ.get("TM_EXPORT_DISK_FULL_AT", "")


def _inject_write_error(path: Path) -> None:
    """Fail the N-th append with ENOSPC when the test-only variable ``TM_EXPORT_DISK_FULL_AT=N`` is set.

    Only the disk-full tests set it; a full disk cannot be had on demand in a test.
    """
    global _WRITES
    if not _DISK_FULL_AT:
        return
    _WRITES += 1
    if _WRITES >= int(_DISK_FULL_AT):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
