"""Incremental runs: a new run beside the finished one contains exactly what changed since."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest

import tm_export.engine
from tm_export.incremental import SERVER_CACHE, read_baseline, updated_since
from tm_export.mock import MockServer
from tm_export.params import partition_id, shard_owns
from tm_export.recipe import load_recipe

from .conftest import admin_run, export_here, run_cli, write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2026-01-01, end: 2026-12-31, step: 1 month}
"""


def records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def windows_not_ended(day: dt.date) -> list[tuple[str, str]]:
    """Return the monthly windows of the recipe's task_stats (2026) that end on or after ``day``."""
    windows = []
    for month in range(1, 13):
        start = dt.date(2026, month, 1)
        end = (start + dt.timedelta(days=31)).replace(day=1) - dt.timedelta(days=1)
        if end >= day:
            windows.append((start.isoformat(), end.isoformat()))
    return windows


def test_incremental_fetches_only_changes(tmp_path: Path, mock: MockServer) -> None:
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    first = tmp_path / "out/runs/0001"
    before = {path: path.read_bytes() for path in first.rglob("*") if path.is_file()}
    archived = [r["projectId"] for r in records(first / "data/projects.jsonl")]
    header = orjson.loads((first / "manifest.jsonl").read_bytes().splitlines()[0])
    since = dt.datetime.fromisoformat(header["started"].replace("Z", "+00:00"))

    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    touched, busy, deleted_id = archived[1], archived[2], archived[3]
    mock.dataset.touch_project(touched, later)
    new_ids = [
        mock.dataset.add_activity(busy, task_id=1, when=later + dt.timedelta(seconds=s))
        for s in (1, 2)
    ]
    mock.dataset.delete_project(deleted_id)
    mock.reset_log()

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    second = tmp_path / "out/runs/0002"
    changed = sorted(
        p.id
        for p in mock.dataset.projects.values()
        if p.status in ("PUBLISHED", "ARCHIVED")
        and p.last_updated.replace(tzinfo=dt.UTC) >= since - SERVER_CACHE
    )
    assert changed == sorted([touched, busy])
    assert sorted(r["projectId"] for r in records(second / "data/projects.jsonl")) == changed
    activities = records(second / "data/activities.jsonl")
    assert sorted(r["historyId"] for r in activities) == sorted(new_ids)
    activity_paths = {r["path"] for r in mock.requests() if r["path"].endswith("/activities/")}
    assert activity_paths == {f"/api/v2/projects/{pid}/activities/" for pid in changed}
    windows = {tuple(r["_partition"].values()) for r in records(second / "data/task_stats.jsonl")}  # type: ignore[union-attr]
    # A window counts as ended once the server's cache time has passed after its last day.
    open_windows = windows_not_ended((since - SERVER_CACHE).date())
    assert windows <= set(open_windows)
    stats_queries = [
        r["query"] for r in mock.requests() if r["path"] == "/api/v2/tasks/statistics/"
    ]
    assert stats_queries == [f"startDate={start}&endDate={end}" for start, end in open_windows]
    deleted = [e for e in records(second / "manifest.jsonl") if e["t"] == "deleted"]
    assert [e["project_id"] for e in deleted] == [deleted_id]
    assert f"deleted since the earlier runs: projects {deleted_id}" in outcome.stderr
    assert {path: path.read_bytes() for path in first.rglob("*") if path.is_file()} == before


def test_incremental_skips_runs_before_full_run(tmp_path: Path, mock: MockServer) -> None:
    """An incremental run builds on the runs from the last full run on, so a damaged
    manifest in a run before it, which --start-over left behind, does not stop it."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    (tmp_path / "out/runs/0001/manifest.jsonl").write_bytes(b"{damaged\n")
    assert run_cli(*args, "--start-over", env=env).exit_code == 0

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    header = orjson.loads((tmp_path / "out/runs/0003/manifest.jsonl").read_bytes().splitlines()[0])
    assert header["incremental"]["previous"] == ["0002"]


def test_incremental_resumes_unfinished_run(tmp_path: Path, mock: MockServer) -> None:
    """An unfinished run is resumed, not mixed with a new incremental one."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    # A wait longer than allowed stops the run (exit 1).
    mock.add_fault(path=r"/activities/$", after=5, status=429, headers={"Retry-After": "99999"})
    assert run_cli(*args, env=env).exit_code == 1
    mock.clear_faults()

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    assert "the last run is unfinished: resuming it" in outcome.stderr
    assert not (tmp_path / "out/runs/0002").exists()


def test_updated_in_the_start_second() -> None:
    """A project updated in the second the previous run started may have changed after it."""
    since = dt.datetime(2026, 12, 5, 3, 1, 44, tzinfo=dt.UTC)

    assert updated_since({"lastUpdated": "2026-12-05T03:01:44.000000Z"}, since) is True
    assert updated_since({"lastUpdated": "2026-12-05T03:01:43.999999Z"}, since) is False


def test_incremental_refuses_other_server(tmp_path: Path, mock: MockServer) -> None:
    """An incremental run against another API URL than the run before it stops before any
    request: the changes it skips on the right server would be lost for good."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, env=env).exit_code == 0

    with MockServer(projects=3) as other:
        other_env = {"TM_API_TOKEN": other.tokens["admin"]}
        outcome = run_cli(
            "run", str(recipe), "--base-url", other.api_url, "--incremental", env=other_env
        )
        sent_to_other = other.requests()
    same = run_cli("run", str(recipe), "--base-url", mock.api_url + "/", "--incremental", env=env)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {tmp_path / 'out'}: the previous run read from {mock.api_url}, and "
        f"this incremental run would read from {other.api_url}; it fetches only what changed "
        "since the previous run, so it needs the same server. Nothing was changed. Give "
        f"--base-url {mock.api_url}, or use --start-over for a full run from the other server"
    )
    assert sent_to_other == []
    assert same.exit_code == 0, same.stderr
    assert sorted(path.name for path in (tmp_path / "out/runs").iterdir()) == ["0001", "0002"]


#: A project search that sends the token in TM_API_TOKEN when it is set.
TOKEN_SEARCH_RECIPE = (
    "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}\noutput: OUT\n"
    "streams:\n  projects: {endpoint: projects}\n"
)


def search_with_token(tmp_path: Path, mock: MockServer) -> tuple[Path, list[str]]:
    """Write ``TOKEN_SEARCH_RECIPE`` and return it with the command that runs it on ``mock``."""
    recipe = write_recipe(tmp_path, TOKEN_SEARCH_RECIPE)
    return recipe, ["run", str(recipe), "--base-url", mock.api_url]


def test_incremental_needs_earlier_token(tmp_path: Path, mock: MockServer) -> None:
    """An incremental run without the token that the runs before it sent stops before any
    request: its search would miss the private projects' changes, and the next incremental
    run would start after it."""
    _, args = search_with_token(tmp_path, mock)
    assert run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]}).exit_code == 0
    mock.reset_log()

    anonymous = run_cli(*args, "--incremental", env={"TM_API_TOKEN": ""})

    assert anonymous.exit_code == 2
    assert anonymous.stderr.splitlines()[-1] == (
        f"tm-export: error: {tmp_path / 'out'}: the runs that this incremental run builds on "
        "sent an API token, and this one has none, so it would miss what changed in the "
        "private projects, for good, since the next incremental run starts after it. Nothing "
        "was changed. Export TM_API_TOKEN and run the same command again, or use --start-over "
        "for an anonymous full run"
    )
    assert mock.requests() == []
    assert sorted(path.name for path in (tmp_path / "out/runs").iterdir()) == ["0001"]
    with_token = run_cli(*args, "--incremental", env={"TM_API_TOKEN": mock.tokens["admin"]})
    assert with_token.exit_code == 0, with_token.stderr


def test_token_expired_at_end_is_a_problem(tmp_path: Path, mock: MockServer) -> None:
    """A token that fails the check at the end of a session leaves a problem on the streams
    that log in optionally. The next session finishes with exit 3, and an incremental run
    does not count that run's search as listing every project."""
    recipe, args = search_with_token(tmp_path, mock)
    token = {"TM_API_TOKEN": mock.tokens["admin"]}
    mock.add_fault(
        path=r"^/api/v2/users/queries/tasks/locked/$",
        after=1,
        status=401,
        body={"Error": "Token is expired or invalid", "SubCode": "InvalidToken"},
    )
    expired = run_cli(*args, env=token)
    mock.clear_faults()

    finished = run_cli(*args, env=token)

    assert expired.exit_code == 1, expired.stderr
    assert finished.exit_code == 3, finished.stderr
    assert (
        "problem in projects: the API token expired during this run, so the partitions "
        "finished after that may hold only what an anonymous user sees; run again with "
        "--start-over and a fresh key for a complete export"
    ) in finished.stderr.splitlines()
    baseline = read_baseline(load_recipe(recipe), [tmp_path / "out/runs/0001"])
    assert baseline.search_since is None


def test_finished_runs_need_no_token(tmp_path: Path, mock: MockServer) -> None:
    """A finished run, full or incremental, sends nothing when run again, so it needs no
    token, even where its sessions sent one."""
    _, args = search_with_token(tmp_path, mock)
    token = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert run_cli(*args, env=token).exit_code == 0
    full_again = run_cli(*args, env={"TM_API_TOKEN": ""})
    assert run_cli(*args, "--incremental", env=token).exit_code == 0
    mock.reset_log()

    incremental_again = run_cli(*args, env={"TM_API_TOKEN": ""})

    assert full_again.exit_code == 0, full_again.stderr
    assert incremental_again.exit_code == 0, incremental_again.stderr
    assert mock.requests() == []


def test_deleted_project_reported_once(tmp_path: Path, mock: MockServer) -> None:
    """The run that finds a project deleted reports it; the runs after it do not."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    archived = [r["projectId"] for r in records(tmp_path / "out/runs/0001/data/projects.jsonl")]
    mock.dataset.delete_project(archived[0])

    second = run_cli(*args, "--incremental", env=env)
    third = run_cli(*args, "--incremental", env=env)

    assert second.exit_code == 0, second.stderr
    assert third.exit_code == 0, third.stderr
    assert f"deleted since the earlier runs: projects {archived[0]}" in second.stderr
    assert "deleted since the earlier runs" not in third.stderr
    report = run_cli("status", str(tmp_path / "out/runs/0002"))
    assert f"\ndeleted since the earlier runs: projects {archived[0]}\n" in report.stdout
    status = orjson.loads(run_cli("status", str(tmp_path / "out/runs/0002"), "--json").stdout)
    assert status["deleted_projects"] == [archived[0]]
    entries = records(tmp_path / "out/runs/0003/manifest.jsonl")
    assert [e for e in entries if e["t"] == "deleted"] == []


def test_incremental_spooled_pages(tmp_path: Path, mock: MockServer) -> None:
    """With every page spooled, an edited project whose pages hold only archived records is
    complete, and the deletion check reads the project list whole and leaves no spool file."""
    recipe = write_recipe(tmp_path, RECIPE)
    token = mock.tokens["admin"]
    assert export_here(recipe, mock, token=token, spool_over=200).exit_code() == 0
    archived = [r["projectId"] for r in records(tmp_path / "out/runs/0001/data/projects.jsonl")]
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    mock.dataset.touch_project(archived[1], later)
    mock.reset_log()

    second = export_here(recipe, mock, token=token, incremental=True, spool_over=200)

    assert second.exit_code() == 0
    assert [p for stats in second.streams.values() for p in stats.problems] == []
    assert second.streams["projects"].records == 1
    assert second.streams["activities"].records == 0
    assert [r for r in mock.requests() if "abbreviated=true" in r["query"]] == []
    assert list((tmp_path / "out/runs/0002/.spool").glob("*")) == []


def test_deletion_check_failure_is_fatal(tmp_path: Path, mock: MockServer) -> None:
    """A deletion check whose search fails stops the incremental run with one error line."""
    recipe = write_recipe(tmp_path, RECIPE.replace("10000/s", "10000/s, retries: {attempts: 1}"))
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet"]
    assert run_cli(*args, env=env).exit_code == 0
    mock.add_fault(path=r"^/api/v2/projects/$", query={"omitMapResults": "false"}, status=400)

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        "tm-export: error: the check for projects deleted since the last run failed: GET "
        f"{mock.api_url}/projects/?omitMapResults=false&orderBy=id&orderByType=ASC&"
        "projectStatuses=PUBLISHED,ARCHIVED&page=1: 400 Bad Request (application/json): "
        '{"detail":"Bad Request"}; run the same command again to resume'
    )
    assert "Traceback" not in outcome.stderr


def test_resumed_incremental_walk_keeps_filtered(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's project search filters by day, so an incremental walk drops projects
    updated earlier that day and its records fall short of the server's total. A walk
    resumed after a failed page reads that from its committed pages and reports no
    integrity problem."""
    text = RECIPE.replace("rate_limit: 10000/s}", "rate_limit: 10000/s, retries: {attempts: 1}}")
    recipe = write_recipe(tmp_path, text)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    ids = sorted(
        p.id for p in mock.dataset.projects.values() if p.status in ("PUBLISHED", "ARCHIVED")
    )
    early_ids, late_ids = ids[:14], ids[-14:]
    noon = dt.datetime.combine(dt.date.today(), dt.time(12))
    # Every run's manifest records a start at noon.
    monkeypatch.setattr(tm_export.engine, "utc_now_text", lambda: f"{noon.isoformat()}Z")
    # Today, but more than the server's cache time before the first run: the search of the
    # incremental run finds these projects by their day, and the run drops them by their time.
    for project_id in early_ids:
        mock.dataset.touch_project(project_id, noon - SERVER_CACHE - dt.timedelta(minutes=1))
    assert run_cli(*args, env=env).exit_code == 0
    for project_id in late_ids:
        mock.dataset.touch_project(project_id, noon + dt.timedelta(minutes=5))
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "2"}, status=500)
    failed = run_cli(*args, "--incremental", env=env)
    mock.clear_faults()

    retried = run_cli(*args, "--retry-failed", env=env)

    assert failed.exit_code == 3, failed.stderr
    assert retried.exit_code == 0, retried.stderr
    assert "integrity" not in retried.stderr
    second = tmp_path / "out/runs/0002/data/projects.jsonl"
    assert sorted(r["projectId"] for r in records(second)) == late_ids


def test_project_changed_within_cache_read_again(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project changed less than the server's cache time before a run may have been read
    from a stale statistics cache, so the next incremental run reads it again. One changed
    earlier is not read again."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    public = sorted(mock.dataset.public_project_ids())
    recent, older = public[0], public[1]
    noon = dt.datetime.combine(dt.date.today(), dt.time(12))
    monkeypatch.setattr(tm_export.engine, "utc_now_text", lambda: f"{noon.isoformat()}Z")
    mock.dataset.touch_project(recent, noon - SERVER_CACHE + dt.timedelta(minutes=1))
    mock.dataset.touch_project(older, noon - SERVER_CACHE - dt.timedelta(minutes=1))
    assert run_cli(*args, env=env).exit_code == 0

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    second = tmp_path / "out/runs/0002/data/projects.jsonl"
    assert [r["projectId"] for r in records(second)] == [recent]


def test_incremental_run_labelled_partial(tmp_path: Path, mock: MockServer) -> None:
    """status and the bag's description name an incremental run's window of changes."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    second = tmp_path / "out/runs/0002"
    since = orjson.loads((second / "manifest.jsonl").read_bytes().splitlines()[0])["incremental"][
        "since"
    ]

    status = run_cli("status", str(second))
    bagged = run_cli("bag", str(second))

    assert status.stdout.splitlines()[3] == (
        f"incremental: holds what changed since {since}, on top of runs 0001"
    )
    assert bagged.exit_code == 0, bagged.stderr
    info = (second / "bag-info.txt").read_text()
    assert (
        f"; an incremental run: only what changed since {since}, on top of the earlier runs 0001"
        in " ".join(line.strip() for line in info.splitlines())
    )


def test_incremental_builds_on_last_full_run(tmp_path: Path, mock: MockServer) -> None:
    """After a --start-over from another server, an incremental run builds on that full run
    only: the first server's projects are not reported deleted."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, env=env).exit_code == 0

    with MockServer(projects=3, seed=2) as other:
        other_env = {"TM_API_TOKEN": other.tokens["admin"]}
        args = ["run", str(recipe), "--base-url", other.api_url]
        assert run_cli(*args, "--start-over", env=other_env).exit_code == 0
        outcome = run_cli(*args, "--incremental", env=other_env)

    assert outcome.exit_code == 0, outcome.stderr
    assert "deleted since the earlier runs" not in outcome.stderr
    header = orjson.loads((tmp_path / "out/runs/0003/manifest.jsonl").read_bytes().splitlines()[0])
    assert header["incremental"]["previous"] == ["0002"]


def test_unstarted_incremental_run_checks_server(tmp_path: Path, mock: MockServer) -> None:
    """An incremental run that stopped at the server check cannot be continued against
    another server than the run it builds on."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, env=env).exit_code == 0
    mock.add_fault(path=r"^/api/v2/system/heartbeat/$", status=404)
    stopped = run_cli("run", str(recipe), "--base-url", mock.api_url, "--incremental", env=env)
    mock.clear_faults()

    with MockServer(projects=3) as other:
        other_env = {"TM_API_TOKEN": other.tokens["admin"]}
        outcome = run_cli(
            "run", str(recipe), "--base-url", other.api_url, "--incremental", env=other_env
        )
        sent_to_other = other.requests()

    assert stopped.exit_code == 1, stopped.stderr
    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1].startswith(
        f"tm-export: error: {tmp_path / 'out'}: the previous run read from {mock.api_url}, and "
        f"this incremental run would read from {other.api_url}; "
    )
    assert sent_to_other == []


CHILD_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  contributions:
    endpoint: project_contributions
    params: {project_id: {from: projects.projectId}}
"""


def fail_contributions_once(
    mock: MockServer, project: int, args: list[str], env: dict[str, str]
) -> None:
    """Edit ``project``, then run an incremental run in which its contributions fail (exit 3)."""
    mock.dataset.touch_project(
        project, dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    )
    mock.add_fault(path=rf"^/api/v2/projects/{project}/contributions/$", status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    mock.clear_faults()


def test_failed_child_partition_fetched_again(tmp_path: Path, mock: MockServer) -> None:
    """A partition that failed in an incremental run is fetched by the next one, although
    its project has not changed since."""
    args, env = admin_run(tmp_path, mock, CHILD_RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    project = max(
        mock.dataset.public_project_ids(),
        key=lambda pid: mock.dataset.count("project_contributions", project_id=pid),
    )
    fail_contributions_once(mock, project, args, env)
    # Back to an old time, so that only the failure can bring the project into the next run.
    mock.dataset.touch_project(project, dt.datetime(2020, 1, 1))
    mock.reset_log()

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    third = tmp_path / "out/runs/0003"
    assert records(third / "data/projects.jsonl") == []
    contributions = {r["path"] for r in mock.requests() if r["path"].endswith("/contributions/")}
    assert contributions == {f"/api/v2/projects/{project}/contributions/"}
    written = records(third / "data/contributions.jsonl")
    assert len(written) == mock.dataset.count("project_contributions", project_id=project) > 0
    assert {r["_partition"]["project_id"] for r in written} == {project}  # type: ignore[index]


def headers_of(tmp_path: Path, run: str, output: Path | None = None) -> dict[str, Any]:
    """Return the manifest header of run ``run`` in ``output``, by default ``tmp_path/out``."""
    manifest = (output or tmp_path / "out") / "runs" / run / "manifest.jsonl"
    header: dict[str, Any] = orjson.loads(manifest.read_bytes().splitlines()[0])
    return header


def start_on_days(runs: list[Path]) -> None:
    """Give the runs, which started within a second or two, the start times 2026-11-01,
    -02 and so on, to tell them apart; an incremental run's since follows its predecessor's."""
    for day, run in enumerate(runs, start=1):
        manifest = run / "manifest.jsonl"
        header, rest = manifest.read_bytes().split(b"\n", 1)
        changed = {**orjson.loads(header), "started": f"2026-11-{day:02d}T00:00:00Z"}
        baseline = changed.get("incremental")
        if baseline:
            before = f"2026-11-{day - 1:02d}T00:00:00Z"
            searched = baseline.get("search_since", baseline["since"])
            changed["incremental"] = {
                **baseline,
                "since": before,
                "search_since": before if searched is not None else None,
            }
        manifest.write_bytes(orjson.dumps(changed) + b"\n" + rest)


def search_day(started: str) -> str:
    """Return the lastUpdatedFrom that an incremental run sends after a run that started at
    ``started``: the day of the server's cache time before it, which may be the day before."""
    moment = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
    return (moment - SERVER_CACHE).date().isoformat()


def test_since_of_last_complete_search(tmp_path: Path, mock: MockServer) -> None:
    """After a run whose project search failed part way, the next incremental run requests
    the projects updated since the start of the run before it, whose search finished."""
    recipe = write_recipe(tmp_path, CHILD_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    since_day = search_day(headers_of(tmp_path, "0002")["started"])
    mock.add_fault(path=r"^/api/v2/projects/$", query={"lastUpdatedFrom": since_day}, status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    runs = [tmp_path / "out/runs" / run for run in ("0001", "0002", "0003")]
    start_on_days(runs)

    baseline = read_baseline(load_recipe(recipe), runs)

    assert baseline.since == dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    assert baseline.previous == ["0001", "0002", "0003"]


def test_output_folder_inside_a_runs_folder(tmp_path: Path, mock: MockServer) -> None:
    """An output folder may sit in a folder named runs, such as one output per year."""
    recipe = write_recipe(tmp_path, CHILD_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    output = tmp_path / "archives/runs/2025"
    args = ["run", str(recipe), "--base-url", mock.api_url, "--output", str(output)]
    assert run_cli(*args, env=env).exit_code == 0

    outcome = run_cli(*args, "--incremental", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    assert (output / "runs/0002").is_dir()


ACTIVITIES_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""


def test_retry_on_merged_incremental_run_keeps_stop_keys(tmp_path: Path, mock: MockServer) -> None:
    """--retry-failed on a merged incremental run stops every shard's task history at the
    newest record its earlier runs hold, and writes only the new records."""
    recipe = write_recipe(tmp_path, ACTIVITIES_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    base = ["run", str(recipe), "--base-url", mock.api_url]
    shards = [tmp_path / f"s{k}" for k in (1, 2)]
    archive = tmp_path / "archive"
    for k, shard in enumerate(shards, start=1):
        assert run_cli(*base, "--shard", f"{k}/2", "--output", str(shard), env=env).exit_code == 0
    assert run_cli("merge", str(archive), *map(str, shards), env=env).exit_code == 0
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    new = [
        mock.dataset.add_activity(project, task_id=1, when=later)
        for project in mock.dataset.public_project_ids()
    ]
    mock.add_fault(path=r"^/api/v2/projects/\d+/activities/$", status=500)
    for k, shard in enumerate(shards, start=1):
        args = [*base, "--incremental", "--shard", f"{k}/2", "--output", str(shard)]
        assert run_cli(*args, env=env).exit_code == 3
    assert run_cli("merge", str(archive), *map(str, shards), env=env).exit_code == 0
    mock.clear_faults()

    outcome = run_cli(*base, "--output", str(archive), "--retry-failed", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    written = records(archive / "runs/0002/data/activities.jsonl")
    assert sorted(record["historyId"] for record in written) == sorted(new)  # type: ignore[type-var]


def test_failed_partition_of_deleted_project_not_fetched(tmp_path: Path, mock: MockServer) -> None:
    """A partition that failed for a project deleted since is not requested again, by the
    run that finds the project deleted or by the runs after it."""
    args, env = admin_run(tmp_path, mock, CHILD_RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    project = mock.dataset.public_project_ids()[2]
    fail_contributions_once(mock, project, args, env)
    mock.dataset.delete_project(project)
    mock.reset_log()

    third = run_cli(*args, "--incremental", env=env)
    fourth = run_cli(*args, "--incremental", env=env)

    assert third.exit_code == 0, third.stderr
    assert fourth.exit_code == 0, fourth.stderr
    assert f"deleted since the earlier runs: projects {project}" in third.stderr
    assert "skipped partitions" not in third.stderr
    assert "skipped partitions" not in fourth.stderr
    assert [r["path"] for r in mock.requests() if r["path"].endswith("/contributions/")] == []


def test_since_of_shard_without_the_search(tmp_path: Path, mock: MockServer) -> None:
    """A shard that does not write the project search builds on its last run too."""
    recipe = write_recipe(tmp_path, CHILD_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    base = ["run", str(recipe), "--base-url", mock.api_url]
    for shard in (1, 2):
        output = str(tmp_path / f"s{shard}")
        assert run_cli(*base, "--shard", f"{shard}/2", "--output", output, env=env).exit_code == 0
        for _ in range(2):
            args = [*base, "--incremental", "--shard", f"{shard}/2", "--output", output]
            assert run_cli(*args, env=env).exit_code == 0
    runs = {
        shard: [tmp_path / f"s{shard}/runs/{run}" for run in ("0001", "0002", "0003")]
        for shard in (1, 2)
    }
    for shard_runs in runs.values():
        start_on_days(shard_runs)

    since = {
        shard: read_baseline(load_recipe(recipe), shard_runs).since
        for shard, shard_runs in runs.items()
    }

    assert since == {shard: dt.datetime(2026, 11, 3, tzinfo=dt.UTC) for shard in (1, 2)}


def test_stray_files_above_output_allowed(tmp_path: Path, mock: MockServer) -> None:
    """Files named like tm-export's in a folder above the output folder do not stop a run."""
    recipe = write_recipe(tmp_path, CHILD_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    (tmp_path / "snapshot.json").write_text('{"name": "a web app setting"}')
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    output = tmp_path / "exports/archive"

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "-o", str(output), env=env)

    assert outcome.exit_code == 0, outcome.stderr
    assert (output / "runs/0001/run.json").is_file()


def test_merged_since_of_shard_whose_search_failed(tmp_path: Path, mock: MockServer) -> None:
    """A merged run builds on the earliest since of its shards: that of the shard whose
    project search failed, not that of the last shard."""
    recipe = write_recipe(tmp_path, CHILD_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    folders = {shard: tmp_path / f"s{shard}" for shard in (1, 2)}

    def run_shard(shard: int, *extra: str) -> int:
        command = ["run", str(recipe), "--base-url", mock.api_url, "--shard", f"{shard}/2"]
        return run_cli(*command, "--output", str(folders[shard]), *extra, env=env).exit_code

    owner = next(shard for shard in (1, 2) if shard_owns((shard, 2), "projects", partition_id({})))
    assert [run_shard(1), run_shard(2)] == [0, 0]
    day = search_day(headers_of(tmp_path, "0001", folders[owner])["started"])
    mock.add_fault(path=r"^/api/v2/projects/$", query={"lastUpdatedFrom": day}, status=500)
    assert run_shard(owner, "--incremental") == 3
    mock.clear_faults()
    assert run_shard(3 - owner, "--incremental") == 0
    assert [run_shard(1, "--incremental"), run_shard(2, "--incremental")] == [0, 0]
    archive = tmp_path / "archive"
    assert run_cli("merge", str(archive), *map(str, folders.values()), env=env).exit_code == 0
    previous = headers_of(tmp_path, "0001", archive)["incremental"]["previous"]
    for folder in folders.values():
        start_on_days([folder / "runs/0001", folder / "runs/0002"])

    since = read_baseline(load_recipe(recipe), [Path(run) for run in previous]).since

    assert previous == [
        str(folder / "runs" / run) for folder in folders.values() for run in ("0001", "0002")
    ]
    assert since == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def test_failed_window_fetched_again(tmp_path: Path, mock: MockServer) -> None:
    """A date window that failed in an incremental run is not counted as finished by the
    next one, although an earlier run finished it."""
    today = dt.date.today()
    current = today.replace(day=1)
    previous = (current - dt.timedelta(days=1)).replace(day=1)
    month_end = (current + dt.timedelta(days=31)).replace(day=1) - dt.timedelta(days=1)
    recipe = write_recipe(
        tmp_path,
        f"""\
version: 1
instance: {{token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {{attempts: 1}}}}
output: OUT
streams:
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {{start: {previous}, end: {month_end}, step: 1 month}}
""",
    )
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    mock.add_fault(
        path=r"^/api/v2/tasks/statistics/$", query={"startDate": str(current)}, status=500
    )
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    # As if the second run had started in the next month, after the current window ended.
    manifest = tmp_path / "out/runs/0002/manifest.jsonl"
    header, rest = manifest.read_bytes().split(b"\n", 1)
    later = (month_end + dt.timedelta(days=2)).isoformat()
    changed = {**orjson.loads(header), "started": f"{later}T00:00:00Z"}
    manifest.write_bytes(orjson.dumps(changed) + b"\n" + rest)

    baseline = read_baseline(
        load_recipe(recipe), [tmp_path / "out/runs/0001", tmp_path / "out/runs/0002"]
    )

    finished = {
        orjson.loads(window)["startDate"] for window in baseline.finished_windows["task_stats"]
    }
    assert finished == {str(previous)}


@pytest.mark.parametrize(("started", "finished"), [("00:59:59", False), ("01:00:00", True)])
def test_window_read_within_cache_fetched_again(
    tmp_path: Path, mock: MockServer, started: str, finished: bool
) -> None:
    """The server may serve task statistics computed up to an hour earlier, so a window
    read in the first hour after its last day (UTC) is fetched again by the next run."""
    current = dt.datetime.now(dt.UTC).date().replace(day=1)
    previous = (current - dt.timedelta(days=1)).replace(day=1)
    recipe = write_recipe(
        tmp_path,
        f"""\
version: 1
instance: {{token_env: TM_API_TOKEN, rate_limit: 10000/s}}
output: OUT
streams:
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {{start: {previous}, end: {current}, step: 1 month}}
""",
    )
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, env=env).exit_code == 0
    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    header, rest = manifest.read_bytes().split(b"\n", 1)
    changed = {**orjson.loads(header), "started": f"{current}T{started}Z"}
    manifest.write_bytes(orjson.dumps(changed) + b"\n" + rest)

    baseline = read_baseline(load_recipe(recipe), [tmp_path / "out/runs/0001"])

    windows = {orjson.loads(w)["startDate"] for w in baseline.finished_windows["task_stats"]}
    assert windows == ({str(previous)} if finished else set())


def test_search_of_every_project_after_failed_full_search(tmp_path: Path, mock: MockServer) -> None:
    """When the full run's project search failed, the next incremental run requests every
    project, and the runs after it build on that run."""
    args, env = admin_run(tmp_path, mock, CHILD_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/$", query={"page": "2"}, status=500)
    assert run_cli(*args, env=env).exit_code == 3
    mock.clear_faults()
    mock.reset_log()

    second = run_cli(*args, "--incremental", env=env)
    third = run_cli(*args, "--incremental", env=env)

    assert second.exit_code == 0, second.stderr
    assert third.exit_code == 0, third.stderr
    searched = sorted(
        r["projectId"] for r in records(tmp_path / "out/runs/0002/data/projects.jsonl")
    )
    assert searched == admin_search_ids(mock)
    headers = [headers_of(tmp_path, run) for run in ("0001", "0002", "0003")]
    assert headers[1]["incremental"]["search_since"] is None
    assert headers[1]["incremental"]["since"] == headers[0]["started"]
    assert headers[2]["incremental"]["search_since"] == headers[1]["started"]
    status = run_cli("status", str(tmp_path / "out/runs/0002")).stdout
    assert "; its project search requested every project\n" in status
    report = orjson.loads(run_cli("status", str(tmp_path / "out/runs/0002"), "--json").stdout)
    assert report["incremental"] == headers[1]["incremental"]
    full = orjson.loads(run_cli("status", str(tmp_path / "out/runs/0001"), "--json").stdout)
    assert full["incremental"] is None


def test_capped_search_searched_again(tmp_path: Path, mock: MockServer) -> None:
    """A full run whose project search stopped at max_pages listed only some projects, so
    the next incremental run, with the cap raised, requests every project."""
    capped = CHILD_RECIPE.replace(
        "    endpoint: projects\n", "    endpoint: projects\n    max_pages: 2\n"
    )
    args, env = admin_run(tmp_path, mock, capped)
    first = run_cli(*args, env=env)
    assert first.exit_code == 3, first.stderr
    assert len(records(tmp_path / "out/runs/0001/data/projects.jsonl")) == 28
    write_recipe(tmp_path, CHILD_RECIPE)

    second = run_cli(*args, "--incremental", env=env)

    assert second.exit_code == 0, second.stderr
    searched = sorted(
        r["projectId"] for r in records(tmp_path / "out/runs/0002/data/projects.jsonl")
    )
    assert searched == admin_search_ids(mock)
    assert headers_of(tmp_path, "0002")["incremental"]["search_since"] is None


def admin_search_ids(mock: MockServer) -> list[int]:
    """Return the ids of the admin's PUBLISHED,ARCHIVED search, private projects included."""
    return sorted(
        p.id for p in mock.dataset.projects.values() if p.status in ("PUBLISHED", "ARCHIVED")
    )
