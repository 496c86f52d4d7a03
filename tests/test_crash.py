"""Kill the exporter at any moment, resume, and find every record exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe

RECIPE = """\
version: 1
instance: {concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""

STREAMS = ("projects", "details", "activities")


def start_held(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start the CLI in a shell that waits for a line on stdin, then execs it (same pid)."""
    command = " ".join([sys.executable, "-m", "tm_export", *args])
    return subprocess.Popen(
        ["sh", "-c", f"read go; exec {command}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


#: With at most this many pages uncommitted, a kill at the N-th request finds at least
#: N - 8 pages committed, on a machine of any speed.
UNCOMMITTED = {"TM_EXPORT_MAX_UNCOMMITTED": "8"}


def run_killed_at(mock: MockServer, args: list[str], request_number: int) -> int:
    """Run the CLI until the mock receives its ``request_number``-th export request; return the status."""
    process = start_held(args, UNCOMMITTED)
    mock.add_fault(path=r"^/api/v2/projects/", after=request_number - 1, times=1, kill=process.pid)
    process.communicate(b"go\n", timeout=120)
    mock.clear_faults()
    return process.returncode


def multiset(output: Path) -> dict[str, Counter[bytes]]:
    data = output / "runs" / "0001" / "data"
    return {name: Counter((data / f"{name}.jsonl").read_bytes().splitlines()) for name in STREAMS}


def reference(tmp_path: Path, mock: MockServer) -> dict[str, Counter[bytes]]:
    folder = tmp_path / "reference"
    folder.mkdir()
    recipe = write_recipe(folder, RECIPE)
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert outcome.exit_code == 0, outcome.stderr
    return multiset(folder / "out")


def committed_pages(output: Path) -> set[tuple[str, str, int]]:
    manifest = output / "runs" / "0001" / "manifest.jsonl"
    pages = set()
    for line in manifest.read_bytes().splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if entry["t"] == "page":
            pages.add((entry["s"], entry["p"], entry["n"]))
    return pages


def request_of(stream: str, partition: str, page: int) -> tuple[str, str]:
    values = orjson.loads(partition)
    if stream == "projects":
        return "/api/v2/projects/", f"page={page}"
    if stream == "details":
        return f"/api/v2/projects/{values['project_id']}/queries/summary/", ""
    return f"/api/v2/projects/{values['project_id']}/activities/", f"page={page}"


def compare(expected: dict[str, Counter[bytes]], actual: dict[str, Counter[bytes]]) -> None:
    for name in STREAMS:
        missing = expected[name] - actual[name]
        duplicated = actual[name] - expected[name]
        assert not missing, f"{name}: {sum(missing.values())} records missing"
        assert not duplicated, f"{name}: {sum(duplicated.values())} records duplicated or extra"


def test_sigkill_mid_run_resumes_exactly(tmp_path: Path, mock: MockServer) -> None:
    """SIGKILL at the 60th request; the rerun completes with the records of an uninterrupted run."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]

    assert run_killed_at(mock, args, 60) == -signal.SIGKILL
    committed = committed_pages(tmp_path / "out")
    assert committed, "the kill came before any commit; choose a later request"
    mock.reset_log()

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    compare(expected, multiset(tmp_path / "out"))
    requested = {(r["path"], r["query"]) for r in mock.requests()}
    again = [page for page in committed if request_of(*page) in requested]
    assert again == []


@pytest.mark.parametrize(
    "point", ["mid-page-write", "after-data-fsync", "mid-manifest-append", "after-manifest-append"]
)
def test_crash_point_resumes_exactly(tmp_path: Path, mock: MockServer, point: str) -> None:
    """A kill between data and manifest, after the manifest, or inside a page write loses nothing."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]

    process = subprocess.run(
        [sys.executable, "-m", "tm_export", *args],
        capture_output=True,
        check=False,
        timeout=120,
        # With at most 8 pages uncommitted and 4 in flight, the run's 163 pages take 13
        # commits or more, so the third pass through each point comes on a machine of any
        # speed. Without the bound, a slow fsync let the whole run commit in two groups.
        env={**os.environ, **UNCOMMITTED, "TM_EXPORT_CRASH_AT": f"{point}:3"},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode(errors="replace")

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    compare(expected, multiset(tmp_path / "out"))


def test_kill_while_starting_leaves_no_run(tmp_path: Path, mock: MockServer) -> None:
    """A kill while a new run folder is made leaves only a hidden folder, so the same command
    starts the run, and no command finds a run folder without a manifest."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    runs = tmp_path / "out/runs"

    process = subprocess.run(
        [sys.executable, "-m", "tm_export", *args],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "TM_EXPORT_CRASH_AT": "run-folder-built"},
    )

    assert process.returncode == -signal.SIGKILL, process.stderr.decode(errors="replace")
    assert sorted(path.name for path in runs.iterdir()) == [".0001.starting"]
    status = run_cli("status", str(tmp_path / "out"))
    assert status.exit_code == 2
    assert (
        status.stderr
        == f"tm-export: error: {tmp_path / 'out'}: the output folder has no runs yet\n"
    )

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    assert sorted(path.name for path in runs.iterdir()) == ["0001"]
    compare(expected, multiset(tmp_path / "out"))


def test_empty_run_folder_passed_over(tmp_path: Path, mock: MockServer) -> None:
    """An empty run folder, as earlier versions left when killed, and a killed start's hidden
    folder do not block the output folder. status and record pass over them, and the next
    incremental run deletes them and builds on the finished run."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet"]
    assert run_cli(*args).exit_code == 0
    runs = tmp_path / "out/runs"
    (runs / "0002/data").mkdir(parents=True)
    (runs / "0002/manifest.jsonl.tmp").write_bytes(b"")
    (runs / ".0003.starting/data").mkdir(parents=True)

    status = run_cli("status", str(tmp_path / "out"))
    record = run_cli("record", str(tmp_path / "out"))
    outcome = run_cli(*args, "--incremental")

    assert status.exit_code == 0, status.stderr
    assert status.stdout.startswith(f"run: {runs / '0001'}\n")
    assert record.exit_code == 0, record.stderr
    assert record.stdout == f"wrote {runs / '0001/run.json'}\n"
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr.startswith(
        f"tm-export: WARNING: deleting {runs / '.0003.starting'}, left by a run start that was "
        f"killed\ntm-export: WARNING: deleting {runs / '0002'}, a run folder without a manifest "
        "or any data, left by a command killed while it made the folder\n"
    )
    assert sorted(path.name for path in runs.iterdir()) == ["0001", "0002"]
    header = orjson.loads((runs / "0002/manifest.jsonl").read_bytes().splitlines()[0])
    assert header["incremental"]["previous"] == ["0001"]


def test_random_kills_resume_exactly(tmp_path: Path, mock: MockServer) -> None:
    """Several kills at seeded random request counts, each followed by a resume, then a clean finish."""
    expected = reference(tmp_path, mock)
    total = sum(1 for r in mock.requests() if r["path"].startswith("/api/v2/projects/"))
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    rng = random.Random(int(os.environ.get("TM_EXPORT_KILL_SEED", "20261204")))
    kills = int(os.environ.get("TM_EXPORT_KILLS", "3"))

    for _ in range(kills):
        code = run_killed_at(mock, args, rng.randint(1, total // 2))
        assert code in (-signal.SIGKILL, 0)

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    compare(expected, multiset(tmp_path / "out"))
