"""Reliability soak: kill tm-export at seeded random requests, resume, compare with a clean run.

Each trial starts a fresh export of ``bench/recipes/soak.yaml`` against the mock server
(in its own process), held on stdin until the mock has a ``kill`` fault rule for its pid
that fires at a random export request. The mock sends SIGKILL when that request
arrives, so no timer decides when. The same command then resumes the run to the end.
The trial passes when the resume exits 0, its stream files hold the lines of an
uninterrupted run as multisets (missing and duplicated lines are counted apart), and no
page that the killed session had committed is requested again.

    .venv/bin/python bench/soak.py                 # 50 trials, writes docs/reliability.md
    .venv/bin/python bench/soak.py --kills 5 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import statistics
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from harness import (
    BENCH,
    ROOT,
    SOURCE,
    WORK,
    ServerProcess,
    machine,
    mock_server,
    run_measured,
    use_source,
)

RECIPE = BENCH / "recipes" / "soak.yaml"
STREAMS = ("projects", "details", "activities")
PAGE = ROOT / "docs" / "reliability.md"
HEADING = "## Measured"
#: Markers around the generated part of the Measured section.
START, END = "<!-- soak:start -->", "<!-- soak:end -->"
#: The bound on uncommitted pages of the killed session. A run of this soak takes well
#: under a second at zero latency. With tm-export's default bound (1,024 pages) and commit
#: interval (0.1 s), a kill then finds few committed pages to resume from, or none. A bound
#: of 16 makes a commit every 8 pages, on a machine of any speed.
BOUND = 16
UNCOMMITTED = {"TM_EXPORT_MAX_UNCOMMITTED": str(BOUND)}


def run_command(server: ServerProcess) -> list[str]:
    return [*SOURCE.command, "run", str(RECIPE), "--base-url", server.api_url, "--quiet"]


def held(command: list[str]) -> list[str]:
    """Wrap a command in a shell that waits for a line on stdin, then execs it (same pid)."""
    return ["sh", "-c", 'read go; exec "$@"', "sh", *command]


def stream_lines(folder: Path) -> dict[str, Counter[bytes]]:
    data = folder / "out" / "runs" / "0001" / "data"
    return {
        name: Counter((data / f"{name}.jsonl").read_bytes().splitlines())
        if (data / f"{name}.jsonl").exists()
        else Counter()
        for name in STREAMS
    }


def committed_pages(folder: Path) -> set[tuple[str, str, int]]:
    manifest = folder / "out" / "runs" / "0001" / "manifest.jsonl"
    pages = set()
    if not manifest.exists():
        return pages
    for line in manifest.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the unfinished last line a kill can leave
        if entry.get("t") == "page":
            pages.add((entry["s"], entry["p"], entry["n"]))
    return pages


def request_of(stream: str, partition: str, page: int) -> tuple[str, str]:
    """Return the path and the query that fetch a page of the soak recipe."""
    values = orjson.loads(partition)
    if stream == "projects":
        return "/api/v2/projects/", f"page={page}"
    if stream == "details":
        return f"/api/v2/projects/{values['project_id']}/queries/summary/", ""
    return f"/api/v2/projects/{values['project_id']}/activities/", f"page={page}"


def requested(server: ServerProcess) -> set[tuple[str, str]]:
    """Return (path, page query) of each export request in the mock's log."""
    found = set()
    for entry in server.get_json("/__mock__/requests")["requests"]:
        query = "&".join(p for p in entry["query"].split("&") if p.startswith("page="))
        found.add((entry["path"], query))
    return found


def trial(
    server: ServerProcess, folder: Path, kill_at: int, expected: dict[str, Counter[bytes]]
) -> dict[str, Any]:
    """Kill a fresh run at export request ``kill_at``, resume it, and compare the files."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = run_command(server)

    def add_kill_rule(pid: int) -> None:
        rule = {"path": "^/api/v2/projects/", "after": kill_at - 1, "times": 1, "kill": pid}
        server.post_json("/__mock__/faults", rule)

    killed = run_measured(
        held(command),
        cwd=folder,
        log=folder / "killed.log",
        env=UNCOMMITTED,
        stdin_text="go\n",
        on_start=add_kill_rule,
        expect_exit=None,
        timeout_s=300,
    )
    server.post_json("/__mock__/faults", method="DELETE")
    committed = committed_pages(folder)
    server.post_json("/__mock__/reset-log")

    resumed = run_measured(
        command, cwd=folder, log=folder / "resumed.log", expect_exit=None, timeout_s=300
    )
    actual = stream_lines(folder)
    fetched = requested(server)
    again = sum(1 for page in committed if request_of(*page) in fetched)
    missing = sum(sum((expected[n] - actual[n]).values()) for n in STREAMS)
    duplicated = sum(sum((actual[n] - expected[n]).values()) for n in STREAMS)
    result = {
        "kill_at": kill_at,
        "killed_exit": killed.exit_code,
        "committed_pages": len(committed),
        "resume_exit": resumed.exit_code,
        "missing": missing,
        "duplicated": duplicated,
        "committed_requested_again": again,
    }
    # Every export request reserves room for its page, and the soak has no retries.
    result["committed_within_bound"] = len(committed) >= kill_at - BOUND
    result["passed"] = (
        resumed.exit_code == 0
        and not missing
        and not duplicated
        and not again
        and result["committed_within_bound"]
    )
    shutil.rmtree(folder / "out")
    return result


def committed_range(counts: list[int]) -> str:
    """Return the median and range of the committed pages found at the kills."""
    if not counts:
        return "–"
    trials_with_none = sum(1 for count in counts if count == 0)
    return (
        f"median {statistics.median(counts):g} ({min(counts)}–{max(counts)}); "
        f"none in {trials_with_none} of {len(counts)} trials"
    )


def write_section(summary: dict[str, Any]) -> None:
    """Replace the generated part of the Measured section of docs/reliability.md, or add it."""
    text = PAGE.read_text()
    method = (
        f"`bench/soak.py` ran {summary['trials']} trials on {summary['date']} with tm-export "
        f"{summary['source']} ({summary['machine']}). The mock server had "
        f"{summary['projects']} projects, and the recipe `bench/recipes/soak.yaml` exports "
        "the project list, project summaries and paginated activities at concurrency 4. "
        f"Each trial started a fresh run and killed it with SIGKILL when the mock received "
        f"export request number k. k was drawn with seed {summary['seed']} from "
        f"1..{summary['total_requests'] - 1}, since an uninterrupted run sends "
        f"{summary['total_requests']}. The killed session ran with at most "
        f"{UNCOMMITTED['TM_EXPORT_MAX_UNCOMMITTED']} pages uncommitted (tm-export's default "
        "is 1,024), so that it committed a page group every few requests. "
        "The same command then ran again to the end, with the default bound. Its "
        "stream files were compared with those of an uninterrupted run as multisets of "
        "lines, and the mock's request log showed whether it fetched a committed page again. "
        f"A trial also fails when the kill at request k found fewer than k - {BOUND} pages "
        "committed, since every export request first reserves room for its page."
    )
    lines = [
        START,
        *textwrap.wrap(method, width=90),
        "",
        "| trials | killed by the rule | failures | records missing | records duplicated "
        "| committed pages at the kill | committed pages requested again | resume exit codes |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['trials']} | {summary['killed']} | {summary['failures']} "
        f"| {summary['missing']} | {summary['duplicated']} | {summary['committed']} "
        f"| {summary['again']} | {summary['resume_exits']} |",
        "",
        END,
    ]
    if START in text and END in text:
        # Only the part between the markers is generated. The rest of the section, the
        # kill series and the fault soak, is written by hand and kept.
        before, _, after = text.partition(START)
        _, _, tail = after.partition(END)
        PAGE.write_text(before + "\n".join(lines) + tail)
    else:
        PAGE.write_text(text.rstrip("\n") + f"\n\n{HEADING}\n\n" + "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kills", type=int, default=50, help="number of trials, each with one kill"
    )
    parser.add_argument("--seed", type=int, default=20261204, help="seed of the kill points")
    parser.add_argument(
        "--projects", type=int, default=200, help="number of projects the mock generates"
    )
    parser.add_argument("--source", metavar="REVISION", help="test this git revision")
    parser.add_argument("--no-write", action="store_true", help="do not update the page")
    options = parser.parse_args()
    source = use_source(options.source)
    rng = random.Random(options.seed)
    folder = WORK / "soak"
    started = time.monotonic()

    with mock_server(options.projects, 0, "soak") as server:
        reference = folder / "reference"
        shutil.rmtree(reference, ignore_errors=True)
        reference.mkdir(parents=True)
        server.post_json("/__mock__/reset-log")
        run_measured(run_command(server), cwd=reference, log=reference / "stderr.log")
        expected = stream_lines(reference)
        log = server.get_json("/__mock__/requests")["requests"]
        total = sum(1 for entry in log if entry["path"].startswith("/api/v2/projects/"))
        print(
            f"reference: {sum(sum(c.values()) for c in expected.values())} lines, {total} requests"
        )

        results = []
        for number in range(1, options.kills + 1):
            outcome = trial(server, folder / "trial", rng.randint(1, total - 1), expected)
            results.append(outcome)
            print(
                f"trial {number}: killed at request {outcome['kill_at']} "
                f"(exit {outcome['killed_exit']}, {outcome['committed_pages']} pages committed), "
                f"resume exit {outcome['resume_exit']}, missing {outcome['missing']}, "
                f"duplicated {outcome['duplicated']}, requested again "
                f"{outcome['committed_requested_again']}, at least request - {BOUND} "
                f"committed: {outcome['committed_within_bound']}"
                f"{'' if outcome['passed'] else '  FAILED'}",
                flush=True,
            )

    cpu = machine()
    summary = {
        "date": dt.date.today().isoformat(),
        "source": source.label,
        "machine": f"{cpu['cores']} cores, Python {cpu['python']}",
        "trials": len(results),
        "projects": options.projects,
        "seed": options.seed,
        "total_requests": total,
        "killed": sum(1 for r in results if r["killed_exit"] == -9),
        "failures": sum(1 for r in results if not r["passed"]),
        "missing": sum(r["missing"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "again": sum(r["committed_requested_again"] for r in results),
        "committed": committed_range([r["committed_pages"] for r in results]),
        "resume_exits": ", ".join(
            f"{code} × {count}"
            for code, count in Counter(r["resume_exit"] for r in results).most_common()
        ),
    }
    print(
        f"{summary['trials']} trials, {summary['failures']} failures, "
        f"{time.monotonic() - started:.0f} s"
    )
    if not options.no_write:
        write_section(summary)
        print(f"wrote the {HEADING!r} section of {PAGE.relative_to(ROOT)}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
