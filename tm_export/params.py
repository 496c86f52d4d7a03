"""Parameter specifications of a stream and their expansion into partitions.

A stream's parameters are constants or varying values. Each combination of varying
values (their cartesian product) is one partition, identified by those values alone.
Constants belong to the stream, so they are part of the recipe hash instead.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .words import counted

#: A parameter value as it appears in a partition: an integer or a string.
Scalar = int | str

#: Varying parameter values of one partition, in the stream's parameter order.
Partition = Mapping[str, Scalar]


def render(value: object) -> str:
    """Render a recipe value as a query or path parameter string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        # TM reads multi-valued parameters such as projectStatuses as one comma list.
        return ",".join(render(item) for item in value)
    return str(value)


#: The largest integer a recipe or an id may be: orjson, and so the manifest, and the
#: server's database take signed 64-bit integers.
MAX_INT64 = 2**63 - 1


def as_id(value: Scalar) -> int | None:
    """Return ``value`` as a TM id, a whole number of 0 or more, or None when it is not one.

    Digits in a string count, as the server reads them, so ``"42"`` and ``"042"`` are both
    project 42. The server rejects anything else with 422.
    """
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if type(value) is int:
        # Ids are 64-bit integers in the server's database, and in the manifest's JSON.
        return value if 0 <= value <= MAX_INT64 else None
    return None


def partition_id(partition: Partition) -> str:
    """Return the canonical text that identifies a partition in the manifest."""
    return orjson.dumps(dict(partition), option=orjson.OPT_SORT_KEYS).decode()


def partition_order(partition: str) -> tuple[tuple[str, int, int | str], ...]:
    """Return a sort key for partition id ``partition`` that puts project 8 before
    project 10, which the order of the ids as text would not."""
    values: dict[str, Any] = orjson.loads(partition)
    return tuple(
        (name, 0, value) if isinstance(value, int) else (name, 1, str(value))
        for name, value in values.items()
    )


#: The id of the one partition of a stream without varying parameters.
WHOLE_STREAM = partition_id({})


def partition_label(stream: str, partition: str) -> str:
    """Return how a message names partition id ``partition`` of ``stream``: the stream and
    the partition's values, or the stream alone when it has no varying parameters."""
    return stream if partition == WHOLE_STREAM else f"{stream} {partition}"


def partition_problem(partition: str, problem: str) -> str:
    """Return a partition's problem as a stream lists it: after the partition's values,
    unless the stream has no varying parameters."""
    return problem if partition == WHOLE_STREAM else f"{partition}: {problem}"


def shard_owns(shard: tuple[int, int], stream: str, partition: str) -> bool:
    """Tell whether shard ``(K, N)`` writes partition id ``partition`` of ``stream``.

    Every shard owns a stable 1/N of a stream's partitions. A partition belongs to shard K
    when the SHA-256 of the stream name and partition id, taken modulo N, is K − 1.
    """
    index, count = shard
    digest = hashlib.sha256(f"{stream}\n{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index - 1


@dataclass(frozen=True, slots=True)
class Constant:
    """A parameter with one value for every request of the stream."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Each:
    """A parameter that takes each value of a list, one partition per value."""

    name: str
    values: tuple[Scalar, ...]

    def expand(self) -> Iterator[dict[str, Scalar]]:
        for value in self.values:
            yield {self.name: value}


@dataclass(frozen=True, slots=True)
class IntRange:
    """A parameter that takes every integer from ``start`` to ``stop`` inclusive."""

    name: str
    start: int
    stop: int
    step: int = 1

    def expand(self) -> Iterator[dict[str, Scalar]]:
        for value in range(self.start, self.stop + 1, self.step):
            yield {self.name: value}


UNITS = ("day", "week", "month", "year")


@dataclass(frozen=True, slots=True)
class Step:
    """A calendar step between date windows, such as ``1 month``."""

    count: int
    unit: str  # one of UNITS

    @classmethod
    def parse(cls, text: str) -> Step:
        """Parse ``'1 month'``, ``'2 weeks'`` and the like.

        Raises:
            ValueError: the text is not a count of 1 or more and a unit of ``UNITS``.
        """
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
            raise ValueError(f"invalid step {text!r}: expected a count of 1 or more and a unit")
        unit = parts[1].removesuffix("s")
        if unit not in UNITS:
            raise ValueError(f"invalid step {text!r}: unknown unit {parts[1]!r}")
        return cls(int(parts[0]), unit)

    def advance(self, day: dt.date, times: int = 1) -> dt.date:
        """Return the day ``times`` steps after ``day``.

        Raises:
            OverflowError: the result is after 9999-12-31.
        """
        count = self.count * times
        try:
            if self.unit == "day":
                return day + dt.timedelta(days=count)
            if self.unit == "week":
                return day + dt.timedelta(weeks=count)
            return _add_months(day, count * (12 if self.unit == "year" else 1))
        except (OverflowError, ValueError):
            raise OverflowError(
                f"{day} + {counted(count, self.unit)} is after {dt.date.max}"
            ) from None

    def __str__(self) -> str:
        return counted(self.count, self.unit)


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    # Jan 31 + 1 month is the last day of February, as calendars count it.
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True, slots=True)
class DateWindows:
    """A series of date windows bound to a start and an end parameter.

    Windows are inclusive of both ends and never overlap: with a ``1 month`` step from
    2025-01-01, January is 2025-01-01..2025-01-31 and February starts on 2025-02-01. The
    last window ends on ``end``, so it may be shorter than a step. Window k starts ``k``
    steps after ``start``, counted from ``start`` itself, so month steps from the 31st start
    on the last day of shorter months and return to the 31st where a month has one. A window
    longer than ``max_days`` is split into windows of at most ``max_days`` days, because the
    server rejects longer ranges. Without a step there is one window from start to end.
    """

    start_param: str
    end_param: str
    start: dt.date
    end: dt.date
    step: Step | None
    max_days: int | None

    def windows(self) -> Iterator[tuple[dt.date, dt.date]]:
        """Yield each (first day, last day) window in order."""
        first = self.start
        index = 0
        while first <= self.end:
            index += 1
            last = self._last_day(index)
            yield from self._split(first, last)
            if last >= self.end:
                return
            first = last + dt.timedelta(days=1)

    def _last_day(self, index: int) -> dt.date:
        """Return the last day of window ``index`` (1-based), before any split."""
        if self.step is None:
            return self.end
        try:
            following = self.step.advance(self.start, index)
        except OverflowError:
            return self.end
        return min(following - dt.timedelta(days=1), self.end)

    def _split(self, first: dt.date, last: dt.date) -> Iterator[tuple[dt.date, dt.date]]:
        if self.max_days is None:
            yield first, last
            return
        while True:
            if (last - first).days < self.max_days:
                yield first, last
                return
            piece_end = first + dt.timedelta(days=self.max_days - 1)
            yield first, piece_end
            first = piece_end + dt.timedelta(days=1)

    def expand(self) -> Iterator[dict[str, Scalar]]:
        for first, last in self.windows():
            yield {self.start_param: first.isoformat(), self.end_param: last.isoformat()}


def next_day_bounds(values: dict[str, str], bounds: Mapping[str, str]) -> None:
    """Replace each of ``bounds``' parameters in ``values`` with the day after its date.

    A window that ends on the last representable day (9999-12-31, a common way to write
    "open-ended") has no day after it, so its bound is left out: the server then applies none.
    """
    for name in bounds:
        if name not in values:
            continue
        day = dt.date.fromisoformat(values[name])
        if day == dt.date.max:
            del values[name]
        else:
            values[name] = (day + dt.timedelta(days=1)).isoformat()


@dataclass(frozen=True, slots=True)
class FromStream:
    """A parameter that takes each distinct value of a field of another stream's records."""

    name: str
    stream: str
    field: str


def feed_text(sources: Sequence[str]) -> str:
    """Name what gives a dependent stream one partition: ``STREAM.FIELD`` paths of its
    ``from`` parameters, whose values are combined within each parent record."""
    if len(sources) == 1:
        return f"distinct value of {sources[0]}"
    return f"distinct combination of {', '.join(sources[:-1])} and {sources[-1]} in one record"


StaticSpec = Each | IntRange | DateWindows
VaryingSpec = StaticSpec | FromStream
ParamSpec = Constant | VaryingSpec


def expand_static(specs: tuple[StaticSpec, ...]) -> Iterator[dict[str, Scalar]]:
    """Yield the cartesian product of static parameter specs, one dict per partition."""
    if not specs:
        yield {}
        return
    for combination in itertools.product(*(list(spec.expand()) for spec in specs)):
        merged: dict[str, Scalar] = {}
        for part in combination:
            merged.update(part)
        yield merged


def count_static(specs: tuple[StaticSpec, ...], limit: int | None = None) -> int:
    """Return how many partitions ``expand_static`` yields, without building them.

    With ``limit``, counting stops early and the result is some number above ``limit``
    whenever the true count is above it.
    """
    total = 1
    for spec in specs:
        if isinstance(spec, Each):
            total *= len(spec.values)
        elif isinstance(spec, IntRange):
            total *= len(range(spec.start, spec.stop + 1, spec.step))
        else:
            windows = spec.windows()
            if limit is not None:
                windows = itertools.islice(windows, limit + 1)
            total *= sum(1 for _ in windows)
        if limit is not None and total > limit:
            return total
    return total


def count_written(
    specs: tuple[StaticSpec, ...],
    stream: str,
    shard: tuple[int, int] | None,
    skip: Collection[str] = (),
) -> int:
    """Count the partitions of ``specs`` that a run of ``stream`` writes.

    A shard writes only the partitions it owns, and no run writes a partition whose id is
    in ``skip`` (the date windows that earlier incremental runs finished).
    """
    if shard is None and not skip:
        return count_static(specs)
    return sum(
        1
        for values in expand_static(specs)
        if (key := partition_id(values)) not in skip
        and (shard is None or shard_owns(shard, stream, key))
    )
