"""Writing the pages of one stream: records checked, de-duplicated and committed as lines.

``StreamRunner`` decides which pages to fetch and fetches them. ``PageWriter`` turns each
body into lines of the stream file, commits them with their manifest entry, and updates
the partition's walk and the stream's counts. It stops a walk whose page repeats records,
is empty but reports more pages, or completes the total the server announced. It also
reads back the pages that earlier sessions committed, to rebuild a partition's record keys.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import ijson
import orjson

from .codec import Codec, decompress
from .errors import ManifestError, StorageError
from .incremental import updated_since
from .manifest import Committer, PageRecord
from .params import partition_label
from .recipe import StreamSpec
from .records import ShapeError, encode_lines, extract_records, record_key, strip_partition
from .walk import (
    PageResult,
    PartitionWalk,
    StreamStats,
    pagination_facts,
    with_partition,
)

logger = logging.getLogger("tm_export.pages")


def _check_record_list(records: str, source: BinaryIO) -> None:
    """Raise ShapeError, as ``extract_records`` does for a body in memory, unless the JSON
    body in ``source`` is an object whose ``records`` key has a list or null."""
    events = ijson.parse(source, use_float=True)
    for prefix, event, value in events:
        if prefix != "" or event in ("start_map", "end_map"):
            continue
        if event != "map_key":
            raise ShapeError(
                f"expected a JSON object with '{records}', got {_json_type(event, value)}"
            )
        if value == records:
            _, event, value = next(events)
            if event in ("start_array", "null"):
                return
            raise ShapeError(f"'{records}' is {_json_type(event, value)}, not a list")
    raise ShapeError(f"the response has no '{records}' key")


def _json_type(event: str, value: Any) -> str:
    """Return the Python type name of the value that an ijson event starts."""
    if event == "start_map":
        return "dict"
    if event == "start_array":
        return "list"
    return type(value).__name__


def _page_entry(
    walk: PartitionWalk,
    number: int,
    records: int,
    duplicates: int,
    page_count: int | None,
    total: int | None,
    has_next: bool,
) -> dict[str, Any]:
    """Return the manifest entry of a page, without the byte range that the write adds."""
    entry: dict[str, Any] = {
        "p": walk.id,
        "n": number,
        "records": records,
        "dups": duplicates,
        "pages": page_count,
        "total": total,
        "next": has_next,
    }
    if walk.state.reading.number > 1:
        # Entries of a first reading, nearly all of them, stay without the key.
        entry["reading"] = walk.state.reading.number
    if walk.filtered:
        # A resumed walk then does not count the shortfall against the total as a loss.
        # Most walks drop nothing, and their entries stay without the key.
        entry["filtered"] = True
    return entry


class PageWriter:
    """Writer of one stream's pages, which keeps that stream's record and page counts."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        committer: Committer,
        stats: StreamStats,
        data_path: Path,
        codec: Codec,
        since: dt.datetime | None,
        stop_keys: dict[str, Any],
    ) -> None:
        self._spec = spec
        self._committer = committer
        self._stats = stats
        self._data_path = data_path
        self._codec = codec
        self._since = since
        self._stop_keys = stop_keys
        self._partitioned = bool(spec.varying)
        self._day_bounds = spec.day_bounds

    def write(
        self, walk: PartitionWalk, number: int, body: Any, *, for_children: bool
    ) -> tuple[PageResult, list[Any]]:
        """Write the records of a parsed page body.

        Returns the page's facts and, when ``for_children`` is true, its new records as written for child streams.
        """
        received = extract_records(self._spec.endpoint, body)
        pagination = body.get("pagination") if isinstance(body, dict) else None
        page_count, total, has_next = pagination_facts(pagination)
        records = self._drop_archived(walk, received)

        fresh: list[Any] = []
        duplicates = 0
        for record in records:
            key = record_key(self._spec.endpoint.key, record)
            if key is not None and not walk.seen.add(key):
                duplicates += 1
                continue
            fresh.append(record)
        if walk.state.reading.number > 1:
            # A later reading reads every record again on purpose: the server repeated none.
            duplicates = 0

        if walk.scout:
            start = end = 0
        else:
            start, end = self._commit_lines(
                walk, number, fresh, duplicates, page_count, total, has_next
            )
        self._record_page(
            walk, number, start, end, len(fresh), duplicates, page_count, total, has_next
        )
        self._check(walk, number, len(received), len(records), len(fresh), has_next, total)

        child_records: list[Any] = []
        if for_children:
            child_records = (
                [with_partition(r, walk.partition) for r in fresh] if self._partitioned else fresh
            )
        return PageResult(page_count, total, has_next, len(fresh), duplicates), child_records

    async def write_spooled(
        self, walk: PartitionWalk, number: int, spool: Path, *, for_children: bool
    ) -> tuple[PageResult, list[Any]]:
        """Write a page whose body was spooled to disk, parsing it as a stream of records.

        Returns the page's facts and, when ``for_children`` is true, its new records as written for child streams.

        Memory stays flat: records go one by one from the spool file to a file of lines,
        which is then appended to the stream file. Parsing runs in the event loop with a
        checkpoint every few thousand records, so de-duplication stays race-free and other
        requests keep going.
        """
        endpoint = self._spec.endpoint
        page_count = total = None
        has_next = False
        lines = spool.with_suffix(".lines")
        fresh = duplicates = received = kept = 0
        child_records: list[Any] = []
        try:
            if endpoint.paginated:
                with spool.open("rb") as source:
                    for pagination in ijson.items(source, "pagination", use_float=True):
                        page_count, total, has_next = pagination_facts(pagination)

            with spool.open("rb") as source, lines.open("wb") as out:
                for record in ijson.items(source, f"{endpoint.records}.item", use_float=True):
                    received += 1
                    if received % 5000 == 0:
                        await anyio.lowlevel.checkpoint()
                    if not self._drop_archived(walk, [record]):
                        continue
                    kept += 1
                    key = record_key(endpoint.key, record)
                    if key is not None and not walk.seen.add(key):
                        duplicates += 1
                        continue
                    fresh += 1
                    out.write(encode_lines([record], walk.partition if self._partitioned else None))
                    if for_children:
                        child_records.append(
                            with_partition(record, walk.partition) if self._partitioned else record
                        )
            if received == 0:
                # No records may also mean no record list, which a body in memory fails on.
                with spool.open("rb") as source:
                    _check_record_list(endpoint.records, source)
        except (ijson.JSONError, ijson.IncompleteJSONError) as error:
            lines.unlink(missing_ok=True)
            failure = ShapeError.not_json(error)
            failure.fetch_again = received == 0
            raise failure from error
        except OSError as error:
            # A full disk or another write error: the run stops, as for a stream file.
            lines.unlink(missing_ok=True)
            raise StorageError(
                f"{error.filename or lines}: cannot write a spooled page's records: "
                f"{error.strerror}"
            ) from error
        if walk.state.reading.number > 1:
            # As in write, a later reading repeats records on purpose.
            duplicates = 0

        try:
            if not walk.scout:
                entry = _page_entry(walk, number, fresh, duplicates, page_count, total, has_next)
                start, end = self._committer.write_page(self._spec.name, lines, entry)
            else:
                start = end = 0
        finally:
            lines.unlink(missing_ok=True)
        self._record_page(walk, number, start, end, fresh, duplicates, page_count, total, has_next)
        self._check(walk, number, received, kept, fresh, has_next, total)
        return PageResult(page_count, total, has_next, fresh, duplicates), child_records

    def load_seen_keys(self, walk: PartitionWalk) -> None:
        """Rebuild the keys of records committed for this partition by earlier sessions."""
        # A later reading's pages come after a first reading's, so most walks stop here.
        if not walk.state.pages or self._spec.endpoint.key is None:
            return
        with self._data_path.open("rb") as file:
            for page in sorted(walk.state.all_pages(), key=lambda p: p.start):
                file.seek(page.start)
                for line in self._committed_lines(file.read(page.end - page.start), page):
                    record = strip_partition(orjson.loads(line))
                    key = record_key(self._spec.endpoint.key, record)
                    if key is not None:
                        walk.seen.add(key)

    def _committed_lines(self, data: bytes, page: PageRecord) -> list[bytes]:
        """Return the lines of a committed page read back from the file.

        Raises:
            ManifestError: the bytes do not decompress or parse, so the file changed.
        """
        try:
            lines = decompress(data, self._codec).splitlines()
            for line in lines:
                orjson.loads(line)
        except Exception as error:  # zlib, gzip, zstandard and orjson raise unrelated types
            raise ManifestError(
                f"{self._data_path}: committed bytes {page.start}..{page.end} are damaged ({error}); "
                f"run 'tm-export verify' on the run folder, and restore the file or use --start-over"
            ) from None
        return lines

    def _record_page(
        self,
        walk: PartitionWalk,
        number: int,
        start: int,
        end: int,
        fresh: int,
        duplicates: int,
        page_count: int | None,
        total: int | None,
        has_next: bool,
    ) -> None:
        """Record a written page in the walk, the partition state and the stream's counts."""
        page = PageRecord(number, start, end, fresh, duplicates, has_next)
        walk.state.add_page(walk.state.reading.number, page, page_count, total)
        walk.records += fresh
        walk.duplicates += duplicates
        if not walk.scout:
            self._stats.records += fresh
            self._stats.duplicates += duplicates
            self._stats.pages += 1

    def _commit_lines(
        self,
        walk: PartitionWalk,
        number: int,
        fresh: list[Any],
        duplicates: int,
        page_count: int | None,
        total: int | None,
        has_next: bool,
    ) -> tuple[int, int]:
        data = encode_lines(fresh, walk.partition if self._partitioned else None)
        entry = _page_entry(walk, number, len(fresh), duplicates, page_count, total, has_next)
        return self._committer.write_page(self._spec.name, data, entry)

    def _check(
        self,
        walk: PartitionWalk,
        number: int,
        received: int,
        records: int,
        fresh: int,
        has_next: bool,
        total: int | None,
    ) -> None:
        """Stop the walk on a stall, an empty page that claims more, or once ``total`` is in.

        The counts are of the page's records as received, as kept (an incremental run
        drops what it already has) and as new to the partition. A later reading expects
        pages of records already received, and reads every page: only an empty page that
        claims more stops it.
        """
        if not self._spec.endpoint.paginated:
            return
        if walk.state.reading.number > 1:
            if not received and has_next:
                self._stop_at_empty_page(walk, number)
            return
        if records and not fresh:
            walk.stalled_page = number
            logger.warning(
                "%s: page %d repeats records already received; stopping this walk",
                partition_label(self._spec.name, walk.id),
                number,
            )
            walk.stop = True
        elif not received and has_next:
            self._stop_at_empty_page(walk, number)
        elif total is not None and walk.records >= total and not walk.filtered:
            walk.stop = True

    def _stop_at_empty_page(self, walk: PartitionWalk, number: int) -> None:
        logger.warning(
            "%s: page %d is empty although its pagination reports more pages; stopping this walk",
            partition_label(self._spec.name, walk.id),
            number,
        )
        walk.stop = True

    def _drop_archived(self, walk: PartitionWalk, records: list[Any]) -> list[Any]:
        """Drop the records that earlier runs already hold (in an incremental run), and those
        after a date window's last day (``StreamSpec.day_bounds``)."""
        kept = records
        for end_param, field in self._day_bounds.items():
            last_day = str(walk.partition[end_param])
            kept = [record for record in kept if not _after_day(record, field, last_day)]
        if self._since is not None:
            since = self._since
            kept = [record for record in kept if updated_since(record, since)]
        newest = self._stop_keys.get(walk.id)
        # NOTE: the server sorts by actionDate. The stop assumes that an entry added since
        # the last run has a larger historyId and a date no earlier than the archived ones,
        # so an entry added with an older date is missed (docs/design.md).
        if newest is not None:
            newer = [
                r for r in kept if not _at_most(record_key(self._spec.endpoint.key, r), newest)
            ]
            if len(newer) < len(kept):
                # Newest first: past the first archived record, everything is archived.
                walk.stop = True
            kept = newer
        if len(kept) < len(records):
            walk.filtered = True
        return kept


def _after_day(record: Any, field: str, day: str) -> bool:
    """Tell whether a record's ISO 8601 timestamp ``field`` falls after the date ``day``."""
    value = record.get(field) if isinstance(record, dict) else None
    return isinstance(value, str) and value[:10] > day


def _at_most(key: Any, newest: Any) -> bool:
    return isinstance(key, int) and key <= newest
