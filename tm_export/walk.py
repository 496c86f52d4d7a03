"""The state of one partition's walk over its pages, and the counts a stream keeps."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestError
from .manifest import PartitionState, StreamState
from .params import Partition, Scalar, partition_id, partition_problem
from .records import PARTITION_KEY, KeySet, ShapeError, field_values

#: The advice in a problem of a partition that ended done with records missing: no later
#: session of the run fetches a done partition again, --retry-failed included.
FETCH_AGAIN = "run with --start-over to fetch the partition again"


@dataclass(slots=True)
class StreamStats:
    """Counts of one stream for this session and the runs before it."""

    partitions: Counter[str] = field(default_factory=Counter)
    records: int = 0
    duplicates: int = 0
    pages: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    read_again: set[str] = field(default_factory=set)
    """Partitions whose pages were read more than once, because their list changed."""
    need_new_run: int = 0
    """Failed partitions that --retry-failed would fail again (see ``needs_new_run``)."""

    @classmethod
    def of(cls, state: StreamState) -> StreamStats:
        """Return the counts that a stream's replayed manifest state proves, as status gives
        them: partitions by final state, records, and problems in partition order."""
        stats = cls(
            records=state.records,
            duplicates=state.duplicates,
            pages=state.pages,
            read_again=set(state.read_again),
        )
        for _, final in state.finals():
            stats.count(final)
        stats.problems = listed_problems(state)
        return stats

    def count(self, final: dict[str, Any]) -> None:
        """Count a partition's final entry: its state, and why it was skipped or cannot be
        fetched again."""
        self.partitions[final["state"]] += 1
        if final["state"] == "skipped":
            reason = f"{final.get('status')} {final.get('sub_code') or ''}".strip()
            self.skip_reasons[reason] += 1
        elif final["state"] == "failed" and needs_new_run(final):
            self.need_new_run += 1


#: The ``detail`` of the server's 404 for a path it has no route for (the web framework's
#: ``{"detail": "Not Found"}``). A missing project, task or user gets a TM error with a
#: sub_code instead, so this 404 means a wrong path, and the partition fails.
UNKNOWN_PATH = "Not Found"


def needs_new_run(final: dict[str, Any]) -> bool:
    """Tell whether a failed partition fails again on --retry-failed whatever is fixed: its
    path has no route (a typo in the recipe), or the key's user lacks a right (401). The fix
    changes the recipe, which a run cannot take, or the key's user, which it refuses."""
    status, sub_code = final.get("status"), final.get("sub_code")
    return status == 401 or (status == 404 and sub_code == UNKNOWN_PATH)


def listed_problems(state: StreamState) -> list[str]:
    """Return a stream's problems as status lists them: those of the stream as a whole, then
    those of its partitions, in partition order."""
    return [
        problem if partition is None else partition_problem(partition, problem)
        for partition, problem in state.all_problems()
    ]


@dataclass(slots=True)
class PageResult:
    """The outcome of one page: its pagination facts and its count of new records."""

    page_count: int | None
    total: int | None
    has_next: bool
    new_records: int
    duplicates: int


class PartitionWalk:
    """The state of one partition while its pages are fetched."""

    def __init__(self, partition: Partition, state: PartitionState, scout: bool = False) -> None:
        self.partition = partition
        self.scout = scout
        """True when another shard writes this partition and this one only reads it."""
        self.id = partition_id(partition)
        self.state = state
        self.seen = KeySet()
        self.records = self.duplicates = 0
        if state.pages:
            pages = state.all_pages()
            self.records = sum(page.records for page in pages)
            self.duplicates = sum(page.duplicates for page in pages)
        self.failed_pages: dict[int, RequestError | ShapeError] = {}
        self.problems: list[str] = []
        self.stalled_page: int | None = None
        """The page of the latest reading that repeated only records already received (a
        pagination stall). A later reading reads every page again, so it clears it."""
        self.stop = False
        self.filtered = state.filtered
        """True when the walk dropped records that earlier runs have, or records past a date
        window's last day, so totals differ. A resumed walk reads it from its committed pages."""
        self.capped = False
        """True when the walk stopped at the stream's ``max_pages``, short of the last page."""

    def stopped(self) -> bool:
        """Tell whether the walk was stopped; a call, so type checkers re-read it after an await."""
        return self.stop


def with_partition(record: Any, partition: Partition) -> Any:
    if isinstance(record, dict):
        return {PARTITION_KEY: partition, **record}
    return {PARTITION_KEY: partition, "value": record}


def combinations(record: Any, fields: dict[str, str]) -> Iterator[dict[str, Scalar]]:
    """Yield each combination of the values of ``fields`` in one record."""
    choices = [field_values(record, path) for path in fields.values()]
    for combination in itertools.product(*choices):
        yield dict(zip(fields, combination, strict=True))


def pagination_facts(pagination: Any) -> tuple[int | None, int | None, bool]:
    if not isinstance(pagination, dict):
        return None, None, False
    pages = pagination.get("pages")
    total = pagination.get("total")
    has_next = bool(pagination.get("hasNext"))
    return (
        pages if isinstance(pages, int) else None,
        total if isinstance(total, int) else None,
        has_next,
    )
