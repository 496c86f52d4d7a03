"""Check a run's files against what its manifest proves: ``tm-export verify``.

For each stream file, one sequential pass computes the SHA-256 of the committed bytes
and counts their lines and the lines that parse as JSON. It also checks that every
committed segment of the file contains exactly the lines its journal entry names:

- a ``page`` entry covers bytes ``start..end`` holding ``records`` lines;
- a ``canonical`` entry (see ``canonical.py``) covers bytes ``0..bytes`` holding ``lines``
  lines with the SHA-256 ``sha256``, and replaces the page entries before it.

Segments must tile the file from byte 0 to the committed end, each ending on a line end.
In a compressed run (``codec.py``) every segment must be whole gzip members or zstd frames.
Each segment is decompressed on its own and its lines are counted, while the SHA-256 and
the byte offsets are those of the compressed file.

A finished run's file must end at its committed end; in an unfinished run, bytes after it
are uncommitted (a session may be writing them, and the next session cuts them off), so
they are reported but are no damage. When the run has a run record (``run.json``), each
file's SHA-256 is compared with it, and when the run folder is a BagIt bag, every file is
compared with the bag's SHA-256 manifests.

This module also locates runs: a run folder holds ``manifest.jsonl`` and ``data/``, or is
a bag whose payload folder ``data/`` holds them (see ``bag.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate
from operator import add
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .codec import Codec, DecompressionError, range_lines
from .errors import ExitCode, ManifestError, TmExportError
from .journal import JournalExtent, scan_journal
from .layout import (
    DATA_FOLDER,
    MANIFEST_NAME,
    SNAPSHOT_RECORD,
    bagging_marker,
    list_runs,
    run_codec,
    runs_folder,
    stream_path,
)
from .manifest import ManifestState
from .words import counted

logger = logging.getLogger("tm_export.verify")

#: The run record's file name, beside ``manifest.jsonl``.
RECORD_NAME = "run.json"

#: The names a run writes beside its stream files' folder (in a bag, under ``data/``).
RUN_FILES = frozenset({MANIFEST_NAME, RECORD_NAME, DATA_FOLDER})

#: The file whose presence makes a folder a BagIt bag.
BAG_DECLARATION = "bagit.txt"

#: The last tag file bagit writes; a bag without it was interrupted while being made.
BAG_TAG_MANIFEST = "tagmanifest-sha256.txt"
#: The tag files that the tag manifest lists, which bagit writes before it.
BAG_TAGGED = (BAG_DECLARATION, "bag-info.txt", "manifest-sha256.txt")


def bag_complete(folder: Path) -> bool:
    """Tell whether bagit finished a bag: its tag manifest, the last file it writes, lists
    every other tag file. A full disk can leave that file present but empty or cut short."""
    try:
        text = (folder / BAG_TAG_MANIFEST).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    listed = {line.split(maxsplit=1)[-1] for line in text.splitlines() if line.strip()}
    return text.endswith("\n") and all(name in listed for name in BAG_TAGGED)


#: Invalid JSON lines listed by line number per file; more are only counted.
LISTED_BAD_LINES = 5

HASH_BLOCK = 1 << 20


class RunFolderError(TmExportError):
    """The folder given is not a run folder or an output folder; nothing was read."""

    exit_code = ExitCode.USAGE


class RunStateError(TmExportError):
    """The run is unfinished or a bag, so the command cannot change it; nothing was changed."""

    exit_code = ExitCode.USAGE


class BagInterruptedError(TmExportError):
    """Making a run folder a bag was interrupted; ``tm-export bag`` finishes it."""

    exit_code = ExitCode.FATAL


# --- locating runs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPaths:
    """The locations of one run's files.

    ``folder`` is the run folder (``OUTPUT/runs/0001``). ``root`` contains
    ``manifest.jsonl`` and ``data/``. It is the run folder itself, or the bag's payload
    folder ``data/`` once the run is a bag.
    """

    folder: Path
    root: Path
    bagged: bool

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def record(self) -> Path:
        return self.root / RECORD_NAME

    def stream_file(self, stream: str, codec: Codec) -> Path:
        """Return a stream's file, named with the suffix of the run's ``codec``."""
        return stream_path(self.root, stream, codec)

    def shown(self, path: Path) -> str:
        """Return ``path`` relative to the run folder, as messages name files."""
        return path.relative_to(self.folder).as_posix()

    @property
    def output(self) -> Path | None:
        """The output folder that contains the run, or None outside the ``runs/`` layout."""
        return self.folder.parent.parent if self.folder.parent.name == "runs" else None


def locate_run(folder: Path) -> RunPaths:
    """Return the paths of the run in ``folder``, a plain run folder or a bag.

    Raises:
        RunFolderError: ``folder`` contains no manifest.
        ManifestError: ``folder`` has stream files but no manifest.
        BagInterruptedError: making the folder a bag was interrupted.
    """
    if bagging_entries(folder) is not None and not bag_complete(folder):
        # Checked first: the manifest may still be at the top while other files were moved.
        raise BagInterruptedError(
            f"{folder}: the run folder was being made a bag when that was interrupted; "
            f"run 'tm-export bag {folder}' again to finish it"
        )
    if (folder / BAG_DECLARATION).is_file() and (folder / DATA_FOLDER / MANIFEST_NAME).is_file():
        if not bag_complete(folder):
            raise BagInterruptedError(
                f"{folder}: the run folder is a bag whose making was interrupted "
                f"({BAG_TAG_MANIFEST} is missing or incomplete); run 'tm-export bag {folder}' "
                "again to finish it"
            )
        return RunPaths(folder, folder / DATA_FOLDER, bagged=True)
    if (folder / MANIFEST_NAME).is_file():
        return RunPaths(folder, folder, bagged=False)
    if interrupted_bag_folder(folder) is not None or (
        (folder / DATA_FOLDER / MANIFEST_NAME).is_file() and not (folder / MANIFEST_NAME).exists()
    ):
        # bagit moved the run into data/ and had not written bagit.txt, say on a full disk.
        raise BagInterruptedError(
            f"{folder}: the run folder was being made a bag when that was interrupted; "
            f"run 'tm-export bag {folder}' again to finish it"
        )
    if (folder / DATA_FOLDER).is_dir() and any((folder / DATA_FOLDER).glob("*.jsonl*")):
        raise ManifestError(
            f"{folder}: the run folder has stream files but no {MANIFEST_NAME}, so what it "
            "committed cannot be proven; restore the manifest from a copy, or run the export "
            "with --start-over to begin a new run beside it"
        )
    if (folder / SNAPSHOT_RECORD).is_file():
        raise RunFolderError(
            f"{folder}: a snapshot, not a run folder; 'tm-export verify {folder}' checks it, "
            f"and its {SNAPSHOT_RECORD} names the runs it combines"
        )
    raise RunFolderError(
        f"{folder}: not a run folder: it has no {MANIFEST_NAME}; give an output folder "
        "(with runs/) or a run folder such as OUTPUT/runs/0001"
    )


def bagging_entries(folder: Path) -> set[str] | None:
    """Return the entries that ``folder`` had when a bag step began, or None when no bag
    step left its marker (or the marker cannot be read)."""
    try:
        marker = orjson.loads(bagging_marker(folder).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    entries = marker.get("entries") if isinstance(marker, dict) else None
    return {str(name) for name in entries} if isinstance(entries, list) else None


#: The name under which a half-made bag's payload is set aside while it is put back.
PAYLOAD_ASIDE = ".bag-payload"


def interrupted_bag_folder(folder: Path) -> Path | None:
    """Return the temporary folder that an interrupted ``bagit.make_bag`` left, if any.

    bagit 1.9 moves every entry of a folder, one by one, into a new ``tmp*`` folder (made
    by ``tempfile.mkdtemp``) and then renames it to ``data``. With the bag step's marker,
    that folder is the ``tmp*`` folder that the run folder did not have before the step, so
    a user's own ``tmp*`` folder is never taken for it. A bag step of an older version left
    no marker: its folder is then a ``tmp*`` folder with the manifest or the data folder.
    """
    if not folder.is_dir():
        return None
    entries = bagging_entries(folder)
    for child in sorted(folder.iterdir()):
        if not (child.is_dir() and child.name.startswith("tmp")):
            continue
        if entries is not None:
            if child.name not in entries:
                return child
        elif (child / MANIFEST_NAME).exists() or (child / DATA_FOLDER).is_dir():
            return child
    return None


def find_runs(folder: Path) -> list[RunPaths]:
    """Return the runs in ``folder``: every run of an output folder, oldest first, or one run.

    Raises:
        RunFolderError: ``folder`` is missing, or is neither an output nor a run folder.
        BagInterruptedError, ManifestError: a run folder cannot be read (see ``locate_run``).
    """
    return [locate_run(run) for run in find_run_folders(folder)]


def find_run_folders(folder: Path) -> list[Path]:
    """Return the run folders in ``folder``, as ``find_runs`` does, without reading them, so
    that a caller can report each run that cannot be read beside the others.

    A run folder that a killed start left without a manifest or any data proves nothing,
    so it is passed over. The next ``run`` deletes it.

    Raises:
        RunFolderError: ``folder`` is missing, or an output folder without runs.
    """
    if not folder.is_dir():
        raise RunFolderError(
            f"{folder}: folder not found; give an output folder (with runs/) or a run folder "
            "such as OUTPUT/runs/0001"
        )
    if runs_folder(folder).is_dir():
        runs = list_runs(folder)
        if not runs:
            raise RunFolderError(f"{folder}: the output folder has no runs yet")
        return runs
    return [folder]


# --- what the journal proves --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """A byte range of a stream file that one journal entry proves, and its line count."""

    start: int
    end: int
    lines: int
    partition: str | None
    """The partition id of a page, or None for a canonical rewrite."""
    page: int = 0
    sha256: str | None = None
    """Set for a canonical rewrite, whose entry records the SHA-256 of bytes 0..end."""
    crc: int | None = None
    """The CRC-32 of a page's lines before compression; None in manifests older than it."""

    @property
    def label(self) -> str:
        """Name the segment in a message (built only then: a run can have millions)."""
        if self.partition is None:
            return "canonical rewrite"
        return f"page {self.page} of partition {self.partition}"


@dataclass(slots=True)
class StreamLayout:
    """The committed segments of one stream file, in file order."""

    segments: list[Segment] = field(default_factory=list)
    canonical: dict[str, Any] | None = None
    """The last canonical entry, when no page was committed after it."""

    @property
    def committed_end(self) -> int:
        return max((segment.end for segment in self.segments), default=0)

    @property
    def records(self) -> int:
        return sum(segment.lines for segment in self.segments)


class _JournalReading:
    """The facts a check needs besides the replayed state, collected in one pass.

    They are each stream's committed segments, whether the last session finished, and the
    last error of each stream.
    """

    def __init__(self) -> None:
        self.layouts: dict[str, StreamLayout] = {}
        self.finished = False
        self.failures: dict[str, dict[str, str]] = {}
        """Per stream, partition id to error of the partitions whose last entry is a failure,
        in the order they failed."""

    def observe(self, entries: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield ``entries`` unchanged, noting each on the way."""
        for entry in entries:
            kind = entry.get("t")
            if kind == "page":
                layout = self._layout(entry["s"])
                layout.segments.append(
                    Segment(
                        entry["start"],
                        entry["end"],
                        entry["records"],
                        entry["p"],
                        entry["n"],
                        crc=entry.get("crc"),
                    )
                )
                layout.canonical = None
            elif kind == "part":
                # A partition that failed and then ended otherwise (a retry) has no error now.
                failures = self.failures.setdefault(entry["s"], {})
                failures.pop(entry["p"], None)
                if entry.get("state") == "failed" and "error" in entry:
                    failures[entry["p"]] = str(entry["error"])
            elif kind == "canonical":
                layout = self._layout(entry["s"])
                layout.segments = [
                    Segment(0, entry["bytes"], entry["lines"], None, sha256=entry["sha256"])
                ]
                layout.canonical = entry
            elif kind == "session":
                self.finished = False
            elif kind == "end":
                self.finished = True
            elif kind == "run":
                self.layouts = {name: StreamLayout() for name in entry.get("streams", {})}
            yield entry

    @property
    def last_errors(self) -> dict[str, tuple[str, str]]:
        """Stream name to (error, partition id) of its last partition that is still failed."""
        last = {}
        for stream, failures in self.failures.items():
            if failures:
                partition_id = next(reversed(failures))
                last[stream] = (failures[partition_id], partition_id)
        return last

    def _layout(self, stream: str) -> StreamLayout:
        layout = self.layouts.get(stream)
        if layout is None:
            layout = self.layouts[stream] = StreamLayout()
        return layout

    def sorted_layouts(self) -> dict[str, StreamLayout]:
        for layout in self.layouts.values():
            layout.segments.sort(key=lambda segment: (segment.start, segment.end))
        return self.layouts


@dataclass(frozen=True, slots=True)
class ManifestScan:
    """A run's manifest read in one pass: the replayed state and what checks need with it."""

    state: ManifestState
    extent: JournalExtent
    finished: bool
    """True when an ``end`` entry follows the last session, so every partition is final.

    A merged run (``tm-export merge``) has an ``end`` entry and no session entries."""
    layouts: dict[str, StreamLayout]
    last_errors: dict[str, tuple[str, str]]
    """Stream name to (error, partition id) of its last failed partition."""


def scan_manifest(paths: RunPaths) -> ManifestScan:
    """Read a run's manifest without changing it, holding only a chunk of entries at a time.

    The pages of finished partitions are counted, not kept, so memory grows with the
    committed pages (a segment each) and not with the journal's text. An unfinished last
    line is dropped quietly: the caller reports ``extent.dropped_bytes`` itself.

    Raises:
        ManifestError: the manifest is damaged (any damage other than an unfinished last line).
    """
    with _quiet_journal():
        extent, entries = scan_journal(paths.manifest)
        reading = _JournalReading()
        state = ManifestState.replay(reading.observe(entries), keep_done_pages=False)
    return ManifestScan(
        state, extent, reading.finished, reading.sorted_layouts(), reading.last_errors
    )


# --- checking one stream file ---------------------------------------------------------------


@dataclass(slots=True)
class StreamCheck:
    """Findings of reading a stream file, compared with its committed segments."""

    stream: str
    file: str
    """The file's path relative to the run folder."""
    size: int | None
    """Bytes on disk, or None when the file is missing."""
    committed_end: int
    expected_records: int
    sha256: str | None = None
    """SHA-256 of the committed bytes (the whole file when nothing follows them)."""
    lines: int = 0
    records: int = 0
    uncommitted_bytes: int = 0
    canonical: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stream(
    path: Path,
    shown: str,
    stream: str,
    layout: StreamLayout,
    *,
    finished: bool,
    codec: Codec = "none",
) -> StreamCheck:
    """Read a stream file and compare it with its committed segments.

    A plain file is read once. A compressed file is read twice: once for the SHA-256, then
    segment by segment for the lines.
    """
    committed_end = layout.committed_end
    check = StreamCheck(stream, shown, None, committed_end, layout.records)
    check.problems.extend(_tiling_problems(layout))

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if committed_end > 0:
            check.problems.append(
                f"the file is missing, but the manifest proves {committed_end} bytes committed"
            )
        else:
            check.notes.append("the file is missing; it has no committed bytes")
            check.sha256 = hashlib.sha256().hexdigest()
        return check
    check.size = size

    if size < committed_end:
        check.problems.append(
            f"the file has {size} bytes, but the manifest proves {committed_end} committed"
        )
    elif size > committed_end:
        check.uncommitted_bytes = size - committed_end
        if finished:
            check.problems.append(
                f"{size - committed_end} bytes follow the committed end at byte "
                f"{committed_end}; a finished run's file must end there"
            )
        else:
            check.notes.append(
                f"{size - committed_end} uncommitted bytes after the committed end at byte "
                f"{committed_end} (a session may be writing them; the next session cuts them off)"
            )

    if codec == "none":
        _scan(path, check, layout)
    else:
        _scan_compressed(path, check, layout, codec)
    return check


def _tiling_problems(layout: StreamLayout) -> list[str]:
    problems = []
    position = 0
    for segment in layout.segments:
        if segment.start > position:
            problems.append(
                f"manifest: bytes {position}..{segment.start} belong to no committed entry"
            )
        elif segment.start < position:
            problems.append(
                f"manifest: {segment.label} (bytes {segment.start}..{segment.end}) overlaps "
                f"the entry before it"
            )
        position = max(position, segment.end)
    return problems


def _scan(path: Path, check: StreamCheck, layout: StreamLayout) -> None:
    """Hash, count and parse the committed lines, and count each segment's lines.

    The file is read a block of whole lines at a time, so that splitting, parsing and
    hashing run in C, and the Python loops run once per segment rather than once per line.
    """
    segments = layout.segments
    counts = [0] * len(segments)
    # Canonical entries record the SHA-256 of bytes 0..end, so the hash is also taken there.
    marks = sorted({segment.end for segment in segments if segment.sha256 and segment.end > 0})
    walk = _SegmentWalk(segments, counts)
    bad_lines: list[int] = []
    hasher = hashlib.sha256()
    offset = 0

    with path.open("rb") as file:
        for chunk in _line_blocks(file, check.committed_end):
            prefixes = _hash_chunk(hasher, chunk, offset, marks)

            lines = chunk.split(b"\n")
            if chunk.endswith(b"\n"):
                lines.pop()
            else:
                check.problems.append(
                    f"the committed bytes end inside a line at byte {offset + len(chunk)} "
                    "(the file was cut or changed)"
                )
            bad_lines.extend(check.lines + 1 + index for index in _invalid_json(lines))
            check.lines += len(lines)

            walk.advance(offset, chunk, _line_ends(lines, offset, chunk), check, prefixes)
            offset += len(chunk)

    check.records = check.lines - len(bad_lines)
    check.sha256 = hasher.hexdigest()
    # A canonical prefix followed by later pages is verified, but the file is not canonical.
    check.canonical = check.canonical and layout.canonical is not None
    if walk.crossed is not None:
        check.problems.append(walk.crossed)
    else:
        for segment, count, crc in zip(segments, counts, walk.crcs, strict=True):
            if segment.sha256 is not None and segment.end == 0:
                _compare_canonical(check, segment, hashlib.sha256().hexdigest())
            if offset < segment.end:
                continue
            if count != segment.lines:
                check.problems.append(
                    f"{segment.label} (bytes {segment.start}..{segment.end}) contains {count} "
                    f"lines, but the manifest records {segment.lines}"
                )
            elif segment.crc is not None and crc != segment.crc:
                check.problems.append(_crc_problem(segment))
    if bad_lines:
        check.problems.append(_bad_lines_problem(bad_lines))
    if offset >= check.committed_end and check.lines != check.expected_records:
        check.problems.append(
            f"{check.lines} committed lines, but the manifest records {check.expected_records}"
        )


def _line_blocks(file: BinaryIO, limit: int) -> Iterator[bytes]:
    """Yield bytes 0..limit of ``file`` in blocks that each end after a newline.

    Only the last block may end inside a line, where the file or the limit cut it. A line
    longer than a block is joined from its parts once its newline arrives.
    """
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        block = file.read(min(HASH_BLOCK, remaining))
        if not block:
            break
        remaining -= len(block)

        cut = block.rfind(b"\n") + 1
        if cut == 0:
            parts.append(block)
            continue
        parts.append(block if cut == len(block) else block[:cut])
        yield b"".join(parts)
        parts = [block[cut:]] if cut < len(block) else []
    if parts:
        yield b"".join(parts)


def _hash_chunk(hasher: Any, chunk: bytes, offset: int, marks: list[int]) -> dict[int, str]:
    """Add ``chunk``, which starts at byte ``offset``, to ``hasher``.

    Returns the SHA-256 of bytes 0..mark for each of the sorted ``marks`` inside the chunk.
    """
    prefixes = {}
    position = 0
    view = memoryview(chunk)
    for mark in marks[bisect_right(marks, offset) : bisect_right(marks, offset + len(chunk))]:
        hasher.update(view[position : mark - offset])
        position = mark - offset
        prefixes[mark] = hasher.copy().hexdigest()
    hasher.update(view[position:])
    return prefixes


def _invalid_json(lines: list[bytes]) -> list[int]:
    """Return the indexes of the lines that do not parse as JSON."""
    try:
        # A deque of length 0 drops each record once parsed, so a block's records are never
        # all in memory.
        deque(map(orjson.loads, lines), maxlen=0)
    except orjson.JSONDecodeError:
        pass
    else:
        return []

    invalid = []
    for index, line in enumerate(lines):
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            invalid.append(index)
    return invalid


def _line_ends(lines: list[bytes], offset: int, chunk: bytes) -> list[int]:
    """Return the byte position after each line of ``chunk``, which starts at byte ``offset``.

    ``lines`` are the chunk's lines without their newlines. When the chunk does not end with a
    newline, its last line had none to remove.
    """
    # The end of line k is offset + (lengths of lines 0..k) + (k + 1 newlines).
    ends = list(map(add, accumulate(map(len, lines)), range(offset + 1, offset + 1 + len(lines))))
    if ends and not chunk.endswith(b"\n"):
        ends[-1] -= 1
    return ends


class _SegmentWalk:
    """A pass over a file's lines, in file order, that gives each to the segment it starts in.

    A line belongs to the first segment that ends after the line starts. The first line that
    ends past the end of its segment is reported in ``crossed``, and no line is counted after
    it. The walk keeps its place between blocks.
    """

    def __init__(self, segments: list[Segment], counts: list[int]) -> None:
        self.segments = segments
        self.counts = counts
        self.crcs = [0] * len(segments)
        """The CRC-32 of each segment's lines so far, for the segments whose entry has one."""
        self.index = 0
        self.crossed: str | None = None

    def advance(
        self,
        offset: int,
        block: bytes,
        ends: list[int],
        check: StreamCheck,
        prefixes: dict[int, str],
    ) -> None:
        """Count and checksum the lines of ``block``, which starts at byte ``offset`` and whose
        lines end at ``ends``."""
        if not ends or self.crossed is not None:
            return
        view = memoryview(block)
        starts = [offset, *ends[:-1]]
        first = 0  # the first line of the block that no segment has taken yet

        while first < len(ends) and self.index < len(self.segments):
            segment = self.segments[self.index]
            last = bisect_left(starts, segment.end, first)  # lines first..last-1 start in it
            if last > first:
                line_end = ends[last - 1]
                if line_end > segment.end:
                    self.crossed = (
                        f"the line at bytes {starts[last - 1]}..{line_end} crosses the end of "
                        f"{segment.label} at byte {segment.end}"
                    )
                    return
                self.counts[self.index] += last - first
                if segment.crc is not None:
                    lines = view[starts[first] - offset : line_end - offset]
                    self.crcs[self.index] = zlib.crc32(lines, self.crcs[self.index])
                if segment.sha256 is not None and line_end == segment.end:
                    _compare_canonical(check, segment, prefixes[segment.end])
                first = last
            if last == len(ends):
                return  # the segment may go on in the next block
            self.index += 1


def _crc_problem(segment: Segment) -> str:
    return (
        f"{segment.label} (bytes {segment.start}..{segment.end}): its lines do not match the "
        "CRC-32 that the manifest records, so a byte or their order was changed"
    )


def _scan_compressed(path: Path, check: StreamCheck, layout: StreamLayout, codec: Codec) -> None:
    """Hash the committed compressed bytes, then decompress each segment and count its lines.

    Lines are numbered across segments in file order, as in a plain file. Segments that
    reach past the end of a short file are skipped, because ``check_stream`` already
    reports the missing bytes.
    """
    size = check.size or 0
    canonical_ends = {segment.end for segment in layout.segments if segment.sha256 is not None}
    bad_lines: list[int] = []

    with path.open("rb") as file:
        check.sha256, prefix_sha256 = _hash_prefix(file, check.committed_end, canonical_ends)
        for segment in layout.segments:
            if segment.end > size:
                continue
            where = f"{segment.label} (bytes {segment.start}..{segment.end})"
            count = crc = 0
            try:
                for line in range_lines(file, segment.start, segment.end, codec):
                    count += 1
                    crc = zlib.crc32(line, crc)
                    check.lines += 1
                    if not line.endswith(b"\n"):
                        check.problems.append(f"{where} ends inside a line")
                    try:
                        orjson.loads(line)
                    except orjson.JSONDecodeError:
                        bad_lines.append(check.lines)
                    else:
                        check.records += 1
            except DecompressionError as error:
                check.problems.append(f"{where} does not decompress: {error}")
                continue
            if count != segment.lines:
                check.problems.append(
                    f"{where} contains {count} lines, but the manifest records {segment.lines}"
                )
            elif segment.crc is not None and crc != segment.crc:
                check.problems.append(_crc_problem(segment))
            if segment.sha256 is not None and segment.end in prefix_sha256:
                _compare_canonical(check, segment, prefix_sha256[segment.end])

    check.canonical = check.canonical and layout.canonical is not None
    # Unlike ``_scan``, no total line count is compared: bytes outside every segment are not
    # decompressed, and ``_tiling_problems`` already reports them.
    if bad_lines:
        check.problems.append(_bad_lines_problem(bad_lines))


def _hash_prefix(file: BinaryIO, end: int, marks: set[int]) -> tuple[str, dict[int, str]]:
    """Return the SHA-256 of bytes ``0..end`` of ``file`` and of each prefix ``0..mark``.

    A file shorter than ``end`` is hashed up to its own end, and the marks past that end
    get no hash.
    """
    hasher = hashlib.sha256()
    prefixes: dict[int, str] = {}
    position = 0
    file.seek(0)
    for stop in sorted({*marks, end}):
        while position < stop:
            block = file.read(min(HASH_BLOCK, stop - position))
            if not block:
                return hasher.hexdigest(), prefixes
            hasher.update(block)
            position += len(block)
        prefixes[stop] = hasher.hexdigest()
    return hasher.hexdigest(), prefixes


def _bad_lines_problem(bad_lines: list[int]) -> str:
    listed = ", ".join(str(number) for number in bad_lines[:LISTED_BAD_LINES])
    more = len(bad_lines) - LISTED_BAD_LINES
    if more > 0:
        listed += f" and {more} more"
    if len(bad_lines) == 1:
        return f"1 committed line is not valid JSON (line {listed})"
    return f"{len(bad_lines)} committed lines are not valid JSON (line {listed})"


def _compare_canonical(check: StreamCheck, segment: Segment, actual: str) -> None:
    if actual == segment.sha256:
        check.canonical = True
        return
    problem = (
        f"the SHA-256 of bytes 0..{segment.end} is {actual}, but the canonical entry "
        f"records {segment.sha256}"
    )
    check.problems.append(problem)


def prefix_sha256(path: Path, length: int) -> str:
    """Return the SHA-256 of the first ``length`` bytes of a file, such as the part of a
    manifest that a run record describes."""
    with path.open("rb") as file:
        return hashlib.sha256(file.read(length)).hexdigest()


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of a whole file, read in blocks."""
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(HASH_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


# --- checking a run ----------------------------------------------------------------------------


@dataclass(slots=True)
class RunCheck:
    """The result of verifying one run."""

    paths: RunPaths
    scan: ManifestScan
    streams: list[StreamCheck]
    problems: list[str] = field(default_factory=list)
    """Problems with files other than stream files: the run record and the bag."""
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> ManifestState:
        return self.scan.state

    @property
    def finished(self) -> bool:
        return self.scan.finished

    @property
    def codec(self) -> Codec:
        """The compression of the run's stream files, from the manifest header."""
        return run_codec(self.state.header)

    @property
    def ok(self) -> bool:
        return not self.problems and all(stream.ok for stream in self.streams)

    @property
    def mismatches(self) -> int:
        return len(self.problems) + sum(len(stream.problems) for stream in self.streams)


@contextmanager
def _quiet_journal() -> Iterator[None]:
    """Silence the journal's warning about an unfinished last line.

    The callers report the dropped bytes themselves, so the warning would repeat it.
    """
    journal_logger = logging.getLogger("tm_export.journal")
    level = journal_logger.level
    journal_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        journal_logger.setLevel(level)


def check_run(
    paths: RunPaths,
    *,
    check_bag: bool = True,
    expect_record: bool = False,
    scan: ManifestScan | None = None,
) -> RunCheck:
    """Verify every stream file of a run, then its run record and bag when it has them.

    A run record is compared only while the manifest is as the record describes it.
    Later entries (a canonical rewrite, a resumed session) make it out of date, not wrong.
    With ``expect_record``, a finished run without a record gets a note, because without
    one a changed byte inside a line goes unnoticed. ``scan`` is the run's manifest as
    ``scan_manifest`` returned it, when the caller has read it already.

    Raises:
        ManifestError: the manifest is damaged.
    """
    scan = scan or scan_manifest(paths)
    finished, layouts = scan.finished, scan.layouts
    codec = run_codec(scan.state.header)
    streams = [
        check_stream(
            paths.stream_file(name, codec),
            paths.shown(paths.stream_file(name, codec)),
            name,
            layout,
            finished=finished,
            codec=codec,
        )
        for name, layout in layouts.items()
    ]
    check = RunCheck(paths, scan, streams)
    if scan.extent.dropped_bytes:
        check.notes.append(
            f"{paths.shown(paths.manifest)}: an unfinished last line of {scan.extent.dropped_bytes} "
            "bytes was ignored (a session may be writing it)"
        )
    for stream in streams:
        _note_unfinished_canonical(paths, stream, codec)
    _note_partly_canonical(paths, streams, layouts, check)
    _note_other_files(paths, layouts, check)
    if paths.record.exists():
        _compare_record(paths, check)
    elif expect_record and finished:
        note = f"{paths.shown(paths.record)} is missing, so no SHA-256 was compared with a record"
        if check.ok:
            # record refuses a run with mismatches, so it is offered only when there are none.
            note += (
                f"; 'tm-export record {paths.folder}' writes one that trusts the files as they "
                "are now"
            )
        check.notes.append(note)
    if paths.bagged and check_bag:
        _compare_bag(paths, check)
    return check


def canonical_temporary_path(stream_file: Path) -> Path:
    """Return where ``tm-export canonical`` writes a stream file's sorted copy before the rename."""
    return stream_file.with_name(f".{stream_file.name}.canonical")


def _note_unfinished_canonical(paths: RunPaths, stream: StreamCheck, codec: Codec) -> None:
    temporary = canonical_temporary_path(paths.stream_file(stream.stream, codec))
    # Also once the stream's canonical entry is written: the rename after it is pending.
    if temporary.exists():
        stream.notes.append(
            f"a canonical rewrite was interrupted ({paths.shown(temporary)} is left); run "
            f"'tm-export canonical {paths.folder}' again to finish it"
        )


def _note_partly_canonical(
    paths: RunPaths,
    streams: list[StreamCheck],
    layouts: dict[str, StreamLayout],
    check: RunCheck,
) -> None:
    """Note a run whose canonical rewrite stopped between two streams.

    ``tm-export canonical`` rewrites every stream file in turn, and nothing but it marks a
    file canonical, so some files canonical and others not means it was interrupted.
    """
    with_files = [stream for stream in streams if stream.size is not None]
    # Marked by an entry, whether or not the file matches it: a mismatch is a problem of its own.
    done = sum(1 for stream in with_files if layouts[stream.stream].canonical is not None)
    if 0 < done < len(with_files):
        check.notes.append(
            f"only {done} of {len(with_files)} stream files are in canonical order, so a "
            f"canonical rewrite was interrupted; run 'tm-export canonical {paths.folder}' "
            "again to finish it"
        )


def _note_other_files(paths: RunPaths, layouts: dict[str, StreamLayout], check: RunCheck) -> None:
    """Note the files that no run writes: beside the manifest, and among the stream files.
    Hidden ones (a spool folder, a canonical copy) are the run's own leftovers."""
    for child in sorted(paths.root.iterdir()):
        if child.name not in RUN_FILES and not child.name.startswith("."):
            check.notes.append(f"{paths.shown(child)}: not a file of this run; not verified")
    data = paths.root / DATA_FOLDER
    if not data.is_dir():
        return
    known = {paths.stream_file(name, check.codec).name for name in layouts}
    for child in sorted(data.iterdir()):
        if child.name not in known and not child.name.startswith("."):
            check.notes.append(f"{paths.shown(child)}: not a stream of this run; not verified")


def _compare_record(paths: RunPaths, check: RunCheck) -> None:
    shown = paths.shown(paths.record)
    try:
        record = orjson.loads(paths.record.read_bytes())
        described = record["streams"]
        if not isinstance(described, dict):
            raise TypeError("streams is not a mapping")
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        check.problems.append(f"{shown}: not a valid run record ({error})")
        return

    if record.get("recipe", {}).get("export_hash") != check.state.header.get("recipe_hash"):
        check.problems.append(f"{shown}: its recipe hash differs from the manifest's")
    # The record describes the manifest as it was. A longer manifest has newer entries (a
    # canonical rewrite, a resumed session) that the record does not describe.
    manifest = record.get("manifest", {})
    if not isinstance(manifest, dict):
        check.problems.append(f"{shown}: not a valid run record (manifest is not an object)")
        return
    recorded_bytes = manifest.get("bytes")
    valid_bytes = check.scan.extent.valid_bytes
    if not isinstance(recorded_bytes, int) or recorded_bytes > valid_bytes:
        check.problems.append(
            f"{paths.shown(paths.manifest)}: {valid_bytes} bytes, but {shown} records "
            f"{recorded_bytes}; restore the manifest from a copy"
        )
        return
    # Entries are only ever added, so the bytes the record describes must be unchanged.
    actual = prefix_sha256(paths.manifest, recorded_bytes)
    if actual != manifest.get("sha256"):
        part = "" if recorded_bytes == valid_bytes else f"the first {recorded_bytes} bytes of "
        check.problems.append(
            f"{paths.shown(paths.manifest)}: the SHA-256 of {part}the manifest is {actual}, but "
            f"{shown} records {manifest.get('sha256')}; restore the manifest from a copy"
        )
        return
    if recorded_bytes < valid_bytes:
        check.notes.append(
            f"{paths.shown(paths.manifest)} has grown since {shown} was written, so only the "
            f"part the record describes was compared; run 'tm-export record {paths.folder}' "
            "again"
        )
        return

    for stream in check.streams:
        entry = described.get(stream.stream)
        if not isinstance(entry, dict):
            stream.problems.append(f"{shown} has no entry for this file")
        elif stream.size is None:
            continue  # the file is missing, which its check reports
        elif entry.get("bytes") != stream.committed_end:
            stream.problems.append(
                f"the manifest proves {stream.committed_end} bytes, but {shown} records "
                f"{entry.get('bytes')}"
            )
        elif entry.get("sha256") != stream.sha256:
            stream.problems.append(
                f"the SHA-256 is {stream.sha256}, but {shown} records {entry.get('sha256')}"
            )
        elif entry.get("records") != stream.records:
            stream.problems.append(
                f"{stream.records} records, but {shown} records {entry.get('records')}"
            )
    if check.ok and not paths.bagged:
        _compare_record_fields(paths, check, record)


#: The fields of a run record that come straight from the manifest's header and sessions,
#: compared by ``_compare_record_fields``. The run's name is left out, since a run folder may
#: be copied under another name.
RECORD_FIELDS = (
    "tool",
    "recipe",
    "base_url",
    "tm_release",
    "authenticated",
    "started",
    "ended",
    "outcome",
    "sessions",
    "incremental",
    "deleted_projects",
    "merged_from",
)
#: The same for each stream's entry.
RECORD_STREAM_FIELDS = (
    "file",
    "records",
    "bytes",
    "sha256",
    "canonical",
    "duplicates",
    "partitions",
)
#: The lists of each stream's entry, compared without their order: earlier versions sorted
#: partition ids as text, so project 10 came before project 9.
RECORD_STREAM_LISTS = ("skipped", "failed", "problems")


def _compare_record_fields(paths: RunPaths, check: RunCheck, record: dict[str, Any]) -> None:
    """Add a problem naming each field of the run record that differs from the record that
    the manifest and the files give now, rebuilt as 'tm-export record' does."""
    # Imported here, since the run record's module builds on this one.
    from .runrecord import FORMAT, build_run_record

    if record.get("format") != FORMAT:
        check.notes.append(
            f"{paths.shown(paths.record)} is in format {record.get('format')!r}, not "
            f"{FORMAT!r}, so only its hashes and counts were compared"
        )
        return
    expected = build_run_record(check)
    differing = [key for key in RECORD_FIELDS if expected.get(key) != record.get(key)]
    recorded_streams = record.get("streams", {})
    for name, stream in expected["streams"].items():
        recorded = recorded_streams.get(name, {}) if isinstance(recorded_streams, dict) else {}
        recorded = recorded if isinstance(recorded, dict) else {}
        differing += [
            f"streams.{name}.{key}"
            for key in RECORD_STREAM_FIELDS
            if stream.get(key) != recorded.get(key)
        ]
        differing += [
            f"streams.{name}.{key}"
            for key in RECORD_STREAM_LISTS
            if _unordered(stream.get(key)) != _unordered(recorded.get(key))
        ]
    if differing:
        check.problems.append(
            f"{paths.shown(paths.record)}: {', '.join(differing)} "
            f"{'differs' if len(differing) == 1 else 'differ'} from what the manifest and the "
            "files give; restore the record from a copy, or delete it and run 'tm-export record "
            f"{paths.folder}' to write it anew from them"
        )


def _unordered(entries: Any) -> list[bytes] | None:
    """Return a list's entries as canonical JSON in sorted order, or None if it is no list."""
    if not isinstance(entries, list):
        return None
    return sorted(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS) for entry in entries)


def _compare_bag(paths: RunPaths, check: RunCheck) -> None:
    """Check the bag's completeness and SHA-256 manifests, reusing the stream files' hashes."""
    # Imported here: only bagged runs need it, and every run imports this module for its record.
    import bagit  # type: ignore[import-untyped]

    try:
        bag = bagit.Bag(str(paths.folder))
    except bagit.BagError as error:
        check.problems.append(f"bag: {error}")
        return
    try:
        bag.validate(completeness_only=True)
    except bagit.BagError as error:
        # Its message counts files and bytes; the hashes below name the files that changed.
        check.problems.append(f"bag: {error}")
    if "sha256" not in bag.algorithms:
        try:
            bag.validate()
        except bagit.BagError as error:
            check.problems.append(f"bag: {error}")
        return

    known = {
        paths.shown(paths.stream_file(stream.stream, check.codec)): stream
        for stream in check.streams
        if stream.size is not None and stream.uncommitted_bytes == 0
    }
    for relative, hashes in sorted(bag.entries.items()):
        expected = hashes.get("sha256")
        if expected is None:
            continue
        stream = known.get(relative)
        try:
            actual = stream.sha256 if stream is not None else file_sha256(paths.folder / relative)
        except OSError:
            check.problems.append(f"bag: {relative}: the file is missing")
            continue
        if actual == expected.lower():
            continue
        problem = f"the SHA-256 is {actual}, but the bag's manifest records {expected.lower()}"
        if stream is not None:
            stream.problems.append(f"bag: {problem}")
        else:
            check.problems.append(f"bag: {relative}: {problem}")


# --- output ----------------------------------------------------------------------------------

#: Labels of a finished run that exited 3, shared by the summary, ``status`` and ``verify``.
FAILURES_LABEL = "finished with failures"
PROBLEMS_LABEL = "finished with problems"


def run_state_label(finished: bool, state: ManifestState) -> str:
    """Return ``complete``, ``unfinished``, or what made a finished run end with failures.

    That is ``finished with problems`` when no partition failed but an integrity check
    found a problem, and ``finished with failures`` otherwise. ``--strict`` changes only the
    exit code, so a run that it failed for skipped partitions is ``complete`` here.
    """
    if not finished:
        return "unfinished"
    if state.ends[-1].get("outcome") == "complete":
        return "complete"
    streams = state.streams.values()
    if any(p.state == "failed" for stream in streams for p in stream.partitions.values()):
        return FAILURES_LABEL
    if any(
        stream.problems or any(final.get("problems") for _, final in stream.finals())
        for stream in streams
    ):
        return PROBLEMS_LABEL
    return FAILURES_LABEL


def format_checks(checks: list[RunCheck], unreadable: int = 0) -> str:
    """Return the report of ``tm-export verify`` as text.

    ``unreadable`` counts the runs whose manifest could not be read, which the command
    reports as errors (exit 1).
    """
    lines: list[str] = []
    for check in checks:
        flags = [run_state_label(check.finished, check.state)]
        if check.paths.bagged:
            flags.append("a bag")
        count = len(check.streams)
        lines.append(f"{check.paths.folder}: {', '.join(flags)}; {counted(count, 'stream file')}")
        for stream in check.streams:
            if stream.ok:
                canonical = ", canonical" if stream.canonical else ""
                lines.append(
                    f"  ok        {stream.file}: {counted(stream.records, 'record')}, "
                    f"{stream.committed_end} bytes{canonical}, sha256 {stream.sha256}"
                )
            for problem in stream.problems:
                lines.append(f"  MISMATCH  {stream.file}: {problem}")
            for note in stream.notes:
                lines.append(f"  note      {stream.file}: {note}")
        for problem in check.problems:
            lines.append(f"  MISMATCH  {problem}")
        for note in check.notes:
            lines.append(f"  note      {note}")

    mismatches = sum(check.mismatches for check in checks)
    files = sum(len(check.streams) for check in checks)
    bad_files = sum(1 for check in checks for stream in check.streams if not stream.ok)
    runs = counted(len(checks), "run")
    if mismatches:
        result = (
            f"verified {runs}: {counted(mismatches, 'mismatch', 'mismatches')} "
            f"({bad_files} of {counted(files, 'stream file')})"
        )
    else:
        agree = "matches" if files == 1 else "match"
        result = f"verified {runs}: {counted(files, 'stream file')} {agree} the manifest"
    if unreadable:
        result += f"; {counted(unreadable, 'run')} not read (see the errors below); exit 1"
    elif mismatches:
        result += "; exit 3"
    lines.append(result)
    return "\n".join(lines)


def checks_json(checks: list[RunCheck]) -> dict[str, Any]:
    """Return the report of ``tm-export verify --json`` as JSON-ready data."""
    return {
        "ok": all(check.ok for check in checks),
        "mismatches": sum(check.mismatches for check in checks),
        "runs": [
            {
                "folder": str(check.paths.folder),
                "state": run_state_label(check.finished, check.state),
                "bagged": check.paths.bagged,
                "ok": check.ok,
                "streams": {
                    stream.stream: {
                        "file": stream.file,
                        "ok": stream.ok,
                        "sha256": stream.sha256,
                        "bytes": stream.committed_end,
                        "size": stream.size,
                        "uncommitted_bytes": stream.uncommitted_bytes,
                        "lines": stream.lines,
                        "records": stream.records,
                        "expected_records": stream.expected_records,
                        "canonical": stream.canonical,
                        "problems": stream.problems,
                        "notes": stream.notes,
                    }
                    for stream in check.streams
                },
                "problems": check.problems,
                "notes": check.notes,
            }
            for check in checks
        ],
    }


def fsync_path(path: Path) -> None:
    """Make a file's contents, or a folder's entries, durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
