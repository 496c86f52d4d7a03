"""Compressed stream files: each committed page is its own gzip member or zstd frame.

A compressed stream file is a sequence of independent members (gzip) or frames (zstd),
one per page. Cutting the file back to a committed end therefore leaves a valid file, so
resume and exactly-once work as for plain files, and the manifest's byte ranges point at
whole members. ``zcat``, ``zstdcat``, Python's ``gzip`` module and the ``zstandard``
package (with ``read_across_frames=True``) read every member in order.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO, Literal

import zstandard

Codec = Literal["none", "gzip", "zstd"]
CODECS: tuple[Codec, ...] = ("none", "gzip", "zstd")
SUFFIXES: dict[Codec, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}

# Level 6 (gzip) and 3 (zstd) are each tool's own default: a fair balance of size and speed.
_GZIP_LEVEL = 6
_ZSTD_LEVEL = 3


def compress(data: bytes, codec: Codec) -> bytes:
    """Return ``data`` as one member (gzip) or frame (zstd); unchanged for ``none``."""
    if codec == "gzip":
        # mtime=0 keeps the bytes the same from run to run, so identical data hashes alike.
        return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    return data


def compress_file(path: Path, codec: Codec) -> Path:
    """Compress the file ``path`` as one member or frame, in a new file beside it; return it.

    Reads and writes in chunks, so memory stays flat for a page of any size.
    """
    target = path.with_name(path.name + SUFFIXES[codec])
    with path.open("rb") as source, target.open("wb") as out:
        if codec == "gzip":
            with gzip.GzipFile(
                fileobj=out, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0
            ) as member:
                while chunk := source.read(1 << 20):
                    member.write(chunk)
        else:
            with zstandard.ZstdCompressor(level=_ZSTD_LEVEL).stream_writer(
                out, closefd=False
            ) as frame:
                while chunk := source.read(1 << 20):
                    frame.write(chunk)
    return target


def decompress(data: bytes, codec: Codec) -> bytes:
    """Return the lines held in ``data``, one or more whole members or frames."""
    if codec == "gzip":
        return gzip.decompress(data)
    if codec == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        return reader.read()
    return data


def open_lines(path: Path, codec: Codec) -> IO[bytes]:
    """Open a stream file for reading its lines, decompressing as it goes."""
    if codec == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if codec == "zstd":
        raw = path.open("rb")
        reader = zstandard.ZstdDecompressor().stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        return io.BufferedReader(reader)
    return path.open("rb")
