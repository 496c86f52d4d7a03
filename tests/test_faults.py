"""Server faults: gateway pages, 500s, rejected tokens, stalls, empty and overlapping pages."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from tm_export.clock import FakeClock
from tm_export.engine import TOKEN_EXPIRED_PROBLEM
from tm_export.errors import ExitCode, TokenRejectedError
from tm_export.mock import MockServer

from .conftest import data_file, export_here, run_cli, write_recipe

SEARCH = r"^/api/v2/projects/$"
CHECK = r"^/api/v2/users/queries/tasks/locked/$"

PROJECTS_RECIPE = """\
version: 1
instance:
  rate_limit: 10000/s
  retries: {attempts: 3}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
"""


def manifest_entries(output: Path, kind: str) -> list[dict[str, object]]:
    lines = (output / "runs/0001/manifest.jsonl").read_bytes().splitlines()
    return [entry for entry in map(orjson.loads, lines) if entry["t"] == kind]


def search_pages(mock: MockServer) -> list[str]:
    return [r["query"] for r in mock.requests() if r["path"] == "/api/v2/projects/"]


def page_of(query: str) -> int:
    return int(dict(part.split("=") for part in query.split("&"))["page"])


def public_count(mock: MockServer) -> int:
    return len(mock.dataset.public_project_ids())


def test_gateway_html_errors(
    tmp_path: Path, mock: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Page 2 returns 504 twice, then 200; page 3 always returns 502 and ends missing."""
    mock.add_fault(path=SEARCH, query={"page": "2"}, times=2, html=504)
    mock.add_fault(path=SEARCH, query={"page": "3"}, html=502)
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)
    clock = FakeClock()

    result = export_here(recipe, mock, clock=clock)

    assert result.exit_code() == ExitCode.FAILURES
    assert sorted(page_of(q) for q in search_pages(mock)) == [1, 2, 2, 2, 3, 3, 3]
    lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    assert len(lines) == 28
    assert len(set(lines)) == 28
    (final,) = manifest_entries(tmp_path / "out", "part")
    assert final["state"] == "failed"
    assert final["missing_pages"] == [3]
    assert final["status"] == 502
    assert final["attempts"] == 3
    assert "502 Bad Gateway The gateway did not get a valid response" in str(final["error"])
    retries = [m for m in caplog.messages if m.startswith("retrying")]
    assert len(retries) == 4
    assert (
        "504 (text/html): 504 Gateway Timeout 504 Gateway Timeout The gateway did not get"
        in retries[0]
    )
    assert not any("Traceback" in m or "JSONDecodeError" in m for m in caplog.messages)
    # Sleeps under 0.5 s are the request budget's spacing; backoff waits start at 0.5 s.
    assert len([wait for wait in clock.sleeps if wait >= 0.5]) == 4

    mock.clear_faults()
    mock.reset_log()
    again = export_here(recipe, mock, retry_failed=True)

    assert again.exit_code() == ExitCode.COMPLETE
    assert [page_of(q) for q in search_pages(mock)] == [3]
    assert len(data_file(tmp_path / "out", "projects").read_bytes().splitlines()) == public_count(
        mock
    )


def test_one_partition_always_500(tmp_path: Path, mock: MockServer) -> None:
    """49 of 50 partitions succeed; the bad one fails with status, attempts and excerpt."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s, retries: {attempts: 4}}
        output: OUT
        streams:
          stats:
            endpoint: project_statistics
            params: {project_id: {range: [1, 50]}}
        """,
    )
    with MockServer(projects=50) as server:
        server.add_fault(
            path=r"^/api/v2/projects/7/statistics/$",
            status=500,
            body="Internal Server Error",
            content_type="text/plain",
        )
        present = 50 - len([p for p in server.dataset.deleted_project_ids() if p <= 50])

        result = export_here(recipe, server)

        assert result.exit_code() == ExitCode.FAILURES
        finals = {e["p"]: e for e in manifest_entries(tmp_path / "out", "part")}
        bad = finals['{"project_id":7}']
        assert bad["state"] == "failed"
        assert bad["status"] == 500
        assert bad["attempts"] == 4
        assert "500 (text/plain): Internal Server Error" in str(bad["error"])
        done = [e for e in finals.values() if e["state"] == "done"]
        assert len(done) == present - 1
        lines = data_file(tmp_path / "out", "stats").read_bytes().splitlines()
        assert len(lines) == present - 1

        server.clear_faults()
        server.reset_log()
        again = export_here(recipe, server, retry_failed=True)

        assert again.exit_code() == ExitCode.COMPLETE
        export_paths = [r["path"] for r in server.requests() if "/statistics/" in r["path"]]
        assert export_paths == ["/api/v2/projects/7/statistics/"]
        assert len(data_file(tmp_path / "out", "stats").read_bytes().splitlines()) == present


TOKEN_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, concurrency: 1, rate_limit: 10000/s}
output: OUT
streams:
  activities:
    endpoint: project_activities
    params: {project_id: {each: [ACTIVE]}}
"""


def project_one_recipe(instance: str) -> str:
    """Return TOKEN_RECIPE for project 1 with another ``instance`` mapping."""
    return TOKEN_RECIPE.replace("ACTIVE", "1").replace(
        "{token_env: TM_API_TOKEN, concurrency: 1, rate_limit: 10000/s}", instance
    )


def test_token_rejected_mid_run(tmp_path: Path, mock: MockServer) -> None:
    """Pages 1-10 succeed, then 401: nothing retried, nothing sent after, rerun completes."""
    project = 1
    while mock.dataset.count("project_activities", project_id=project) < 125:
        mock.dataset.add_activity(project, task_id=1, action="STATE_CHANGE", text="MAPPED")
    recipe = write_recipe(tmp_path, TOKEN_RECIPE.replace("ACTIVE", str(project)))
    activities = rf"^/api/v2/projects/{project}/activities/$"
    mock.add_fault(
        path=activities,
        after=10,
        status=401,
        body={"Error": "Token is expired or invalid", "SubCode": "InvalidToken"},
    )

    result = export_here(recipe, mock, token=mock.tokens["mapper"])

    assert result.exit_code() == ExitCode.FATAL
    assert isinstance(result.fatal, TokenRejectedError)
    assert str(result.fatal) == (
        f"the server rejected the API token (401 InvalidToken at {mock.api_url}/projects/{project}/activities/"
        "?page=11): the token in TM_API_TOKEN is invalid or expired (TM tokens last 7 days). "
        "Copy a new API key from your Tasking Manager settings, export TM_API_TOKEN, and run the same "
        "command again to resume"
    )
    sent = [r for r in mock.requests() if r["path"].endswith("/activities/")]
    assert len(sent) == 11
    assert [r["status"] for r in sent].count(401) == 1
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert len(lines) == 100

    mock.clear_faults()
    again = export_here(recipe, mock, token=mock.tokens["mapper"])

    assert again.exit_code() == ExitCode.COMPLETE
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert (
        len(lines)
        == len(set(lines))
        == mock.dataset.count("project_activities", project_id=project)
    )


EXPIRING_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, concurrency: 1}
output: OUT
streams:
  details:
    endpoint: project
    params: {project_id: {range: [1, 12]}}
"""


def test_token_expiring_mid_run_stops(tmp_path: Path, mock: MockServer) -> None:
    """A token that expires during a run is served anonymously, so private project 9 returns
    403. The token check after it stops the run (exit 1), where the project would have been
    skipped for good, and the run with a renewed token fetches it. Projects 1-8, finished
    after the unknown moment of expiry, keep a problem (exit 3)."""
    recipe = write_recipe(tmp_path, EXPIRING_RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/8/$", times=1, call=lambda: mock.renew_token("admin"))

    expired = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert expired.exit_code == 1, expired.stderr
    sent = [(r["path"], r["status"]) for r in mock.requests()]
    assert ("/api/v2/projects/9/", 403) in sent
    assert sent[-1] == ("/api/v2/users/queries/tasks/locked/", 401)
    assert sent.count(("/api/v2/users/queries/tasks/locked/", 401)) == 1
    assert expired.stderr.splitlines()[-1] == (
        "tm-export: error: the server rejected the API token (401 InvalidToken at "
        f"{mock.api_url}/users/queries/tasks/locked/): the token in TM_API_TOKEN is invalid or "
        "expired (TM tokens last 7 days). Copy a new API key from your Tasking Manager settings, "
        "export TM_API_TOKEN, and run the same command again to resume"
    )
    finished = [entry["p"] for entry in manifest_entries(tmp_path / "out", "part")]
    assert '{"project_id":9}' not in finished

    anonymous = run_cli("run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": ""})
    renewed = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert anonymous.exit_code == 2
    assert anonymous.stderr.splitlines() == [
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: 1 earlier session of this run sent "
        "an API token, and TM_API_TOKEN is not set or empty now, so this session would skip "
        "the private projects that the token could read; export TM_API_TOKEN and run the same "
        "command again, or give --start-over for an anonymous run in a new folder"
    ]

    assert renewed.exit_code == 3, renewed.stderr
    assert f"problem in details: {TOKEN_EXPIRED_PROBLEM}" in renewed.stderr.splitlines()
    written = [
        orjson.loads(line)["projectId"]
        for line in data_file(tmp_path / "out", "details").read_bytes().splitlines()
    ]
    assert sorted(written) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_token_expired_before_a_one_page_list(tmp_path: Path, mock: MockServer) -> None:
    """A token that expires before a one-page project search gets the search anonymously,
    with no sign, and a later 401 stops the run. The search keeps a problem, since it may
    lack private projects, so the run that a renewed token finishes ends with exit 3."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, concurrency: 1}
        output: OUT
        streams:
          archived:
            endpoint: projects
            params: {projectStatuses: [ARCHIVED]}
          stats:
            endpoint: tasks_statistics
            params: {projectId: {from: archived.projectId}, startDate: 2026-01-01}
        """,
    )
    mock.add_fault(path=SEARCH, times=1, call=lambda: mock.renew_token("admin"))

    expired = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )
    renewed = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert expired.exit_code == 1
    assert [(r["path"], r["status"]) for r in mock.requests()][1:4] == [
        ("/api/v2/users/queries/tasks/locked/", 200),
        ("/api/v2/projects/", 200),
        ("/api/v2/tasks/statistics/", 401),
    ]
    assert (
        "tm-export: WARNING: the token expired after the check at the start, so the partitions "
        "of archived finished in this session may hold only what an anonymous user sees; with "
        "a fresh key the same command finishes the run with that problem (exit 3), and "
        "--start-over gives a complete export"
    ) in expired.stderr.splitlines()
    assert renewed.exit_code == 3, renewed.stderr
    assert f"problem in archived: {TOKEN_EXPIRED_PROBLEM}" in renewed.stderr.splitlines()


DRAFT_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 2, wait_initial: 0.01}}
output: OUT
streams:
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 6]}}
"""


def test_draft_the_user_may_not_see_skipped(tmp_path: Path, mock: MockServer) -> None:
    """The server returns a 500 for the contributions of draft project 6 to a mapper without
    rights on it. The project's detail returns 403, so the partition is skipped as a draft,
    where it would fail on every run."""
    recipe = write_recipe(tmp_path, DRAFT_RECIPE)
    assert 6 in mock.dataset.draft_project_ids()

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["other"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert "skipped partitions: 1 (403 ProjectNotFetched: 1)" in outcome.stderr.splitlines()
    sent = [(r["path"], r["status"]) for r in mock.requests() if "/projects/6/" in r["path"]]
    assert sent == [
        ("/api/v2/projects/6/contributions/", 500),
        ("/api/v2/projects/6/contributions/", 500),
        ("/api/v2/projects/6/", 403),
    ]


def test_server_error_of_a_visible_project_fails(tmp_path: Path, mock: MockServer) -> None:
    """A 500 for a project whose detail the user may read is a server error: the partition
    fails, for --retry-failed."""
    recipe = write_recipe(tmp_path, DRAFT_RECIPE.replace("[1, 6]", "[1]"))
    mock.add_fault(path=r"^/api/v2/projects/1/contributions/$", status=500)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["other"]}
    )

    assert outcome.exit_code == 3, outcome.stderr
    sent = [(r["path"], r["status"]) for r in mock.requests() if "/projects/1/" in r["path"]]
    assert sent[-1] == ("/api/v2/projects/1/", 200)


STOPPED_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, concurrency: 1, retries: {attempts: 1}}
output: OUT
streams:
  buildings:
    endpoint: projects
    params: {mappingTypes: [BUILDINGS]}
  stats:
    endpoint: tasks_statistics
    params: {projectId: {from: buildings.projectId}, startDate: 2026-01-01}
"""
STATS = r"^/api/v2/tasks/statistics/$"
LONG_WAIT = {"status": 429, "headers": {"Retry-After": "99999"}}


@pytest.mark.parametrize("unchecked_session", [False, True], ids=["next", "after-unchecked"])
def test_token_rejected_after_a_session_stopped_otherwise(
    tmp_path: Path, mock: MockServer, unchecked_session: bool
) -> None:
    """A session that read a one-page search after its token expired, then stopped for a
    long Retry-After, made no check at its end. When a later session's check at the start
    rejects the token, the search gets the problem, and the run that a fresh key finishes
    ends with exit 3 rather than complete without the private projects. A session between
    them whose check could not complete does not hide it."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    old = mock.tokens["admin"]
    # The token expires once the check at the start has accepted it.
    mock.add_fault(path=CHECK, times=1, call=lambda: mock.renew_token("admin"))
    mock.add_fault(path=STATS, times=1, **LONG_WAIT)
    assert run_cli(*args, env={"TM_API_TOKEN": old}).exit_code == 1
    mock.clear_faults()
    if unchecked_session:
        mock.add_fault(path=CHECK, times=1, status=500)
        mock.add_fault(path=STATS, times=1, **LONG_WAIT)
        assert run_cli(*args, env={"TM_API_TOKEN": old}).exit_code == 1
        mock.clear_faults()

    rejected = run_cli(*args, env={"TM_API_TOKEN": old})
    renewed = run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]})

    assert rejected.exit_code == 1
    assert (
        "tm-export: WARNING: the last session stopped before its token check at the end, and "
        "the server now rejects the token, so the partitions of buildings finished since the "
        "token was last accepted may hold only what an anonymous user sees; with a fresh key "
        "the same command finishes the run with that problem (exit 3), and --start-over gives "
        "a complete export"
    ) in rejected.stderr.splitlines()
    assert renewed.exit_code == 3, renewed.stderr
    assert f"problem in buildings: {TOKEN_EXPIRED_PROBLEM}" in renewed.stderr.splitlines()


def test_end_check_confirms_an_unchecked_start(tmp_path: Path, mock: MockServer) -> None:
    """A check at the start that could not complete leaves the session unconfirmed until
    the check at the end passes: the summary, run.json and status then all call it
    authenticated."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    mock.add_fault(path=CHECK, times=1, status=500)

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "--json",
        env={"TM_API_TOKEN": mock.tokens["admin"]},
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert orjson.loads(outcome.stdout)["authenticated"] is True
    record = orjson.loads((tmp_path / "out/runs/0001/run.json").read_bytes())
    assert record["authenticated"] is True
    assert [session["authenticated"] for session in record["sessions"]] == [True]


def test_admin_only_401_fails_its_partition(tmp_path: Path, mock: MockServer) -> None:
    """A mapper's valid token gets a 401 for a search by partnerId, which only admins may
    make. That partition fails, the rest of the run goes on with no expired-token problem,
    and --retry-failed with an admin's key finishes it."""
    recipe = write_recipe(
        tmp_path,
        STOPPED_RECIPE.replace(
            "  stats:\n    endpoint: tasks_statistics\n"
            "    params: {projectId: {from: buildings.projectId}, startDate: 2026-01-01}\n",
            "  partner:\n    endpoint: projects\n    params: {partnerId: 1}\n",
        ),
    )

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["mapper"]}
    )

    assert outcome.exit_code == 3, outcome.stderr
    assert (
        "tm-export: ERROR: partner failed: GET "
        f"{mock.api_url}/projects/?omitMapResults=true&orderBy=id&orderByType=ASC&partnerId=1"
        '&page=1: 401 (application/json): {"Error":"Only admins can search projects by '
        "partnerId, partnershipFrom or partnershipTo\"}; the token's user lacks a right this "
        "request needs: change the recipe, or use --start-over with the key of a user who has it"
    ) in outcome.stderr.splitlines()
    assert (
        "retry: the 1 failed partition needs a changed recipe or the key of another user "
        "(their errors are in the log and in 'tm-export status'), which only a new run takes: "
        "fix it and use --start-over"
    ) in outcome.stderr.splitlines()
    assert "the token expired after the check at the start" not in outcome.stderr
    status = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)
    assert status["streams"]["buildings"]["problems"] == []
    assert status["streams"]["buildings"]["records"] == 13
    assert status["streams"]["partner"]["partitions"]["failed"] == 1

    admin = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    retried = run_cli(*args, "--retry-failed", env=admin)
    started_over = run_cli(*args, "--start-over", env=admin)

    assert retried.exit_code == 2
    assert "contains a key of user 1001" in retried.stderr
    assert started_over.exit_code == 0, started_over.stderr
    assert started_over.stderr.splitlines()[-1] == "result: complete (exit 0)"


def test_expired_key_401_is_no_missing_right(tmp_path: Path, mock: MockServer) -> None:
    """A key that expires during a walk is served anonymously, so an admin's search by
    partnerId then gets the 401 of a missing right. The token check after it finds the
    expiry and stops the run (exit 1), instead of failing the partition and blaming the
    user's rights. The renewed key then finishes the run, with the expired-token problem."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, concurrency: 1}\n"
        "output: OUT\nstreams:\n  partner:\n    endpoint: projects\n"
        "    params: {partnerId: {each: [1, 2, 3]}}\n",
    )
    mock.add_fault(
        path=SEARCH, query={"partnerId": "2"}, times=1, call=lambda: mock.renew_token("admin")
    )
    args = ["run", str(recipe), "--base-url", mock.api_url]

    stopped = run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]})
    resumed = run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]})

    assert stopped.exit_code == 1
    assert "lacks a right" not in stopped.stderr
    assert stopped.stderr.splitlines()[-1].startswith(
        "tm-export: error: the server rejected the API token (401 InvalidToken at "
    )
    assert resumed.exit_code == 3, resumed.stderr
    assert resumed.stderr.splitlines()[-1] == "result: finished with problems (exit 3)"


def test_key_of_another_user_rejected(tmp_path: Path, mock: MockServer) -> None:
    """A session that resumes a run with a key of another TM user, or an incremental run
    that builds on runs with one, is rejected before anything is sent (exit 2). That user
    may not see the private projects the earlier sessions read, so the run would end
    complete with less. A renewed key of the same user is accepted."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: "
        "{attempts: 1}}\noutput: OUT\nstreams:\n  summaries:\n    endpoint: project_summary\n"
        "    params: {project_id: {each: [1, 9]}}\n",
    )
    args = ["run", str(recipe), "--base-url", mock.api_url]
    mock.add_fault(path=r"^/api/v2/projects/9/queries/summary/$", times=1, status=503)
    assert run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]}).exit_code == 3
    mock.reset_log()

    other = run_cli(*args, "--retry-failed", env={"TM_API_TOKEN": mock.tokens["other"]})
    later = run_cli(*args, "--incremental", env={"TM_API_TOKEN": mock.tokens["other"]})

    refusal = (
        "sent the API key of TM user 1001, and TM_API_TOKEN contains a key of user 2003. Users "
        "see different private projects, so this run would lack what only the other user "
        "could read, with no sign. Nothing was sent. Export a key of user 1001 (a renewed key "
        "is fine), or use --start-over for a full run with this key\n"
    )
    assert other.exit_code == 2
    assert other.stderr == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: earlier sessions of this run " + refusal
    )
    assert mock.requests() == []
    mock.renew_token("admin")
    renewed = run_cli(*args, "--retry-failed", env={"TM_API_TOKEN": mock.tokens["admin"]})
    assert renewed.exit_code == 0, renewed.stderr
    assert later.exit_code == 2
    assert later.stderr == (
        f"tm-export: error: {tmp_path / 'out'}: the runs that this run builds on " + refusal
    )
    incremental = run_cli(*args, "--incremental", env={"TM_API_TOKEN": mock.tokens["other"]})
    assert incremental.exit_code == 2
    assert not (tmp_path / "out/runs/0002").exists()


def test_rejection_reported_once(tmp_path: Path, mock: MockServer) -> None:
    """A session stopped by a rejected token reported it then. Running it again with the
    same token does not also warn that the session stopped before its check at the end."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    old = mock.tokens["admin"]
    mock.add_fault(path=CHECK, times=1, call=lambda: mock.renew_token("admin"))
    first = run_cli(*args, env={"TM_API_TOKEN": old})
    mock.clear_faults()

    again = run_cli(*args, env={"TM_API_TOKEN": old})

    assert first.exit_code == again.exit_code == 1
    assert "after the check at the start" in first.stderr
    assert "stopped before its token check at the end" not in again.stderr


def test_stopped_session_resumed_with_its_valid_token_complete(
    tmp_path: Path, mock: MockServer
) -> None:
    """A session stopped for a long Retry-After and resumed with the same token, still
    valid, ends complete: nothing is flagged."""
    recipe = write_recipe(tmp_path, STOPPED_RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    mock.add_fault(path=STATS, times=1, **LONG_WAIT)
    assert run_cli(*args, env=env).exit_code == 1
    mock.clear_faults()

    resumed = run_cli(*args, env=env)

    assert resumed.exit_code == 0, resumed.stderr


def test_token_expiring_mid_list_stops(tmp_path: Path, mock: MockServer) -> None:
    """A token that expires between two pages of the project search gets the later pages
    anonymously, with a smaller total and no 403. The token check after that change stops
    the run, and the run with a renewed token writes every project the token may see."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, concurrency: 1}\n"
        "output: OUT\nstreams:\n  projects: {endpoint: projects}\n",
    )
    mock.add_fault(
        path=SEARCH, query={"page": "2"}, times=1, call=lambda: mock.renew_token("admin")
    )

    expired = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )
    renewed = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert expired.exit_code == 1, expired.stderr
    assert "the server rejected the API token (401 InvalidToken" in expired.stderr.splitlines()[-1]
    assert renewed.exit_code == 0, renewed.stderr
    pages = manifest_entries(tmp_path / "out", "page")
    assert [(page["n"], page.get("reading", 1)) for page in pages[:3]] == [(1, 1), (2, 1), (3, 1)]
    with_token, anonymous = pages[0]["total"], pages[2]["total"]
    assert isinstance(with_token, int)
    assert isinstance(anonymous, int)
    assert with_token > anonymous
    lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
    ids = [orjson.loads(line)["projectId"] for line in lines]
    assert len(ids) == len(set(ids)) == with_token


def test_token_expiring_after_last_request_stops(tmp_path: Path, mock: MockServer) -> None:
    """A token that expires after the last export request fails the check at the end. The
    run records no end, and its message warns that partitions may hold only public data."""
    recipe = write_recipe(tmp_path, EXPIRING_RECIPE.replace("[1, 12]", "[1, 3]"))
    mock.add_fault(path=r"^/api/v2/projects/3/$", times=1, call=lambda: mock.renew_token("admin"))

    expired = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert expired.exit_code == 1, expired.stderr
    assert expired.stderr.splitlines()[-1] == (
        "tm-export: error: the server rejected the API token in the check at the end of the "
        "run, so it expired during the run, and the partitions finished after that may hold "
        "only what an anonymous user sees. Copy a new API key from your Tasking Manager "
        "settings, export TM_API_TOKEN, and run again with --start-over for a complete "
        "export; the same command finishes this run as it is, with that problem (exit 3)"
    )
    assert manifest_entries(tmp_path / "out", "end") == []
    assert [e["authenticated"] for e in manifest_entries(tmp_path / "out", "token")] == [False]
    # The end check's message is the only one: no warning of a rejection on the way.
    assert "after the check at the start" not in expired.stderr


def test_token_expired_session_not_authenticated(tmp_path: Path, mock: MockServer) -> None:
    """A session whose token the end check rejected is not called authenticated, though its
    preflight accepted the token: the run record counts only the renewed session."""
    recipe = write_recipe(tmp_path, EXPIRING_RECIPE.replace("[1, 12]", "[1, 3]"))
    mock.add_fault(path=r"^/api/v2/projects/3/$", times=1, call=lambda: mock.renew_token("admin"))
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]}).exit_code == 1

    renewed = run_cli(*args, env={"TM_API_TOKEN": mock.tokens["admin"]})

    assert renewed.exit_code == 3, renewed.stderr
    record = orjson.loads((tmp_path / "out/runs/0001/run.json").read_bytes())
    assert [session["authenticated"] for session in record["sessions"]] == [False, True]
    assert record["authenticated"] is False
    status = run_cli("status", str(tmp_path / "out"), "--json")
    assert orjson.loads(status.stdout)["authenticated"] is True


def test_valid_token_403_skips(tmp_path: Path, mock: MockServer) -> None:
    """A 403 to a token that the server still accepts (a user without rights on draft
    project 6 and private project 9) skips the partition after a token check. The checks
    are the preflight's, one after each 403 and the one at the end."""
    recipe = write_recipe(tmp_path, EXPIRING_RECIPE)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["other"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    checks = [r["status"] for r in mock.requests() if r["path"].endswith("/tasks/locked/")]
    assert checks == [200, 200, 200, 200]
    parts = manifest_entries(tmp_path / "out", "part")
    skipped = [orjson.loads(str(e["p"]))["project_id"] for e in parts if e["state"] == "skipped"]
    assert sorted(skipped) == [6, 9, 12]


def test_failed_token_check_not_checked(tmp_path: Path, mock: MockServer) -> None:
    """A token check that gets a 500 every time gives no verdict. The run goes on, and the
    summary reports the token as not checked rather than rejected."""
    recipe = write_recipe(
        tmp_path,
        TOKEN_RECIPE.replace("ACTIVE", "1").replace(
            "rate_limit", "retries: {attempts: 1}, rate_limit"
        ),
    )
    mock.add_fault(path=r"^/api/v2/users/queries/tasks/locked/$", status=500)

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": mock.tokens["admin"]}
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert "requests: 9, retries: 0, authenticated: not checked, TM release: v5.5.2" in (
        outcome.stderr.splitlines()
    )
    # The token was sent all the same, so a later run without it would miss what it read.
    mock.clear_faults()
    anonymous = run_cli("run", str(recipe), "--base-url", mock.api_url, "--incremental")
    assert anonymous.exit_code == 2
    assert "the runs that this incremental run builds on sent an API token" in anonymous.stderr


def test_recordless_body_fails_page(tmp_path: Path, mock: MockServer) -> None:
    """An empty object where a project summary belongs fails the partition, and the error
    names the response; --retry-failed then fetches it."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s, retries: {attempts: 1}}\noutput: OUT\n"
        "streams:\n  summaries:\n    endpoint: project_summary\n"
        "    params: {project_id: {each: [1, 2]}}\n",
    )
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet"]
    mock.add_fault(path=r"^/api/v2/projects/2/queries/summary/$", status=200, body={}, times=1)

    first = run_cli(*args)
    retried = run_cli(*args, "--retry-failed")

    assert first.exit_code == 3
    assert (
        f"GET {mock.api_url}/projects/2/queries/summary/: the response has no 'projectId', "
        "which identifies its record"
    ) in first.stderr
    assert retried.exit_code == 0, retried.stderr
    lines = data_file(tmp_path / "out", "summaries").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["projectId"] for line in lines) == [1, 2]


def test_recordless_body_fetched_again(tmp_path: Path, mock: MockServer) -> None:
    """A 200 whose body lacks the record, sent once, is fetched once more when retries are
    allowed: the run completes, with one retry counted."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s, retries: {attempts: 2, wait_initial: 0.01, wait_jitter: 0}}"
        "\n"
        "output: OUT\nstreams:\n  summaries:\n    endpoint: project_summary\n"
        "    params: {project_id: {each: [1, 2]}}\n",
    )
    summary = r"^/api/v2/projects/2/queries/summary/$"
    mock.add_fault(path=summary, status=200, body={}, times=1)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    assert (
        f"tm-export: WARNING: fetching again in 0.0 s: GET {mock.api_url}/projects/2/queries/"
        "summary/: the response has no 'projectId', which identifies its record"
    ) in outcome.stderr.splitlines()
    assert "requests: 4, retries: 1, authenticated: no, TM release: v5.5.2" in (
        outcome.stderr.splitlines()
    )
    lines = data_file(tmp_path / "out", "summaries").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["projectId"] for line in lines) == [1, 2]


@pytest.mark.parametrize(
    ("last", "status"),
    [({"status": 400, "body": {"Error": "bad", "SubCode": "Bad"}}, 400), ({"body": {}}, None)],
    ids=["refused", "shape"],
)
def test_failed_page_counts_every_attempt(
    tmp_path: Path, mock: MockServer, last: dict[str, Any], status: int | None
) -> None:
    """The failed partition's entry counts every request sent for its page: the retries
    before a 400, and the fetch once more after a body of another shape."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s, retries: {attempts: 3, wait_initial: 0.01, "
        "wait_jitter: 0}}\noutput: OUT\nstreams:\n  summaries:\n    endpoint: project_summary\n"
        "    params: {project_id: {each: [2]}}\n",
    )
    summary = r"^/api/v2/projects/2/queries/summary/$"
    mock.add_fault(path=summary, status=503, times=2 if status else 1)
    mock.add_fault(path=summary, **{"status": 200, **last})

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 3, outcome.stderr
    sent = [
        entry for entry in mock.requests() if entry["path"] == "/api/v2/projects/2/queries/summary/"
    ]
    assert len(sent) == 3
    entries = map(
        orjson.loads, (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes().splitlines()
    )
    failed = [entry for entry in entries if entry.get("state") == "failed"]
    assert [(entry["attempts"], entry.get("status")) for entry in failed] == [(3, status)]


def test_read_timeout_named(tmp_path: Path, mock: MockServer) -> None:
    """A request that gets no data for the read timeout fails with the setting named."""
    recipe = write_recipe(
        tmp_path,
        TOKEN_RECIPE.replace("ACTIVE", "1")
        .replace("token_env: TM_API_TOKEN, ", "")
        .replace("rate_limit", "timeouts: {read: 0.2}, retries: {attempts: 1}, rate_limit"),
    )
    mock.add_fault(path=r"^/api/v2/projects/1/activities/$", latency_ms=1000)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")

    assert outcome.exit_code == 3
    assert (
        "/projects/1/activities/?page=1 timed out: no data for 0.2 s (instance.timeouts.read)"
    ) in outcome.stderr


def test_preflight_rejects_token(tmp_path: Path, mock: MockServer) -> None:
    """A configured token that the pre-flight check rejects stops the run before any export request."""
    recipe = write_recipe(tmp_path, TOKEN_RECIPE.replace("ACTIVE", "1"))

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        env={"TM_API_TOKEN": "bm90LWEtdmFsaWQtdG9rZW4="},
    )

    assert outcome.exit_code == 1
    assert [r["path"] for r in mock.requests()] == [
        "/api/v2/system/heartbeat/",
        "/api/v2/users/queries/tasks/locked/",
    ]
    assert outcome.stderr.splitlines()[-3] == (
        "requests: 2, retries: 0, authenticated: no, TM release: v5.5.2"
    )
    assert outcome.stderr.splitlines()[-1] == (
        "tm-export: error: the server rejected the API token (401 InvalidToken at "
        f"{mock.api_url}/users/queries/tasks/locked/): the token in TM_API_TOKEN is invalid or expired "
        "(TM tokens last 7 days). Copy a new API key from your Tasking Manager settings, export "
        "TM_API_TOKEN, and run the same command again to resume"
    )


def test_rerun_after_rejected_token(tmp_path: Path, mock: MockServer) -> None:
    """A rerun after a rejected token does not call itself a resume: nothing was exported."""
    recipe = write_recipe(tmp_path, TOKEN_RECIPE.replace("ACTIVE", "1"))
    rejected = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": "bm90LXZhbGlk"}
    )
    assert rejected.exit_code == 1

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "--json",
        env={"TM_API_TOKEN": mock.tokens["admin"]},
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr.splitlines()[0] == (
        f"tm-export: INFO: continuing the run in {tmp_path / 'out/runs/0001'}: no earlier "
        "session got past the server and token check"
    )
    assert json.loads(outcome.stdout)["resumed"] is False


@pytest.mark.parametrize(
    ("instance", "because"),
    [
        (
            "{token_env: TM_API_TOKEN}",
            "TM_API_TOKEN is not set or empty. Copy an API key from your Tasking "
            "Manager settings, export TM_API_TOKEN, and run the same command again to resume",
        ),
        (
            "{}",
            "the recipe sets no instance.token_env. Set it to the name of the environment "
            "variable that holds your TM API key, export that variable, and run the same command "
            "again to resume",
        ),
    ],
)
def test_token_asked_for_without_one(
    tmp_path: Path, mock: MockServer, instance: str, because: str
) -> None:
    """A 401 to a run that sent no token names the variable to set."""
    recipe = write_recipe(tmp_path, project_one_recipe(instance))
    mock.add_fault(
        path=r"^/api/v2/projects/1/activities/$",
        status=401,
        body={"Error": "Only admins can read this"},
    )

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": ""})

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        "tm-export: error: the server requires an API token (401 at "
        f"{mock.api_url}/projects/1/activities/?page=1), and none was sent because {because}"
    )
    assert [r["path"] for r in mock.requests()] == [
        "/api/v2/system/heartbeat/",
        "/api/v2/projects/1/activities/",
    ]


@pytest.mark.parametrize(
    ("instance", "warned"), [("{token_env: TM_API_TOKEN}", True), ("{}", False)]
)
def test_unset_token_variable_warns(
    tmp_path: Path, mock: MockServer, instance: str, warned: bool
) -> None:
    """A recipe that names a token variable warns when the run goes on without it."""
    recipe = write_recipe(tmp_path, project_one_recipe(instance))

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, env={"TM_API_TOKEN": ""})

    assert outcome.exit_code == 0, outcome.stderr
    warning = (
        "tm-export: WARNING: TM_API_TOKEN is not set or empty, so this run is anonymous: private and "
        "draft projects, and data only logged-in users see, are left out\n"
    )
    assert (warning in outcome.stderr) is warned


def test_token_variable_unset(tmp_path: Path, mock: MockServer) -> None:
    """A stream that needs a token with the variable unset fails before any request, exit 2."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {token_env: TM_TEST_TOKEN_UNSET}
        output: OUT
        streams:
          stats:
            endpoint: tasks_statistics
            params: {dates: {start: 2026-01-01, end: 2026-01-31}}
        """,
    )

    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, env={"TM_TEST_TOKEN_UNSET": ""}
    )

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {recipe}:2: instance.token_env: the environment variable TM_TEST_TOKEN_UNSET "
        "is not set or empty, but stream 'stats' needs an API token; copy the API key from your Tasking "
        "Manager settings, export TM_TEST_TOKEN_UNSET=<key> and run again\n"
    )
    assert mock.requests() == []
    assert not (tmp_path / "out").exists()


def from_page_four(server: MockServer, **action: object) -> None:
    for page in range(4, 30):
        server.add_fault(path=SEARCH, query={"page": str(page)}, **action)


def test_repeated_page_stall(tmp_path: Path, mock: MockServer) -> None:
    """Page 4 and later repeat page 3 with hasNext: the walk stops, keeps 42 records, exits 3."""
    with MockServer(projects=120) as server:
        assert public_count(server) > 56
        from_page_four(server, repeat_page=3)
        recipe = write_recipe(tmp_path, PROJECTS_RECIPE)

        result = export_here(recipe, server)

        assert result.exit_code() == ExitCode.FAILURES
        lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
        assert len(lines) == 42
        problems = result.streams["projects"].problems
        assert problems[0].startswith("pagination stall: page ")
        assert len(search_pages(server)) <= 3 + 8 + 1


def test_stall_cleared_by_later_reading(tmp_path: Path, mock: MockServer) -> None:
    """A page's worth of entries added to a project's history while page 2 is requested
    makes page 2 repeat page 1. The walk stops there, and a second reading gets every
    entry, so the stall of the first reading is no problem: the run is complete."""
    project = 1
    activities = rf"^/api/v2/projects/{project}/activities/$"

    def add_a_page() -> None:
        for _ in range(10):
            mock.dataset.add_activity(project, task_id=1, action="STATE_CHANGE", text="MAPPED")

    mock.add_fault(path=activities, query={"page": "2"}, times=1, call=add_a_page)
    recipe = write_recipe(
        tmp_path,
        TOKEN_RECIPE.replace("ACTIVE", str(project)).replace("token_env: TM_API_TOKEN, ", ""),
    )

    result = export_here(recipe, mock)

    assert result.exit_code() == ExitCode.COMPLETE, result.streams["activities"].problems
    lines = data_file(tmp_path / "out", "activities").read_bytes().splitlines()
    assert (
        len(lines)
        == len(set(lines))
        == mock.dataset.count("project_activities", project_id=project)
    )
    entries = map(
        orjson.loads, (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes().splitlines()
    )
    [final] = [entry for entry in entries if entry["t"] == "part"]
    assert (final["state"], final["readings"], final.get("problems")) == ("done", 2, None)


def test_empty_pages_stop(
    tmp_path: Path, mock: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Pages 4 and later are empty with hasNext: the walk stops at the first, with a warning."""
    with MockServer(projects=120) as server:
        from_page_four(server, empty_page=True)
        recipe = write_recipe(tmp_path, PROJECTS_RECIPE)

        result = export_here(recipe, server)

        lines = data_file(tmp_path / "out", "projects").read_bytes().splitlines()
        assert len(lines) == 42
        assert any(
            "is empty although its pagination reports more pages" in m for m in caplog.messages
        )
        assert result.streams["projects"].problems == [
            f"integrity: received 42 unique records where the server announced "
            f"{public_count(server)}; run with --start-over to fetch the partition again"
        ]


def test_malformed_token_stops_run(tmp_path: Path, mock: MockServer) -> None:
    """A token the server cannot even decode (400 Invalid auth credentials) is fatal, exit 1."""
    recipe = write_recipe(tmp_path, TOKEN_RECIPE.replace("ACTIVE", "1"))

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        env={"TM_API_TOKEN": mock.tokens["admin"][:-1]},
    )

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-3] == (
        "requests: 1, retries: 0, authenticated: no, TM release: unknown"
    )
    assert outcome.stderr.splitlines()[-1] == (
        "tm-export: error: the server rejected the API token (400 Invalid auth credentials at "
        f"{mock.api_url}/system/heartbeat/): the token in TM_API_TOKEN is invalid or expired "
        "(TM tokens last 7 days). Copy a new API key from your Tasking Manager settings, export "
        "TM_API_TOKEN, and run the same command again to resume"
    )
    assert [r["path"] for r in mock.requests()] == ["/api/v2/system/heartbeat/"]


@pytest.mark.parametrize(
    ("token_env", "authenticated"), [("", "no"), ("TM_API_TOKEN", "not checked")]
)
def test_server_refusing_connections_stops_run(
    tmp_path: Path, token_env: str, authenticated: str
) -> None:
    """A base URL where nothing listens stops the run at the pre-flight request, with exit 1.

    A given token was never sent to a server, so the summary reports "not checked", not "no".
    """
    instance = "attempts: 1}" + (f"\n  token_env: {token_env}" if token_env else "")
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE.replace("attempts: 3}", instance))
    with socket.socket() as bound:
        # Bound but not listening: connections to the port are refused, and no other
        # process can take the port while the test runs.
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        api_url = f"http://127.0.0.1:{port}/api/v2"

        outcome = run_cli("run", str(recipe), "--base-url", api_url, env={"TM_API_TOKEN": "abc"})

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-3:] == [
        f"requests: 1, retries: 0, authenticated: {authenticated}, TM release: unknown",
        "result: stopped by a fatal error; once its cause is fixed, run the same command "
        "again to resume (exit 1)",
        f"tm-export: error: cannot reach the Tasking Manager at {api_url}: GET "
        f"{api_url}/system/heartbeat/ failed: cannot connect to 127.0.0.1:{port} "
        "(Connection refused); check the base URL and the network, then run the same command again to resume",
    ]


def test_response_not_http_named(tmp_path: Path) -> None:
    """A response that aiohttp's parser rejects is named as invalid HTTP on one line, not
    with aiohttp's own status 400 and the lines it quotes."""
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE.replace("attempts: 3}", "attempts: 1}"))
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\nContent-Type: application/json\r\n\r\n{}"

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        # A bound on a test that went wrong, not a wait: the request comes at once.
        listening.settimeout(30)
        port = listening.getsockname()[1]
        api_url = f"http://127.0.0.1:{port}/api/v2"

        def answer() -> None:
            connection, _ = listening.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(reply)

        server = threading.Thread(target=answer)
        server.start()
        outcome = run_cli("run", str(recipe), "--base-url", api_url)
        server.join()

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: cannot reach the Tasking Manager at {api_url}: GET "
        f"{api_url}/system/heartbeat/: the response is not valid HTTP (Invalid character in "
        "Content-Length); check the base URL and the network, then run the same command again "
        "to resume"
    )


def test_server_gone_mid_run_stops_run(tmp_path: Path, mock: MockServer) -> None:
    """A server that stops accepting connections during the run stops it (exit 1) once the
    retries are used up, with no partition failed, so the same command resumes it and
    every record is written once."""
    recipe = write_recipe(
        tmp_path,
        PROJECTS_RECIPE
        + "  details:\n    endpoint: project\n"
        + "    params: {project_id: {from: projects.projectId}, abbreviated: true}\n",
    )
    mock.add_fault(
        path=SEARCH,
        query={"page": "2"},
        times=1,
        call=lambda: threading.Thread(target=mock.stop).start(),
    )

    stopped = export_here(recipe, mock)

    assert stopped.exit_code() == ExitCode.FATAL
    assert str(stopped.fatal).startswith(
        f"cannot reach the Tasking Manager at {mock.api_url}: GET "
    )
    assert str(stopped.fatal).endswith(
        f"failed: cannot connect to 127.0.0.1:{mock.port} (Connection refused); check the base "
        "URL and the network, then run the same command again to resume"
    )
    assert [e for e in manifest_entries(tmp_path / "out", "part") if e["state"] != "done"] == []

    mock.start()
    resumed = export_here(recipe, mock)

    assert resumed.exit_code() == ExitCode.COMPLETE
    ids = sorted(mock.dataset.public_project_ids())
    for stream in ("projects", "details"):
        lines = data_file(tmp_path / "out", stream).read_bytes().splitlines()
        assert sorted(orjson.loads(line)["projectId"] for line in lines) == ids


def test_base_url_without_api_prefix_stops_run(tmp_path: Path, mock: MockServer) -> None:
    """A base URL whose heartbeat is a 404 is no API root: exit 1 before any export request."""
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.base_url)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {mock.base_url}/system/heartbeat/ was not found (404), so "
        f"{mock.base_url} is not the root of a Tasking Manager API; give the URL that ends in "
        "/api/v2, then run again"
    )
    assert [r["path"] for r in mock.requests()] == ["/system/heartbeat/"]


def test_web_page_base_url_stops_run(tmp_path: Path, mock: MockServer) -> None:
    """A heartbeat that returns HTML (a TM site's own address serves its web app on every
    path) names the base URL as no API root, after its retries, not as a server that
    cannot be reached."""
    recipe = write_recipe(
        tmp_path,
        PROJECTS_RECIPE.replace(
            "retries: {attempts: 3}", "retries: {attempts: 2, wait_initial: 0.01}"
        ),
    )
    mock.add_fault(
        path=r"^/api/v2/system/heartbeat/$",
        status=200,
        body="<html><body>app</body></html>",
        content_type="text/html",
    )
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {mock.api_url}/system/heartbeat/ returned 200 with a body that is "
        f"not JSON, so {mock.api_url} is not the root of a Tasking Manager API, or a proxy "
        "responded in its place; give the URL that ends in /api/v2, then run the same command "
        "again to resume"
    )
    assert [r["path"] for r in mock.requests()] == ["/api/v2/system/heartbeat/"] * 2


def test_redirected_base_url_stops_run(tmp_path: Path, mock: MockServer) -> None:
    """A heartbeat that redirects (http to https, say) stops the run before any export
    request, naming where it points: no request follows a redirect."""
    recipe = write_recipe(tmp_path, PROJECTS_RECIPE)
    target = "https://127.0.0.1:9/api/v2/system/heartbeat/"
    mock.add_fault(
        path=r"^/api/v2/system/heartbeat/$", status=301, headers={"Location": target}, body=""
    )
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {mock.api_url}/system/heartbeat/ returned 301, a redirect to "
        f"{target}; tm-export follows no redirects, which could carry the token elsewhere: give "
        "the base URL the server redirects to, then run again (a run begun at this URL needs "
        "--start-over)"
    )
    assert [r["path"] for r in mock.requests()] == ["/api/v2/system/heartbeat/"]
