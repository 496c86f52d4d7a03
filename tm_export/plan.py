"""Count what a recipe will request before running it: ``tm-export plan``.

Without ``--probe`` nothing is sent and nothing is written. A stream whose parameters are
all known before the run (constants, ``each``, ``range``, date windows) has an exact
partition count. A partition of an endpoint that does not paginate costs one request. A
paginated partition costs at least one (page 1), so ``--probe`` fetches page 1 of each to
learn the page count the server reports. A dependent stream (a ``from`` parameter)
gets one partition per distinct value of its parent's field, which is known only once
the parent runs. Retries are never counted.

A plan for a shard counts what ``run --shard K/N`` sends: the partitions the shard writes,
and, for a stream that feeds child streams, the other partitions too, which the shard reads
for the values its own child partitions come from.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

from . import __version__
from .catalog import TOKEN_CHECK_PATH
from .clock import Clock, RealClock
from .errors import (
    FatalError,
    HTTPStatusError,
    RequestError,
    TransportError,
    unreachable,
    wrong_base_url,
)
from .fetcher import Fetcher
from .http import HttpSession
from .params import (
    Partition,
    count_static,
    count_written,
    expand_static,
    feed_text,
    partition_id,
    shard_owns,
)
from .query import QueryBuilder
from .recipe import Recipe, StreamSpec
from .redact import Redactor
from .stream import skips_partition
from .words import counted

logger = logging.getLogger("tm_export.plan")

#: Max partitions probed per stream, unless ``--max-probes`` sets another number.
DEFAULT_MAX_PROBES = 1000


@dataclass(slots=True)
class ProbeCounts:
    """Counts found by probing page 1 of a stream's partitions."""

    probed: int = 0
    not_probed: int = 0
    """Partitions past ``max_probes``, counted at one request each."""
    skipped: int = 0
    """Partitions whose page 1 returned 403 or 404, which the run records as skipped."""
    failed: int = 0
    """Partitions whose page 1 failed for another reason, counted at one request each."""
    without_page_count: int = 0
    """Partitions whose page 1 reported no page count but a next page."""
    capped: int = 0
    """Partitions whose page 1 reported more pages than ``max_pages``: the run stops them at
    the cap, with a problem (exit 3)."""


@dataclass(slots=True)
class StreamPlan:
    """The partitions and requests of one stream."""

    name: str
    endpoint: str
    paginated: bool
    sources: tuple[str, ...]
    """``STREAM.FIELD`` of each ``from`` parameter, whose values make the partitions of a
    dependent stream; empty for a stream whose partitions the recipe gives."""
    partitions: int | None
    """Exact partition count, or None for a dependent stream."""
    per_parent_value: int
    """Partitions per distinct parent value (the static parameters' product); 1 when none."""
    requests: int | None
    """Requests without retries, or None for a dependent stream."""
    exact: bool
    """False when ``requests`` is a lower bound."""
    probe: ProbeCounts | None = None
    read_only: int = 0
    """Partitions another shard writes that this shard fetches for its child streams' values."""

    @property
    def parent(self) -> str | None:
        """``STREAM.FIELD`` of the first ``from`` parameter, for a dependent stream."""
        return self.sources[0] if self.sources else None

    @property
    def fetched(self) -> int:
        """Count of the partitions whose pages are requested: those written and those only read."""
        return (self.partitions or 0) + self.read_only


@dataclass(slots=True)
class Plan:
    """The plan of a whole recipe."""

    recipe: Recipe
    streams: list[StreamPlan]
    preflight: int
    """Requests sent before any export request: the heartbeat, and the token check."""
    end_check: int = 0
    """Requests sent after the last export request: the token checked again, with a token."""
    base_url: str | None = None
    """The server probed, when ``--probe`` was given."""
    shard: tuple[int, int] | None = None
    """(K, N) when the plan is for ``run --shard K/N``."""
    probe_requests: int = 0
    dependent: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        known = sum(stream.requests or 0 for stream in self.streams)
        return known + self.preflight + self.end_check

    @property
    def exact(self) -> bool:
        return not self.dependent and all(stream.exact for stream in self.streams)

    @property
    def min_seconds(self) -> float:
        """Seconds the requests take at least, at the recipe's request budget."""
        return self.requests / self.recipe.instance.rate_limit


def plan_recipe(recipe: Recipe, *, token_set: bool, shard: tuple[int, int] | None = None) -> Plan:
    """Count each stream's partitions and requests without sending anything.

    ``token_set`` is True when the run will have a token, which adds the token check.
    ``shard`` (K, N) counts only what ``run --shard K/N`` sends.
    """
    streams = []
    for name, spec in recipe.streams.items():
        per_value = count_static(spec.static)
        if spec.sources:
            streams.append(
                StreamPlan(
                    name,
                    spec.endpoint.name,
                    spec.endpoint.paginated,
                    spec.sources,
                    None,
                    per_value,
                    None,
                    exact=False,
                )
            )
            continue

        written = count_written(spec.static, name, shard)
        read_only = per_value - written if _feeds_children(recipe, name) else 0
        streams.append(
            StreamPlan(
                name,
                spec.endpoint.name,
                spec.endpoint.paginated,
                (),
                written,
                per_value,
                written + read_only,
                exact=not spec.endpoint.paginated,
                read_only=read_only,
            )
        )
    dependent = [stream.name for stream in streams if stream.parent is not None]
    return Plan(
        recipe,
        streams,
        preflight=2 if token_set else 1,
        end_check=1 if token_set else 0,
        dependent=dependent,
        shard=shard,
    )


def _feeds_children(recipe: Recipe, name: str) -> bool:
    return any(
        spec.parent is not None and spec.parent.stream == name for spec in recipe.streams.values()
    )


def _fetched_partitions(plan: Plan, spec: StreamSpec, stream: StreamPlan) -> Iterator[Partition]:
    """Yield the partitions of a static stream whose pages the run requests, in recipe order."""
    for partition in expand_static(spec.static):
        if (
            plan.shard is None
            or stream.read_only
            or shard_owns(plan.shard, stream.name, partition_id(partition))
        ):
            yield partition


def probe_requests(plan: Plan, max_probes: int = DEFAULT_MAX_PROBES) -> int:
    """Return how many page-1 requests ``probe_plan`` sends, before retries."""
    return sum(
        min(stream.fetched, max_probes)
        for stream in plan.streams
        if stream.paginated and stream.parent is None
    )


def describe_probe(plan: Plan, base_url: str, max_probes: int = DEFAULT_MAX_PROBES) -> str:
    """Return a line naming the requests a probe sends and the least time they take at the rate."""
    count = probe_requests(plan, max_probes)
    if count == 0:
        return (
            f"nothing to probe at {base_url}: no partition is both paginated and known before "
            "the run"
        )
    rate = plan.recipe.instance.rate_limit
    line = (
        f"probing {base_url}: page 1 of {count:,} partition{'s' if count != 1 else ''}, at "
        f"most {rate:g} requests a second"
    )
    seconds = count / rate
    return f"{line}: {seconds:,.0f} s or more" if seconds >= 10 else line


async def probe_plan(
    plan: Plan,
    *,
    base_url: str,
    token: str | None,
    max_probes: int = DEFAULT_MAX_PROBES,
    clock: Clock | None = None,
) -> Plan:
    """Fetch page 1 of each paginated static partition and count the pages it reports.

    Requests go through the run's limits (concurrency, rate, retries). Page 1 responses are
    not kept, so the run fetches them again.

    Raises:
        FatalError: the server rejected the token, asked for too long a wait, or sent no
            response to a probe after every retry.
    """
    plan.base_url = base_url
    if probe_requests(plan, max_probes) == 0:
        return plan

    recipe = plan.recipe
    instance = recipe.instance
    redactor = Redactor([token] if token else [])
    user_agent = (
        f"tm-export/{__version__} (+{instance.contact or 'no contact given in the recipe'})"
    )
    async with HttpSession(
        user_agent=user_agent,
        token=token,
        connect_timeout=instance.timeouts.connect,
        read_timeout=instance.timeouts.read,
        total_timeout=instance.timeouts.total,
        max_connections=instance.concurrency,
        redactor=redactor,
    ) as http:
        fetcher = Fetcher(
            http,
            base_url=base_url,
            retries=instance.retries,
            concurrency=instance.concurrency,
            rate_limit=instance.rate_limit,
            clock=clock or RealClock(),
            redactor=redactor,
            token_env=instance.token_env,
            rerun="run the plan again",
        )
        try:
            await fetcher.get_json("/system/heartbeat/", {}, spool=False)
        except TransportError as error:
            raise unreachable(base_url, error, "run the plan again") from error
        except HTTPStatusError as error:
            # As in a run: a URL that is not an API root would make every probe a 404, which
            # the counts would show as skipped partitions.
            wrong = wrong_base_url(base_url, error, "run the plan again")
            if wrong is not None:
                raise wrong from error
            logger.warning("could not read the server's release: %s", error)
        if token:
            # On most endpoints the server serves a token it does not know as anonymous, so
            # without this check (run makes it too) the probe would count only public data.
            try:
                await fetcher.get_json(TOKEN_CHECK_PATH, {}, spool=False)
            except TransportError as error:
                raise unreachable(base_url, error, "run the plan again") from error
            except RequestError as error:
                logger.warning("the token check did not complete (%s); going on", error)
        for stream in plan.streams:
            spec = recipe.streams[stream.name]
            if stream.paginated and stream.parent is None:
                partitions = _fetched_partitions(plan, spec, stream)
                await _probe_stream(
                    fetcher, spec, stream, partitions, max_probes, instance.concurrency, base_url
                )
        plan.probe_requests = fetcher.requests_sent
    return plan


async def _probe_stream(
    fetcher: Fetcher,
    spec: StreamSpec,
    stream: StreamPlan,
    partitions: Iterator[Partition],
    max_probes: int,
    concurrency: int,
    base_url: str,
) -> None:
    counts = ProbeCounts()
    requests = 0
    exact = True
    slots = anyio.Semaphore(concurrency)
    queries = QueryBuilder(spec)

    async def probe_one(partition: Partition) -> None:
        nonlocal requests, exact
        try:
            path, query = queries.build(partition, page=1)
            _, body = await fetcher.get_json(path, query, spool=False)
        except HTTPStatusError as error:
            if skips_partition(error):
                counts.skipped += 1
                requests += 1
                return
            counts.failed += 1
            requests += 1
            exact = False
            return
        except TransportError as error:
            # No response after every retry, so a plan of these counts would only be a guess.
            raise unreachable(base_url, error, "run the plan again") from error
        except RequestError:
            counts.failed += 1
            requests += 1
            exact = False
            return
        finally:
            slots.release()
        pages, has_next = _page_facts(body)
        if pages is not None:
            requests += min(max(pages, 1), spec.max_pages)
            if pages > spec.max_pages:
                counts.capped += 1
        elif has_next:
            counts.without_page_count += 1
            requests += 2
            exact = False
        else:
            requests += 1

    try:
        async with anyio.create_task_group() as group:
            for number, partition in enumerate(partitions):
                if number >= max_probes:
                    counts.not_probed = stream.fetched - max_probes
                    requests += counts.not_probed
                    exact = False
                    break
                counts.probed += 1
                await slots.acquire()
                group.start_soon(probe_one, partition)
    except BaseExceptionGroup as group:
        fatal = _first_fatal(group)
        if fatal is None:
            raise
        raise fatal from None

    stream.requests = requests
    stream.exact = exact
    stream.probe = counts


def _first_fatal(group: BaseExceptionGroup[BaseException]) -> FatalError | None:
    """Return the first FatalError in a task group's exceptions, however deeply nested."""
    for error in group.exceptions:
        if isinstance(error, FatalError):
            return error
        if isinstance(error, BaseExceptionGroup):
            nested = _first_fatal(error)
            if nested is not None:
                return nested
    return None


def _page_facts(body: Any) -> tuple[int | None, bool]:
    pagination = body.get("pagination") if isinstance(body, dict) else None
    if not isinstance(pagination, dict):
        return None, False
    pages = pagination.get("pages")
    has_next = bool(pagination.get("hasNext"))
    if isinstance(pages, int) and not isinstance(pages, bool):
        return pages, has_next
    return None, has_next


# --- output ---------------------------------------------------------------------------------


def _requests_text(stream: StreamPlan) -> str:
    if stream.requests is None:
        return "unknown"
    return str(stream.requests) if stream.exact else f"at least {stream.requests}"


def format_plan(plan: Plan) -> str:
    """Return the report of ``tm-export plan`` as text."""
    count = len(plan.streams)
    if plan.base_url is None:
        sent = "nothing was sent"
    elif plan.probe_requests == 0:
        sent = f"nothing was sent: nothing to probe at {plan.base_url}"
    else:
        sent = f"probed {plan.base_url} with {counted(plan.probe_requests, 'request')}"
    shard = f" (shard {plan.shard[0]}/{plan.shard[1]})" if plan.shard else ""
    streams = counted(count, "stream")
    lines = [f"plan for {plan.recipe.path}{shard}: {streams}; {sent}"]

    rows: list[tuple[str, ...]] = [("stream", "endpoint", "partitions", "requests")]
    for stream in plan.streams:
        partitions = "unknown" if stream.partitions is None else str(stream.partitions)
        rows.append((stream.name, stream.endpoint, partitions, _requests_text(stream)))
    rows.append(("preflight", "", "", str(plan.preflight)))
    if plan.end_check:
        rows.append(("end check", "", "", str(plan.end_check)))
    total = str(plan.requests) if plan.exact else f"at least {plan.requests}"
    rows.append(("total", "", "", total))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
        ]
        lines.append("  ".join(cells).rstrip())

    for stream in plan.streams:
        lines.extend(_stream_notes(stream, plan.shard))
    if plan.dependent:
        lines.append(
            f"total: without the requests of {', '.join(plan.dependent)}, known only once "
            "the parent streams run"
        )
    if plan.end_check:
        lines.append(
            "preflight: the server's heartbeat, and one token check; end check: the token "
            "checked again once the export is done; retries, the token checks that a 403 or "
            "a list that changed during its walk causes, and the project detail asked for "
            "after 500s that may mean a draft, are not counted"
        )
    else:
        lines.append("preflight: the server's heartbeat; retries are not counted")
    if plan.min_seconds >= 1:
        # Below a second the budget is no guide to how long the run takes.
        lines.append(
            f"time: at least {_duration(plan.min_seconds)} for the requests counted above, at the "
            f"recipe's rate_limit of {plan.recipe.instance.rate_limit:g}/s; retries and the "
            "server's response times add to it"
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """Return ``seconds`` as the two largest units that matter, such as ``2 h 5 min``.

    Rounded down, because the figure is a lower bound.
    """
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def _stream_notes(stream: StreamPlan, shard: tuple[int, int] | None) -> list[str]:
    notes = []
    if shard is not None and stream.parent is None:
        total = stream.per_parent_value
        note = (
            f"{stream.name}: shard {shard[0]}/{shard[1]} writes {stream.partitions} of "
            f"{counted(total, 'partition')}"
        )
        if stream.read_only:
            note += (
                f", and reads {stream.read_only} that another shard writes, for the values of "
                "its child streams"
            )
        notes.append(note)
    if stream.parent is not None:
        per_value = "" if stream.per_parent_value == 1 else f"{stream.per_parent_value} "
        plural = "s" if stream.per_parent_value != 1 else ""
        parent = stream.parent.split(".")[0]
        notes.append(
            f"{stream.name}: {per_value or 'one '}partition{plural} per "
            f"{feed_text(stream.sources)}, known only once {parent} runs"
        )
    elif stream.paginated and stream.probe is None:
        notes.append(
            f"{stream.name}: paginated, so at least one request per partition; --probe "
            "fetches page 1 of each partition to count its pages"
        )
    if stream.probe is not None:
        probe = stream.probe
        parts = [f"probed {counted(probe.probed, 'partition')}"]
        if probe.skipped:
            parts.append(f"{probe.skipped} skipped (403/404)")
        if probe.failed:
            parts.append(f"{probe.failed} failed, counted at one request")
        if probe.without_page_count:
            parts.append(f"{probe.without_page_count} without a page count, counted at two")
        if probe.not_probed:
            parts.append(f"{probe.not_probed} not probed (--max-probes), counted at one")
        if probe.capped:
            parts.append(
                f"{probe.capped} with more pages than max_pages, which the run stops at the cap "
                "with a problem (exit 3)"
            )
        notes.append(f"{stream.name}: {', '.join(parts)}")
    return notes


def plan_json(plan: Plan) -> dict[str, Any]:
    """Return the report of ``tm-export plan --json`` as JSON-ready data."""
    return {
        "recipe": str(plan.recipe.path),
        "recipe_hash": plan.recipe.export_hash(),
        "probed": plan.base_url is not None,
        "base_url": plan.base_url,
        "probe_requests": plan.probe_requests,
        # [K, N], as status --json and the manifest header give it.
        "shard": None if plan.shard is None else list(plan.shard),
        "streams": [
            {
                "name": stream.name,
                "endpoint": stream.endpoint,
                "paginated": stream.paginated,
                "parent": stream.parent,
                "partitions": stream.partitions,
                "partitions_read_only": stream.read_only,
                "partitions_per_parent_value": stream.per_parent_value
                if stream.parent is not None
                else None,
                "requests": stream.requests,
                "requests_exact": stream.exact,
                "probe": None
                if stream.probe is None
                else {
                    "probed": stream.probe.probed,
                    "not_probed": stream.probe.not_probed,
                    "skipped": stream.probe.skipped,
                    "failed": stream.probe.failed,
                    "without_page_count": stream.probe.without_page_count,
                    "capped": stream.probe.capped,
                },
            }
            for stream in plan.streams
        ],
        "preflight_requests": plan.preflight,
        "end_check_requests": plan.end_check,
        "total": {
            "requests": plan.requests,
            "exact": plan.exact,
            "dependent_streams": plan.dependent,
            "min_seconds": round(plan.min_seconds, 1),
        },
    }
