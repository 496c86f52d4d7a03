"""End-to-end exports from the mock Tasking Manager: counts, partitions, skips, resume."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import parse_qs

import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import append_stopped_retry, data_file, run_cli, write_recipe

MAIN_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, concurrency: 8, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  project_details:
    endpoint: project
    params: {project_id: {from: projects.projectId}, abbreviated: true}
  contributions:
    endpoint: project_contributions
    params: {project_id: {from: projects.projectId}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2026-01-01, end: 2026-12-31, step: 1 month}
"""


def visible_ids(mock: MockServer) -> list[int]:
    """Ids an admin's PUBLISHED,ARCHIVED search returns, private projects included."""
    return sorted(
        p.id for p in mock.dataset.projects.values() if p.status in ("PUBLISHED", "ARCHIVED")
    )


def per_project(mock: MockServer, endpoint: str, ids: list[int]) -> int:
    return sum(mock.dataset.count(endpoint, project_id=pid) for pid in ids)


def records(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_main_path_counts(tmp_path: Path, mock: MockServer) -> None:
    """Projects, dependent details, contributions, paged activities and monthly task stats."""
    recipe = write_recipe(tmp_path, MAIN_RECIPE)
    ids = visible_ids(mock)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    out = tmp_path / "out"
    assert len(records(data_file(out, "projects"))) == mock.dataset.count("projects") == len(ids)
    assert len(records(data_file(out, "project_details"))) == len(ids)
    assert len(records(data_file(out, "contributions"))) == per_project(
        mock, "project_contributions", ids
    )
    assert len(records(data_file(out, "activities"))) == per_project(
        mock, "project_activities", ids
    )
    assert len(records(data_file(out, "task_stats"))) == mock.dataset.count(
        "tasks_statistics", startDate="2026-01-01", endDate="2026-12-31"
    )
    assert per_project(mock, "project_activities", ids) > 10 * len(ids) // 2


def test_partitioned_records_name_partition(tmp_path: Path, mock: MockServer) -> None:
    """Every record of a partitioned stream carries its partition's values under _partition."""
    recipe = write_recipe(tmp_path, MAIN_RECIPE)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    out = tmp_path / "out"
    for record in records(data_file(out, "project_details")):
        assert record["_partition"] == {"project_id": record["projectId"]}
    for stream in ("contributions", "activities"):
        lines = records(data_file(out, stream))
        assert lines
        assert all(set(r["_partition"]) == {"project_id"} for r in lines)  # type: ignore[arg-type]
    windows = {tuple(r["_partition"].values()) for r in records(data_file(out, "task_stats"))}  # type: ignore[union-attr]
    for start, end in windows:
        assert start[:7] == end[:7]
    for record in records(data_file(out, "task_stats")):
        partition = record["_partition"]
        assert partition["startDate"] <= record["date"] <= partition["endDate"]  # type: ignore[index,operator]
    assert "_partition" not in records(data_file(out, "projects"))[0]


def test_rerun_requests_nothing(tmp_path: Path, mock: MockServer) -> None:
    """Running the same command on a complete run sends no request and changes no file."""
    recipe = write_recipe(tmp_path, MAIN_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    first = run_cli("run", str(recipe), "--base-url", mock.api_url, env=env)
    assert first.exit_code == 0, first.stderr
    run = tmp_path / "out/runs/0001"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    sent = len(mock.requests())

    second = run_cli("run", str(recipe), "--base-url", mock.api_url, env=env)

    assert second.exit_code == 0, second.stderr
    assert f"run folder: {tmp_path / 'out/runs/0001'} (already finished)\n" in second.stderr
    assert (
        f"the run in {tmp_path / 'out/runs/0001'} is already finished: no request is sent "
        "unless --retry-failed or --retry-skipped is given; only the steps that describe it "
        "(run record, --canonical, --bag) are done if they are missing" in second.stderr
    )
    assert "requests: 0, retries: 0, authenticated: yes, TM release: v5.5.2\n" in second.stderr
    assert mock.requests()[sent:] == []
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    nothing_skipped = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--retry-skipped", "--json", env=env
    )

    assert nothing_skipped.exit_code == 0, nothing_skipped.stderr
    assert (
        f"the run in {tmp_path / 'out/runs/0001'} is already finished and has no skipped "
        "partitions: no request is sent" in nothing_skipped.stderr
    )
    summary = json.loads(nothing_skipped.stdout)
    assert (summary["resumed"], summary["already_finished"], summary["requests"]) == (
        False,
        True,
        0,
    )
    assert mock.requests()[sent:] == []
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


SKIP_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 9, 12]}}
"""


def test_skipped_partitions_counted(tmp_path: Path, mock: MockServer) -> None:
    """Without a token, the private project (403) and the deleted one (404) end skipped; exit 0."""
    recipe = write_recipe(tmp_path, SKIP_RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    assert (
        "skipped partitions: 2 (403 PrivateProject: 1, 404 PROJECT_NOT_FOUND: 1)" in outcome.stderr
    )
    manifest = records(tmp_path / "out/runs/0001/manifest.jsonl")
    finals = {e["p"]: e for e in manifest if e["t"] == "part"}
    assert finals['{"project_id":1}']["state"] == "done"
    assert finals['{"project_id":9}']["state"] == "skipped"
    assert finals['{"project_id":9}']["status"] == 403
    assert finals['{"project_id":9}']["sub_code"] == "PrivateProject"
    assert finals['{"project_id":12}']["state"] == "skipped"
    assert finals['{"project_id":12}']["status"] == 404
    assert finals['{"project_id":12}']["sub_code"] == "PROJECT_NOT_FOUND"
    assert len(records(data_file(tmp_path / "out", "contributions"))) == mock.dataset.count(
        "project_contributions", project_id=1
    )


def test_skipped_strict_exits_3(tmp_path: Path, mock: MockServer) -> None:
    """With --strict, skipped partitions make the run exit 3."""
    recipe = write_recipe(tmp_path, SKIP_RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--strict")

    assert outcome.exit_code == 3
    assert outcome.stderr.splitlines()[-1] == (
        "result: finished with skipped partitions (--strict) (exit 3)"
    )
    # --strict sets the exit code only: the run itself is complete.
    status = run_cli("status", str(tmp_path / "out")).stdout.splitlines()
    assert status[1].startswith("state: complete, ended ")


def test_retry_skipped_with_token(tmp_path: Path, mock: MockServer) -> None:
    """--retry-skipped with a token fetches the private project that was skipped before."""
    recipe = write_recipe(
        tmp_path,
        SKIP_RECIPE.replace(
            "{rate_limit: 10000/s}", "{rate_limit: 10000/s, token_env: TM_API_TOKEN}"
        ),
    )
    run_cli("run", str(recipe), "--base-url", mock.api_url)
    sent = len(mock.requests())

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "--retry-skipped",
        env={"TM_API_TOKEN": mock.tokens["admin"]},
    )

    assert outcome.exit_code == 0, outcome.stderr
    contributions = [
        r["path"] for r in mock.requests()[sent:] if r["path"].endswith("/contributions/")
    ]
    assert sorted(contributions) == [
        "/api/v2/projects/12/contributions/",
        "/api/v2/projects/9/contributions/",
    ]
    expected = mock.dataset.count("project_contributions", project_id=1) + mock.dataset.count(
        "project_contributions", project_id=9
    )
    assert len(records(data_file(tmp_path / "out", "contributions"))) == expected


WINDOW_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  windows:
    endpoint: projects
    params:
      projectStatuses: [PUBLISHED, ARCHIVED]
      window: {start: 2026-06-01, end: 2026-07-31, step: 1 month, bind: [FROM, TO]}
"""


def window_ends(recipe: Path, mock: MockServer, end_param: str) -> dict[int, str]:
    """Run ``recipe`` and return each project's window, as its last day."""
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)
    assert outcome.exit_code == 0, outcome.stderr
    written = records(data_file(recipe.parent / "out", "windows"))
    ends: dict[int, str] = {}
    for record in written:
        partition = record["_partition"]
        assert isinstance(partition, dict)
        ends[int(str(record["projectId"]))] = str(partition[end_param])
    assert len(ends) == len(written)
    return ends


def test_created_windows_keep_last_day(tmp_path: Path, mock: MockServer) -> None:
    """A project created during a window's last day is in that window, not lost."""
    public = sorted(mock.dataset.public_project_ids())
    late = public[0]
    mock.dataset.projects[late].created = dt.datetime(2026, 6, 30, 9, 34, 32)
    mock.dataset.touch_project(late, mock.dataset.projects[late].last_updated)
    text = WINDOW_RECIPE.replace("FROM", "createdFrom").replace("TO]", "createdTo]")
    recipe = write_recipe(tmp_path, text)

    ends = window_ends(recipe, mock, "createdTo")

    assert ends[late] == "2026-06-30"
    expected = [
        pid
        for pid in public
        if dt.datetime(2026, 6, 1) <= mock.dataset.projects[pid].created < dt.datetime(2026, 8, 1)
    ]
    assert sorted(ends) == expected
    queries = [r["query"] for r in mock.requests() if r["path"] == "/api/v2/projects/"]
    assert {q.split("createdTo=")[1].split("&")[0] for q in queries} == {"2026-07-01", "2026-08-01"}


def test_updated_windows_split_at_midnight(tmp_path: Path, mock: MockServer) -> None:
    """A project updated at the midnight between two windows is written by the later one only."""
    public = sorted(mock.dataset.public_project_ids())
    late, midnight = public[0], public[1]
    mock.dataset.touch_project(late, dt.datetime(2026, 6, 30, 23, 59, 59))
    mock.dataset.touch_project(midnight, dt.datetime(2026, 7, 1))
    text = WINDOW_RECIPE.replace("FROM", "lastUpdatedFrom").replace("TO]", "lastUpdatedTo]")
    recipe = write_recipe(tmp_path, text)

    ends = window_ends(recipe, mock, "lastUpdatedTo")

    assert ends[late] == "2026-06-30"
    assert ends[midnight] == "2026-07-31"
    expected = [
        pid
        for pid in public
        if dt.datetime(2026, 6, 1)
        <= mock.dataset.projects[pid].last_updated
        < dt.datetime(2026, 8, 1)
    ]
    assert sorted(ends) == expected


def test_from_path_through_object_list(tmp_path: Path, mock: MockServer) -> None:
    """A from: path through a list of objects takes the field of each: every manager's name."""
    ids = sorted(mock.dataset.organisations)
    recipe = write_recipe(
        tmp_path,
        f"""\
        version: 1
        instance: {{token_env: TM_API_TOKEN, rate_limit: 10000/s}}
        output: OUT
        streams:
          orgs:
            endpoint: organisation
            params: {{organisation_id: {{each: {ids}}}}}
          managers:
            endpoint: user_statistics
            params: {{username: {{from: orgs.managers.username}}}}
        """,
    )
    names = sorted(
        {
            mock.dataset.users[user_id].username
            for org in mock.dataset.organisations.values()
            for user_id in org.manager_ids
        }
    )

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    written = records(data_file(tmp_path / "out", "managers"))
    assert sorted(str(record["_partition"]["username"]) for record in written) == names
    assert len(names) >= 2


#: The advice that ends the problem message of a from: field without values.
FEED_FIX = (
    "Fix the field in the recipe, then run it with --start-over, which begins a new run: "
    "this run accepts only the recipe it began with"
)

MANAGERS_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}
output: OUT
streams:
  orgs:
    endpoint: organisation
    params: {organisation_id: {each: IDS}}
  managers:
    endpoint: user_statistics
    params: {username: {from: orgs.PATH}}
"""


@pytest.mark.parametrize(
    ("path", "without_managers", "reason"),
    [
        (
            "managers",
            False,
            "managers holds objects), so managers has no partitions; name one of their "
            "fields, such as managers.username.",
        ),
        (
            "managers.usrname",
            False,
            "no object in managers has usrname), so managers has no partitions; did you mean "
            "managers.username?",
        ),
        (
            "manager.username",
            False,
            "no record has manager), so managers has no partitions; did you mean "
            "managers.username?",
        ),
        (
            "slug.name",
            False,
            "slug holds text, numbers or true/false, which have no name), so managers has no "
            "partitions; check the field in its from: parameter.",
        ),
        (
            "managers.username",
            True,
            "managers is empty or null in every record), so managers has no partitions",
        ),
    ],
)
def test_from_warning_names_missing_part(
    tmp_path: Path, mock: MockServer, path: str, without_managers: bool, reason: str
) -> None:
    """The warning for a from: path that gives no value names where the path stops, and
    advises a check of the field only when the path is likely wrong, which is then a
    problem (exit 3)."""
    chosen = sorted(mock.dataset.organisations)
    if without_managers:
        chosen = [i for i in chosen if not mock.dataset.organisations[i].manager_ids][:1]
    text = MANAGERS_RECIPE.replace("IDS", str(chosen)).replace("PATH", path)
    recipe = write_recipe(tmp_path, text)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == (0 if without_managers else 3), outcome.stderr
    records_text = "1 record" if len(chosen) == 1 else f"{len(chosen)} records"
    fix = "" if without_managers else f" {FEED_FIX}"
    assert (
        f"tm-export: WARNING: managers: no string or integer value for {path} in the "
        f"{records_text} of orgs ({reason}{fix}\n"
    ) in outcome.stderr


def test_raw_path_featured_projects(tmp_path: Path, mock: MockServer) -> None:
    """The raw-path example of docs/recipes.md runs against the mock: its featured projects."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          featured:
            path: /projects/queries/featured/
            records: results
            key: projectId
            paginated: false
            auth: optional
        """,
    )
    expected = [project.id for project in mock.dataset.featured_projects()]

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    written = records(data_file(tmp_path / "out", "featured"))
    assert [record["projectId"] for record in written] == expected
    assert len(expected) >= 2


def test_raw_path_the_server_lacks_fails(tmp_path: Path, mock: MockServer) -> None:
    """A raw path with a typo gets the server's 404 for an unknown route, which fails the
    partition: it is not taken for a deleted project and skipped."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s, retries: {attempts: 1}}
        output: OUT
        streams:
          featured: {path: /projcts/queries/featured/, records: results, key: projectId}
          summaries: {endpoint: project_summary, params: {project_id: {each: [1]}}}
        """,
    )
    mock.add_fault(path=r"^/api/v2/projects/1/queries/summary/$", status=503)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3
    assert (
        f"tm-export: ERROR: featured failed: GET {mock.api_url}/projcts/queries/featured/: 404 "
        'Not Found (application/json): {"detail":"Not Found"}; the server has no such path: '
        "correct the stream's path, and run with --start-over, since the recipe changes"
    ) in outcome.stderr.splitlines()
    assert (
        "retry: once the cause is fixed, run the same command with --retry-failed to fetch the "
        "2 failed partitions again; 1 of them needs a changed recipe or the key of another "
        "user instead (their errors are in the log and in 'tm-export status'), which only "
        "--start-over takes"
    ) in outcome.stderr.splitlines()
    manifest = records(tmp_path / "out/runs/0001/manifest.jsonl")
    finals = [entry for entry in manifest if entry["t"] == "part" and entry["s"] == "featured"]
    assert [(e["state"], e["status"], e["sub_code"]) for e in finals] == [
        ("failed", 404, "Not Found")
    ]


TYPO_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
  summaries:
    endpoint: project_summary
    params: {project_id: {from: projects.FIELD}}
"""


def typo_problem(count: int) -> str:
    return (
        f"no string or integer value for projectID in the {count} records of projects "
        "(no record has projectID), so summaries has no partitions; did you mean projectId? "
        + FEED_FIX
    )


def test_from_typo_is_stream_problem(tmp_path: Path, mock: MockServer) -> None:
    """A from: field that no parent record has (a typo) leaves the child empty, and the run
    ends with a problem of the child stream in the manifest, the run record and the summary."""
    recipe = write_recipe(tmp_path, TYPO_RECIPE.replace("FIELD", "projectID"))

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3, outcome.stderr
    problem = typo_problem(len(records(data_file(tmp_path / "out", "projects"))))
    assert f"tm-export: WARNING: summaries: {problem}\n" in outcome.stderr
    assert f"problem in summaries: {problem}\n" in outcome.stderr
    assert "result: finished with problems (exit 3)" in outcome.stderr
    assert data_file(tmp_path / "out", "summaries").read_bytes() == b""
    run = tmp_path / "out" / "runs" / "0001"
    entries = [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]
    assert [e for e in entries if e["t"] == "feed"] == [
        {"t": "feed", "s": "summaries", "problem": problem}
    ]
    assert entries[-1]["t"] == "end"
    assert entries[-1]["outcome"] == "failures"
    record = json.loads((run / "run.json").read_text())
    assert record["outcome"] == "failures"
    assert record["streams"]["summaries"]["problems"] == [{"partition": None, "problem": problem}]
    assert record["streams"]["projects"]["problems"] == []


def test_from_typo_rerun_exits_3(tmp_path: Path, mock: MockServer) -> None:
    """A rerun of a finished run with a from: field problem sends nothing and exits 3 again,
    and status shows the problem."""
    recipe = write_recipe(tmp_path, TYPO_RECIPE.replace("FIELD", "projectID"))
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 3
    problem = typo_problem(len(records(data_file(tmp_path / "out", "projects"))))
    manifest = tmp_path / "out" / "runs" / "0001" / "manifest.jsonl"
    before = manifest.read_bytes()
    sent = len(mock.requests())

    rerun = run_cli(*args, "--json")
    status = run_cli("status", str(tmp_path / "out"))
    status_json = run_cli("status", str(tmp_path / "out"), "--json")

    assert rerun.exit_code == 3, rerun.stderr
    assert json.loads(rerun.stdout)["streams"]["summaries"]["problems"] == [problem]
    assert len(mock.requests()) == sent
    assert manifest.read_bytes() == before
    assert status.exit_code == 0, status.stderr
    assert "state: finished with problems" in status.stdout
    assert f"\nsummaries: {problem}\n" in status.stdout
    assert json.loads(status_json.stdout)["streams"]["summaries"]["problems"] == [problem]


def test_from_typo_recorded_once_on_retry(tmp_path: Path, mock: MockServer) -> None:
    """A --retry-failed session reads the parent's records again and finds the same from:
    field problem, which the manifest and the run record keep once."""
    text = TYPO_RECIPE.replace("FIELD", "projectID").replace(
        "{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"
    )
    text += (
        "  stats:\n    endpoint: project_statistics\n    params: {project_id: {range: [1, 2]}}\n"
    )
    recipe = write_recipe(tmp_path, text)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    mock.add_fault(path=r"^/api/v2/projects/2/statistics/$", status=500)
    first = run_cli(*args)
    mock.clear_faults()

    retried = run_cli(*args, "--retry-failed")

    assert first.exit_code == 3, first.stderr
    assert 'stats {"project_id":2} failed' in first.stderr
    assert retried.exit_code == 3, retried.stderr
    problem = typo_problem(len(records(data_file(tmp_path / "out", "projects"))))
    assert f"tm-export: WARNING: summaries: {problem}\n" in retried.stderr
    assert f"problem in summaries: {problem}\n" in retried.stderr
    assert "problem in summaries: ... and" not in retried.stderr
    run = tmp_path / "out" / "runs" / "0001"
    entries = [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]
    assert len([e for e in entries if e["t"] == "session"]) == 2
    assert [e for e in entries if e["t"] == "feed"] == [
        {"t": "feed", "s": "summaries", "problem": problem}
    ]
    record = json.loads((run / "run.json").read_text())
    assert record["streams"]["stats"]["failed"] == []
    assert record["streams"]["summaries"]["problems"] == [{"partition": None, "problem": problem}]


def test_from_values_not_ids_send_nothing(tmp_path: Path, mock: MockServer) -> None:
    """A from: field that gives dates to a project_id sends no request for them, each of
    which the server would reject with 422, and the run ends with a problem of the child."""
    recipe = write_recipe(tmp_path, TYPO_RECIPE.replace("FIELD", "dueDate"))

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3, outcome.stderr
    dates = [
        record["dueDate"]
        for record in records(data_file(tmp_path / "out", "projects"))
        if record["dueDate"] is not None
    ]
    assert len(dates) >= 2
    problems = [
        line.removeprefix("problem in summaries: ")
        for line in outcome.stderr.splitlines()
        if line.startswith("problem in summaries: ")
    ]
    assert len(problems) == 1
    head, example, tail = problems[0].split("'")
    assert (
        head
        == f"no request for {len(dates)} values of dueDate in the records of projects, such as "
    )
    assert example in dates
    assert tail == (
        ": project_id takes a TM id, a whole number of 0 or more, and the server rejects "
        "anything else with 422. " + FEED_FIX
    )
    assert f"tm-export: WARNING: summaries: {problems[0]}\n" in outcome.stderr
    assert [r["path"] for r in mock.requests() if "summary" in r["path"]] == []
    assert data_file(tmp_path / "out", "summaries").read_bytes() == b""


def test_page_cap_is_one_problem(tmp_path: Path, mock: MockServer) -> None:
    """A walk stopped by max_pages has one problem, the cap, and no integrity problem for
    the records past the cap; the run exits 3."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s, retries: {attempts: 1}}\noutput: OUT\n"
        "streams:\n"
        "  projects: {endpoint: projects, max_pages: 2}\n",
    )

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3, outcome.stderr
    pages = -(-mock.dataset.count("projects") // 14)
    assert pages > 2
    problem = (
        f"page cap reached: the server announced {pages} pages, and max_pages is 2; raise "
        "max_pages and run with --start-over to fetch the rest"
    )
    assert [line for line in outcome.stderr.splitlines() if line.startswith("problem")] == [
        f"problem in projects: {problem}"
    ]
    assert f"tm-export: WARNING: projects: {problem}" in outcome.stderr.splitlines()
    assert len(records(data_file(tmp_path / "out", "projects"))) == 28


def test_from_empty_field_is_complete(tmp_path: Path, mock: MockServer) -> None:
    """A from: field that every record has, empty, is data and not a mistake: the run warns
    and is complete."""
    chosen = [i for i, o in sorted(mock.dataset.organisations.items()) if not o.manager_ids][:1]
    text = MANAGERS_RECIPE.replace("IDS", str(chosen)).replace("PATH", "managers.username")
    recipe = write_recipe(tmp_path, text)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert "so managers has no partitions\n" in outcome.stderr
    run = tmp_path / "out" / "runs" / "0001"
    entries = [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]
    assert [e for e in entries if e["t"] == "feed"] == []
    record = json.loads((run / "run.json").read_text())
    assert record["outcome"] == "complete"
    assert record["streams"]["managers"]["problems"] == []


STATS_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  stats:
    endpoint: project_statistics
    params: {project_id: {range: [1, 5]}}
"""


def test_stopped_retry_session_is_resumed(tmp_path: Path, mock: MockServer) -> None:
    """A --retry-failed session on a finished run that stopped before its end leaves the run
    unfinished: the next run resumes it, cuts the uncommitted bytes and ends it."""
    recipe = write_recipe(tmp_path, STATS_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/3/statistics/$", status=500)
    first = run_cli("run", str(recipe), "--base-url", mock.api_url)
    run = tmp_path / "out/runs/0001"
    manifest = run / "manifest.jsonl"
    append_stopped_retry(run)
    committed = data_file(tmp_path / "out", "stats").read_bytes()
    with data_file(tmp_path / "out", "stats").open("ab") as file:
        file.write(b'{"_partition":{"project_id":3},"uncommitted":')

    status = run_cli("status", str(run))
    resumed = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert first.exit_code == 3, first.stderr
    assert (
        "state: unfinished (the run ended once, and a later session stopped before its end; "
        "run that session's command again, with its --retry-failed, to end it)"
    ) in status.stdout.splitlines()
    assert resumed.exit_code == 3, resumed.stderr
    assert f"resuming the run in {run}" in resumed.stderr
    assert data_file(tmp_path / "out", "stats").read_bytes() == committed
    ends = [line for line in manifest.read_bytes().splitlines() if b'"t":"end"' in line]
    assert len(ends) == 2
    assert "state: finished with failures" in run_cli("status", str(run)).stdout
    assert run_cli("verify", str(run)).exit_code == 0


def test_retry_without_earlier_token_refused(tmp_path: Path, mock: MockServer) -> None:
    """A session without a token does not continue a run whose earlier session sent one."""
    text = STATS_RECIPE.replace("retries:", "token_env: TM_API_TOKEN, retries:")
    recipe = write_recipe(tmp_path, text)
    token = {"TM_API_TOKEN": mock.tokens["admin"]}
    mock.add_fault(path=r"^/api/v2/projects/3/statistics/$", status=500, times=1)
    first = run_cli("run", str(recipe), "--base-url", mock.api_url, env=token)
    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    before = manifest.read_bytes()
    sent = len(mock.requests())

    anonymous = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--retry-failed", env={"TM_API_TOKEN": ""}
    )
    sent_anonymously = mock.requests()[sent:]
    without_token_env = run_cli(
        "run",
        str(write_recipe(tmp_path, STATS_RECIPE, name="plain.yaml")),
        "--base-url",
        mock.api_url,
        "--retry-failed",
        env=token,
    )
    with_token = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--retry-failed", env=token
    )

    assert first.exit_code == 3, first.stderr
    assert anonymous.exit_code == 2
    assert anonymous.stderr.splitlines()[-1] == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: 1 earlier session of this run sent "
        "an API token, and TM_API_TOKEN is not set or empty now, so this session would skip "
        "the private projects that the token could read; export TM_API_TOKEN and run the same "
        "command again, or give --start-over for an anonymous run in a new folder"
    )
    assert sent_anonymously == []
    assert without_token_env.exit_code == 2
    assert without_token_env.stderr.splitlines()[-1] == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: 1 earlier session of this run sent an "
        f"API token, but {tmp_path / 'plain.yaml'} names no instance.token_env now, so this "
        "session would skip the private projects that the token could read; put token_env "
        "back in the recipe and run the same command again"
    )
    assert with_token.exit_code == 0, with_token.stderr
    assert manifest.read_bytes().startswith(before)


def test_stopped_session_counts_earlier(tmp_path: Path, mock: MockServer) -> None:
    """A session stopped at its token check counts the partitions that earlier sessions
    finished, as status does, beside their records."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, concurrency: 1, rate_limit: 10000/s}\n"
        "output: OUT\nstreams:\n  summaries:\n    endpoint: project_summary\n"
        "    params: {project_id: {range: [1, 8]}}\n"
        "  projects: {endpoint: projects, max_pages: 1}\n",
    )
    args = ["run", str(recipe), "--base-url", mock.api_url, "--json"]
    mock.add_fault(
        path=r"^/api/v2/projects/5/queries/summary/$",
        status=429,
        headers={"Retry-After": "99999"},
    )
    assert run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]}).exit_code == 1
    mock.clear_faults()

    rejected = run_cli(*args, env={"TM_API_TOKEN": "not-a-valid-token"})

    assert rejected.exit_code == 1
    summary = orjson.loads(rejected.stdout)["streams"]["summaries"]
    assert summary["partitions"] == {"done": 4, "skipped": 0, "failed": 0}
    assert summary["records"] == 4
    assert "summaries     4        0       0        4           0" in rejected.stderr
    status = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)
    capped = orjson.loads(rejected.stdout)["streams"]["projects"]
    assert capped["problems"] == status["streams"]["projects"]["problems"]
    assert len(capped["problems"]) == 1


def test_unopenable_stream_file_summarised(tmp_path: Path, mock: MockServer) -> None:
    """A stream file that cannot be opened for writing stops the session before its first
    request, with the summary and --json of what the manifest proves."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s, retries: {attempts: 1}}\noutput: OUT\n"
        "streams:\n"
        "  summaries:\n    endpoint: project_summary\n    params: {project_id: {range: [1, 3]}}\n"
        "  projects: {endpoint: projects}\n",
    )
    args = ["run", str(recipe), "--base-url", mock.api_url, "--json"]
    mock.add_fault(path=r"^/api/v2/projects/3/queries/summary/$", status=500)
    assert run_cli(*args, "-q").exit_code == 3
    mock.clear_faults()
    mock.reset_log()
    data = tmp_path / "out/runs/0001/data"
    (data / "projects.jsonl").unlink()
    (data / "projects.jsonl").mkdir()

    outcome = run_cli(*args, "--retry-failed")

    assert outcome.exit_code == 1
    assert mock.requests() == []
    report = orjson.loads(outcome.stdout)
    assert report["fatal"] == (
        f"{data / 'projects.jsonl'}: cannot open the stream file: Is a directory. Nothing was "
        "sent; make the run folder writable (or free some space), then run the same command "
        "again to resume"
    )
    assert report["streams"]["summaries"]["partitions"] == {"done": 2, "skipped": 0, "failed": 1}
    assert report["streams"]["summaries"]["records"] == 2


def test_from_whole_record_of_strings(tmp_path: Path, mock: MockServer) -> None:
    """from: STREAM.$ takes each record itself, as countries are strings: one partition per
    country, each named in its records' _partition."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}\noutput: OUT\n"
        "streams:\n  countries: {endpoint: countries}\n  by_country:\n"
        "    endpoint: tasks_statistics\n    params:\n      country: {from: countries.$}\n"
        "      dates: {start: 2026-01-01, end: 2026-01-31}\n",
    )
    env = {"TM_API_TOKEN": mock.tokens["admin"]}

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--json", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    countries = mock.dataset.countries()
    summary = orjson.loads(outcome.stdout)["streams"]["by_country"]
    assert summary["partitions"] == {"done": len(countries), "skipped": 0, "failed": 0}
    requested = [
        parse_qs(request["query"])["country"][0]
        for request in mock.requests()
        if request["path"] == "/api/v2/tasks/statistics/"
    ]
    assert sorted(requested) == sorted(countries)
    lines = records(data_file(tmp_path / "out", "by_country"))
    assert lines
    assert {line["_partition"]["country"] for line in lines} <= set(countries)
