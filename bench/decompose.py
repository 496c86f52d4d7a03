"""Split tm-export's W1 CPU time into its own work and the HTTP exchange, measured apart.

Three subjects run in this process, one after another, against one mock server with W1's
data; each round starts with the next subject:

- **network**: the W1 export as ``tm-export run`` does it (manifest, fsyncs, run record);
- **replayed**: the same export with every response taken from memory, recorded from the
  mock beforehand, so it measures tm-export's own work per page and record, with no socket;
- **exchange**: the same requests sent through tm-export's HTTP session (aiohttp, the same
  timeouts and headers, the same event loop), ``concurrency`` at a time, bodies read and
  dropped: the HTTP work alone.

If the two parts did not slow each other, network would cost replayed + exchange. CPU is
``time.process_time`` (every thread of this process). Start-up and imports happen once,
before the first subject, so they are not counted: the W1 table's figures, taken per
process, include about 0.3 CPU seconds of them. ``--yields N`` makes each replayed response
yield N times to the event loop first, as a response from a socket makes its task yield,
to measure what a suspension costs. The recorded responses are moved out of the garbage
collector's reach (``gc.freeze``), so that they do not slow the subjects. Each round's
output is deleted once measured; the recorded run, about 110 MB, stays in
``bench/.work/decompose``.

    .venv/bin/python bench/decompose.py               # 5 rounds, W1's 3,000 projects
    .venv/bin/python bench/decompose.py --rounds 3 --yields 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
from harness import WORK, ServerProcess, machine_busy_seconds, mock_server, process_cpu_seconds
from subjects import W1_RECIPE

from tm_export import loop
from tm_export.engine import RunOptions, export
from tm_export.http import HttpSession, Response
from tm_export.recipe import load_recipe
from tm_export.redact import Redactor

Key = tuple[str, tuple[tuple[str, str], ...]]
"""A request: its URL without query, and its query parameters in order."""

Get = Callable[[HttpSession, str, Mapping[str, str]], Awaitable[Response]]

SUBJECTS = ("network", "replayed", "exchange")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sample:
    """One subject's run: CPU seconds of this process, wall seconds, server CPU seconds, and
    the CPU seconds every other process on the machine used meanwhile."""

    cpu_s: float
    wall_s: float
    server_cpu_s: float
    other_cpu_s: float


@contextmanager
def session_get(replacement: Get) -> Iterator[None]:
    """Put ``replacement`` in place of ``HttpSession.get`` for the ``with`` block."""
    original = HttpSession.get
    HttpSession.get = replacement  # type: ignore[method-assign]
    try:
        yield
    finally:
        HttpSession.get = original  # type: ignore[method-assign]


def record_responses(
    api_url: str, folder: Path, concurrency: int
) -> tuple[dict[Key, Response], dict[str, int]]:
    """Run the W1 export once against the mock; return every response and the records per stream."""
    responses: dict[Key, Response] = {}
    original = HttpSession.get

    async def recording(
        session: HttpSession, url: str, params: Mapping[str, str], *, spool: bool = True
    ) -> Response:
        response = await original(session, url, params, spool=spool)
        # The engine deletes a spool file once read, so a replay could not read it again.
        assert response.spool is None, f"{url}: a spooled response cannot be replayed"
        responses[(url, tuple(params.items()))] = response
        return response

    with session_get(recording):
        records = run_export(api_url, folder, concurrency)
    return responses, records


def run_export(api_url: str, folder: Path, concurrency: int) -> dict[str, int]:
    """Run the W1 recipe into ``folder`` and return the records each stream wrote."""
    options = RunOptions(
        base_url=api_url, output=folder, concurrency=concurrency, handle_signals=False
    )
    result = loop.run(export, load_recipe(W1_RECIPE), options)
    assert result.exit_code() == 0, f"the W1 export into {folder} did not finish cleanly"
    return {name: stats.records for name, stats in result.streams.items()}


def replay(responses: dict[Key, Response], yields: int) -> Get:
    """Return a ``get`` that looks each request up in ``responses``, with no network."""

    async def replayed(
        session: HttpSession, url: str, params: Mapping[str, str], *, spool: bool = True
    ) -> Response:
        for _ in range(yields):
            await asyncio.sleep(0)
        return responses[(url, tuple(params.items()))]

    return replayed


async def exchange(requests: list[Key], concurrency: int, spool: Path) -> int:
    """Send ``requests`` through a session set up as the engine sets up its own.

    Returns the number of responses with a 2xx status.
    """
    timeouts = load_recipe(W1_RECIPE).instance.timeouts
    pending = iter(requests)
    succeeded = 0

    async def worker(session: HttpSession) -> None:
        nonlocal succeeded
        for url, params in pending:
            response = await session.get(url, dict(params))
            succeeded += 200 <= response.status < 300

    async with (
        HttpSession(
            user_agent="tm-export-bench",
            token=None,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            total_timeout=timeouts.total,
            max_connections=concurrency,
            redactor=Redactor(),
            spool_dir=spool,
        ) as session,
        anyio.create_task_group() as group,
    ):
        for _ in range(concurrency):
            group.start_soon(worker, session)
    return succeeded


def measure(server: ServerProcess, function: Callable[..., T], *args: object) -> tuple[Sample, T]:
    """Run ``function(*args)`` and return what it cost, with its result."""
    server_cpu, busy = process_cpu_seconds(server.pid), machine_busy_seconds()
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = process_cpu_seconds(server.pid) - server_cpu
    other = machine_busy_seconds() - busy - cpu - server_cpu
    return Sample(cpu, wall, server_cpu, max(other, 0.0)), result


def replayed_run(
    server: ServerProcess, responses: dict[Key, Response], options: argparse.Namespace, out: Path
) -> tuple[Sample, dict[str, int]]:
    """Measure the W1 export with every response replayed from ``responses``."""
    with session_get(replay(responses, options.yields)):
        return measure(server, run_export, server.api_url, out / "replayed", options.concurrency)


def report(results: dict[str, list[Sample]]) -> None:
    """Print each subject's medians and ranges, and the gap between network and its parts."""
    medians = {}
    for name, samples in results.items():
        cpu = [sample.cpu_s for sample in samples]
        wall = [sample.wall_s for sample in samples]
        share = statistics.median(sample.server_cpu_s / sample.wall_s for sample in samples)
        other = statistics.median(sample.other_cpu_s / sample.wall_s for sample in samples)
        medians[name] = statistics.median(cpu)
        print(
            f"  {name:9s} CPU {medians[name]:.2f} s ({min(cpu):.2f}-{max(cpu):.2f}), "
            f"wall {statistics.median(wall):.2f} s ({min(wall):.2f}-{max(wall):.2f}), "
            f"server CPU {share:.0%}, other load {other:.1f} cores"
        )
    apart = medians["replayed"] + medians["exchange"]
    print(
        f"  replayed + exchange = {apart:.2f} CPU s; network costs "
        f"{medians['network'] - apart:+.2f} s more than its parts measured apart"
    )


def whole(least: int) -> Callable[[str], int]:
    """Return an argparse type that takes a whole number of at least ``least``."""

    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {least}")
        return int(text)

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=whole(1), default=5, help="runs of each subject")
    parser.add_argument("--projects", type=whole(1), default=3000, help="mock projects (W1: 3000)")
    parser.add_argument(
        "--concurrency", type=whole(1), default=8, help="requests in flight at once"
    )
    parser.add_argument(
        "--yields", type=whole(0), default=0, help="event-loop turns before each replayed response"
    )
    options = parser.parse_args()
    folder = WORK / "decompose"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    results: dict[str, list[Sample]] = {name: [] for name in SUBJECTS}

    with mock_server(options.projects, 0, "decompose") as server:
        responses, expected = record_responses(
            server.api_url, folder / "recorded", options.concurrency
        )
        gc.freeze()
        requests = list(responses)
        subjects: dict[str, Callable[[Path], tuple[Sample, object]]] = {
            "network": lambda out: measure(
                server, run_export, server.api_url, out / "network", options.concurrency
            ),
            "replayed": lambda out: replayed_run(server, responses, options, out),
            "exchange": lambda out: measure(
                server, loop.run, exchange, requests, options.concurrency, out / "spool"
            ),
        }
        for number in range(options.rounds):
            out = folder / f"round-{number}"
            # A different subject goes first in each round, so that none gains from its place.
            first = number % len(SUBJECTS)
            order = SUBJECTS[first:] + SUBJECTS[:first]
            for name in order:
                sample, outcome = subjects[name](out)
                if name == "exchange":
                    assert outcome == len(requests), f"{outcome} of {len(requests)} were 2xx"
                else:
                    assert outcome == expected, f"{name} run wrote {outcome}, not {expected}"
                results[name].append(sample)
            shutil.rmtree(out)

    total = sum(expected.values())
    print(
        f"{len(requests):,} requests and {total:,} records a run, {options.rounds} "
        f"round{'' if options.rounds == 1 else 's'}, concurrency {options.concurrency}, "
        f"{options.yields} yield{'' if options.yields == 1 else 's'} a replayed response"
    )
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
