"""Fault soak: a large export through a server that fails often, compared with a clean one.

The mock server runs in its own process. A clean export gives the reference records and
the minimum number of requests; then the same export runs while the server answers
20 % of requests with 5xx, 5 % with 429 (half with Retry-After in seconds, half as an
HTTP-date), resets 2 % of connections, cuts 1 % of bodies short and sends 1 % HTML error
pages. Faults are spread deterministically (every N-th request), not at random. The
result must hold exactly the reference records; the page reports requests sent against
the minimum.

    .venv/bin/python bench/fault_soak.py [--projects 400] [--write-doc]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """\
version: 1
instance:
  rate_limit: 100000/s
  concurrency: 8
  retries: {{attempts: 10, wait_initial: 0.02, wait_max: 0.2, wait_jitter: 0.02, max_retry_after: 5}}
output: {output}
streams:
  projects:
    endpoint: projects
    params: {{projectStatuses: [PUBLISHED, ARCHIVED]}}
  summaries:
    endpoint: project_summary
    params: {{project_id: {{from: projects.projectId}}}}
  contributions:
    endpoint: project_contributions
    params: {{project_id: {{from: projects.projectId}}}}
  activities:
    endpoint: project_activities
    params: {{project_id: {{from: projects.projectId}}}}
"""
STREAMS = ("projects", "summaries", "contributions", "activities")
API = r"^/api/v2/(projects|users)/"

# (share of requests, rule) pairs; each rule acts on every N-th matching request.
FAULTS = [
    ("20 % 5xx", {"path": API, "every": 5, "after": 0, "status": 503}),
    (
        "2.5 % 429 Retry-After seconds",
        {"path": API, "every": 40, "after": 3, "status": 429, "headers": {"Retry-After": "1"}},
    ),
    (
        "2.5 % 429 Retry-After HTTP-date",
        {"path": API, "every": 40, "after": 23, "status": 429, "retry_after_date": 1},
    ),
    ("2 % connection resets", {"path": API, "every": 50, "after": 7, "reset": True}),
    ("1 % truncated bodies", {"path": API, "every": 100, "after": 11, "truncate": True}),
    ("1 % HTML error pages", {"path": API, "every": 100, "after": 61, "html": 502}),
]


def start_mock(projects: int, folder: Path) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    ready = folder / "ready.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tm_export",
            "mock-server",
            "--projects",
            str(projects),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the mock server did not start")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())


def control(base_url: str, method: str, path: str, body: object | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def export(folder: Path, api_url: str) -> tuple[int, float]:
    recipe = folder / "recipe.yaml"
    recipe.write_text(RECIPE.format(output=folder / "out"))
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "tm_export", "run", str(recipe), "--base-url", api_url, "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if finished.returncode != 0:
        sys.stderr.write(finished.stderr[-3000:])
    return finished.returncode, elapsed


def lines(folder: Path) -> dict[str, Counter[bytes]]:
    data = folder / "out" / "runs" / "0001" / "data"
    return {name: Counter((data / f"{name}.jsonl").read_bytes().splitlines()) for name in STREAMS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=400)
    parser.add_argument(
        "--write-doc", action="store_true", help="append the result to docs/reliability.md"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        process, ready = start_mock(args.projects, folder)
        base_url, api_url = str(ready["base_url"]), str(ready["api_url"])
        try:
            (folder / "clean").mkdir()
            code, clean_time = export(folder / "clean", api_url)
            assert code == 0, "the clean export failed"
            minimum = int(control(base_url, "GET", "/__mock__/requests")["total"])  # type: ignore[index]
            control(base_url, "POST", "/__mock__/reset-log")
            for _, rule in FAULTS:
                control(base_url, "POST", "/__mock__/faults", rule)

            (folder / "faulty").mkdir()
            code, faulty_time = export(folder / "faulty", api_url)
            sent = int(control(base_url, "GET", "/__mock__/requests")["total"]) - minimum  # type: ignore[index]
        finally:
            process.terminate()
            process.wait(timeout=30)

        expected, actual = lines(folder / "clean"), lines(folder / "faulty")
        missing = {name: sum((expected[name] - actual[name]).values()) for name in STREAMS}
        extra = {name: sum((actual[name] - expected[name]).values()) for name in STREAMS}
        records = sum(sum(counter.values()) for counter in expected.values())

    report = [
        f"- projects: {args.projects}; records: {records}; exit code with faults: {code}",
        f"- requests: {minimum} without faults, {sent} with faults ({sent / minimum:.2f} × the minimum)",
        f"- wall time: {clean_time:.1f} s clean, {faulty_time:.1f} s with faults",
        f"- missing records: {sum(missing.values())} {missing}",
        f"- duplicated or extra records: {sum(extra.values())} {extra}",
        "- faults: " + "; ".join(name for name, _ in FAULTS),
    ]
    print("\n".join(report))
    if args.write_doc:
        with (ROOT / "docs" / "reliability.md").open("a") as page:
            page.write("\n### Fault soak (`bench/fault_soak.py`)\n\n" + "\n".join(report) + "\n")
    failed = code != 0 or any(missing.values()) or any(extra.values())
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
