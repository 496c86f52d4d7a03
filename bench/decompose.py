"""Split tm-export's W1 CPU time into its own work and the HTTP exchange, measured apart.

Three subjects run in this process, in turn, against one mock server with W1's data:

- **network**: the W1 export as ``tm-export run`` does it (manifest, fsyncs, run record);
- **replayed**: the same export with every response taken from memory, recorded from the
  mock beforehand, so it measures tm-export's own work per page and record, with no socket;
- **exchange**: the same requests sent through tm-export's HTTP session (aiohttp, the same
  timeouts and headers, the same event loop), ``concurrency`` at a time, bodies read and
  dropped: the HTTP work alone.

If the two parts did not slow each other, network would cost replayed + exchange. CPU is
``time.process_time`` (every thread of this process); start-up and imports are not counted,
since they happen once before the first subject.

    .venv/bin/python bench/decompose.py               # 5 rounds, W1's 3,000 projects
    .venv/bin/python bench/decompose.py --rounds 3 --projects 600
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import anyio
from harness import WORK, mock_server
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


@contextmanager
def session_get(replacement: Get) -> Iterator[None]:
    """Put ``replacement`` in place of ``HttpSession.get`` for the ``with`` block."""
    original = HttpSession.get
    HttpSession.get = replacement  # type: ignore[method-assign]
    try:
        yield
    finally:
        HttpSession.get = original  # type: ignore[method-assign]


def record_responses(api_url: str, folder: Path, concurrency: int) -> dict[Key, Response]:
    """Run the W1 export once against the mock and keep every response it received."""
    responses: dict[Key, Response] = {}
    original = HttpSession.get

    async def recording(session: HttpSession, url: str, params: Mapping[str, str]) -> Response:
        response = await original(session, url, params)
        responses[(url, tuple(params.items()))] = response
        return response

    with session_get(recording):
        run_export(api_url, folder, concurrency)
    return responses


def run_export(api_url: str, folder: Path, concurrency: int) -> int:
    """Run the W1 recipe into ``folder`` and return the records it wrote."""
    options = RunOptions(
        base_url=api_url, output=folder, concurrency=concurrency, handle_signals=False
    )
    result = loop.run(export, load_recipe(W1_RECIPE), options)
    assert result.exit_code() == 0, f"the W1 export into {folder} did not finish cleanly"
    return sum(stats.records for stats in result.streams.values())


def replay(responses: dict[Key, Response]) -> Get:
    """Return a ``get`` that looks each request up in ``responses``, with no network."""

    async def replayed(session: HttpSession, url: str, params: Mapping[str, str]) -> Response:
        return responses[(url, tuple(params.items()))]

    return replayed


async def exchange(requests: list[Key], concurrency: int) -> None:
    """Send ``requests`` through a session set up as the engine sets up its own."""
    timeouts = load_recipe(W1_RECIPE).instance.timeouts
    pending = iter(requests)

    async def worker(session: HttpSession) -> None:
        for url, params in pending:
            await session.get(url, dict(params))

    async with (
        HttpSession(
            user_agent="tm-export-bench",
            token=None,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            total_timeout=timeouts.total,
            max_connections=concurrency,
            redactor=Redactor(),
        ) as session,
        anyio.create_task_group() as group,
    ):
        for _ in range(concurrency):
            group.start_soon(worker, session)


def measure(function: Callable[..., object], *args: object) -> tuple[float, float]:
    """Return the CPU seconds (every thread) and wall seconds that ``function(*args)`` takes."""
    cpu, wall = time.process_time(), time.perf_counter()
    function(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each subject")
    parser.add_argument("--projects", type=int, default=3000, help="mock projects (W1: 3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    options = parser.parse_args()
    folder = WORK / "decompose"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in SUBJECTS}

    with mock_server(options.projects, 0, "decompose") as server:
        responses = record_responses(server.api_url, folder / "recorded", options.concurrency)
        requests = list(responses)
        for number in range(options.rounds):
            out = folder / f"round-{number}"
            network = measure(run_export, server.api_url, out / "network", options.concurrency)
            with session_get(replay(responses)):
                replayed = measure(
                    run_export, server.api_url, out / "replayed", options.concurrency
                )
            exchanged = measure(loop.run, exchange, requests, options.concurrency)
            results["network"].append(network)
            results["replayed"].append(replayed)
            results["exchange"].append(exchanged)

    rounds = f"{options.rounds} round{'' if options.rounds == 1 else 's'}"
    print(f"{len(requests):,} requests, {rounds}, concurrency {options.concurrency}")
    medians = {}
    for name, runs in results.items():
        cpu = [run[0] for run in runs]
        wall = [run[1] for run in runs]
        medians[name] = statistics.median(cpu)
        print(
            f"  {name:9s} CPU {medians[name]:.2f} s ({min(cpu):.2f}-{max(cpu):.2f}), "
            f"wall {statistics.median(wall):.2f} s ({min(wall):.2f}-{max(wall):.2f})"
        )
    apart = medians["replayed"] + medians["exchange"]
    print(
        f"  replayed + exchange = {apart:.2f} CPU s; network costs {medians['network'] - apart:+.2f} s "
        "more than its parts measured apart"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
