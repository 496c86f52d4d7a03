"""Exporting one stream: its partitions, their pages, and the values it hands to child streams."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import jsonlines
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .catalog import WHOLE_BODY, Endpoint
from .codec import Codec, open_lines
from .errors import HTTPStatusError, RequestError
from .fetcher import Fetcher
from .http import Response
from .incremental import Baseline
from .jobs import JobSource
from .manifest import Committer, PartitionState, Reading, StreamState
from .pages import PageWriter
from .params import (
    DateWindows,
    Partition,
    Scalar,
    VaryingSpec,
    as_id,
    count_written,
    expand_static,
    partition_id,
    partition_label,
    partition_problem,
    shard_owns,
)
from .progress import StreamProgress
from .query import QueryBuilder
from .recipe import StreamSpec
from .records import PathReach, ShapeError, empty_path_reason, path_reach, reaches_further
from .tokencheck import TokenCheck
from .walk import (
    FETCH_AGAIN,
    UNKNOWN_PATH,
    PageResult,
    PartitionWalk,
    StreamStats,
    combinations,
    listed_problems,
)
from .words import counted

logger = logging.getLogger("tm_export.stream")

#: Parent values buffered for a child stream before the parent waits (back-pressure).
CHILD_BUFFER = 1024

_Job = tuple[Partition, PartitionState, bool]
"""A partition to walk: its values in recipe order, its state, and whether it is a scout."""

T = TypeVar("T")

#: Statuses that mean "this partition is not visible to us", recorded as skipped (see
#: ``_hidden_by``).
SKIP_STATUSES = frozenset({403, 404})

#: Endpoints where the server returns an unhandled error (500) to a logged-in user without
#: rights on a draft project, and a 403 to an anonymous caller. The project's detail returns
#: a 403 (``ProjectNotFetched``) to that user, which distinguishes such a 500 from a server
#: error.
DRAFT_ERROR_ENDPOINTS = frozenset(
    {
        "project_summary",
        "project_activities",
        "project_latest_activities",
        "project_contributions",
    }
)


#: The advice in a page cap's problem. --retry-failed does not fetch a capped partition,
#: because it ended done. --start-over accepts a raised max_pages, which the recipe hash omits.
RAISE_MAX_PAGES = "raise max_pages and run with --start-over to fetch the rest"

#: The maximum number of readings of a partition's pages, the first included (see
#: ``_read_again``).
MAX_READINGS = 3

#: The advice that ends the problem of a ``from:`` field that gives no value. The fixed
#: recipe exports something else, so the run with the problem rejects it (see
#: ``_Session._check_recipe`` in engine.py).
FEED_FIX = (
    "Fix the field in the recipe, then run it with --start-over, which begins a new run: "
    "this run accepts only the recipe it began with"
)


@dataclass(slots=True)
class _ChildFeed:
    """A child stream's channel: the fields it takes and the values sent to it so far."""

    child: StreamRunner
    fields: dict[str, str]
    """Parameter name to the dotted field path of this stream's records."""
    send: MemoryObjectSendStream[dict[str, Scalar]]
    ids: tuple[str, ...] = ()
    """The parameters among ``fields`` that take TM ids (see ``Endpoint.takes_id``)."""
    sent: int = 0
    reaches: dict[str, PathReach] = field(default_factory=dict)
    """Per field path, the farthest it went into one record, kept while no value is sent,
    so that the warning of an empty feed names the part of the path that no record has."""
    not_ids: int = 0
    """Combinations of values held back because a TM id parameter would get a value that
    is not an id, such as a date from a mistyped field. The server would reject each of
    their requests with 422."""
    not_id: tuple[str, Scalar] | None = None
    """A parameter and value held back: the smallest value as text, so that every session
    and every shard names the same one, and records the same problem once."""

    @property
    def name(self) -> str:
        return self.child.spec.name

    def take_ids(self, values: dict[str, Scalar]) -> bool:
        """Turn the TM ids among ``values`` into integers, as the recipe's own ids are.

        Returns False, and counts the combination, when one of them is not an id.
        """
        for name in self.ids:
            number = as_id(values[name])
            if number is None:
                self.not_ids += 1
                if self.not_id is None or str(values[name]) < str(self.not_id[1]):
                    self.not_id = (name, values[name])
                return False
            values[name] = number
        return True

    def note_reaches(self, record: Any) -> None:
        """Keep how far each field path goes into ``record``, when it goes further than before."""
        for path in self.fields.values():
            reach = path_reach(record, path)
            known = self.reaches.get(path)
            if known is None or reaches_further(reach, known):
                self.reaches[path] = reach


class StreamRunner:
    """Runs every partition of one stream and feeds its records' values to child streams."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        state: StreamState,
        committer: Committer,
        fetcher: Fetcher,
        data_path: Path,
        concurrency: int,
        retry_failed: bool,
        retry_skipped: bool,
        shard: tuple[int, int] | None = None,
        baseline: Baseline | None = None,
        codec: Codec = "none",
        token_check: TokenCheck | None = None,
    ) -> None:
        self.spec = spec
        self.state = state
        self.stats = StreamStats()
        self.stats.records = state.records
        self.stats.duplicates = state.duplicates
        self.stats.pages = state.pages
        self._finished_now = 0
        # A problem of the stream as a whole stays with the run, in every later session.
        self.stats.problems.extend(state.problems)
        self.stats.read_again.update(state.read_again)
        self._committer = committer
        self._fetcher = fetcher
        self._token_check = token_check
        """The token check, run after a 403 or a changed list; None when the run sends no token."""
        self._data_path = data_path
        self._concurrency = concurrency
        self._shard = shard
        self._codec = codec
        self._since = (
            baseline.search_from if baseline and spec.endpoint.name == "projects" else None
        )
        self._stop_keys = baseline.newest.get(spec.name, {}) if baseline else {}
        self._baseline = baseline
        self._finished_windows = (
            baseline.finished_windows.get(spec.name, set()) if baseline else set()
        )
        self._retry_states = {"failed"} if retry_failed else set()
        if retry_skipped:
            self._retry_states.add("skipped")
        self._children: list[_ChildFeed] = []
        self._records_offered = 0
        self.unread_parents: list[tuple[str, str]] = []
        """Partitions another shard writes that this shard failed to read, with their first
        error: the child partitions their records name are unknown to this shard."""
        self._parent_values: MemoryObjectReceiveStream[dict[str, Scalar]] | None = None
        self._jobs: JobSource[_Job, dict[str, Scalar]] | None = None
        self.parent_finished = False
        """True once the parent stream has walked all its partitions with all of its own values.
        The values it sent are then all that its records give. A parent that stopped early, or a
        shard that could not read a parent page, leaves this False."""
        self._partitions_due = 0
        """Count of the partitions this run writes among those the parent's values gave so far."""
        self._pages = PageWriter(
            spec,
            committer=committer,
            stats=self.stats,
            data_path=data_path,
            codec=codec,
            since=self._since,
            stop_keys=self._stop_keys,
        )
        self._queries = QueryBuilder(spec, since=self._since)
        self._order = [name for spec_ in spec.varying for name in _names(spec_)]
        self.partitions_known = (
            count_written(spec.static, spec.name, shard, self._finished_windows)
            if spec.parent is None
            else None
        )
        """Partitions this run writes, when they do not depend on a parent stream: for a
        shard, those it owns, and for an incremental run, not the windows earlier runs
        finished."""

    # --- wiring ------------------------------------------------------------------

    def progress(self) -> StreamProgress:
        """Return this stream's counts as a progress snapshot."""
        counts = self.stats.partitions
        return StreamProgress(
            name=self.spec.name,
            done=counts["done"],
            skipped=counts["skipped"],
            failed=counts["failed"],
            known=self.partitions_known,
            pages=self.stats.pages,
            records=self.stats.records,
            duplicates=self.stats.duplicates,
        )

    def feed(self, child: StreamRunner, fields: dict[str, str]) -> None:
        """Send ``child`` the values of ``fields`` (parameter name to dotted field path) of each record.

        Values taken together come from the same record, so a child can take a project id
        and a task id that belong together.
        """
        send, receive = anyio.create_memory_object_stream[dict[str, Scalar]](CHILD_BUFFER)
        ids = tuple(name for name in fields if child.spec.endpoint.takes_id(name))
        self._children.append(_ChildFeed(child, fields, send, ids))
        child._parent_values = receive

    # --- running -----------------------------------------------------------------

    async def run(self) -> None:
        """Export every partition, then tell child streams that no more values come.

        A fixed pool of workers walks the partitions, which bounds the partitions in flight
        per stream. A parent blocked on a full child buffer then never holds the workers
        that the child needs to drain it. A pool, not a task per partition, because starting
        an anyio task costs more than a short partition's own bookkeeping.
        """
        try:
            await self._replay_committed_values()
            await self._offer_earlier_failures()
            self._jobs = self._job_source()
            if self.parent_finished:
                self._jobs.drain()
            async with anyio.create_task_group() as group:
                for _ in range(max(2 * self._concurrency, 4)):
                    group.start_soon(self._work, self._jobs)
            # Children got every value only if this stream received all of its own values
            # and, as a shard, read every parent page it needed.
            complete = (self._parent_values is None or self.parent_finished) and not (
                self.unread_parents
            )
            self._warn_of_empty_feeds(complete=complete)
        finally:
            self.close_channels()

        # Reached only when every worker ended without an error.
        for feed in self._children:
            feed.child.parent_ended(complete=complete)

    def parent_ended(self, *, complete: bool) -> None:
        """Take note that the parent stream has sent its last value.

        With ``complete``, the parent sent every value its records give, so this stream's
        partitions are all known: the values still buffered are expanded at once, and the
        count is recorded for ``status`` now rather than when the workers reach them.
        """
        self.parent_finished = complete
        if complete and self._jobs is not None:
            self._jobs.drain()

    def _warn_of_empty_feeds(self, *, complete: bool) -> None:
        """Warn of a child stream that got no value from this stream's records, such as for a
        typo in its field, naming the part of the field path that no record has.

        When the path is likely wrong and ``complete`` is True (the child got every value there
        is), the warning is also a problem of the child, kept in the manifest: a wrong field
        must not end as a complete run with an empty stream.
        """
        if not self._records_offered:
            return
        for feed in self._children:
            if feed.not_id is not None:
                self._warn_of_values_not_ids(feed, complete=complete)
                continue
            if feed.sent or not feed.reaches:
                continue
            path, reach = min(feed.reaches.items(), key=lambda item: item[1].depth)
            count = self._records_offered
            fact, advice = empty_path_reason(path, reach)
            message = (
                f"no string or integer value for {path} in the {counted(count, 'record')} "
                f"of {self.spec.name} ({fact}), so "
                f"{feed.name} has no partitions"
            )
            if advice is None:
                # The field is there but empty in every record, which the data can be.
                logger.warning("%s: %s", feed.name, message)
                continue
            problem = f"{message}; {_sentence(advice)} {FEED_FIX}"
            logger.warning("%s: %s", feed.name, problem)
            if complete:
                feed.child.add_stream_problem(problem)

    def _warn_of_values_not_ids(self, feed: _ChildFeed, *, complete: bool) -> None:
        """Warn of the values held back from a child stream because they are not TM ids.

        As for an empty feed, the warning is also a problem of the child when ``complete``:
        the field is likely wrong, and its partitions would be missing from a complete run.
        """
        assert feed.not_id is not None
        name, example = feed.not_id
        # Ids in other records suggest odd data rather than a wrong field.
        advice = (
            f"The field gave {counted(feed.sent, 'id')} besides, so check the parent stream's "
            "records rather than the field."
            if feed.sent
            else FEED_FIX
        )
        problem = (
            f"no request for {counted(feed.not_ids, 'value')} of {feed.fields[name]} in the "
            f"records of {self.spec.name}, such as {example!r}: {name} takes a TM id, a whole "
            f"number of 0 or more, and the server rejects anything else with 422. {advice}"
        )
        logger.warning("%s: %s", feed.name, problem)
        if complete:
            feed.child.add_stream_problem(problem)

    def add_stream_problem(self, problem: str) -> None:
        """Record a problem of the stream as a whole, in a ``feed`` entry of the manifest:
        a ``from:`` field that gives no value, or a token that expired during the run.

        A resumed session finds the same problem again, and it is recorded once.

        NOTE: the message counts the parent's records. A --retry-failed session that
        fetches parent pages which failed before counts more, and its problem is kept
        beside the earlier one.
        """
        if problem in self.state.problems:
            return
        self.state.problems.append(problem)
        self.stats.problems.append(problem)
        self._committer.record({"t": "feed", "s": self.spec.name, "problem": problem})

    def finished_this_session(self) -> bool:
        """Tell whether this session finished a partition of the stream.

        A partition it left unfinished fetches its remaining pages in the next session, and
        a total that changed meanwhile makes its pages be read again.
        """
        return self._finished_now > 0

    def close_channels(self) -> None:
        """Close the value channels from the parent stream and to the child streams.

        Closing twice does nothing, so a session that stops before its streams run (a
        failed deletion check) can close what they would have.
        """
        if self._parent_values is not None:
            self._parent_values.close()
        for feed in self._children:
            feed.send.close()

    def _static_jobs(self) -> Iterator[_Job]:
        """Yield the walks of a stream whose partitions are known from the recipe."""
        for values in expand_static(self.spec.static):
            # The id sorts the keys, so it is the same before the values are put in order.
            # A resume skips finished partitions here: a long range is walked before its
            # pending end.
            key = partition_id(values)
            owned = self._owns(key)
            if not self._settled(key, owned):
                yield self._job(values, key, owned)

    def _job_source(self) -> JobSource[_Job, dict[str, Scalar]]:
        """Return where the workers take partitions from: the recipe or the parent's values."""
        if self._parent_values is None:
            return JobSource(self._static_jobs())

        seen: set[str] = set()

        def parent_done() -> None:
            # Every parent value has arrived, so the number of partitions is known now.
            self.partitions_known = self._partitions_due
            if self.parent_finished:
                # Record the count for `status`, which reads only the manifest.
                self._committer.record(
                    {"t": "known", "s": self.spec.name, "partitions": self._partitions_due}
                )

        return JobSource(
            values=self._parent_values,
            expand=lambda values: self._jobs_of_parent_values(values, seen),
            on_end=parent_done,
        )

    def _jobs_of_parent_values(self, values: dict[str, Scalar], seen: set[str]) -> list[_Job]:
        """Return the walks that one parent record's values start, once per distinct value."""
        key = partition_id(values)
        if key in seen:
            return []
        seen.add(key)
        jobs = []
        for static in expand_static(self.spec.static):
            partition = {**values, **static}
            key = partition_id(partition)
            owned = self._owns(key)
            if owned and key not in self._finished_windows:
                self._partitions_due += 1
            if not self._settled(key, owned):
                jobs.append(self._job(partition, key, owned))
        return jobs

    async def _work(self, jobs: JobSource[_Job, dict[str, Scalar]]) -> None:
        """Walk partitions one at a time until the stream has no more."""
        while (job := await jobs.next()) is not None:
            partition, state, scout = job
            walk = PartitionWalk(partition, state, scout)
            self._pages.load_seen_keys(walk)
            await self._walk(walk)

    def _settled(self, key: str, owned: bool) -> bool:
        """Tell whether partition ``key`` needs no request in this session, counting it if final.

        ``owned`` is ``_owns(key)``. True for a window that an earlier incremental run finished, a partition another
        shard writes (unless its records feed child streams), and a partition whose final
        state is not one this session retries.
        """
        if key in self._finished_windows:
            return True
        if not owned:
            return not self._children
        done = self.state.done.get(key)
        if done is not None:
            self._count_final(done)
            return True
        state = self.state.partitions.get(key)
        if state is not None and state.final is not None and state.state not in self._retry_states:
            self._count_final(state.final)
            return True
        return False

    def _job(self, values: dict[str, Scalar], key: str, owned: bool) -> _Job:
        """Return the walk to do for a partition that ``_settled`` found unsettled."""
        if not owned:
            # Another shard writes this partition, but its records name child partitions
            # that this shard may own: fetch it to read them, and write nothing.
            return self._ordered(values), PartitionState(), True
        return self._ordered(values), self.state.partition(key), False

    def _owns(self, partition: str) -> bool:
        """Tell whether this shard writes ``partition``; every shard owns a stable 1/N of them."""
        return self._shard is None or shard_owns(self._shard, self.spec.name, partition)

    def _ordered(self, values: dict[str, Scalar]) -> Partition:
        """Put a partition's values in the order the recipe gives its parameters."""
        ordered = {name: values[name] for name in self._order if name in values}
        if len(ordered) < len(values):
            ordered.update({k: v for k, v in values.items() if k not in ordered})
        return ordered

    # --- one partition -------------------------------------------------------------

    async def _walk(self, walk: PartitionWalk) -> None:
        await self._read(walk)
        await self._check_token_if_changed(walk)

        while walk.state.reading.changed and not walk.failed_pages and self._read_again(walk):
            walk.state.reading = Reading(walk.state.reading.number + 1)
            walk.stop = False
            walk.stalled_page = None
            await self._read(walk)
            await self._check_token_if_changed(walk)

        hidden = _hidden_by(walk.failed_pages, self.spec.endpoint) or await self._hidden_draft(walk)
        if hidden is not None and not await self._token_still_accepted(walk, hidden):
            hidden = None
        if hidden is not None:
            # The partition is not visible to us, from its first page on or since its project
            # was deleted or made private during the walk. Pages committed before stay. As a
            # failure, it would fail again on every --retry-failed.
            walk.failed_pages.clear()
            self._finish(walk, "skipped", hidden)
            return

        if self._token_check is not None and any(
            isinstance(error, HTTPStatusError) and error.status == 401
            for error in walk.failed_pages.values()
        ):
            # An expired key is served anonymously where login is optional, so a search by
            # partnerId gets the 401 of a missing right. The check raises TokenRejectedError
            # for an expired key, which stops the run, rather than blame the user's rights.
            await self._token_check.confirm()
        self._finish(walk, "failed" if walk.failed_pages else "done")

    async def _check_token_if_changed(self, walk: PartitionWalk) -> None:
        """Check the token when the partition's list changed while its pages were read.

        Where login is optional, the server serves an expired token anonymously: a list
        then loses its private entries, and the change in its total is the only sign.

        Raises:
            TokenRejectedError: the token is no longer accepted; the run stops, and the
                next session reads the partition again.
        """
        if self._token_check is not None and walk.state.reading.changed:
            await self._token_check.confirm()

    async def _hidden_draft(self, walk: PartitionWalk) -> HTTPStatusError | None:
        """Return the project detail's 403 for a partition whose failed pages were all 500s,
        when its project is a draft that the token's user may not see. Else return None.

        The server returns an unhandled error to such a user on some endpoints, on every
        attempt and every run, so the partition would fail for good. One request for the
        project's detail, whose 403 names the draft, distinguishes it from a server error.
        """
        if (
            self._token_check is None
            or self.spec.endpoint.name not in DRAFT_ERROR_ENDPOINTS
            or not walk.failed_pages
            or not all(
                isinstance(error, HTTPStatusError) and error.status == 500
                for error in walk.failed_pages.values()
            )
        ):
            return None
        project = as_id(walk.partition.get("project_id", ""))
        if project is None:
            return None

        try:
            await self._fetcher.get_json(
                f"/projects/{project}/", {"abbreviated": "true"}, spool=False
            )
        except HTTPStatusError as error:
            if error.status == 403:
                logger.info(
                    "%s: the server returned 500, and 403 %s for the project's detail: a draft "
                    "the token's user may not see",
                    partition_label(self.spec.name, walk.id),
                    error.sub_code or "",
                )
                return error
        except RequestError:
            pass
        return None

    async def _token_still_accepted(self, walk: PartitionWalk, hidden: HTTPStatusError) -> bool:
        """Tell whether the token that a 403 of ``walk`` was sent with is still accepted.

        An expired token gets the same 403 from a private project as a user without rights
        on it, so a partition is skipped for a 403 only when the token check passes after
        it. When the check fails for another reason, the partition fails, for --retry-failed.

        Raises:
            TokenRejectedError: the token is no longer accepted; the run stops.
        """
        if self._token_check is None:
            return True
        if hidden.status != 403 and not any(
            isinstance(error, HTTPStatusError) and error.status == 403
            for error in walk.failed_pages.values()
        ):
            return True
        return await self._token_check.confirm()

    async def _read(self, walk: PartitionWalk) -> None:
        """Fetch the pages of the partition's latest reading that are not committed yet."""
        state = walk.state
        if not state.has_page(1):
            try:
                await self._fetch_and_write(walk, 1)
            except (RequestError, ShapeError) as error:
                walk.failed_pages[1] = error

        if self.spec.endpoint.paginated and not walk.failed_pages and not walk.stop:
            # A walk that stops at the first archived record goes page by page. A later
            # reading only follows a first one that fanned out.
            fans_out = state.reading.page_count is not None and walk.id not in self._stop_keys
            if fans_out or state.reading.number > 1:
                await self._fan_out(walk)
            else:
                await self._follow_next(walk)

    def _read_again(self, walk: PartitionWalk) -> bool:
        """Tell whether the pages must be read again because the list changed under them.

        Pages are offsets into the list. A record removed from it moves every later record
        to an earlier place, so a record can move onto a page already read and be missed.
        A record added before the end moves later records the other way, and the record
        added can fall on a page already read. A new reading keeps only records not seen
        yet, so it finds the ones missed. The list only grew and every record it
        announces is in when the records were added at its end, as new projects are in a
        search sorted by id: then nothing was missed. Records without a key cannot be matched
        with those already kept, so their pages are read once, and the change is reported
        as a problem. The caller checks that the total changed during the latest
        reading (``Reading.changed``).
        """
        # NOTE: a record removed and another added between two pages leave the total as it
        # was, so no check detects that records moved.
        reading, total = walk.state.reading, walk.state.total
        if reading.page_count is None or walk.id in self._stop_keys:
            return False
        if not reading.fell and (walk.filtered or total is None or walk.records >= total):
            return False

        if reading.first_total == reading.last_total:
            change = f"the total moved away from {reading.first_total} and came back"
        else:
            change = f"the total changed from {reading.first_total} to {reading.last_total}"
        if self.spec.endpoint.key is None:
            walk.problems.append(
                f"{change} while the pages were read, so records may have moved onto pages "
                "already read; records without a key are read only once, since a second "
                "reading would write them twice"
            )
            return False
        if reading.number >= MAX_READINGS:
            walk.problems.append(
                f"the total changed during each of {MAX_READINGS} readings of the pages "
                f"(from {reading.first_total} to {reading.last_total} in the last one), "
                "so records may have moved onto pages already read"
            )
            return False
        logger.info(
            "%s: %s while the pages were read; reading them again (reading %d of at most %d)",
            partition_label(self.spec.name, walk.id),
            change,
            reading.number + 1,
            MAX_READINGS,
        )
        return True

    async def _fan_out(self, walk: PartitionWalk) -> None:
        """Fetch the pages not yet committed, at most ``concurrency`` at once.

        When a later page reports more pages than page 1 did (records were added during
        the walk), the walk goes on to the new last page.
        """
        window = anyio.Semaphore(self._concurrency, fast_acquire=True)
        number = 2

        async def fetch(page: int) -> None:
            try:
                if not walk.stop:
                    await self._fetch_and_write(walk, page)
            except (RequestError, ShapeError) as error:
                walk.failed_pages[page] = error
            finally:
                window.release()

        while number <= self._last_page(walk) and not walk.stop:
            if number == self._last_page(walk):
                # One page left, so no task group is needed for it.
                if not walk.state.has_page(number):
                    await window.acquire()
                    await fetch(number)
                number += 1
                continue

            async with anyio.create_task_group() as group:
                while number <= self._last_page(walk) and not walk.stop:
                    if not walk.state.has_page(number):
                        await window.acquire()
                        if walk.stopped():
                            window.release()
                            break
                        if number == self._last_page(walk):
                            # This task would only wait for the others, so it fetches the
                            # last known page itself instead of starting a task for it. The
                            # checkpoint lets the started tasks send first: pages go out in
                            # order.
                            await anyio.lowlevel.checkpoint()
                            await fetch(number)
                        else:
                            group.start_soon(fetch, number)
                    number += 1

    def _last_page(self, walk: PartitionWalk) -> int:
        page_count = walk.state.reading.page_count or 1
        if page_count > self.spec.max_pages:
            walk.capped = True
            problem = (
                f"page cap reached: the server announced {page_count} pages, and max_pages is "
                f"{self.spec.max_pages}; {RAISE_MAX_PAGES}"
            )
            if problem not in walk.problems:
                walk.problems.append(problem)
        return min(page_count, self.spec.max_pages)

    async def _follow_next(self, walk: PartitionWalk) -> None:
        """Walk pages one by one while the pagination object reports a next page."""
        number = max(walk.state.pages, default=1) + 1
        if walk.state.pages and not walk.state.pages[number - 1].has_next:
            return
        while not walk.stop:
            if number > self.spec.max_pages:
                walk.capped = True
                walk.problems.append(
                    "page cap reached: the server reports more pages, and max_pages is "
                    f"{self.spec.max_pages}; {RAISE_MAX_PAGES}"
                )
                return
            try:
                result = await self._fetch_and_write(walk, number)
            except (RequestError, ShapeError) as error:
                walk.failed_pages[number] = error
                return
            if not result.has_next:
                return
            number += 1

    async def _fetch_and_write(self, walk: PartitionWalk, number: int) -> PageResult:
        # The room is held until the page is written or has failed, and not while children
        # take its records: a parent blocked on a full child buffer must not hold room that
        # the child needs.
        await self._committer.reserve_room()
        try:
            result, records = await self._fetch_page(walk, number)
        finally:
            self._committer.release_room()

        if records:
            # Children see records as they are in the file, so a child can also read _partition.
            await self._offer_children(records)
        return result

    async def _fetch_page(self, walk: PartitionWalk, number: int) -> tuple[PageResult, list[Any]]:
        path, query = self._queries.build(walk.partition, number)
        response, body = await self._fetcher.get_json(path, query)

        try:
            return await self._write_page(walk, number, response, body)
        except ShapeError as error:
            # The shape is the response's, so the message names its URL and page.
            failure = ShapeError(f"GET {response.url}: {error}")
            failure.attempts = response.attempts
            if not error.fetch_again or self._fetcher.attempts == 1:
                raise failure from error
        # A proxy or cache that sent a body of another shape once may not do it again. The
        # page is fetched once more, and that fetch has its own retries.
        earlier = response.attempts
        await self._fetcher.wait_to_fetch_again(failure)
        try:
            response, body = await self._fetcher.get_json(path, query)
        except RequestError as error:
            error.attempts += earlier
            raise

        try:
            return await self._write_page(walk, number, response, body)
        except ShapeError as error:
            failure = ShapeError(f"GET {response.url}: {error}")
            failure.attempts = earlier + response.attempts
            raise failure from error

    async def _write_page(
        self, walk: PartitionWalk, number: int, response: Response, body: Any
    ) -> tuple[PageResult, list[Any]]:
        for_children = bool(self._children)
        if response.spool is None:
            return self._pages.write(walk, number, body, for_children=for_children)
        try:
            if self.spec.endpoint.records == WHOLE_BODY:
                # NOTE: a whole-body record is one JSON object, so it is parsed in memory
                # even when its response was spooled.
                try:
                    body = orjson.loads(response.spool.read_bytes())
                except orjson.JSONDecodeError as error:
                    raise ShapeError.not_json(error) from error
                return self._pages.write(walk, number, body, for_children=for_children)
            return await self._pages.write_spooled(
                walk, number, response.spool, for_children=for_children
            )
        finally:
            response.spool.unlink(missing_ok=True)

    async def _offer_children(self, records: list[Any]) -> None:
        self._records_offered += len(records)
        for feed in self._children:
            try:
                for record in records:
                    for values in combinations(record, feed.fields):
                        if feed.ids and not feed.take_ids(values):
                            continue
                        feed.sent += 1
                        await _put(feed.send, values)
                    if not feed.sent:
                        feed.note_reaches(record)
            except anyio.BrokenResourceError:
                # Only a fatal error elsewhere stops a child early. That error ends the run,
                # so the child no longer needs these values.
                continue

    async def _replay_committed_values(self) -> None:
        """Send the values of records committed by earlier sessions to child streams."""
        if not self._children or self.state.committed_end == 0:
            return
        with (
            open_lines(self._data_path, self._codec) as file,
            jsonlines.Reader(file, loads=orjson.loads) as reader,
        ):
            for record in reader:
                await self._offer_children([record])

    async def _offer_earlier_failures(self) -> None:
        """Send child streams the values of their partitions that failed in earlier runs.

        An incremental run sends a child stream the values of changed projects only, so
        a partition that failed for a project that has not changed since would never be
        fetched again.
        """
        if self._baseline is None:
            return
        for feed in self._children:
            for partition in self._baseline.refetch.get(feed.name, []):
                values = {name: partition[name] for name in feed.fields if name in partition}
                if len(values) != len(feed.fields):
                    continue
                if feed.ids and not feed.take_ids(values):
                    # Recorded by a version that did not check ids, so it would only fail again.
                    continue
                try:
                    await _put(feed.send, values)
                except anyio.BrokenResourceError:
                    # As in _offer_children: only a fatal error elsewhere stops a child early.
                    break

    # --- bookkeeping --------------------------------------------------------------

    def _finish(
        self, walk: PartitionWalk, outcome: str, skipped_by: HTTPStatusError | None = None
    ) -> None:
        if walk.scout:
            if walk.failed_pages:
                first = walk.failed_pages[min(walk.failed_pages)]
                self.unread_parents.append((walk.id, str(first)))
                logger.error(
                    "%s could not be read for its child streams: %s",
                    partition_label(self.spec.name, walk.id),
                    first,
                )
            return
        state = walk.state
        entry: dict[str, Any] = {
            "t": "part",
            "s": self.spec.name,
            "p": walk.id,
            "state": outcome,
            "records": walk.records,
            "dups": walk.duplicates,
            "pages": len(state.pages) + len(state.later_pages),
        }
        if state.reading.number > 1:
            entry["readings"] = state.reading.number
            self.stats.read_again.add(walk.id)
        if skipped_by is not None:
            entry.update(
                status=skipped_by.status, sub_code=skipped_by.sub_code, error=skipped_by.excerpt
            )
        if walk.failed_pages:
            first_number = min(walk.failed_pages)
            first = walk.failed_pages[first_number]
            entry["missing_pages"] = sorted(walk.failed_pages)
            entry["error"] = str(first)
            entry["attempts"] = getattr(first, "attempts", 1)
            hint = ""
            if isinstance(first, HTTPStatusError):
                entry.update(status=first.status, sub_code=first.sub_code)
                if unknown_path(first):
                    hint = (
                        "; the server has no such path: correct the stream's path, and run with "
                        "--start-over, since the recipe changes"
                    )
                elif first.status == 401:
                    hint = (
                        "; the token's user lacks a right this request needs: change the "
                        "recipe, or use --start-over with the key of a user who has it"
                    )
            logger.error("%s failed: %s%s", partition_label(self.spec.name, walk.id), first, hint)

        if walk.stalled_page is not None:
            # First, as the stall ended the reading that the other problems follow.
            walk.problems.insert(
                0,
                f"pagination stall: page {walk.stalled_page} repeated records already received; "
                f"{FETCH_AGAIN}",
            )
        total = state.total
        if total is None or outcome != "done" or walk.filtered or walk.capped:
            # A capped walk misses records by design, and its own problem reports that already.
            mismatch = False
        elif state.total_fell:
            # Records the server removed while the pages were read are kept: only fewer
            # records than the last total announced means some are missing.
            mismatch = walk.records < total
        else:
            mismatch = walk.records != total
        if mismatch:
            walk.problems.append(
                f"integrity: received {walk.records} unique records where the server announced "
                f"{total}; {FETCH_AGAIN}"
            )
        if walk.problems:
            entry["problems"] = walk.problems
            for problem in walk.problems:
                logger.warning("%s: %s", partition_label(self.spec.name, walk.id), problem)

        self._committer.record(entry)
        state.final = entry
        self._finished_now += 1
        self._count_final(entry)

    def count_finished(self) -> None:
        """Count the final partitions of a finished run, in place of walking them."""
        for final in self.state.done.values():
            self._count_final(final)
        for partition in self.state.partitions.values():
            if partition.final is not None:
                self._count_final(partition.final)
        self.close_channels()

    def count_stopped(self) -> None:
        """Count the final partitions of the run again from its state, those of earlier
        sessions included, as status does. A session that stopped early counted only those
        its walk reached, while its record count is the run's."""
        proven = StreamStats.of(self.state)
        self.stats.partitions = proven.partitions
        self.stats.skip_reasons = proven.skip_reasons

    def list_problems(self) -> None:
        """List the run's problems as status does: those of the stream as a whole, then
        those of its partitions in partition order, not in the order the walks ended."""
        self.stats.problems = listed_problems(self.state)

    def _count_final(self, final: dict[str, Any]) -> None:
        self.stats.count(final)
        for problem in final.get("problems", []):
            self.stats.problems.append(partition_problem(final["p"], problem))


def skips_partition(error: HTTPStatusError) -> bool:
    """Tell whether a response with this error shows the partition hidden from the caller
    (403, or 404 of something the server has a path for), so that it is skipped."""
    return error.status in SKIP_STATUSES and not unknown_path(error)


def unknown_path(error: HTTPStatusError) -> bool:
    """Tell whether the error is the server's 404 for a path it has no route for."""
    return error.status == 404 and error.sub_code == UNKNOWN_PATH


def _hidden_by(
    failed_pages: dict[int, RequestError | ShapeError], endpoint: Endpoint
) -> HTTPStatusError | None:
    """Return the first failure when every failed page was a 403 or 404 of something the
    server has a path for, else None.

    On a later page, that holds only for an endpoint whose path names an object (a
    project), which can vanish during the walk. A list without one, such as the project
    search, that rejects a later page has lost that page.
    """
    first: HTTPStatusError | None = None
    for number in sorted(failed_pages):
        error = failed_pages[number]
        if not (isinstance(error, HTTPStatusError) and skips_partition(error)):
            return None
        if number > 1 and not endpoint.path_params:
            return None
        first = first or error
    return first


def _sentence(advice: str) -> str:
    """Return ``advice`` ending as a sentence, so that another can follow it."""
    return advice if advice.endswith(("?", ".")) else f"{advice}."


def _names(spec: VaryingSpec) -> tuple[str, ...]:
    if isinstance(spec, DateWindows):
        return (spec.start_param, spec.end_param)
    return (spec.name,)


async def _put(send: MemoryObjectSendStream[T], item: T) -> None:
    """Send ``item``, without an event-loop turn while the buffer has room.

    The awaiting send costs a turn per item, so it is kept for a full buffer, where the
    sender must wait for the receiver anyway.
    """
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)
