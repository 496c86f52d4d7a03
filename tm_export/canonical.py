"""Canonical stream files: the same records give the same bytes, whatever the page order.

Pages of different partitions commit in the order their responses arrive, so two exports
of the same data rarely have the same bytes. ``tm-export canonical`` rewrites each stream
file of a finished run with its lines sorted by

1. the partition: the ``_partition`` values in the order of their parameter names, numbers
   by value and text by code point (an unpartitioned stream has one partition);
2. the record key of the endpoint (``docs/design.md``, "Record keys"), numbers before text;
3. the line's bytes, which orders records without a key and breaks any tie.

Lines are moved whole, never re-encoded, so the file keeps its size, lines and records and
only its order (and so its SHA-256) changes. Files larger than memory are sorted
externally: sorted chunks go to temporary files beside the stream file, then
``heapq.merge`` merges them, at most ``FAN_IN`` at a time. This needs free disk space of
about twice the largest stream file while it runs.

A compressed file (``NAME.jsonl.gz`` or ``.zst``) is sorted by its decompressed lines and
written back as one gzip member or zstd frame with the run's codec, so it no longer keeps
its size. Its canonical entry's ``sha256`` and ``bytes`` are those of the compressed file,
and ``lines`` and ``records`` count the decompressed lines. The sorted chunks are not
compressed, so the sort needs free space of about the decompressed size.

Commit protocol, per stream file:

1. the sorted copy is written to ``data/.NAME.jsonl.canonical`` (``.NAME.jsonl.gz.canonical``
   for a gzip run), fsynced, and its folder fsynced;
2. a journal entry is appended to ``manifest.jsonl`` and fsynced::

       {"t": "canonical", "s": NAME, "at": TIME, "version": TOOL_VERSION,
        "order": ["partition", "key", "line"], "sha256": NEW, "bytes": N, "lines": N,
        "records": N, "previous_sha256": OLD}

3. the copy is renamed over ``data/NAME.jsonl`` and the folder fsynced.

The committed history is never changed: page entries stay, and the canonical entry
supersedes their byte ranges (``verify.StreamLayout``). A crash after step 2 leaves the
entry and the sorted copy. The next ``tm-export canonical`` finishes the rename, and
``tm-export verify`` reports that it is needed. A crash before step 2 leaves only a temporary file,
which the next ``tm-export canonical`` removes.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .codec import SUFFIXES, Codec, member_writer, open_lines
from .crashpoints import crash_point
from .errors import StorageError
from .journal import Journal
from .layout import DATA_FOLDER, run_codec
from .manifest import ManifestState
from .records import PARTITION_KEY, record_key, strip_partition
from .runrecord import require_verified, write_run_record
from .timestamps import utc_now_text
from .verify import (
    RunPaths,
    RunStateError,
    StreamLayout,
    canonical_temporary_path,
    check_run,
    file_sha256,
    fsync_path,
    locate_run,
    scan_manifest,
)

logger = logging.getLogger("tm_export.canonical")

#: Bytes of lines sorted in memory at once; larger files are sorted in chunks.
CHUNK_BYTES = 64 << 20

#: Sorted chunk files merged at once; more take several merge passes.
FAN_IN = 64

ORDER = ["partition", "key", "line"]

#: Prefix of the folders that hold sorted chunks while a file is sorted.
WORK_PREFIX = ".canonical-work-"

SortKey = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class CanonicalResult:
    """The outcome of ``make_canonical`` for one stream file."""

    stream: str
    file: str
    action: str
    """``rewritten``, ``already in order`` (rewritten with the same bytes), ``already
    canonical`` or ``finished`` (an interrupted rewrite)."""
    sha256: str


# --- order ---------------------------------------------------------------------------------


def _rank(value: Any) -> tuple[Any, ...]:
    """Return a sort key that orders any JSON scalar: null, numbers, text, then the rest."""
    if value is None:
        return (0,)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, bytes):
        return (3, value)
    return (4, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def line_sort_key(key_path: str | None) -> Callable[[bytes], SortKey]:
    """Return the function that gives a line its place in the canonical order."""

    def sort_key(line: bytes) -> SortKey:
        record = orjson.loads(line)
        partition = record.get(PARTITION_KEY) if isinstance(record, dict) else None
        if isinstance(partition, dict):
            where = tuple((name, _rank(partition[name])) for name in sorted(partition))
            record = strip_partition(record)
        else:
            where = ()
        return (where, _rank(record_key(key_path, record)), line)

    return sort_key


def sorted_lines(
    lines: Iterable[bytes],
    sort_key: Callable[[bytes], SortKey],
    work_folder: Path,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[bytes]:
    """Yield ``lines`` in the order of ``sort_key``, holding at most about ``chunk_bytes``.

    Each line must end with a newline. Sorted chunks are written to ``work_folder``.
    """
    chunks: list[Path] = []
    pending: list[bytes] = []
    size = 0
    for line in lines:
        pending.append(line)
        size += len(line)
        if size >= chunk_bytes:
            chunks.append(_write_chunk(sorted(pending, key=sort_key), work_folder, len(chunks)))
            pending, size = [], 0
    if not chunks:
        yield from sorted(pending, key=sort_key)
        return
    if pending:
        chunks.append(_write_chunk(sorted(pending, key=sort_key), work_folder, len(chunks)))

    merges = 0
    while len(chunks) > FAN_IN:
        merged: list[Path] = []
        for first in range(0, len(chunks), FAN_IN):
            group = chunks[first : first + FAN_IN]
            with ExitStack() as stack:
                files = [stack.enter_context(path.open("rb")) for path in group]
                target = work_folder / f"merge-{merges}"
                merges += 1
                merged.append(_write_chunk(heapq.merge(*files, key=sort_key), target))
            for path in group:
                path.unlink()
        chunks = merged

    with ExitStack() as stack:
        files = [stack.enter_context(path.open("rb")) for path in chunks]
        yield from heapq.merge(*files, key=sort_key)


def _write_chunk(lines: Iterable[bytes], folder: Path, number: int | None = None) -> Path:
    path = folder if number is None else folder / f"chunk-{number}"
    with path.open("wb") as file:
        file.writelines(lines)
    return path


# --- rewriting a run -------------------------------------------------------------------------


def make_canonical(run_folder: Path, *, chunk_bytes: int = CHUNK_BYTES) -> list[CanonicalResult]:
    """Rewrite every stream file of a finished run in the canonical order.

    Finishes a rewrite that a crash interrupted, verifies every file first, and rewrites
    the run record afterwards when the run has one. The caller must keep other writers
    away (``tm-export canonical`` holds the output lock).

    Raises:
        RunFolderError: ``run_folder`` is not a run folder.
        RunStateError: the run is a bag, or is not finished.
        ManifestError: the manifest is damaged.
        RunDamagedError: a stream file does not match the manifest.
        StorageError: a write, fsync or rename failed.
    """
    paths = locate_run(run_folder)
    if paths.bagged:
        raise RunStateError(
            f"{run_folder}: the run is a bag, and rewriting its files would make the bag "
            "invalid; make files canonical before 'tm-export bag'"
        )
    scan = scan_manifest(paths)
    state = scan.state
    if not scan.finished:
        raise RunStateError(
            f"{run_folder}: the run is unfinished; finish it (run the same 'tm-export run' "
            "command again) before making its files canonical"
        )

    codec = run_codec(state.header)
    finished = _finish_interrupted(paths, scan.layouts, codec)
    remove_leftovers(paths)
    check = check_run(paths, check_bag=False, scan=scan)
    require_verified(check, "nothing was rewritten")

    results: list[CanonicalResult] = []
    journal = Journal.open(paths.manifest, valid_bytes=check.scan.extent.valid_bytes)
    try:
        for stream in check.streams:
            path = paths.stream_file(stream.stream, codec)
            if stream.stream in finished:
                results.append(
                    CanonicalResult(stream.stream, stream.file, "finished", str(stream.sha256))
                )
                continue
            if stream.canonical:
                results.append(
                    CanonicalResult(
                        stream.stream, stream.file, "already canonical", str(stream.sha256)
                    )
                )
                continue
            if stream.size is None:
                continue
            key_path = state.header.get("streams", {}).get(stream.stream, {}).get("key")
            entry = _rewrite(
                path, codec, key_path, chunk_bytes, journal, stream.stream, stream.sha256
            )
            action = "already in order" if entry["sha256"] == stream.sha256 else "rewritten"
            results.append(CanonicalResult(stream.stream, stream.file, action, entry["sha256"]))
    finally:
        journal.close()

    if paths.record.exists():
        write_run_record(paths.folder)
    return results


def _rewrite(
    path: Path,
    codec: Codec,
    key_path: str | None,
    chunk_bytes: int,
    journal: Journal,
    stream: str,
    previous: str | None,
) -> dict[str, Any]:
    """Sort one stream file into its temporary copy, record it, then rename it into place."""
    temporary = canonical_temporary_path(path)
    lines = 0
    try:
        with (
            tempfile.TemporaryDirectory(prefix=WORK_PREFIX, dir=path.parent) as work,
            open_lines(path, codec) as source,
            temporary.open("wb") as target,
        ):
            with member_writer(target, codec) as member:
                sort_key = line_sort_key(key_path)
                for line in sorted_lines(source, sort_key, Path(work), chunk_bytes):
                    member.write(line)
                    lines += 1
            target.flush()
            os.fsync(target.fileno())
        fsync_path(path.parent)
        # Hashed as written to disk: for a compressed file, the compressed bytes.
        sha256 = file_sha256(temporary)
        size = temporary.stat().st_size
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write its sorted copy: {error.strerror}") from error

    entry = {
        "t": "canonical",
        "s": stream,
        "at": utc_now_text(),
        "version": __version__,
        "order": ORDER,
        "sha256": sha256,
        "bytes": size,
        "lines": lines,
        "records": lines,
        "previous_sha256": previous,
    }
    journal.append([entry])
    crash_point("canonical-entry-written")
    _rename(temporary, path)
    logger.info("rewrote %s in the canonical order", path)
    return entry


def _rename(temporary: Path, path: Path) -> None:
    try:
        os.replace(temporary, path)
        fsync_path(path.parent)
    except OSError as error:
        raise StorageError(
            f"{path}: cannot rename its sorted copy into place: {error.strerror}; run "
            "'tm-export canonical' again to finish"
        ) from error


def _finish_interrupted(
    paths: RunPaths, layouts: dict[str, StreamLayout], codec: Codec
) -> set[str]:
    """Rename the sorted copies whose canonical entry is committed; return their streams."""
    finished: set[str] = set()
    for name, layout in layouts.items():
        entry = layout.canonical
        path = paths.stream_file(name, codec)
        temporary = canonical_temporary_path(path)
        if entry is None or not temporary.exists():
            continue
        if path.exists() and file_sha256(path) == entry["sha256"]:
            continue
        if temporary.stat().st_size == entry["bytes"] and file_sha256(temporary) == entry["sha256"]:
            _rename(temporary, path)
            logger.info("finished the interrupted canonical rewrite of %s", path)
            finished.add(name)
    return finished


def rewrite_interrupted(paths: RunPaths, state: ManifestState, codec: Codec) -> bool:
    """Tell whether a canonical rewrite of the run stopped before its end: a sorted copy is
    left, or some stream files are canonical and others not."""
    data = paths.root / DATA_FOLDER
    files = [name for name in state.streams if paths.stream_file(name, codec).exists()]
    rewritten = {entry["s"] for entry in state.canonical}
    copies = [canonical_temporary_path(paths.stream_file(name, codec)) for name in files]
    return data.is_dir() and (
        any(copy.exists() for copy in copies) or 0 < len(rewritten & set(files)) < len(files)
    )


def remove_leftovers(paths: RunPaths) -> None:
    """Delete the sorted copies and work folders that an interrupted rewrite left.

    Call it only after ``_finish_interrupted``, which uses the copies a committed entry
    still needs.
    """
    data = paths.root / DATA_FOLDER
    if not data.is_dir():
        return
    copies = tuple(f".jsonl{suffix}.canonical" for suffix in SUFFIXES.values())
    for child in data.iterdir():
        if child.name.startswith(WORK_PREFIX) and child.is_dir():
            shutil.rmtree(child)
        elif child.name.startswith(".") and child.name.endswith(copies):
            child.unlink()
