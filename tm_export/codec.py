"""Compressed stream files: each committed page is its own gzip member or zstd frame.

A compressed stream file is a sequence of independent members (gzip) or frames (zstd),
one per page. Cutting the file back to a committed end therefore leaves a valid file, so
resume and exactly-once work as for plain files, and the manifest's byte ranges point at
whole members. ``zcat``, ``zstdcat``, Python's ``gzip`` module and the ``zstandard``
package (with ``read_across_frames=True``) read every member in order.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol

import zstandard

Codec = Literal["none", "gzip", "zstd"]
CODECS: tuple[Codec, ...] = ("none", "gzip", "zstd")
SUFFIXES: dict[Codec, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}

# Level 6 (gzip) and 3 (zstd) are each tool's own default: a fair balance of size and speed.
_GZIP_LEVEL = 6
_ZSTD_LEVEL = 3


def describe_codec(codec: Codec) -> str:
    """Return how files of ``codec`` are described in messages, such as ``compressed with gzip``."""
    return "not compressed" if codec == "none" else f"compressed with {codec}"


def compress(data: bytes, codec: Codec) -> bytes:
    """Return ``data`` as one member (gzip) or frame (zstd); unchanged for ``none``."""
    if codec == "gzip":
        # mtime=0 keeps the bytes the same from run to run, so identical data hashes alike.
        return gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
    if codec == "zstd":
        return _zstd().compress(data)
    return data


def compress_file(path: Path, codec: Codec) -> Path:
    """Compress the file ``path`` as one member or frame, in a new file beside it; return it.

    Reads and writes in chunks, so memory stays flat for a page of any size.
    """
    target = path.with_name(path.name + SUFFIXES[codec])
    try:
        with (
            path.open("rb") as source,
            target.open("wb") as out,
            member_writer(out, codec) as member,
        ):
            while chunk := source.read(1 << 20):
                member.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def decompress(data: bytes, codec: Codec) -> bytes:
    """Return the lines held in ``data``, one or more whole members or frames.

    Raises:
        DecompressionError: the data is not valid, or its last member or frame is cut short.
    """
    return b"".join(decompress_chunks([data], codec))


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


#: Compressed bytes that ``range_lines`` decompresses in one step. The pages of the demo
#: export compress 4:1 to 12:1, so one step's output stays under a mebibyte. Deflate's
#: ratio stays near 1000:1 even for zeros, which bounds the output near 64 MiB. zstd
#: compresses zeros about 32,000:1, so pathological pages can need far more memory.
DECOMPRESS_STEP = 1 << 16


class Writer(Protocol):
    """A binary stream open for writing, the type that ``member_writer`` returns."""

    def write(self, data: bytes, /) -> object: ...


class DecompressionError(ValueError):
    """Bytes that are not a sequence of whole gzip members or zstd frames."""


def _decompressor(codec: Codec) -> Any:
    if codec == "gzip":
        # wbits 16 + 15: a gzip header and trailer; zlib checks the trailer's CRC-32 and size.
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    return zstandard.ZstdDecompressor().decompressobj()


def decompress_chunks(chunks: Iterable[bytes], codec: Codec) -> Iterator[bytes]:
    """Decompress whole members or frames, given in pieces of any size, and yield the output.

    Unlike ``decompress``, this rejects data that ends inside a member or frame. The
    stream reader of zstandard 0.25 returns a cut frame's partial output without an error.
    For ``none`` the chunks pass unchanged.

    Raises:
        DecompressionError: the data is not valid, or its last member or frame is cut short.
    """
    if codec == "none":
        yield from chunks
        return
    current = None
    try:
        for chunk in chunks:
            data = chunk
            while data:
                if current is None:
                    current = _decompressor(codec)
                output = current.decompress(data)
                if output:
                    yield output
                if current.eof:
                    data = current.unused_data
                    current = None
                else:
                    data = b""
    except (zlib.error, zstandard.ZstdError) as error:
        raise DecompressionError(str(error)) from None
    if current is not None:
        unit = "gzip member" if codec == "gzip" else "zstd frame"
        raise DecompressionError(f"the data ends inside a {unit}")


def _read_range(file: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Yield bytes ``start..end`` of ``file`` in steps; fewer when the file is shorter."""
    file.seek(start)
    position = start
    while position < end:
        chunk = file.read(min(DECOMPRESS_STEP, end - position))
        if not chunk:
            return
        position += len(chunk)
        yield chunk


def range_lines(file: BinaryIO, start: int, end: int, codec: Codec) -> Iterator[bytes]:
    """Yield the lines that bytes ``start..end`` of ``file`` decompress to, newlines kept.

    The range must hold whole members or frames. The last line lacks its newline when the
    content does not end with one.

    Raises:
        DecompressionError: the range is not whole, valid members or frames.
    """
    pending: list[bytes] = []
    for output in decompress_chunks(_read_range(file, start, end), codec):
        line_start = 0
        while (newline := output.find(b"\n", line_start)) != -1:
            pending.append(output[line_start : newline + 1])
            yield b"".join(pending)
            pending.clear()
            line_start = newline + 1
        if line_start < len(output):
            pending.append(output[line_start:])
    if pending:
        yield b"".join(pending)


@contextlib.contextmanager
def member_writer(out: BinaryIO, codec: Codec) -> Iterator[Writer]:
    """Write what is written to the returned writer to ``out``, as one member or frame.

    The gzip header has mtime 0 and no file name, so identical data gives identical bytes
    with the same zlib or libzstd version. For ``none`` the bytes go to ``out`` unchanged.
    ``out`` stays open.
    """
    if codec == "none":
        yield out
    elif codec == "gzip":
        with gzip.GzipFile(
            filename="", fileobj=out, mode="wb", compresslevel=_GZIP_LEVEL, mtime=0
        ) as member:
            yield member
    else:
        with _zstd().stream_writer(out, closefd=False) as frame:
            yield frame


def _zstd() -> zstandard.ZstdCompressor:
    # The frame checksum lets a reader detect a changed byte, not only a cut frame.
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True)
