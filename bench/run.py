"""Run the tm-export benchmarks (``make bench``) and write docs/benchmarks.md.

Every request goes to servers that this script starts on 127.0.0.1, each in its own
process: the bundled mock Tasking Manager (W1, W2) and the synthetic servers of
``bench/servers.py`` (W3–W6). Results are merged into ``bench/results.json`` by
workload, so ``--only W3`` updates W3 and keeps the others, and the generated part of
the page is rebuilt from that file.

    .venv/bin/python bench/run.py                 # everything: 10 minutes, more while the peers install
    .venv/bin/python bench/run.py --only W1,W2    # a subset
    .venv/bin/python bench/run.py --quick         # small sizes, one run; writes nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peers
import report
import workloads
from harness import ROOT, machine, tool_versions, use_source

RESULTS = Path(__file__).resolve().parent / "results.json"
PAGE = ROOT / "docs" / "benchmarks.md"

WORKLOADS: dict[str, Callable[[workloads.Settings], dict[str, Any]]] = {
    "W1": workloads.w1_throughput,
    "W2": workloads.w2_latency,
    "W3": workloads.w3_huge_response,
    "W4": workloads.w4_big_export,
    "W5": workloads.w5_resume,
    "W6": workloads.w6_rate,
}

TEMPLATE = f"""# Benchmarks

How fast tm-export exports, and how much memory it takes, measured by `make bench`
(`bench/run.py`) against servers on the same machine.

{report.START}
{report.END}
"""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one run each, to check the harness; writes no results "
        "unless --write is given",
    )
    parser.add_argument("--runs", type=int, help="runs of each subject (default 5, quick 1)")
    parser.add_argument(
        "--write",
        action="store_true",
        help="with --quick: still merge the results into bench/results.json and the page",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="leave out the peer tools (dlt, Airbyte, Singer) in W1 and W2",
    )
    parser.add_argument(
        "--source",
        metavar="REVISION",
        help="benchmark the tm-export code of this git revision (e.g. HEAD) in place of the "
        "work tree, so that edits made meanwhile do not change what runs",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rebuild the page from bench/results.json; runs nothing",
    )
    parser.add_argument("--page", type=Path, default=PAGE, help="the page to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    chosen = [name.strip().upper() for name in options.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in WORKLOADS]
    if unknown:
        print(f"run.py: unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
        return 2

    if options.render:
        report.write_page(options.page, report.render(json.loads(RESULTS.read_text())), TEMPLATE)
        print(f"wrote {options.page}")
        return 0

    settings = workloads.Settings.quick_settings() if options.quick else workloads.Settings()
    if options.runs:
        settings.runs = options.runs

    results: dict[str, Any] = {"workloads": {}}
    if RESULTS.exists():
        results = json.loads(RESULTS.read_text())
    results["machine"] = machine()
    results["versions"] = tool_versions()

    commit = use_source(options.source).label
    if not options.no_peers and {"W1", "W2"} & set(chosen):
        print("peers: installing into bench/.peers/ (once)", flush=True)
        settings.peers, results["peers"] = peers.install_peers()
    started = time.monotonic()
    for name in chosen:
        print(f"{name}: running", flush=True)
        began = time.monotonic()
        result = WORKLOADS[name](settings)
        result["measured_at"] = dt.date.today().isoformat()
        result["commit"] = commit
        result["quick"] = settings.quick
        result["duration_s"] = round(time.monotonic() - began, 1)
        results["workloads"][name] = result
        for item in result["targets"]:
            verdict = report.met_text(item["met"]).strip("*")
            print(f"  {item['target']}: {item['measured']} ({verdict})")
        print(f"{name}: done in {result['duration_s']:.0f} s", flush=True)
    print(f"all done in {time.monotonic() - started:.0f} s")

    if settings.quick and not options.write:
        print(
            "quick mode: small sizes and one run, so the verdicts above do not compare with the "
            "page's; results not written (add --write to write them)"
        )
        return 0
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    report.write_page(options.page, report.render(results), TEMPLATE)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {options.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
