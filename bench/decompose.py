"""Split tm-export's W1 CPU time into its own work and the HTTP exchange, measured apart.

Three subjects run in this process, in turn, against one mock server with W1's data:

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
from harness import WORK, ServerProcess, mock_server, process_cpu_seconds
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
    """One subject's run: CPU seconds of this process, wall seconds, server CPU seconds."""

    cpu_s: float
    wall_s: float
    server_cpu_s: float


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

    async def recording(session: HttpSession, url: str, params: Mapping[str, str]) -> Response:
        response = await original(session, url, params)
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

    async def replayed(session: HttpSession, url: str, params: Mapping[str, str]) -> Response:
        for _ in range(yields):
            await asyncio.sleep(0)
        return responses[(url, tuple(params.items()))]

    return replayed


async def exchange(requests: list[Key], concurrency: int, spool: Path) -> int:
    """Send ``requests`` through a session set up as the engine sets up its own.

    Returns the number of responses whose status was not 2xx.
    """
    timeouts = load_recipe(W1_RECIPE).instance.timeouts
    pending = iter(requests)
    failed = 0

    async def worker(session: HttpSession) -> None:
        nonlocal failed
        for url, params in pending:
            response = await session.get(url, dict(params))
            failed += not 200 <= response.status < 300

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
    return failed


def measure(server: ServerProcess, function: Callable[..., T], *args: object) -> tuple[Sample, T]:
    """Run ``function(*args)`` and return what it cost, with its result."""
    server_cpu = process_cpu_seconds(server.pid)
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)
    sample = Sample(
        time.process_time() - cpu,
        time.perf_counter() - wall,
        process_cpu_seconds(server.pid) - server_cpu,
    )
    return sample, result


def report(results: dict[str, list[Sample]]) -> None:
    """Print each subject's medians and ranges, and the gap between network and its parts."""
    medians = {}
    for name, samples in results.items():
        cpu = [sample.cpu_s for sample in samples]
        wall = [sample.wall_s for sample in samples]
        share = statistics.median(sample.server_cpu_s / sample.wall_s for sample in samples)
        medians[name] = statistics.median(cpu)
        print(
            f"  {name:9s} CPU {medians[name]:.2f} s ({min(cpu):.2f}-{max(cpu):.2f}), "
            f"wall {statistics.median(wall):.2f} s ({min(wall):.2f}-{max(wall):.2f}), "
            f"server CPU {share:.0%}"
        )
    apart = medians["replayed"] + medians["exchange"]
    print(
        f"  replayed + exchange = {apart:.2f} CPU s; network costs "
        f"{medians['network'] - apart:+.2f} s more than its parts measured apart"
    )


def positive(text: str) -> int:
    """Parse a whole number of at least 1, for argparse."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive, default=5, help="runs of each subject")
    parser.add_argument("--projects", type=int, default=3000, help="mock projects (W1: 3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument(
        "--yields", type=int, default=0, help="event-loop turns before each replayed response"
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
        for number in range(options.rounds):
            out = folder / f"round-{number}"
            network, records = measure(
                server, run_export, server.api_url, out / "network", options.concurrency
            )
            assert records == expected, f"network run wrote {records}, not {expected}"
            with session_get(replay(responses, options.yields)):
                replayed, records = measure(
                    server, run_export, server.api_url, out / "replayed", options.concurrency
                )
            assert records == expected, f"replayed run wrote {records}, not {expected}"
            exchanged, failed = measure(
                server, loop.run, exchange, requests, options.concurrency, out / "spool"
            )
            assert failed == 0, f"{failed} responses of the exchange were not 2xx"
            results["network"].append(network)
            results["replayed"].append(replayed)
            results["exchange"].append(exchanged)
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
