"""tm-export plan: partition and request counts before a run, with and without probing."""

from __future__ import annotations

import base64
import json
import math
import re
import socket
from pathlib import Path

import pytest

from tm_export.mock import MockServer
from tm_export.plan import describe_probe, plan_recipe
from tm_export.recipe import load_recipe

from .conftest import run_cli, write_recipe

RECIPE = """\
version: 1
instance: {concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {each: [1, 2, 3, 9, 12]}}
  summaries:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
  stats:
    endpoint: project_statistics
    params: {project_id: {range: [1, 6]}}
"""

STATIC_RECIPE = RECIPE.replace(
    """  summaries:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
""",
    "",
)

SEARCH_QUERY = (
    "omitMapResults=true&orderBy=id&orderByType=ASC&projectStatuses=PUBLISHED,ARCHIVED&page=1"
)

PAGINATED_NOTE = (
    "paginated, so at least one request per partition; --probe fetches page 1 of each "
    "partition to count its pages"
)


def activity_pages(mock: MockServer, project_id: int) -> int:
    """Pages of /projects/ID/activities/ at 10 a page; an empty list still costs one request."""
    return max(math.ceil(mock.dataset.count("project_activities", project_id=project_id) / 10), 1)


def search_pages(mock: MockServer) -> int:
    """Pages of the anonymous project search at 14 a page."""
    return math.ceil(mock.counts()["projects"] / 14)


def test_plan_without_probe(tmp_path: Path, mock: MockServer) -> None:
    """Static streams are counted exactly or as a lower bound; nothing is sent or written."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("plan", str(recipe))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"plan for {recipe}: 4 streams; nothing was sent",
        "stream      endpoint            partitions     requests",
        "projects    projects                     1   at least 1",
        "activities  project_activities           5   at least 5",
        "summaries   project_summary        unknown      unknown",
        "stats       project_statistics           6            6",
        "preflight                                             1",
        "total                                       at least 13",
        f"projects: {PAGINATED_NOTE}",
        f"activities: {PAGINATED_NOTE}",
        "summaries: one partition per distinct value of projects.projectId, known only once "
        "projects runs",
        "total: without the requests of summaries, known only once the parent streams run",
        "preflight: the server's heartbeat; retries are not counted",
    ]
    assert mock.requests() == []
    assert not (tmp_path / "out").exists()


def test_plan_json(tmp_path: Path) -> None:
    """--json gives every stream's counts, the preflight and the total."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("plan", str(recipe), "--json", env={"TM_API_TOKEN": "unused"})

    assert outcome.exit_code == 0, outcome.stderr
    plan = json.loads(outcome.stdout)
    assert plan["recipe"] == str(recipe)
    assert plan["probed"] is False
    assert plan["base_url"] is None
    assert plan["probe_requests"] == 0
    assert plan["shard"] is None
    assert plan["streams"] == [
        {
            "name": "projects",
            "endpoint": "projects",
            "paginated": True,
            "parent": None,
            "partitions": 1,
            "partitions_read_only": 0,
            "partitions_per_parent_value": None,
            "requests": 1,
            "requests_exact": False,
            "probe": None,
        },
        {
            "name": "activities",
            "endpoint": "project_activities",
            "paginated": True,
            "parent": None,
            "partitions": 5,
            "partitions_read_only": 0,
            "partitions_per_parent_value": None,
            "requests": 5,
            "requests_exact": False,
            "probe": None,
        },
        {
            "name": "summaries",
            "endpoint": "project_summary",
            "paginated": False,
            "parent": "projects.projectId",
            "partitions": None,
            "partitions_read_only": 0,
            "partitions_per_parent_value": 1,
            "requests": None,
            "requests_exact": False,
            "probe": None,
        },
        {
            "name": "stats",
            "endpoint": "project_statistics",
            "paginated": False,
            "parent": None,
            "partitions": 6,
            "partitions_read_only": 0,
            "partitions_per_parent_value": None,
            "requests": 6,
            "requests_exact": True,
            "probe": None,
        },
    ]
    assert plan["preflight_requests"] == 1
    assert plan["total"] == {
        "requests": 13,
        "exact": False,
        "dependent_streams": ["summaries"],
        "min_seconds": 0.0,
    }


def test_plan_token_check_counted(tmp_path: Path) -> None:
    """With the recipe's token variable set, the token is checked before the export, as one
    more preflight request, and after it."""
    recipe = write_recipe(
        tmp_path, RECIPE.replace("{concurrency: 4,", "{token_env: TM_API_TOKEN, concurrency: 4,")
    )

    outcome = run_cli("plan", str(recipe), env={"TM_API_TOKEN": "a-token"})

    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert "preflight                                             2" in lines
    assert "end check                                             1" in lines
    assert "total                                       at least 15" in lines
    assert lines[-1] == (
        "preflight: the server's heartbeat, and one token check; end check: the token checked "
        "again once the export is done; retries, the token checks that a 403 or a list that "
        "changed during its walk causes, and the project detail asked for after 500s that may "
        "mean a draft, are not counted"
    )


def test_exact_plan_with_token_equals_run(tmp_path: Path, mock: MockServer) -> None:
    """An exact plan with a token counts every request that the run then sends."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}\noutput: OUT\n"
        "streams:\n  stats:\n    endpoint: project_statistics\n"
        "    params: {project_id: {range: [1, 6]}}\n",
    )
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    plan = json.loads(run_cli("plan", str(recipe), "--json", env=env).stdout)
    assert plan["total"]["exact"] is True

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", env=env)

    assert outcome.exit_code == 0, outcome.stderr
    assert plan["total"]["requests"] == 9
    assert len(mock.requests()) == 9
    assert "requests: 9, retries: 0, authenticated: yes" in outcome.stderr


def test_plan_probe(tmp_path: Path, mock: MockServer) -> None:
    """--probe reads page 1 of each paginated partition and counts the pages it reports."""
    recipe = write_recipe(tmp_path, RECIPE)
    activities = sum(activity_pages(mock, pid) for pid in (1, 2, 3)) + 2
    total = search_pages(mock) + activities + 6 + 1

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (
        f"tm-export: probing {mock.api_url}: page 1 of 6 partitions, at most 10000 requests a "
        "second\n"
    )
    assert outcome.stdout.splitlines() == [
        f"plan for {recipe}: 4 streams; probed {mock.api_url} with 7 requests",
        "stream      endpoint            partitions     requests",
        f"projects    projects                     1  {search_pages(mock):>11}",
        f"activities  project_activities           5  {activities:>11}",
        "summaries   project_summary        unknown      unknown",
        "stats       project_statistics           6            6",
        "preflight                                             1",
        f"total                                       at least {total}",
        "projects: probed 1 partition",
        "activities: probed 5 partitions, 2 skipped (403/404)",
        "summaries: one partition per distinct value of projects.projectId, known only once "
        "projects runs",
        "total: without the requests of summaries, known only once the parent streams run",
        "preflight: the server's heartbeat; retries are not counted",
    ]
    assert sorted((r["path"], r["query"]) for r in mock.requests()) == sorted(
        [("/api/v2/system/heartbeat/", ""), ("/api/v2/projects/", SEARCH_QUERY)]
        + [(f"/api/v2/projects/{pid}/activities/", "page=1") for pid in (1, 2, 3, 9, 12)]
    )
    assert not (tmp_path / "out").exists()


def test_plan_probe_equals_run(tmp_path: Path, mock: MockServer) -> None:
    """Without dependent streams, the probed total is exactly what the run then sends."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)
    planned = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url, "--json")
    assert planned.exit_code == 0, planned.stderr
    plan = json.loads(planned.stdout)
    mock.reset_log()

    ran = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")

    assert ran.exit_code == 0, ran.stderr
    assert plan["total"]["exact"] is True
    assert plan["total"]["requests"] == len(mock.requests())
    assert plan["streams"][1]["probe"] == {
        "probed": 5,
        "not_probed": 0,
        "skipped": 2,
        "failed": 0,
        "without_page_count": 0,
        "capped": 0,
    }


def test_probe_names_capped_partitions(tmp_path: Path, mock: MockServer) -> None:
    """A probe that finds more pages than max_pages reports that the run stops at the cap."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
        "  projects: {endpoint: projects, max_pages: 2}\n",
    )

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    assert (
        "projects: probed 1 partition, 1 with more pages than max_pages, which the run stops "
        "at the cap with a problem (exit 3)"
    ) in outcome.stdout.splitlines()


def test_plan_probe_limit(tmp_path: Path, mock: MockServer) -> None:
    """Partitions past --max-probes count one request each, as a lower bound."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)

    outcome = run_cli(
        "plan", str(recipe), "--probe", "--base-url", mock.api_url, "--max-probes", "2"
    )

    assert outcome.exit_code == 0, outcome.stderr
    activities = activity_pages(mock, 1) + activity_pages(mock, 2) + 3
    lines = outcome.stdout.splitlines()
    assert f"activities  project_activities           5  {f'at least {activities}':>11}" in lines
    assert "activities: probed 2 partitions, 3 not probed (--max-probes), counted at one" in lines
    assert len(mock.requests()) == 4


def test_plan_base_url_needs_probe(tmp_path: Path) -> None:
    """--base-url without --probe exits 2 and sends nothing."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("plan", str(recipe), "--base-url", "http://127.0.0.1:9/api/v2")

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        "tm-export: error: --base-url is used only with --probe; add --probe or remove it\n"
    )


def test_plan_probe_environment_url(tmp_path: Path, mock: MockServer) -> None:
    """Without --base-url, --probe sends to TM_EXPORT_BASE_URL, as a run does."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)

    outcome = run_cli("plan", str(recipe), "--probe", env={"TM_EXPORT_BASE_URL": mock.api_url})

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (
        f"tm-export: probing {mock.api_url}: page 1 of 6 partitions, at most 10000 requests a "
        "second\n"
    )
    assert len(mock.requests()) == 7


def test_plan_probe_recipe_url(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --base-url or TM_EXPORT_BASE_URL, --probe sends to the recipe's base_url."""
    recipe = write_recipe(
        tmp_path, STATIC_RECIPE.replace("instance: {", f"instance: {{base_url: '{mock.api_url}/', ")
    )
    monkeypatch.delenv("TM_EXPORT_BASE_URL", raising=False)

    outcome = run_cli("plan", str(recipe), "--probe")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[0] == (
        f"plan for {recipe}: 3 streams; probed {mock.api_url} with 7 requests"
    )
    assert len(mock.requests()) == 7


def test_plan_probe_option_over_environment(tmp_path: Path, mock: MockServer) -> None:
    """--base-url wins over TM_EXPORT_BASE_URL, and an invalid variable is exit 2."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)
    unused = {"TM_EXPORT_BASE_URL": "http://127.0.0.1:9/api/v2"}
    invalid = {"TM_EXPORT_BASE_URL": "http://127.0.0.1:9/api/v2?page=1"}

    chosen = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url, env=unused)
    rejected = run_cli("plan", str(recipe), "--probe", env=invalid)

    assert chosen.exit_code == 0, chosen.stderr
    assert len(mock.requests()) == 7
    assert rejected.exit_code == 2
    assert rejected.stderr == (
        "tm-export: error: TM_EXPORT_BASE_URL: invalid URL 'http://127.0.0.1:9/api/v2?page=1': "
        "it has a query or a fragment; put query parameters under a stream's params; expected "
        "the API root, such as https://tasking-manager-production-api.hotosm.org/api/v2\n"
    )
    assert rejected.stdout == ""


def test_plan_probe_token_rejected(tmp_path: Path, mock: MockServer) -> None:
    """A 401 while probing stops the plan with exit 1, as it would stop the run."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/$", status=401)

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url)

    assert outcome.exit_code == 1
    error = outcome.stderr.splitlines()[-1] + "\n"
    assert error.startswith("tm-export: error: the server requires an API token (401 ")
    assert error.endswith(
        "and none was sent because the recipe sets no instance.token_env. Set it to the name of "
        "the environment variable that holds your TM API key, export that variable, and run the "
        "plan again\n"
    )


def test_plan_invalid_recipe(tmp_path: Path) -> None:
    """An invalid recipe exits 2 with the loader's message."""
    recipe = write_recipe(tmp_path, RECIPE.replace("endpoint: projects", "endpoint: projets"))

    outcome = run_cli("plan", str(recipe))

    assert outcome.exit_code == 2
    assert outcome.stderr.startswith(f"tm-export: error: {recipe}:")


def test_probe_line_gives_least_time(tmp_path: Path, mock: MockServer) -> None:
    """A probe at a polite rate prints its least duration before it starts."""
    recipe = write_recipe(
        tmp_path, STATIC_RECIPE.replace("rate_limit: 10000/s", "rate_limit: 0.5/s")
    )
    plan = plan_recipe(load_recipe(recipe), token_set=False)

    assert describe_probe(plan, mock.api_url) == (
        f"probing {mock.api_url}: page 1 of 6 partitions, at most 0.5 requests a second: 12 s or "
        "more"
    )
    assert describe_probe(plan, mock.api_url, max_probes=1) == (
        f"probing {mock.api_url}: page 1 of 2 partitions, at most 0.5 requests a second"
    )


def test_probe_line_without_paginated_partitions(tmp_path: Path, mock: MockServer) -> None:
    """A recipe with no paginated static partition gets a line without a partition count."""
    text = """\
    version: 1
    output: OUT
    streams:
      stats:
        endpoint: project_statistics
        params: {project_id: {range: [1, 6]}}
    """
    plan = plan_recipe(load_recipe(write_recipe(tmp_path, text)), token_set=False)

    assert describe_probe(plan, mock.api_url) == (
        f"nothing to probe at {mock.api_url}: no partition is both paginated and known before "
        "the run"
    )


def test_plan_probe_not_api_root(tmp_path: Path, mock: MockServer) -> None:
    """A base URL without /api/v2 stops the probe with exit 1, as it stops a run, where its
    probes would all be 404s, counted as skipped partitions."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", mock.base_url)

    assert outcome.exit_code == 1
    assert outcome.stdout == ""
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {mock.base_url}/system/heartbeat/ was not found (404), so "
        f"{mock.base_url} is not the root of a Tasking Manager API; give the URL that ends in "
        "/api/v2, then run the plan again"
    )
    assert [request["path"] for request in mock.requests()] == ["/system/heartbeat/"]


def test_plan_probe_unreachable(tmp_path: Path) -> None:
    """A server that refuses connections stops the probe with exit 1, as it stops a run."""
    recipe = write_recipe(
        tmp_path, STATIC_RECIPE.replace("instance: {", "instance: {retries: {attempts: 1}, ")
    )
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/v2"

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", url)

    assert outcome.exit_code == 1
    assert outcome.stdout == ""
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: cannot reach the Tasking Manager at {url}: GET {url}/system/heartbeat/"
        f" failed: cannot connect to 127.0.0.1:{port} (Connection refused); "
        "check the base URL and the network, then run the plan again"
    )


def test_plan_shard_probe_equals_run(tmp_path: Path, mock: MockServer) -> None:
    """Each shard's probed total is exactly what 'run --shard K/2' then sends."""
    recipe = write_recipe(tmp_path, STATIC_RECIPE)
    whole = json.loads(run_cli("plan", str(recipe), "--json").stdout)
    planned = []
    sent = []

    for index in (1, 2):
        shard = f"{index}/2"
        outcome = run_cli(
            "plan", str(recipe), "--probe", "--base-url", mock.api_url, "--shard", shard, "--json"
        )
        assert outcome.exit_code == 0, outcome.stderr
        planned.append(json.loads(outcome.stdout))
        mock.reset_log()
        output = str(tmp_path / f"shard-{index}")
        ran = run_cli(
            "run", str(recipe), "--base-url", mock.api_url, "--shard", shard, "-o", output, "-q"
        )
        assert ran.exit_code == 0, ran.stderr
        sent.append(len(mock.requests()))
        mock.reset_log()

    assert [plan["shard"] for plan in planned] == [[1, 2], [2, 2]]
    assert [plan["total"]["exact"] for plan in planned] == [True, True]
    assert [plan["total"]["requests"] for plan in planned] == sent
    for number, stream in enumerate(whole["streams"]):
        parts = [plan["streams"][number]["partitions"] for plan in planned]
        assert sum(parts) == stream["partitions"]


def test_plan_shard_reads_parent(tmp_path: Path) -> None:
    """A shard that does not write the parent stream's partition still reads it."""
    recipe = write_recipe(tmp_path, RECIPE)

    notes = []
    for index in (1, 2):
        outcome = run_cli("plan", str(recipe), "--shard", f"{index}/2")
        assert outcome.exit_code == 0, outcome.stderr
        lines = outcome.stdout.splitlines()
        assert lines[0] == f"plan for {recipe} (shard {index}/2): 4 streams; nothing was sent"
        notes += [line for line in lines if line.startswith(("projects: shard", "stats: shard"))]

    writer = 1 if "projects: shard 1/2 writes 1 of 1 partition" in notes else 2
    reader = 3 - writer
    assert f"projects: shard {writer}/2 writes 1 of 1 partition" in notes
    assert (
        f"projects: shard {reader}/2 writes 0 of 1 partition, and reads 1 that another shard "
        "writes, for the values of its child streams"
    ) in notes
    stats = sorted(int(line.split()[4]) for line in notes if line.startswith("stats"))
    assert sum(stats) == 6
    assert len(stats) == 2


def test_plan_shard_invalid(tmp_path: Path) -> None:
    """A shard that is not K/N with 1 <= K <= N is a usage error."""
    recipe = write_recipe(tmp_path, RECIPE)

    for shard in ("3/2", "\u00b9/2", "0/2", "1/"):
        outcome = run_cli("plan", str(recipe), "--shard", shard)

        assert outcome.exit_code == 2
        assert outcome.stderr.splitlines()[-1] == (
            f"Error: Invalid value for '--shard': {shard!r} is not K/N with 1 <= K <= N, e.g. 2/4"
        )


def test_plan_probe_nothing_needs_no_token(tmp_path: Path) -> None:
    """A probe with no paginated partition sends nothing, so a missing token is no error."""
    recipe = write_recipe(
        tmp_path,
        """\
version: 1
instance: {token_env: TM_API_TOKEN}
output: OUT
streams:
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2024-01-01, end: 2024-03-31, step: 1 month}
""",
    )
    url = "http://127.0.0.1:9/api/v2"

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", url, env={"TM_API_TOKEN": ""})

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (
        f"tm-export: nothing to probe at {url}: no partition is both paginated and known before "
        "the run\n"
    )
    assert outcome.stdout.splitlines()[0] == (
        f"plan for {recipe}: 1 stream; nothing was sent: nothing to probe at {url}"
    )


FEEDING_RECIPE = """\
version: 1
instance: {concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  details:
    endpoint: project
    params: {project_id: {each: [1, 2, 3, 4, 5]}}
  summaries:
    endpoint: project_summary
    params: {project_id: {from: details.projectId}}
"""


def test_plan_shard_reads_what_run_reads(tmp_path: Path, mock: MockServer) -> None:
    """A shard's plan counts every partition of a stream that feeds another, as the run
    fetches them all: those it writes and those it reads for their values."""
    recipe = write_recipe(tmp_path, FEEDING_RECIPE)

    for index in (1, 2):
        planned = run_cli("plan", str(recipe), "--shard", f"{index}/2", "--json")
        plan = json.loads(planned.stdout)
        details = plan["streams"][0]
        mock.reset_log()
        output = str(tmp_path / f"shard-{index}")
        ran = run_cli(
            "run", str(recipe), "--base-url", mock.api_url, "--shard", f"{index}/2", "-o", output
        )
        assert ran.exit_code == 0, ran.stderr
        sent = [r for r in mock.requests() if re.fullmatch(r"/api/v2/projects/\d+/", r["path"])]
        assert details["partitions"] + details["partitions_read_only"] == 5
        assert details["requests"] == len(sent) == 5


def test_plan_two_from_fields(tmp_path: Path) -> None:
    """A stream with two from: parameters gets a partition per combination in one record."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        output: OUT
        streams:
          grid:
            endpoint: project_tasks
            params: {project_id: {range: [1, 2]}}
          tasks:
            endpoint: task
            params:
              project_id: {from: grid._partition.project_id}
              task_id: {from: grid.properties.taskId}
        """,
    )

    outcome = run_cli("plan", str(recipe))

    assert outcome.exit_code == 0, outcome.stderr
    assert (
        "tasks: one partition per distinct combination of grid._partition.project_id and "
        "grid.properties.taskId in one record, known only once grid runs"
    ) in outcome.stdout.splitlines()


def test_plan_time_at_rate_limit(tmp_path: Path) -> None:
    """The time line divides the counted requests by the recipe's rate_limit."""
    recipe = write_recipe(tmp_path, RECIPE.replace("rate_limit: 10000/s", "rate_limit: 0.01/s"))

    outcome = run_cli("plan", str(recipe), "--json")
    text = run_cli("plan", str(recipe))

    assert json.loads(outcome.stdout)["total"]["min_seconds"] == 1300.0
    assert text.stdout.splitlines()[-1] == (
        "time: at least 21 min 40 s for the requests counted above, at the recipe's "
        "rate_limit of 0.01/s; retries and the server's response times add to it"
    )


def test_plan_probe_unknown_token(tmp_path: Path, mock: MockServer) -> None:
    """A token the server does not know is served anonymously on most endpoints, so the
    probe checks it first and stops with exit 1, as the run would."""
    text = STATIC_RECIPE.replace(
        "rate_limit: 10000/s}", "rate_limit: 10000/s, token_env: TM_API_TOKEN}"
    )
    recipe = write_recipe(tmp_path, text)
    unknown = base64.b64encode(b"1001.not-a-token-the-server-issued").decode()

    outcome = run_cli(
        "plan", str(recipe), "--probe", "--base-url", mock.api_url, env={"TM_API_TOKEN": unknown}
    )

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1].startswith(
        "tm-export: error: the server rejected the API token (401 "
    )
    assert [request["path"] for request in mock.requests()] == [
        "/api/v2/system/heartbeat/",
        "/api/v2/users/queries/tasks/locked/",
    ]


def test_plan_probe_counts_unknown_path_as_failed(tmp_path: Path, mock: MockServer) -> None:
    """A raw path the server has no route for is counted as failed, as a run fails it, and
    not as skipped like a deleted project."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        output: OUT
        streams:
          acts:
            path: /projects/{project_id}/activitiez/
            records: activity
            paginated: true
            params: {project_id: {range: [1, 3]}}
        """,
    )

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    assert "acts: probed 3 partitions, 3 failed, counted at one request" in (
        outcome.stdout.splitlines()
    )


def test_plan_notes_missing_token(tmp_path: Path) -> None:
    """A plan of a recipe whose stream needs a token that is not set says so, as validate
    does, since the run would stop before its first request."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {token_env: TM_API_TOKEN}
        output: OUT
        streams:
          stats:
            endpoint: tasks_statistics
            params: {dates: {start: 2026-01-01, end: 2026-03-31, step: 1 month}}
        """,
    )

    outcome = run_cli("plan", str(recipe), env={"TM_API_TOKEN": ""})

    assert outcome.exit_code == 0
    assert outcome.stderr == "note: TM_API_TOKEN is not set; 'run' needs it for stream 'stats'\n"
