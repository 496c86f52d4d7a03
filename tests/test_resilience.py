"""Interrupts, a full disk, damaged files, secrets, overlapping pages and data that changes."""

from __future__ import annotations

import base64
import dataclasses
import os
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import orjson
import pytest

from tm_export.clock import FakeClock
from tm_export.errors import ExitCode
from tm_export.mock import MockServer

from .conftest import append_stopped_retry, data_file, export_here, run_cli, write_recipe
from .test_crash import RECIPE, STREAMS, compare, multiset, reference, start_held

SEARCH = r"^/api/v2/projects/$"


PROJECTS_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s, concurrency: 1}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
"""

ACTIVITIES_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s, concurrency: 1}
output: OUT
streams:
  activities:
    endpoint: project_activities
    params: {project_id: {each: [PROJECT]}}
"""


def manifest(output: Path) -> Path:
    return output / "runs/0001/manifest.jsonl"


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_cleanly(tmp_path: Path, mock: MockServer, name: str) -> None:
    """SIGTERM, SIGINT or SIGHUP mid-run exits 130 with committed pages kept; a rerun
    completes exactly."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    process = start_held(args)
    mock.add_fault(path=r"/activities/$", after=40, times=1, kill=process.pid, signal=name)

    _, stderr = process.communicate(b"go\n", timeout=120)

    assert process.returncode == 130, stderr.decode()
    text = stderr.decode()
    assert f"received {name}: stopping; committed pages are kept" in text
    assert "result: interrupted; run the same command again to resume (exit 130)" in text
    assert "Traceback" not in text
    mock.clear_faults()

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    compare(expected, multiset(tmp_path / "out"))


def test_disk_full_resumes(tmp_path: Path, mock: MockServer) -> None:
    """ENOSPC on a page write: exit 1, files cut back, manifest unchanged after, resume completes."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]

    failed = subprocess.run(
        [sys.executable, "-m", "tm_export", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "TM_EXPORT_DISK_FULL_AT": "30"},
    )

    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.splitlines()[-1]
    assert last.startswith("tm-export: error: ")
    assert ": cannot write: No space left on device. The manifest still proves " in last
    assert last.endswith("free some space and run the same command again to resume")
    assert "Traceback" not in failed.stderr
    committed = {}
    for entry in map(orjson.loads, manifest(tmp_path / "out").read_bytes().splitlines()):
        if entry["t"] == "page":
            committed[entry["s"]] = max(committed.get(entry["s"], 0), entry["end"])
    for stream, end in committed.items():
        assert data_file(tmp_path / "out", stream).stat().st_size == end
    # The summary counts what was committed, as status does, not what was thrown away.
    summary = orjson.loads(failed.stdout)["streams"]
    status = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)["streams"]
    for stream in STREAMS:
        assert summary[stream]["records"] == status[stream]["records"]
        done = status[stream]["partitions"]["done"]
        assert summary[stream]["partitions"].get("done", 0) == done

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    compare(expected, multiset(tmp_path / "out"))


def test_damaged_manifest_refused(tmp_path: Path, mock: MockServer) -> None:
    """A manifest overwritten with NUL bytes stops the run and leaves every data file untouched."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 0
    path = manifest(tmp_path / "out")
    path.write_bytes(b"\x00" * path.stat().st_size)
    data = {p: p.read_bytes() for p in (tmp_path / "out/runs/0001/data").iterdir()}
    mock.reset_log()

    outcome = run_cli(*args)

    assert outcome.exit_code == 1
    assert outcome.stderr == (
        f"tm-export: error: {path}:1: the manifest has no valid header, so it is damaged or not a "
        f"tm-export manifest. Nothing was changed. If you have a backup of manifest.jsonl, restore it and "
        "run again; otherwise 'tm-export run RECIPE --start-over' begins a new run in a new "
        "folder beside this one\n"
    )
    assert {p: p.read_bytes() for p in data} == data
    assert mock.requests() == []


def test_finished_run_files_left_alone(tmp_path: Path, mock: MockServer) -> None:
    """Running a finished run's command again cuts none of its files back: a line added to
    one after the run stays, and the run record's check reports it."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 0
    path = data_file(tmp_path / "out", "activities")
    committed = path.stat().st_size
    line = path.read_bytes().splitlines(keepends=True)[-1]
    path.write_bytes(path.read_bytes() + line)

    again = run_cli(*args)

    run = tmp_path / "out/runs/0001"
    assert again.exit_code == 1
    assert again.stderr.splitlines()[-1] == (
        f"tm-export: error: {run}: 1 mismatch in its files, no run record was written: "
        f"data/activities.jsonl: {len(line)} bytes follow the committed end at byte "
        f"{committed}; a finished run's file must end there. Restore the files from a copy, "
        "or make a new run with 'tm-export run RECIPE --start-over'; 'tm-export verify "
        f"{run}' gives the full report"
    )
    assert path.stat().st_size == committed + len(line)


def test_cut_manifest_of_finished_run_refused(tmp_path: Path, mock: MockServer) -> None:
    """A finished run's manifest cut short looks like an unfinished run, but its run record
    shows the loss, so no stream file is cut back and nothing is fetched again."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 0
    run = tmp_path / "out/runs/0001"
    manifest = run / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(b"".join(lines[: len(lines) // 2]))
    files = {path: path.read_bytes() for path in (run / "data").iterdir()}
    recorded = orjson.loads((run / "run.json").read_bytes())["manifest"]["bytes"]
    mock.reset_log()

    outcome = run_cli(*args)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {manifest}: its first {recorded} bytes do not match what "
        f"{run / 'run.json'} records (the manifest has {manifest.stat().st_size}), so it was "
        "cut or changed after the record was written. Nothing was changed. Restore the "
        "manifest from a copy and run again, or use --start-over to begin a new run beside "
        "this one"
    )
    assert mock.requests() == []
    assert {path: path.read_bytes() for path in (run / "data").iterdir()} == files


def test_restarted_attempt_drops_its_record(tmp_path: Path, mock: MockServer) -> None:
    """A first attempt that stopped at the server check, and was given a run record, is
    started again by a changed recipe. Its record goes with it, so a later resume of the
    new run is not taken for a cut manifest."""
    text = RECIPE.replace("rate_limit: 10000/s}", "rate_limit: 10000/s, retries: {attempts: 1}}")
    recipe = write_recipe(tmp_path, text)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli("run", str(recipe), "--base-url", "http://127.0.0.1:9/api/v2").exit_code == 1
    run = tmp_path / "out/runs/0001"
    assert run_cli("record", str(run)).exit_code == 0
    recipe.write_text(recipe.read_text().replace("[PUBLISHED, ARCHIVED]", "[PUBLISHED]"))
    mock.add_fault(path=r"/activities/$", times=1, status=429, headers={"Retry-After": "99999"})
    assert run_cli(*args).exit_code == 1
    mock.clear_faults()

    resumed = run_cli(*args)

    assert resumed.exit_code == 0, resumed.stderr
    assert run_cli("verify", str(run)).exit_code == 0


def test_torn_stream_tail_cut(tmp_path: Path, mock: MockServer) -> None:
    """Half a record after the committed end is removed on resume, and the log says how much."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 0
    # A session killed while it wrote a page leaves the run unfinished and such a tail.
    append_stopped_retry(tmp_path / "out/runs/0001")
    path = data_file(tmp_path / "out", "activities")
    before = path.read_bytes()
    torn = b'{"historyId":1,"actionText":"Jo' + "ã".encode()[:1]
    path.write_bytes(before + torn)

    outcome = run_cli(*args)

    assert outcome.exit_code == 0
    assert (
        f"tm-export: WARNING: cut activities.jsonl back to its committed end at byte {len(before)}: "
        f"removed {len(torn)} uncommitted bytes"
    ) in outcome.stderr
    assert path.read_bytes() == before


TOKEN_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 2}, concurrency: 1}
output: OUT
streams:
  tasks:
    endpoint: project_tasks
    params: {project_id: {each: [1, 2, 3]}}
"""


def test_token_never_written(tmp_path: Path, mock: MockServer) -> None:
    """With debug logs, a 500 echoing headers and a 401, the token appears in no output or file."""
    token = mock.tokens["admin"]
    recipe = write_recipe(tmp_path, TOKEN_RECIPE)
    command = [
        sys.executable,
        "-m",
        "tm_export",
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "-v",
    ]
    environment = {**os.environ, "TM_API_TOKEN": token}
    mock.add_fault(path=r"^/api/v2/projects/1/tasks/$", echo_headers=True)

    echoed = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=120, env=environment
    )
    mock.clear_faults()
    mock.add_fault(
        path=r"^/api/v2/projects/1/tasks/$",
        status=401,
        body={"Error": "Token is expired or invalid", "SubCode": "InvalidToken"},
    )
    rejected = subprocess.run(
        [*command, "--retry-failed"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=environment,
    )

    assert echoed.returncode == 3
    assert rejected.returncode == 1
    assert "Authorization: ***" in echoed.stderr
    assert "requests: 7, retries: 1, authenticated: yes, TM release: v5.5.2" in echoed.stderr
    failed = [
        e
        for e in map(orjson.loads, manifest(tmp_path / "out").read_bytes().splitlines())
        if e["t"] == "part" and e["state"] == "failed"
    ]
    assert failed[0]["status"] == 500
    forms = {
        token,
        urllib.parse.quote(token, safe=""),
        base64.b64decode(token).decode("utf-8", "replace"),
    }
    texts = {
        f"{name} {stream}": getattr(process, stream)
        for name, process in (("echoed", echoed), ("rejected", rejected))
        for stream in ("stdout", "stderr")
    }
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in texts.items():
        for form in forms:
            assert form not in text, f"the token appears in {where}"


def test_token_in_error_detail_redacted(tmp_path: Path, mock: MockServer) -> None:
    """A 403 whose `detail` echoes the token is kept with the token masked in every file."""
    token = mock.tokens["admin"]
    recipe = write_recipe(tmp_path, TOKEN_RECIPE)
    mock.add_fault(
        path=r"^/api/v2/projects/2/tasks/$",
        status=403,
        body={"detail": f"Authorization Token {token} may not read this project"},
    )

    process = subprocess.run(
        [sys.executable, "-m", "tm_export", "run", str(recipe), "--base-url", mock.api_url],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "TM_API_TOKEN": token},
    )

    assert process.returncode == 0, process.stderr
    skipped = [
        e
        for e in map(orjson.loads, manifest(tmp_path / "out").read_bytes().splitlines())
        if e["t"] == "part" and e["state"] == "skipped"
    ]
    assert len(skipped) == 1
    assert skipped[0]["sub_code"] == "Authorization Token *** may not read this project"
    assert token not in process.stderr
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes().decode("utf-8", "replace"), path


def overlapping_pages(server: MockServer) -> list[dict[str, object]]:
    """Three search pages announcing 30 projects: page 2 repeats two of page 1, two never appear."""
    import urllib.request

    url = f"{server.api_url}/projects/?omitMapResults=true&orderBy=id&orderByType=ASC&projectStatuses=PUBLISHED,ARCHIVED&page="
    results = []
    for page in (1, 2, 3):
        with urllib.request.urlopen(url + str(page)) as reply:
            results += orjson.loads(reply.read())["results"]
    assert len(results) >= 32
    first, second, third = results[0:14], results[12:14] + results[14:26], results[28:30]

    def page(number: int, items: list[object]) -> dict[str, object]:
        return {
            "mapResults": [],
            "results": items,
            "pagination": {
                "hasNext": number < 3,
                "hasPrev": number > 1,
                "nextNum": number + 1 if number < 3 else None,
                "page": number,
                "pages": 3,
                "prevNum": number - 1 if number > 1 else None,
                "perPage": 14,
                "total": 30,
            },
        }

    return [page(1, first), page(2, second), page(3, third)]


def test_overlapping_pages_reported(tmp_path: Path, mock: MockServer) -> None:
    """An unstable order: each record written once, duplicates counted, 28 of 30 reported."""
    for number, body in enumerate(overlapping_pages(mock), start=1):
        mock.add_fault(path=SEARCH, query={"page": str(number)}, status=200, body=body)
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          projects:
            endpoint: projects
            params: {projectStatuses: [PUBLISHED, ARCHIVED]}
        """,
    )

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3
    lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == 28
    assert (
        "problem in projects: integrity: received 28 unique records where the server announced "
        "30; run with --start-over to fetch the partition again" in outcome.stderr
    )
    (final,) = [
        e
        for e in map(orjson.loads, manifest(tmp_path / "out").read_bytes().splitlines())
        if e["t"] == "part"
    ]
    assert final["dups"] == 2
    assert final["problems"] == [
        "integrity: received 28 unique records where the server announced 30; run with "
        "--start-over to fetch the partition again"
    ]


def test_data_changes_between_pages(tmp_path: Path, mock: MockServer) -> None:
    """A new activity arrives while the pages are read: they are read again, and it is kept."""
    project = 1
    while mock.dataset.count("project_activities", project_id=project) < 45:
        mock.dataset.add_activity(project, task_id=1)
    before = mock.dataset.count("project_activities", project_id=project)
    mock.add_fault(
        path=rf"^/api/v2/projects/{project}/activities/$",
        query={"page": "2"},
        times=1,
        call=lambda: mock.dataset.add_activity(project, task_id=2),
    )
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE.replace("PROJECT", str(project)))

    result = export_here(recipe, mock, clock=FakeClock())

    # The new activity went to page 1, already read, and pushed one record from page 1 to
    # page 2, where it came again. The total changed from 60 to 61, so the second reading
    # reads all seven pages again and keeps only the new activity.
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == before + 1
    assert result.streams["activities"].duplicates == 1
    assert result.exit_code() == ExitCode.COMPLETE
    assert result.streams["activities"].problems == []
    pages = [r["query"] for r in mock.requests() if r["path"].endswith("/activities/")]
    assert pages == [f"page={n}" for n in [*range(1, 8), *range(1, 8)]]
    entries = [orjson.loads(line) for line in manifest(tmp_path / "out").read_bytes().splitlines()]
    assert [
        (e["n"], e.get("reading"), e["records"], e["dups"]) for e in entries if e["t"] == "page"
    ] == [
        (1, None, 10, 0),
        (2, None, 9, 1),
        *[(n, None, 10, 0) for n in range(3, 7)],
        (7, None, 1, 0),
        (1, 2, 1, 0),
        *[(n, 2, 0, 0) for n in range(2, 8)],
    ]
    (final,) = [e for e in entries if e["t"] == "part"]
    assert final["state"] == "done"
    assert final["records"] == 61
    assert final["pages"] == 14
    assert final["readings"] == 2


def test_project_removed_between_pages(tmp_path: Path, mock: MockServer) -> None:
    """A project removed from the list while it is read: the project it pushed back is kept."""
    ids = mock.dataset.public_project_ids()
    assert len(ids) > 28, "the test needs a third search page"
    removed, pushed_back = ids[0], ids[28]
    mock.add_fault(
        path=SEARCH, query={"page": "3"}, times=1, call=lambda: mock.dataset.delete_project(removed)
    )
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    # Page 3 came after the removal, so the first project of the old page 3 had moved to
    # page 2, already read. The total fell, so the second reading finds it.
    written_ids = [
        orjson.loads(line)["projectId"]
        for line in data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    ]
    assert sorted(written_ids) == ids
    assert pushed_back in written_ids
    assert outcome.exit_code == 0, outcome.stderr
    assert (
        "projects: 1 partition read again, because the server's list changed while its pages "
        "were read\n" in outcome.stderr
    )
    assert "problem in" not in outcome.stderr
    assert (
        f"tm-export: INFO: projects: the total changed from {len(ids)} to {len(ids) - 1} while "
        "the pages were read; reading them again (reading 2 of at most 3)\n" in outcome.stderr
    )
    pages = len(ids) // 14 + 1
    sent = [r["query"] for r in mock.requests() if r["path"] == "/api/v2/projects/"]
    assert [dict(urllib.parse.parse_qsl(q))["page"] for q in sent] == [
        str(n) for n in [*range(1, pages + 1), *range(1, pages + 1)]
    ]
    (final,) = [
        orjson.loads(line)
        for line in manifest(tmp_path / "out").read_bytes().splitlines()
        if b'"t":"part"' in line
    ]
    assert final["records"] == len(ids)
    assert final["readings"] == 2

    status = run_cli("status", str(tmp_path / "out"))
    assert status.exit_code == 0
    assert (
        "projects: 1 partition read again, because the server's list changed while its pages "
        "were read\n" in status.stdout
    )
    report = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)
    assert report["streams"]["projects"]["read_again"] == 1


def test_project_added_at_end_read_once(tmp_path: Path, mock: MockServer) -> None:
    """A project published during the walk comes last in a search by id: nothing to read again."""
    ids = mock.dataset.public_project_ids()
    added = max(mock.dataset.projects) + 1

    def publish() -> None:
        newest = mock.dataset.projects[added - 1]
        mock.dataset.projects[added] = dataclasses.replace(newest, id=added)
        mock.dataset.touch_project(added, newest.last_updated)

    mock.add_fault(path=SEARCH, query={"page": "2"}, times=1, call=publish)
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)

    result = export_here(recipe, mock)

    written_ids = [
        orjson.loads(line)["projectId"]
        for line in data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    ]
    assert sorted(written_ids) == [*ids, added]
    assert result.exit_code() == ExitCode.COMPLETE
    pages = -(-(len(ids) + 1) // 14)
    sent = [r["query"] for r in mock.requests() if r["path"] == "/api/v2/projects/"]
    assert [dict(urllib.parse.parse_qsl(q))["page"] for q in sent] == [
        str(n) for n in range(1, pages + 1)
    ]


def test_readings_are_bounded(tmp_path: Path, mock: MockServer) -> None:
    """A list that changes during every reading is read three times, then reported."""
    project = 1
    before = mock.dataset.count("project_activities", project_id=project)
    mock.add_fault(
        path=rf"^/api/v2/projects/{project}/activities/$",
        query={"page": "2"},
        call=lambda: mock.dataset.add_activity(project, task_id=2),
    )
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE.replace("PROJECT", str(project)))

    result = export_here(recipe, mock)

    # Each reading misses the activity added during it, and the next finds it, so the
    # activity added during the third reading is missing.
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == before + 2
    assert result.exit_code() == ExitCode.FAILURES
    assert result.streams["activities"].problems == [
        f'{{"project_id":{project}}}: the total changed during each of 3 readings of the pages '
        f"(from {before + 2} to {before + 3} in the last one), so records may have moved onto "
        "pages already read",
        f'{{"project_id":{project}}}: integrity: received {before + 2} unique records where the '
        f"server announced {before + 3}; run with --start-over to fetch the partition again",
    ]


def test_records_without_key_read_once(tmp_path: Path, mock: MockServer) -> None:
    """Records without a key cannot be matched with those written: the change is reported."""
    ids = mock.dataset.public_project_ids()
    mock.add_fault(
        path=SEARCH, query={"page": "3"}, times=1, call=lambda: mock.dataset.delete_project(ids[0])
    )
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s, concurrency: 1}
        output: OUT
        streams:
          projects:
            path: /projects/
            records: results
            key: null
            paginated: true
            params:
              projectStatuses: [PUBLISHED, ARCHIVED]
              orderBy: id
              orderByType: ASC
              omitMapResults: true
        """,
    )

    result = export_here(recipe, mock)

    # The first project of the old page 3 moved onto page 2, already read, and is missing.
    pages = -(-len(ids) // 14)
    sent = [r["query"] for r in mock.requests() if r["path"] == "/api/v2/projects/"]
    assert [dict(urllib.parse.parse_qsl(q))["page"] for q in sent] == [
        str(n) for n in range(1, pages + 1)
    ]
    lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["projectId"] for line in lines) == ids[:28] + ids[29:]
    assert result.exit_code() == ExitCode.FAILURES
    assert "state: finished with problems" in run_cli("status", str(tmp_path / "out")).stdout
    assert result.streams["projects"].problems == [
        f"the total changed from {len(ids)} to {len(ids) - 1} while the pages were read, "
        "so records may have moved onto pages already read; records without a key are read only "
        "once, since a second reading would write them twice"
    ]


def test_retry_finishes_second_reading(tmp_path: Path, mock: MockServer) -> None:
    """A page of the second reading that failed is fetched by --retry-failed, and only it."""
    project = 1
    before = mock.dataset.count("project_activities", project_id=project)
    activities = rf"^/api/v2/projects/{project}/activities/$"
    mock.add_fault(
        path=activities,
        query={"page": "2"},
        times=1,
        call=lambda: mock.dataset.add_activity(project, task_id=2),
    )
    # The second request for page 3 is the second reading's: every attempt fails.
    mock.add_fault(path=activities, query={"page": "3"}, after=1, times=5, status=500)
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE.replace("PROJECT", str(project)))

    first = export_here(recipe, mock)

    assert first.exit_code() == ExitCode.FAILURES
    (final,) = [
        orjson.loads(line)
        for line in manifest(tmp_path / "out").read_bytes().splitlines()
        if b'"t":"part"' in line
    ]
    assert final["state"] == "failed"
    assert final["missing_pages"] == [3]
    assert final["readings"] == 2

    mock.clear_faults()
    mock.reset_log()
    again = export_here(recipe, mock, retry_failed=True)

    assert again.exit_code() == ExitCode.COMPLETE
    assert [r["query"] for r in mock.requests() if r["path"].endswith("/activities/")] == ["page=3"]
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == before + 1


def test_kill_during_second_reading_resumes(tmp_path: Path, mock: MockServer) -> None:
    """A kill during a second reading: the rerun fetches only its pages not yet committed."""
    project = 1
    while mock.dataset.count("project_activities", project_id=project) < 75:
        mock.dataset.add_activity(project, task_id=1)
    before = mock.dataset.count("project_activities", project_id=project)
    activities = rf"^/api/v2/projects/{project}/activities/$"
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE.replace("PROJECT", str(project)))
    args = ["run", str(recipe), "--base-url", mock.api_url]
    process = start_held(args, {"TM_EXPORT_MAX_UNCOMMITTED": "2"})
    mock.add_fault(
        path=activities,
        query={"page": "2"},
        times=1,
        call=lambda: mock.dataset.add_activity(project, task_id=2),
    )
    # The second request for page 6 is the second reading's.
    mock.add_fault(path=activities, query={"page": "6"}, after=1, times=1, kill=process.pid)

    process.communicate(b"go\n", timeout=120)

    assert process.returncode == -signal.SIGKILL
    entries = [orjson.loads(line) for line in manifest(tmp_path / "out").read_bytes().splitlines()]
    committed = {e["n"] for e in entries if e["t"] == "page" and e.get("reading") == 2}
    assert committed, "the kill came before any page of the second reading was committed"
    mock.clear_faults()
    mock.reset_log()

    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    pages = -(-(before + 1) // 10)
    sent = [r["query"] for r in mock.requests() if r["path"].endswith("/activities/")]
    assert sent == [f"page={n}" for n in range(1, pages + 1) if n not in committed]
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == before + 1
    finals = [orjson.loads(line) for line in manifest(tmp_path / "out").read_bytes().splitlines()]
    assert [(e["state"], e["readings"]) for e in finals if e["t"] == "part"] == [("done", 2)]


def test_project_deleted_during_walk_skipped(tmp_path: Path, mock: MockServer) -> None:
    """A project deleted between two pages: skipped with its first page kept, not retried."""
    project = 1
    while mock.dataset.count("project_activities", project_id=project) < 25:
        mock.dataset.add_activity(project, task_id=1)
    mock.add_fault(
        path=rf"^/api/v2/projects/{project}/activities/$",
        query={"page": "2"},
        times=1,
        call=lambda: mock.dataset.delete_project(project),
    )
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE.replace("PROJECT", str(project)))

    result = export_here(recipe, mock)

    assert result.exit_code() == ExitCode.COMPLETE
    assert result.streams["activities"].partitions == {"skipped": 1}
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == 10
    (final,) = [
        orjson.loads(line)
        for line in manifest(tmp_path / "out").read_bytes().splitlines()
        if b'"t":"part"' in line
    ]
    assert final["state"] == "skipped"
    assert final["status"] == 404
    assert final["records"] == 10
    assert final["pages"] == 1
    assert "missing_pages" not in final

    mock.reset_log()
    again = export_here(recipe, mock, retry_failed=True)

    assert again.exit_code() == ExitCode.COMPLETE
    assert mock.requests() == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {"Error": "Forbidden", "SubCode": "PrivateProject"}),
        (404, {"error": {"code": 404, "sub_code": "PROJECT_NOT_FOUND", "message": "x"}}),
    ],
    ids=["403", "404"],
)
def test_search_refusing_a_later_page_fails(
    tmp_path: Path, mock: MockServer, status: int, body: dict[str, Any]
) -> None:
    """A 403 or 404 on a later page of the project search cannot mean that a project was
    hidden during the walk, because the search names none. The page is lost, so the
    partition fails (exit 3) rather than ending skipped and complete, and --retry-failed
    fetches it."""
    mock.add_fault(path=SEARCH, query={"page": "2"}, times=1, status=status, body=body)
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)

    result = export_here(recipe, mock)

    assert result.exit_code() == ExitCode.FAILURES
    assert result.streams["projects"].partitions == {"failed": 1}
    again = export_here(recipe, mock, retry_failed=True)
    assert again.exit_code() == ExitCode.COMPLETE
    lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == mock.counts()["projects"]


def test_retry_after_date_from_mock(tmp_path: Path, mock: MockServer) -> None:
    """A 429 whose Retry-After is an HTTP-date 2 s after its Date header waits exactly 2 s."""
    mock.add_fault(path=SEARCH, query={"page": "1"}, times=1, status=429, retry_after_date=2)
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          projects: {endpoint: projects}
        """,
    )
    clock = FakeClock()

    result = export_here(recipe, mock, clock=clock)

    assert result.exit_code() == ExitCode.COMPLETE
    assert [wait for wait in clock.sleeps if wait > 0.01] == [2.0]
    assert result.retries == 1
