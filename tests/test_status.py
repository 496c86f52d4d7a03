"""tm-export status: partition counts, records and history, read from the manifest alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tm_export.layout import OutputLock
from tm_export.mock import MockServer

from .conftest import append_stopped_retry, run_cli, write_recipe
from .test_faults import PROJECTS_RECIPE

STOPPED_RECIPE = """\
version: 1
instance: {concurrency: 1, rate_limit: 10000/s}
output: OUT
streams:
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 2, 3, 9, 4, 5, 6]}}
"""

#: With one request at a time the partitions are requested in list order, so a 401 on
#: project 4 stops the run after 1, 2 and 3 are done and 9 (private) is skipped.
STOP_AT = r"^/api/v2/projects/4/contributions/$"

FAILING_RECIPE = """\
version: 1
instance: {concurrency: 1, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 5]}}
  summaries:
    endpoint: project_summary
    params: {project_id: {each: [1, 2, 3]}}
"""

UNFINISHED = (
    "state: unfinished (no session has recorded the run's end yet: a session is running, "
    "or it stopped; run the same command again to resume)"
)


def entries(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]


def first_of(run: Path, kind: str) -> dict[str, Any]:
    return next(entry for entry in entries(run) if entry["t"] == kind)


def contributions(mock: MockServer, ids: list[int]) -> int:
    return sum(mock.dataset.count("project_contributions", project_id=pid) for pid in ids)


def export_stopped(tmp_path: Path, mock: MockServer) -> Path:
    """Export STOPPED_RECIPE until the 401 on project 4; return the output folder."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    mock.add_fault(path=STOP_AT, status=401)
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert outcome.exit_code == 1, outcome.stderr
    mock.clear_faults()
    return tmp_path / "out"


def test_status_stopped_run(tmp_path: Path, mock: MockServer) -> None:
    """A run stopped by a 401 half-way: 3 done, 1 skipped, 3 pending, unfinished."""
    out = export_stopped(tmp_path, mock)
    run = out / "runs/0001"
    started = entries(run)[0]["started"]
    session = first_of(run, "session")
    records = contributions(mock, [1, 2, 3])
    size = (run / "data/contributions.jsonl").stat().st_size

    outcome = run_cli("status", str(out))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"run: {run}",
        UNFINISHED,
        f"started: {started}",
        f"sessions: 1, the last started {session['at']}; base URL {mock.api_url}; "
        "authenticated: no; TM release: v5.5.2",
        "",
        "stream         done  pending  skipped  failed  records  bytes",
        f"contributions     3        3        1       0  {records:>7}  {size:>5}",
        "contributions: skipped 403 PrivateProject: 1",
        "",
        "runs:",
        f"  0001  unfinished  started {started}  not ended  1 session  {records} records",
    ]


def test_status_names_the_stopped_session_option(tmp_path: Path, mock: MockServer) -> None:
    """A finished run whose --retry-skipped session stopped before its end: status names
    that option as the one to give again."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    append_stopped_retry(tmp_path / "out/runs/0001", "skipped")

    outcome = run_cli("status", str(tmp_path / "out"))

    assert outcome.exit_code == 0
    assert (
        "state: unfinished (the run ended once, and a later session stopped before its end; "
        "run that session's command again, with its --retry-skipped, to end it)"
    ) in outcome.stdout.splitlines()


def test_status_stopped_run_json(tmp_path: Path, mock: MockServer) -> None:
    """--json gives the same counts as data, for the run and its history."""
    out = export_stopped(tmp_path, mock)
    run = out / "runs/0001"
    started = entries(run)[0]["started"]
    records = contributions(mock, [1, 2, 3])
    size = (run / "data/contributions.jsonl").stat().st_size

    outcome = run_cli("status", str(run), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    assert json.loads(outcome.stdout) == {
        "run": str(run),
        "bagged": False,
        "shard": None,
        "state": "unfinished",
        "complete": False,
        "started": started,
        "ended": None,
        "sessions": 1,
        "base_url": mock.api_url,
        "authenticated": False,
        "authenticated_sessions": 0,
        "tm_release": "v5.5.2",
        "streams": {
            "contributions": {
                "partitions": {"done": 3, "skipped": 1, "failed": 0, "pending": 3},
                "pending_final": True,
                "parent": None,
                "records": records,
                "duplicates": 0,
                "committed_bytes": size,
                "file_bytes": size,
                "skip_reasons": {"403 PrivateProject": 1},
                "last_error": None,
                "last_error_partition": None,
                "problems": [],
                "read_again": 0,
            }
        },
        "canonical": [],
        "incremental": None,
        "deleted_projects": [],
        "manifest_dropped_bytes": 0,
        "runs": [
            {
                "run": str(run),
                "state": "unfinished",
                "bagged": False,
                "started": started,
                "ended": None,
                "sessions": 1,
                "records": records,
            }
        ],
    }


def test_status_while_writing(tmp_path: Path, mock: MockServer) -> None:
    """A half-written journal line and uncommitted data bytes are reported; nothing changes."""
    out = export_stopped(tmp_path, mock)
    run = out / "runs/0001"
    with (run / "manifest.jsonl").open("ab") as manifest:
        manifest.write(b'{"t":"page","s":"contribu')
    with (run / "data/contributions.jsonl").open("ab") as data:
        data.write(b'{"partial')
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}

    with OutputLock(out):
        outcome = run_cli("status", str(out))

    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "contributions: 9 uncommitted bytes after the committed end" in lines
    assert (
        "manifest: an unfinished last line of 25 bytes was ignored (a session may be writing it)"
        in lines
    )
    assert outcome.stderr == ""
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_status_failures_and_history(tmp_path: Path, mock: MockServer) -> None:
    """A run that finished with a failed partition shows its last error; history lists both runs."""
    recipe = write_recipe(tmp_path, FAILING_RECIPE)
    mock.add_fault(
        path=r"^/api/v2/projects/5/contributions/$",
        status=500,
        body="The database is being upgraded; try again in a few minutes. " * 3,
        content_type="text/plain",
    )
    first = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert first.exit_code == 3, first.stderr
    mock.clear_faults()
    second = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", "--start-over")
    assert second.exit_code == 0, second.stderr
    out = tmp_path / "out"
    old, new = out / "runs/0001", out / "runs/0002"
    failed = next(e for e in entries(old) if e["t"] == "part" and e["state"] == "failed")
    ends = {run: first_of(run, "end")["at"] for run in (old, new)}
    starts = {run: entries(run)[0]["started"] for run in (old, new)}
    old_records = contributions(mock, [1]) + 3
    new_records = contributions(mock, [1, 5]) + 3

    outcome = run_cli("status", str(old))

    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert lines[1] == f"state: finished with failures, ended {ends[old]}"
    error = str(failed["error"])
    assert len(error) > 160
    assert f'contributions: last error, partition {{"project_id":5}}: {error[:157]}...' in lines
    report = orjson.loads(run_cli("status", str(old), "--json").stdout)
    assert report["streams"]["contributions"]["last_error_partition"] == {"project_id": 5}
    assert lines[-3:] == [
        "runs:",
        f"  0001  finished with failures  started {starts[old]}  ended {ends[old]}  "
        f"1 session  {old_records} records",
        f"  0002  complete                started {starts[new]}  ended {ends[new]}  "
        f"1 session  {new_records} records",
    ]

    newest = run_cli("status", str(out))

    assert newest.exit_code == 0, newest.stderr
    assert newest.stdout.splitlines()[:2] == [f"run: {new}", f"state: complete, ended {ends[new]}"]
    assert newest.stdout.splitlines()[-3:] == lines[-3:]


DEPENDENT_RECIPE = """\
version: 1
instance: {concurrency: 1, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  summaries:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
"""


def test_status_dependent_pending(tmp_path: Path, mock: MockServer) -> None:
    """A dependent stream whose parent stopped early counts only the partitions known so far."""
    recipe = write_recipe(tmp_path, DEPENDENT_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "3"}, status=401)
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert outcome.exit_code == 1, outcome.stderr
    run = tmp_path / "out/runs/0001"
    parts = {(e["s"], e["p"]) for e in entries(run) if e["t"] == "part"}
    pages = {(e["s"], e["p"]) for e in entries(run) if e["t"] == "page"}
    done = sum(1 for stream, _ in parts if stream == "summaries")
    pending = sum(1 for key in pages - parts if key[0] == "summaries")
    size = (run / "data/summaries.jsonl").stat().st_size

    status = run_cli("status", str(run))

    lines = status.stdout.splitlines()
    assert done > 0
    assert (
        f"summaries  {done:>4}  {f'{pending}+':>7}        0       0  {done:>7}  {size:>5}" in lines
    )
    assert (
        "pending: partitions started and not finished; N+ marks a lower bound: a dependent "
        "stream learns partitions from its parent's records until the parent has finished, "
        "and an incremental run counts "
        "only the partitions it has started"
    ) in lines
    assert "summaries: one partition per distinct value of projects.projectId" in lines


def test_status_not_a_run_folder(tmp_path: Path) -> None:
    """A missing folder and a folder without a manifest exit 2 with the fix."""
    missing = run_cli("status", str(tmp_path / "nowhere"))
    empty = run_cli("status", str(tmp_path))

    assert missing.exit_code == 2
    assert missing.stderr == (
        f"tm-export: error: {tmp_path / 'nowhere'}: folder not found; give an output folder "
        "(with runs/) or a run folder such as OUTPUT/runs/0001\n"
    )
    assert empty.exit_code == 2
    assert empty.stderr == (
        f"tm-export: error: {tmp_path}: not a run folder: it has no manifest.jsonl; give an "
        "output folder (with runs/) or a run folder such as OUTPUT/runs/0001\n"
    )


def test_status_damaged_manifest(tmp_path: Path, mock: MockServer) -> None:
    """A damaged complete journal line exits 1 and names the line."""
    out = export_stopped(tmp_path, mock)
    manifest = out / "runs/0001/manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    lines[1] = b"not json\n"
    manifest.write_bytes(b"".join(lines))

    outcome = run_cli("status", str(out))

    assert outcome.exit_code == 1
    assert f"tm-export: error: {manifest}:2: manifest line 2 is damaged (not JSON)" in (
        outcome.stderr
    )


def test_status_dependent_known(tmp_path: Path, mock: MockServer) -> None:
    """Once the parent has finished, a dependent stream's pending count is exact."""
    recipe = write_recipe(tmp_path, DEPENDENT_RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 0
    run = tmp_path / "out/runs/0001"
    manifest = run / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    known = [orjson.loads(line) for line in lines if b'"t":"known"' in line]
    finals = [i for i, line in enumerate(lines) if b'"t":"part","s":"summaries"' in line]
    # A session that stopped before its end: its last 3 summaries have no final entry.
    unfinished = [
        line for i, line in enumerate(lines) if i not in finals[-3:] and b'"t":"end"' not in line
    ]
    manifest.write_bytes(b"".join(unfinished))
    session = next(line for line in lines if b'"t":"session"' in line)

    exact = run_cli("status", str(run)).stdout.splitlines()
    manifest.write_bytes(b"".join(unfinished) + session)
    stale = run_cli("status", str(run)).stdout.splitlines()

    assert known == [{"t": "known", "s": "summaries", "partitions": len(finals)}]
    assert len(finals) == (run / "data/projects.jsonl").read_bytes().count(b"\n")
    row = next(line for line in exact if line.startswith("summaries"))
    assert row.split()[:3] == ["summaries", str(len(finals) - 3), "3"]
    assert not any(line.startswith("pending: ") for line in exact)
    row = next(line for line in stale if line.startswith("summaries"))
    assert row.split()[:3] == ["summaries", str(len(finals) - 3), "3+"]
    assert any(line.startswith("pending: ") for line in stale)


def test_known_needs_finished_parent(tmp_path: Path, mock: MockServer) -> None:
    """A parent stream stopped before its end gives its child no partition count."""
    recipe = write_recipe(tmp_path, DEPENDENT_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "2"}, status=401)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")

    assert outcome.exit_code == 1, outcome.stderr
    assert [e for e in entries(tmp_path / "out/runs/0001") if e["t"] == "known"] == []


CHAIN_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project
    params: {project_id: {from: projects.projectId}}
  organisations:
    endpoint: organisation
    params: {organisation_id: {from: details.organisation}}
"""


def test_known_counts_a_chain(tmp_path: Path, mock: MockServer) -> None:
    """Each dependent stream of a chain records the distinct values its parent gave."""
    recipe = write_recipe(tmp_path, CHAIN_RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")

    assert outcome.exit_code == 0, outcome.stderr
    run = tmp_path / "out/runs/0001"
    details = [
        orjson.loads(line) for line in (run / "data/details.jsonl").read_bytes().splitlines()
    ]
    projects = (run / "data/projects.jsonl").read_bytes().count(b"\n")
    organisations = {record["organisation"] for record in details}
    assert len(organisations) > 1
    assert [e for e in entries(run) if e["t"] == "known"] == [
        {"t": "known", "s": "details", "partitions": projects},
        {"t": "known", "s": "organisations", "partitions": len(organisations)},
    ]


def test_known_written_when_parent_ends(tmp_path: Path, mock: MockServer) -> None:
    """The count is recorded once the parent has finished, while child partitions still wait,
    so a run stopped then shows an exact pending count."""
    recipe = write_recipe(tmp_path, DEPENDENT_RECIPE)
    # One request at a time: the 3 project pages go out among the first summaries.
    mock.add_fault(path=r"^/api/v2/projects/\d+/queries/summary/$", after=20, status=401)
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert outcome.exit_code == 1, outcome.stderr
    run = tmp_path / "out/runs/0001"
    projects = (run / "data/projects.jsonl").read_bytes().count(b"\n")
    done = sum(1 for e in entries(run) if e["t"] == "part" and e["s"] == "summaries")

    status = run_cli("status", str(run), "--json")

    assert [e for e in entries(run) if e["t"] == "known"] == [
        {"t": "known", "s": "summaries", "partitions": projects}
    ]
    assert done == 20
    summaries = orjson.loads(status.stdout)["streams"]["summaries"]
    assert summaries["partitions"]["pending"] == projects - 20
    assert summaries["pending_final"] is True


def test_status_two_from_fields(tmp_path: Path, mock: MockServer) -> None:
    """The note of a stream with two from: parameters names both fields."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          grid:
            endpoint: project_tasks
            params: {project_id: {each: [1]}}
          tasks:
            endpoint: task
            params:
              project_id: {from: grid._partition.project_id}
              task_id: {from: grid.properties.taskId}
        """,
    )
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 0

    status = run_cli("status", str(tmp_path / "out"))

    assert status.exit_code == 0, status.stderr
    assert (
        "tasks: one partition per distinct combination of grid._partition.project_id and "
        "grid.properties.taskId in one record"
    ) in status.stdout.splitlines()


def stopped_first_session(tmp_path: Path, mock: MockServer, token: str) -> tuple[str, ...]:
    """Run a project search whose first session a long Retry-After stops (exit 1), with
    ``token`` in TM_API_TOKEN; return the command that runs it again."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance:
          token_env: TM_API_TOKEN
          rate_limit: 10000/s
          retries: {attempts: 2, max_retry_after: 5}
        output: OUT
        streams:
          projects:
            endpoint: projects
            params: {projectStatuses: [PUBLISHED, ARCHIVED]}
        """,
    )
    args = ("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    mock.add_fault(
        path=r"^/api/v2/projects/$",
        query={"page": "1"},
        times=1,
        status=429,
        headers={"Retry-After": "3600"},
    )
    assert run_cli(*args, env={"TM_API_TOKEN": token}).exit_code == 1
    return args


def test_status_sessions_partly_authenticated(tmp_path: Path, mock: MockServer) -> None:
    """An anonymous session, then one with a token: status counts the sessions with a token."""
    args = stopped_first_session(tmp_path, mock, "")
    assert run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]}).exit_code == 0

    status = run_cli("status", str(tmp_path / "out"))
    data = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)

    line = next(x for x in status.stdout.splitlines() if x.startswith("sessions: 2"))
    assert "; authenticated: in 1 of 2 sessions, including the last; " in line
    assert (data["authenticated"], data["authenticated_sessions"]) == (True, 1)


def test_status_last_session_not_checked(tmp_path: Path, mock: MockServer) -> None:
    """A session whose token check got no verdict is "not checked", not anonymous."""
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = stopped_first_session(tmp_path, mock, env["TM_API_TOKEN"])
    mock.add_fault(path=r"^/api/v2/users/queries/tasks/locked/$", status=500)
    assert run_cli(*args, env=env).exit_code == 0

    status = run_cli("status", str(tmp_path / "out"))

    line = next(x for x in status.stdout.splitlines() if x.startswith("sessions: 2"))
    assert "; authenticated: in 1 of 2 sessions, not checked in the last; " in line


def test_status_shows_partition_problems(tmp_path: Path, mock: MockServer) -> None:
    """A partition that ended done with an integrity problem shows it in status."""
    import urllib.request

    query = "omitMapResults=true&orderBy=id&orderByType=ASC&projectStatuses=PUBLISHED,ARCHIVED"
    number, pages = 1, 1
    while number <= pages:
        # Every page announces one project more than the search has.
        with urllib.request.urlopen(f"{mock.api_url}/projects/?{query}&page={number}") as reply:
            page = orjson.loads(reply.read())
        pages = page["pagination"]["pages"]
        announced = page["pagination"]["total"] + 1
        page["pagination"]["total"] = announced
        mock.add_fault(
            path=r"^/api/v2/projects/$", query={"page": str(number)}, status=200, body=page
        )
        number += 1
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 3

    status = run_cli("status", str(tmp_path / "out"))
    data = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)

    problem = (
        f"integrity: received {announced - 1} unique records where the server announced "
        f"{announced}; run with --start-over to fetch the partition again"
    )
    assert f"projects: {problem}" in status.stdout.splitlines()
    assert data["streams"]["projects"]["problems"] == [problem]
