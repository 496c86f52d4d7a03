"""Profile tm-export on a workload with py-spy and report where its time goes.

py-spy samples the tm-export process from outside (so the process runs at nearly full
speed) and writes raw collapsed stacks. This module sums them three ways:

- by package, over the innermost frame of each sample (self time): tm_export's own
  files, aiohttp, asyncio, anyio, orjson, and so on;
- by tm_export function, over every sample whose stack contains it (inclusive time);
- the share of the main thread's samples where it waits in the event loop's ``select``,
  which is time the process spends waiting for the server (or for nothing to do).

    .venv/bin/python bench/profile.py W1         # the W1 export at concurrency 8
    .venv/bin/python bench/profile.py W2 --concurrency 32
    .venv/bin/python bench/profile.py W3          # the 500 MB response
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import workloads
from harness import (
    PYTHON,
    SOURCE,
    WORK,
    mock_server,
    run_measured,
    synthetic_server,
    use_source,
)
from subjects import W1_RECIPE, LimitScript

PY_SPY = PYTHON.parent / "py-spy"

#: Samples per second; py-spy's default of 100 gives too few samples for a 5 s run.
RATE = 250

FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^:()]+)(?::\d+)?\)$")

#: Mock settings of the profiled W1 and W2 runs, as in a full ``bench/run.py``.
MOCK_PROFILES = {
    "W1": {"projects": 3000, "latency_ms": 0},
    "W2": {"projects": 600, "latency_ms": 20},
}
WORKLOADS = ("W1", "W2", "W3", "W4")


def package_of(path: str) -> str:
    """Group a frame's file into a package, with tm_export split by module."""
    if path.startswith("tm_export/"):
        return path.removesuffix(".py")
    if path.startswith("<"):
        return "interpreter"
    return path.split("/", 1)[0].removesuffix(".py") if "/" in path else path.removesuffix(".py")


def parse_stacks(raw: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """Read py-spy's raw format with ``--threads``: ``thread (ID): NAME;frame;... COUNT``.

    Returns (thread, frames outermost first, samples) per line. Samples of the main thread
    are named ``MainThread`` by py-spy, or start with ``_run_module_as_main`` when it
    cannot name the thread; the thread is named ``main`` for them.
    """
    stacks = []
    for line in raw.read_text().splitlines():
        text, _, count = line.rpartition(" ")
        parts = text.split(";")
        thread = parts[0].partition(":")[2].strip() or parts[0]
        frames = []
        for part in parts[1:]:
            match = FRAME.match(part.strip())
            if match:
                frames.append((match["function"], match["path"]))
            else:
                frames.append((part.strip(), "<unknown>"))
        if thread == "MainThread" or (frames and frames[0][0] == "_run_module_as_main"):
            thread = "main"
        stacks.append((thread, frames, int(count)))
    return stacks


def is_waiting(frames: list[tuple[str, str]]) -> bool:
    function, path = frames[-1] if frames else ("", "")
    return path == "selectors.py" and function.rsplit(".", 1)[-1] in ("select", "poll")


#: Frames that hold every sample of a run; the function below them is the one to name.
OUTER_FRAMES = ("tm_export/__main__.py", "tm_export/cli.py")


def innermost_tm_export(frames: list[tuple[str, str]]) -> str:
    """Name the innermost tm_export function of a stack, which the sample is charged to.

    Samples with no tm_export frame below the CLI are charged to the event loop.
    """
    for function, path in reversed(frames):
        if path.startswith("tm_export/") and path not in OUTER_FRAMES:
            return f"{path.removesuffix('.py')}.{function}"
    return "(event loop and library callbacks, no tm_export frame)"


def summarise(raw: Path, top: int = 12) -> dict[str, Any]:
    """Sum the main thread's samples by package, by tm_export function, and waiting.

    Shares are of the main thread's busy samples (those not waiting in ``select``).
    Samples of other threads (anyio's workers, which run the fsyncs) are summed apart.
    """
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    responsible: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    other_threads: Counter[str] = Counter()
    waiting = 0
    main = 0
    for thread, frames, count in parse_stacks(raw):
        if thread != "main":
            function, path = frames[-1] if frames else ("?", "?")
            other_threads[f"{function} ({path})"] += count
            continue
        main += count
        if not frames or is_waiting(frames):
            waiting += count
            continue
        by_package[package_of(frames[-1][1])] += count
        by_function[f"{frames[-1][0]} ({frames[-1][1]})"] += count
        responsible[innermost_tm_export(frames)] += count
        functions = {
            f"{path.removesuffix('.py')}.{function}"
            for function, path in frames
            if path.startswith("tm_export/")
        }
        for name in functions:
            inclusive[name] += count
    busy = main - waiting
    return {
        "main_samples": main,
        "waiting_share": waiting / main if main else 0.0,
        "self_by_package": [(name, count / busy) for name, count in by_package.most_common(top)],
        "self_tm_export": sum(
            count for name, count in by_package.items() if name.startswith("tm_export/")
        )
        / busy,
        "self_by_function": [(name, count / busy) for name, count in by_function.most_common(top)],
        "innermost_tm_export": [
            (name, count / busy) for name, count in responsible.most_common(top)
        ],
        "inclusive_tm_export": [(name, count / busy) for name, count in inclusive.most_common(top)],
        "other_threads": [(name, count / main) for name, count in other_threads.most_common(3)],
    }


def profile(workload: str, concurrency: int) -> dict[str, Any]:
    """Run one workload's tm-export export under py-spy and summarise the samples.

    W1 and W2 run the W1 recipe against a fresh mock; W3 and W4 run their recipes
    against the synthetic servers, at the sizes of a full ``bench/run.py``.
    """
    folder = WORK / "profiles" / f"{workload.lower()}-c{concurrency}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    raw = folder / "samples.raw"
    spy = [str(PY_SPY), "record", "--threads", "--idle", "--format", "raw"]
    spy += ["--rate", str(RATE), "-o", str(raw), "--", *SOURCE.command, "run"]
    options = ["--concurrency", str(concurrency), "--quiet"]

    if workload in ("W1", "W2"):
        settings = MOCK_PROFILES[workload]
        server = mock_server(settings["projects"], settings["latency_ms"], f"profile-{workload}")
        recipe = W1_RECIPE
    else:
        (folder / "recipe.yaml").write_text(
            workloads.TASKS_RECIPE
            if workload == "W3"
            else workloads.ACTIVITIES_RECIPE.format(projects=workloads.Settings().w4_projects)
        )
        recipe = folder / "recipe.yaml"
        if workload == "W3":
            body, _ = workloads.tasks_body(workloads.Settings().w3_megabytes)
            server = synthetic_server("tasks", "profile-W3", "--body", str(body))
        else:
            server = synthetic_server(
                "activities",
                "profile-W4",
                "--projects",
                str(workloads.Settings().w4_projects),
                "--pages",
                str(workloads.W4_PAGES),
                "--per-page",
                str(workloads.W4_PER_PAGE),
            )

    with server:
        if workload in ("W1", "W2"):
            LimitScript().run(server, concurrency, folder / "warm-up")
        command = [*spy, str(recipe), "--base-url", server.api_url, *options]
        measurement = run_measured(command, cwd=folder, log=folder / "stderr.log")

    summary = summarise(raw)
    summary.update(
        workload=workload,
        concurrency=concurrency,
        wall_s=measurement.wall_s,
        cpu_s=measurement.user_s + measurement.system_s,
        command=f"py-spy record --threads --idle --format raw --rate {RATE} -- "
        f"tm-export run {recipe.name} --base-url $API --concurrency {concurrency}",
    )
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['workload']} c={summary['concurrency']}: {summary['main_samples']} samples "
        f"of the main thread, wall {summary['wall_s']:.1f} s under py-spy, "
        f"CPU {summary['cpu_s']:.1f} s",
        f"  main thread waiting in select: {summary['waiting_share']:.0%} of its samples",
    ]
    lines.append("  self time by package (share of busy samples):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["self_by_package"]]
    lines.append(f"    {summary['self_tm_export']:6.1%}  tm_export, every file together")
    lines.append("  self time by function (share of busy samples):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["self_by_function"]]
    lines.append("  charged to the innermost tm_export function (share of busy samples):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["innermost_tm_export"]]
    lines.append("  inclusive time of tm_export functions (share of busy samples):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["inclusive_tm_export"]]
    lines.append("  other threads, innermost frame (samples as a share of the main thread's):")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["other_threads"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--source", metavar="REVISION", help="profile this git revision")
    options = parser.parse_args()
    if not PY_SPY.exists():
        print(f"profile.py: {PY_SPY} not found; install it with .venv/bin/pip install py-spy")
        return 2
    use_source(options.source)
    print(format_summary(profile(options.workload, options.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
