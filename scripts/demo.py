"""Run the demo: export recipes/demo.yaml from the bundled mock server and check the counts.

Starts the mock Tasking Manager on a free loopback port, runs ``tm-export run`` against it
with the mock's admin token, prints where the files are and each stream's record count next
to the count the mock reports for its own dataset, and stops the server. Exits non-zero
when the export fails or a count differs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tm_export.mock import MockServer

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "demo.yaml"
OUTPUT = ROOT / "exports" / "demo"

# The mock's count that each stream of the demo recipe must match.
EXPECTED = {
    "projects": "projects",
    "project_details": "project",
    "contributions": "project_contributions",
    "activities": "project_activities",
    "task_stats": "tasks_statistics",
}


def main() -> int:
    with MockServer() as server:
        print(f"mock Tasking Manager listening at {server.api_url}", file=sys.stderr)
        environment = {**os.environ, "TM_API_TOKEN": server.tokens["admin"]}
        command = [
            sys.executable,
            "-m",
            "tm_export",
            "run",
            str(RECIPE),
            "--base-url",
            server.api_url,
            "--output",
            str(OUTPUT),
            "--start-over",
            "--quiet",
        ]
        finished = subprocess.run(command, env=environment, check=False)
        truth = server.counts(role="admin")

    if finished.returncode != 0:
        print(f"demo: the export exited {finished.returncode}", file=sys.stderr)
        return finished.returncode

    run_folder = sorted((OUTPUT / "runs").iterdir())[-1]
    print(f"\nfiles: {run_folder / 'data'}")
    print(f"{'stream':<16} {'records':>8} {'mock count':>10}")
    mismatches = 0
    for stream, endpoint in EXPECTED.items():
        path = run_folder / "data" / f"{stream}.jsonl"
        with path.open("rb") as file:
            records = sum(1 for _ in file)
        expected = truth[endpoint]
        mark = "" if records == expected else "  <- differs"
        mismatches += records != expected
        print(f"{stream:<16} {records:>8} {expected:>10}{mark}")

    if mismatches:
        print(
            f"demo: {mismatches} stream counts differ from the mock's own counts", file=sys.stderr
        )
        return 1
    print("every stream count equals the mock server's own count")
    return 0


if __name__ == "__main__":
    sys.exit(main())
