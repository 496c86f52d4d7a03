"""The manifest of a run: what is committed, and the commit protocol that keeps it true.

Commit protocol, for each group of pages:

1. the pages' lines are appended to their stream files (done as pages arrive);
2. every stream file with new bytes is flushed and fsynced;
3. the pages' manifest entries, with each page's byte range, are appended to the
   journal and the journal is fsynced.

A page counts as committed once step 3 is durable. A crash before that leaves bytes
past the committed end of a stream file, and the next run cuts them off. A crash after it
leaves nothing to repair. So a record is never both kept and fetched again, and a
committed record is never lost. See ``docs/reliability.md``.

Commits are grouped: ``Committer.run`` starts one at most every ``COMMIT_INTERVAL``
seconds, and sooner when half of ``MAX_UNCOMMITTED`` pages wait or a request waits for
room. At most
``MAX_UNCOMMITTED`` pages are being fetched, or written and not yet committed, at any
time: a request for a new page first reserves room for it (``reserve_room``), so a crash
throws away at most that many fetched pages.
"""

from __future__ import annotations

import logging
import os
import signal
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .clock import Clock, RealClock
from .codec import Codec, compress, compress_file
from .crashpoints import crash_due, crash_point
from .errors import StorageError
from .journal import Journal, JournalExtent, scan_journal
from .params import partition_order
from .sink import StreamFile

logger = logging.getLogger("tm_export.manifest")

#: Pages that may be written but not committed. A commit takes a few milliseconds, in which
#: a fast server serves a few hundred requests; the bound is far above that.
MAX_UNCOMMITTED = 1024


#: Seconds from the start of one grouped commit to the start of the next, unless half of
#: the bound of uncommitted pages waits. Each commit costs a hand-off to a worker thread
#: and an fsync per stream file with new bytes. At zero latency, committing each group
#: as soon as the last commit ended made about 3,500 fsyncs in W1's 4 s (240 with the
#: interval), and W1 took 4.04 CPU seconds where it takes 3.61 (docs/benchmarks.md). A
#: crash loses at most the pages fetched since the last commit, fetched again on resume.
COMMIT_INTERVAL = 0.1


def max_uncommitted() -> int:
    """Return the bound on uncommitted pages, lowered by tests with ``TM_EXPORT_MAX_UNCOMMITTED``.

    A low bound makes a kill at the N-th request find at least N - bound pages committed
    (without retries), however fast the commits of that machine are.
    """
    value = os.environ.get("TM_EXPORT_MAX_UNCOMMITTED", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_UNCOMMITTED


@dataclass(slots=True)
class PageRecord:
    """One committed page: where its lines are and how many records it held."""

    number: int
    start: int
    end: int
    records: int
    duplicates: int = 0
    has_next: bool = False


#: The final entry kept for every done partition without problems (see ``StreamState.done``).
DONE: dict[str, Any] = {"t": "part", "state": "done"}


@dataclass(slots=True)
class Reading:
    """The pagination facts reported by the pages of one reading of a partition, in order.

    Pages are offsets into a list that the server may change while they are read. A
    partition whose total changed during a reading may be read again, with a new reading
    number (see ``StreamRunner._read_again``). Each reading has its own pages.
    """

    number: int = 1
    page_count: int | None = None
    """The largest page count any page of this reading reported."""
    first_total: int | None = None
    last_total: int | None = None
    highest_total: int | None = None
    changed: bool = False
    """True when a page reported another total than the page before it."""
    fell: bool = False
    """True when a page reported a lower total than a page before it. Records after a
    removed one then move to earlier pages, some perhaps to pages already read."""

    def observe(self, page_count: int | None, total: int | None) -> None:
        """Note the pagination facts of one more page of this reading."""
        if page_count is not None and page_count > (self.page_count or 0):
            self.page_count = page_count
        if total is None:
            return
        if self.first_total is None:
            self.first_total = total
        if self.last_total is not None and total != self.last_total:
            self.changed = True
        if self.highest_total is not None and total < self.highest_total:
            self.fell = True
        if self.highest_total is None or total > self.highest_total:
            self.highest_total = total
        self.last_total = total


@dataclass(slots=True)
class PartitionState:
    """The state of one partition as the manifest proves it."""

    pages: dict[int, PageRecord] = field(default_factory=dict)
    """The committed pages of the first reading, by page number."""
    later_pages: dict[tuple[int, int], PageRecord] = field(default_factory=dict)
    """The committed pages of later readings, by reading and page number."""
    reading: Reading = field(default_factory=Reading)
    """The latest reading of the pages."""
    total_fell: bool = False
    """True when the total fell during any reading (see ``Reading.fell``)."""
    total: int | None = None
    final: dict[str, Any] | None = None
    filtered: bool = False
    """True when a committed page dropped records (see ``PartitionWalk.filtered``), so the
    records need not add up to the server's total."""

    @property
    def state(self) -> str:
        """``done``, ``skipped``, ``failed`` or ``pending``."""
        return str(self.final["state"]) if self.final else "pending"

    def all_pages(self) -> list[PageRecord]:
        """Return the committed pages of every reading."""
        if not self.later_pages:
            return list(self.pages.values())
        return [*self.pages.values(), *self.later_pages.values()]

    def has_page(self, number: int) -> bool:
        """Tell whether page ``number`` of the latest reading is committed."""
        if self.reading.number == 1:
            return number in self.pages
        return (self.reading.number, number) in self.later_pages

    def add_page(
        self, reading: int, page: PageRecord, page_count: int | None, total: int | None
    ) -> None:
        """Record a committed page of ``reading`` and the pagination facts it reported."""
        if reading == 1:
            self.pages[page.number] = page
        else:
            self.later_pages[(reading, page.number)] = page
            if reading > self.reading.number:
                self.reading = Reading(reading)
        current = self.reading
        # Nearly every page repeats the total and page count of the one before.
        if total != current.last_total or (page_count or 0) > (current.page_count or 0):
            current.observe(page_count, total)
            self.total_fell = self.total_fell or current.fell
        if total is not None:
            self.total = total


@dataclass(slots=True)
class StreamState:
    """The state of one stream file as the manifest proves it."""

    committed_end: int = 0
    last_page_start: int = 0
    """Start offset of the page that ends at ``committed_end``."""
    pages: int = 0
    records: int = 0
    duplicates: int = 0
    """Committed pages, records and duplicates of the stream, all partitions together."""
    partitions: dict[str, PartitionState] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Final entries of partitions that ended done, when replayed with ``keep_done_pages=False``;
    such partitions then have no ``PartitionState``. An entry without problems is ``DONE``."""
    known: tuple[int, int] | None = None
    """For a dependent stream, from its last ``known`` entry: the count of partitions that the
    parent's records gave this run, and the count of session entries before that entry."""
    problems: list[str] = field(default_factory=list)
    """Problems of the stream as a whole, from its ``feed`` entries, each message once: a
    ``from:`` field that names no value in any record of the parent stream."""
    read_again: set[str] = field(default_factory=set)
    """Partitions whose pages were read more than once, because their list changed while
    they were read (a final entry with ``readings``)."""
    finished_unconfirmed: int = 0
    """Final entries written since the token was last seen accepted: the last session entry
    whose check at the start passed, or a ``token`` entry of a check at the end that passed.
    A session whose check could not complete confirms nothing, so its entries add up."""

    def finals(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield the id and final entry of every finished partition, those kept in ``done``
        (see ``ManifestState.replay``) included."""
        for partition_id, partition in self.partitions.items():
            if partition.final is not None:
                yield partition_id, partition.final
        yield from self.done.items()

    def all_problems(self) -> Iterator[tuple[str | None, str]]:
        """Yield the stream's problems as (partition id, problem): those of the stream as a
        whole first, with None, then those of each finished partition, by partition id."""
        for problem in self.problems:
            yield None, problem
        # Most partitions have no problem, and the sort parses each id, so they go first.
        with_problems = [(pid, final) for pid, final in self.finals() if final.get("problems")]
        for partition_id, final in sorted(with_problems, key=lambda item: partition_order(item[0])):
            for problem in final["problems"]:
                yield partition_id, problem

    def partition(self, partition_id: str) -> PartitionState:
        state = self.partitions.get(partition_id)
        if state is None:
            state = self.partitions[partition_id] = PartitionState()
        return state


@dataclass(slots=True)
class ManifestState:
    """The replayed journal: header, sessions and per-stream state."""

    header: dict[str, Any]
    streams: dict[str, StreamState]
    sessions: list[dict[str, Any]]
    ends: list[dict[str, Any]]
    deleted: list[dict[str, Any]] = field(default_factory=list)
    """Projects an incremental run found gone since earlier runs."""
    canonical: list[dict[str, Any]] = field(default_factory=list)
    """Stream files rewritten in canonical order after the run finished."""
    last_session_ended: bool = False
    """True when an end entry follows the last session entry. A finished run that is run
    again with --retry-failed and stopped before its end has an end only before that session."""

    @classmethod
    def replay(
        cls, entries: Iterable[dict[str, Any]], *, keep_done_pages: bool = True
    ) -> ManifestState:
        """Rebuild the state from journal entries, header first.

        With ``keep_done_pages=False`` the pages of partitions that ended ``done`` are
        counted but not kept: a resume never needs them, and a run with many thousands of
        partitions then starts faster and smaller. The entries are read once, in order, so
        they can come from ``journal.scan_journal`` without being held all at once. A
        partition's pages come before its final entry, and a partition that ended done
        gets no later pages or final entry, so its pages are dropped when ``done`` arrives.
        """
        iterator = iter(entries)
        header = next(iterator)
        unfinished: dict[tuple[str, str], list[dict[str, Any]]] = {}
        streams: dict[str, StreamState] = {
            name: StreamState() for name in header.get("streams", {})
        }
        sessions: list[dict[str, Any]] = []
        ends: list[dict[str, Any]] = []
        deleted: list[dict[str, Any]] = []
        canonical: list[dict[str, Any]] = []
        ended = False

        for entry in iterator:
            kind = entry["t"]
            if kind == "page":
                # The hot loop of a resume: one pass per committed page of the run.
                name, end = entry["s"], entry["end"]
                stream = streams.get(name) or streams.setdefault(name, StreamState())
                stream.pages += 1
                stream.records += entry["records"]
                stream.duplicates += entry.get("dups", 0)
                if end >= stream.committed_end:
                    stream.committed_end, stream.last_page_start = end, entry["start"]
                if keep_done_pages:
                    _add_page(stream.partition(entry["p"]), entry)
                else:
                    # Most partitions end done, and then their pages are dropped: keep the
                    # entries until the partition's end is known, and build the page
                    # records only for those that are not done.
                    waiting = unfinished.get((name, entry["p"]))
                    if waiting is None:
                        unfinished[(name, entry["p"])] = [entry]
                    else:
                        waiting.append(entry)
            elif kind == "part":
                stream = streams.get(entry["s"]) or streams.setdefault(entry["s"], StreamState())
                stream.finished_unconfirmed += 1
                if "readings" in entry:
                    stream.read_again.add(entry["p"])
                if not keep_done_pages and entry["state"] == "done":
                    unfinished.pop((entry["s"], entry["p"]), None)
                    stream.partitions.pop(entry["p"], None)
                    # Only a final entry with problems adds to "done", so the others share
                    # one dict, which keeps a run of millions of partitions small.
                    stream.done[entry["p"]] = entry if entry.get("problems") else DONE
                else:
                    stream.partition(entry["p"]).final = entry
            elif kind == "session":
                sessions.append(entry)
                ended = False
                if entry.get("authenticated") is True:
                    for stream in streams.values():
                        stream.finished_unconfirmed = 0
            elif kind == "token":
                # The server judged the token after the session entry was written: it
                # rejected it, or accepted it in the check at the end.
                if sessions:
                    sessions[-1]["authenticated"] = entry["authenticated"]
                if entry["authenticated"] is True:
                    for stream in streams.values():
                        stream.finished_unconfirmed = 0
            elif kind == "end":
                ends.append(entry)
                ended = True
            elif kind == "deleted":
                deleted.append(entry)
            elif kind == "canonical":
                canonical.append(entry)
            elif kind == "known":
                stream = streams.get(entry["s"]) or streams.setdefault(entry["s"], StreamState())
                stream.known = (entry["partitions"], len(sessions))
            elif kind == "feed":
                # Each message counts once, should an entry ever be written twice.
                stream = streams.get(entry["s"]) or streams.setdefault(entry["s"], StreamState())
                if entry["problem"] not in stream.problems:
                    stream.problems.append(entry["problem"])

        for (name, partition_id), pages in unfinished.items():
            part = streams[name].partition(partition_id)
            for entry in pages:
                _add_page(part, entry)
        return cls(
            header=header,
            streams=streams,
            sessions=sessions,
            ends=ends,
            deleted=deleted,
            canonical=canonical,
            last_session_ended=ended,
        )

    @property
    def finished(self) -> bool:
        """True when the last session ended with every partition done, skipped or failed."""
        return self.last_session_ended and self.ends[-1].get("outcome") in ("complete", "failures")


class Committer:
    """Groups page entries and commits them with the protocol in the module docstring."""

    def __init__(
        self, journal: Journal, files: dict[str, StreamFile], codec: Codec = "none"
    ) -> None:
        self._journal = journal
        self._codec = codec
        self._files = files
        self._queue: list[dict[str, Any]] = []
        self._dirty: set[str] = set()
        self._lock = anyio.Lock()
        self._broken: StorageError | None = None
        self._uncommitted = 0
        """Pages written to their stream files whose entries are not durable yet."""
        self._reserved = 0
        """Pages that hold room from ``reserve_room`` until ``release_room``."""
        self._max_uncommitted = max_uncommitted()
        self._room: anyio.Event | None = None
        self._queued = anyio.Event()
        """Set when an entry waits for the next commit."""
        self._waiting_pages = 0
        """Pages queued for the next commit, not counting those of a commit under way."""
        self._pressed = False
        """Whether the next commit starts without a pause: half the bound waits, or a request
        waits for room."""
        self._pause: anyio.CancelScope | None = None
        """The pause between two commits while ``run`` is in it, which ``_press`` cancels."""
        self.committed_ends: dict[str, int] = {name: f.size for name, f in files.items()}
        self.pages_committed = 0
        self.records_committed = 0

    def write_page(self, stream: str, data: bytes | Path, entry: dict[str, Any]) -> tuple[int, int]:
        """Append a page's lines to its stream file, queue its manifest entry, return its range.

        ``data`` is the lines themselves, or a file that contains them (for a very large page).

        Raises:
            StorageError: the write failed. The committer then rejects every later write.
        """
        if self._broken is not None:
            raise self._broken
        try:
            crc = page_crc(data)
            if isinstance(data, Path):
                source = _compress_spooled(data, self._codec) if self._codec != "none" else data
                try:
                    start, end = self._files[stream].append_file(source)
                finally:
                    if source != data:
                        source.unlink(missing_ok=True)
            else:
                data = compress(data, self._codec)
                if crash_due("mid-page-write"):
                    self._files[stream].append(data[: len(data) // 2])
                    self._files[stream].flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                start, end = self._files[stream].append(data)
        except StorageError as error:
            self._broken = error
            self._make_room(0)
            raise
        self._queue.append(
            {"t": "page", "s": stream, **entry, "start": start, "end": end, "crc": crc}
        )
        self._uncommitted += 1
        self._waiting_pages += 1
        self._dirty.add(stream)
        self._queued.set()
        if self._waiting_pages * 2 >= self._max_uncommitted or self._room is not None:
            # Half the bound waits, or a request waits for room that only a commit makes.
            self._press()
        return start, end

    def record(self, entry: dict[str, Any]) -> None:
        """Queue an entry that refers to no new data (a finished partition, a session)."""
        self._queue.append(entry)
        self._queued.set()

    async def reserve_room(self) -> None:
        """Wait for room for one more page, and hold it; call before fetching the page.

        Pages reserved and pages written but not committed together stay within the bound.
        Call ``release_room`` once the page is written or has failed.

        Raises:
            StorageError: a commit failed, so no page can be committed any more.
        """
        while self._full() and self._broken is None:
            if self._waiting_pages:
                # The commit that makes room starts now rather than after the interval.
                self._press()
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if self._broken is not None:
            raise self._broken
        self._reserved += 1

    def release_room(self) -> None:
        """Give back the room of a page that ``reserve_room`` held."""
        self._reserved -= 1
        self._make_room(0)

    def _full(self) -> bool:
        return self._uncommitted + self._reserved >= self._max_uncommitted

    def _make_room(self, pages: int) -> None:
        self._uncommitted -= pages
        if self._room is not None and (not self._full() or self._broken is not None):
            self._room.set()
            self._room = None

    async def run(self, interval: float = COMMIT_INTERVAL, clock: Clock | None = None) -> None:
        """Commit queued entries in groups until cancelled; the caller commits the last group.

        A commit starts when an entry is queued, but no sooner than ``interval`` seconds
        after the start of the one before, unless half the bound of uncommitted pages waits
        for it first. Pages written meanwhile join the next group. The pauses take real
        time unless a test passes its own ``clock``: they are not the engine's clock's
        waits (backoff, rate limit), which tests count and skip.

        Raises:
            StorageError: a flush, fsync or journal write failed.
        """
        clock = clock or RealClock()
        while True:
            await self._queued.wait()
            self._queued = anyio.Event()
            self._pressed = False
            began = clock.monotonic()

            await self.commit()

            pause = began + interval - clock.monotonic()
            if pause > 0 and not self._pressed:
                with anyio.CancelScope() as self._pause:
                    await clock.sleep(pause)
                self._pause = None

    def _press(self) -> None:
        """Start the next commit without waiting for the rest of the interval."""
        self._pressed = True
        if self._pause is not None:
            self._pause.cancel()

    async def commit(self) -> None:
        """Make every queued entry durable, data first.

        Raises:
            StorageError: a flush, fsync or journal write failed; nothing more is committed.
        """
        # Shielded: a commit cancelled half-way would drop entries whose data is already
        # written, and the next session would fetch those pages again.
        with anyio.CancelScope(shield=True):
            await self._commit()

    async def _commit(self) -> None:
        async with self._lock:
            if self._broken is not None:
                raise self._broken
            if not self._queue:
                return
            entries, self._queue = self._queue, []
            self._waiting_pages = 0
            dirty = [self._files[name] for name in sorted(self._dirty)]
            self._dirty = set()

            try:
                for file in dirty:
                    file.flush()
                # One trip to a worker thread, not two: under load the event loop holds the
                # GIL, and each return from a thread can wait for the interpreter's switch
                # interval (5 ms), which would delay every commit.
                await anyio.to_thread.run_sync(self._make_durable, dirty, entries)
            except StorageError as error:
                self._broken = error
                self._make_room(0)
                raise

            pages = 0
            for entry in entries:
                if entry["t"] == "page":
                    self.committed_ends[entry["s"]] = max(
                        self.committed_ends[entry["s"]], entry["end"]
                    )
                    self.pages_committed += 1
                    self.records_committed += entry["records"]
                    pages += 1
            self._make_room(pages)

    def _make_durable(self, dirty: list[StreamFile], entries: list[dict[str, Any]]) -> None:
        """Fsync the data files, then append and fsync the entries that describe them."""
        for file in dirty:
            file.fsync()
        crash_point("after-data-fsync")
        self._journal.append(entries)
        crash_point("after-manifest-append")


def _compress_spooled(data: Path, codec: Codec) -> Path:
    """Compress a spooled page's lines into a file beside them; return that file."""
    try:
        return compress_file(data, codec)
    except OSError as error:
        raise StorageError(
            f"{error.filename or data}: cannot write a compressed page: {error.strerror}"
        ) from error


def page_crc(data: bytes | Path) -> int:
    """Return the CRC-32 of a page's lines before compression: ``data`` or the file's bytes.

    The page entry records it, so that ``verify`` finds a page whose bytes were changed in
    place even without the run record's SHA-256. A CRC catches accidents, not forgery.
    """
    if isinstance(data, bytes):
        return zlib.crc32(data)
    crc = 0
    try:
        with data.open("rb") as file:
            while block := file.read(1 << 20):
                crc = zlib.crc32(block, crc)
    except OSError as error:
        raise StorageError(f"{data}: cannot read a spooled page: {error.strerror}") from error
    return crc


def sent_token(session: dict[str, Any]) -> bool:
    """Tell whether a session sent an API token, so it may have read private projects.

    Sessions record it under ``token``. Manifests older than that key recorded only
    ``authenticated``, which was true exactly for the sessions whose token passed its check.
    """
    return bool(session.get("token", session.get("authenticated")))


def latest_session(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the session entry that started last, or an empty dict when there is none.

    A run's own sessions are in the order they started. A merged run lists each shard's
    sessions in shard order, so the last entry in the file need not be the newest.
    """
    if not sessions:
        return {}
    # Start times are ISO 8601 UTC text of one layout, so the greatest string is the newest.
    # max keeps the first of equal keys, and the reversed list makes that the later entry.
    return max(reversed(sessions), key=lambda session: str(session.get("at", "")))


def latest_finals(states: list[ManifestState], stream: str) -> dict[str, str]:
    """Return, per partition id of ``stream``, its final state in the newest of ``states``
    (oldest first) that finished it."""
    latest: dict[str, str] = {}
    for state in states:
        if stream in state.streams:
            for partition, final in state.streams[stream].finals():
                latest[partition] = final["state"]
    return latest


def _add_page(part: PartitionState, entry: dict[str, Any]) -> None:
    """Record a committed page entry in its partition's state."""
    page = PageRecord(
        entry["n"],
        entry["start"],
        entry["end"],
        entry["records"],
        entry.get("dups", 0),
        bool(entry.get("next")),
    )
    part.add_page(entry.get("reading", 1), page, entry.get("pages"), entry.get("total"))
    if entry.get("filtered"):
        part.filtered = True


def load_state(path: Path, *, keep_done_pages: bool = True) -> tuple[ManifestState, JournalExtent]:
    """Read the journal at ``path`` and replay it (see ``ManifestState.replay``).

    Raises:
        ManifestError: the journal is damaged (see ``journal.scan_journal``).
    """
    extent, entries = scan_journal(path)
    return ManifestState.replay(entries, keep_done_pages=keep_done_pages), extent
