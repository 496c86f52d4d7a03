"""The mock Tasking Manager: responses, auth matrix, pagination, counts, fault rules, command line."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tm_export.mock import Dataset, FaultRule, MockServer, serve
from tm_export.mock.generate import project_role

# The recordings and their checker live in the shared folder beside the repository (as CI
# lays it out); TM_EXPORT_SHARED names another place for a clone elsewhere.
SHARED = Path(os.environ.get("TM_EXPORT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SHAPE_CHECKER = SHARED / "tools" / "check_mock_shapes.py"

PROJECT_NOT_FOUND_12 = {
    "error": {
        "code": 404,
        "sub_code": "PROJECT_NOT_FOUND",
        "message": "The requested project was not found on the server.",
        "details": {"project_id": 12},
    }
}
PRIVATE = {"Error": "User not permitted: Private Project", "SubCode": "PrivateProject"}
NOT_FETCHED = {"Error": " Unable to fetch project", "SubCode": "ProjectNotFetched"}
NOT_AUTHENTICATED = {"detail": "Not authenticated"}
INVALID_TOKEN = {"Error": "Token is expired or invalid", "SubCode": "InvalidToken"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    server: MockServer,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> Reply:
    """Send one request with exactly the given headers; ``path`` is below the server root."""
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def api(server: MockServer, path: str, role: str | None = None, **headers: str) -> Reply:
    """GET an ``/api/v2`` path, with the token of ``role`` when given."""
    if role is not None:
        headers["Authorization"] = f"Token {server.tokens[role]}"
    return fetch(server, "/api/v2" + path, headers)


def walk(server: MockServer, path: str, records: str, role: str | None = None) -> list[Any]:
    """Follow ``pagination.hasNext`` from page 1 and return every record; at most 500 pages."""
    separator = "&" if "?" in path else "?"
    found: list[Any] = []
    for page in range(1, 501):
        body = api(server, f"{path}{separator}page={page}", role).json()
        found += body[records]
        if not body.get("pagination", {}).get("hasNext"):
            return found
    raise AssertionError(f"{path} still had pages after 500")


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer(projects=60) as running:
        yield running


@pytest.fixture(autouse=True)
def no_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Leave the shared server without fault rules after each test."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").clear_faults()


# -- conventions ---------------------------------------------------------------------------------


def test_heartbeat_body_and_headers(server: MockServer) -> None:
    reply = api(server, "/system/heartbeat/")

    assert reply.status == 200
    assert reply.body == (
        b'{"status":"Fastapi healthy","release":{"version":"v5.5.2","published_at":"2026-03-31T14:03:44"}}'
    )
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["server"] == "uvicorn"
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert "date" in reply.headers


def test_missing_slash_redirects_307(server: MockServer) -> None:
    reply = fetch(server, "/api/v2/projects?page=2")

    assert reply.status == 307
    assert reply.headers["location"] == server.base_url + "/api/v2/projects/?page=2"


def test_unknown_route_404(server: MockServer) -> None:
    for path in ("/api/v2/nothing/", "/api/v2/nothing", "/elsewhere"):
        reply = fetch(server, path)
        assert reply.status == 404, path
        assert reply.json() == {"detail": "Not Found"}, path


def test_other_method_405(server: MockServer) -> None:
    reply = fetch(server, "/api/v2/projects/", method="POST", body=b"{}")

    assert reply.status == 405
    assert reply.json() == {"detail": "Method Not Allowed"}


def test_non_integer_ids_422(server: MockServer) -> None:
    reply = api(server, "/projects/abc/")

    assert reply.status == 422
    assert reply.json() == {
        "detail": [
            {
                "type": "int_parsing",
                "loc": ["path", "project_id"],
                "msg": "Input should be a valid integer, unable to parse string as an integer",
                "input": "abc",
                "url": "https://errors.pydantic.dev/2.5/v/int_parsing",
            }
        ]
    }
    assert api(server, "/projects/1/tasks/x/").json()["detail"][0]["loc"] == ["path", "task_id"]


def test_invalid_page_422(server: MockServer) -> None:
    reply = api(server, "/projects/?page=abc")

    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["query", "page"]
    assert reply.json()["detail"][0]["input"] == "abc"


# -- project search ------------------------------------------------------------------------------


def test_search_pages_of_14(server: MockServer) -> None:
    published = [
        p for p in server.dataset.projects.values() if p.status == "PUBLISHED" and not p.private
    ]
    pages = -(-len(published) // 14)

    first = api(server, "/projects/?omitMapResults=true").json()
    last = api(server, f"/projects/?omitMapResults=true&page={pages}").json()
    beyond = api(server, f"/projects/?omitMapResults=true&page={pages + 1}").json()

    assert len(first["results"]) == 14
    assert first["pagination"] == {
        "hasNext": True,
        "hasPrev": False,
        "nextNum": 2,
        "page": 1,
        "pages": pages,
        "prevNum": None,
        "perPage": 14,
        "total": len(published),
    }
    assert len(last["results"]) == len(published) - 14 * (pages - 1)
    assert last["pagination"]["hasNext"] is False
    assert last["pagination"]["nextNum"] is None
    assert beyond["results"] == []
    assert beyond["pagination"] == {
        "hasNext": False,
        "hasPrev": True,
        "nextNum": None,
        "page": pages + 1,
        "pages": pages,
        "prevNum": pages,
        "perPage": 14,
        "total": len(published),
    }


def test_search_default_priority_order(server: MockServer) -> None:
    results = walk(server, "/projects/?omitMapResults=true", "results")
    rank = {"URGENT": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}

    keys = [(rank[item["priority"]], -item["projectId"]) for item in results]

    assert keys == sorted(keys)
    assert {item["status"] for item in results} == {"PUBLISHED"}


def test_search_order_by_id(server: MockServer) -> None:
    ascending = walk(server, "/projects/?omitMapResults=true&orderBy=id&orderByType=ASC", "results")
    descending = walk(
        server, "/projects/?omitMapResults=true&orderBy=id&orderByType=DESC", "results"
    )

    ids = [item["projectId"] for item in ascending]
    assert ids == sorted(ids)
    assert [item["projectId"] for item in descending] == ids[::-1]


def test_search_map_results_all_matches(server: MockServer) -> None:
    full = api(server, "/projects/?page=2").json()
    omitted = api(server, "/projects/?page=2&omitMapResults=true").json()

    assert full["mapResults"]["type"] == "FeatureCollection"
    assert len(full["mapResults"]["features"]) == full["pagination"]["total"]
    assert omitted["mapResults"] == []
    assert omitted["results"] == full["results"]


def test_search_empty_match_body(server: MockServer) -> None:
    reply = api(server, "/projects/?textSearch=no-such-place-anywhere")

    assert reply.status == 200
    assert reply.body == b'{"mapResults":{},"results":[]}'


def test_search_statuses_by_caller(server: MockServer) -> None:
    query = "/projects/?projectStatuses=PUBLISHED,DRAFT,ARCHIVED&omitMapResults=true"
    anonymous = walk(server, query, "results")
    admin = walk(server, query, "results", role="admin")
    drafts = set(server.dataset.draft_project_ids())
    private = set(server.dataset.private_project_ids())

    anonymous_ids = {item["projectId"] for item in anonymous}
    assert anonymous_ids == set(server.dataset.public_project_ids())
    assert not anonymous_ids & (drafts | private)
    assert {item["projectId"] for item in admin} == set(server.dataset.projects)
    assert api(server, "/projects/?projectStatuses=OPEN").status == 400


def test_search_sandbox_database_imagery(server: MockServer) -> None:
    """sandbox filters only when given, database only together with it, and imagery=custom
    keeps the projects whose imagery is a https:// URL; no seeded project is either."""
    every = walk(server, "/projects/?omitMapResults=true", "results")

    def count(query: str) -> int:
        return len(walk(server, f"/projects/?omitMapResults=true&{query}", "results"))

    assert count("sandbox=true") == 0
    assert count("sandbox=false") == len(every)
    assert count("sandbox=false&database=OSM") == len(every)
    assert count("sandbox=false&database=OTHER") == 0
    assert count("database=OTHER") == len(every)
    assert count("imagery=custom") == 0
    assert api(server, "/projects/?sandbox=maybe").status == 422


def test_search_text_in_descriptions(server: MockServer) -> None:
    """textSearch matches a whole word of the short description or description, besides a
    part of the name."""
    every = walk(server, "/projects/?omitMapResults=true", "results")
    project = server.dataset.projects[every[0]["projectId"]]

    responders = walk(server, "/projects/?omitMapResults=true&textSearch=responders", "results")
    city = walk(
        server, f"/projects/?omitMapResults=true&textSearch={project.city.split()[0]}", "results"
    )

    assert len(responders) == len(every)
    assert project.id in {item["projectId"] for item in city}
    assert api(server, "/projects/?textSearch=respond").json() == {"mapResults": {}, "results": []}
    assert api(server, "/projects/?textSearch=.").json() == {"mapResults": {}, "results": []}


def test_tasks_in_stored_order(server: MockServer) -> None:
    """Tasks come in the order the backend's table stores them, not sorted: those never changed by id,
    then the others by their last change, in both the tasks list and the project detail."""
    project = server.dataset.projects[1]
    changed: list[int] = []
    for entry in sorted(project.history, key=lambda entry: entry.when):
        if entry.task_id in changed:
            changed.remove(entry.task_id)
        changed.append(entry.task_id)
    untouched = sorted(task.id for task in project.tasks if task.id not in changed)

    tasks = api(server, "/projects/1/tasks/").json()["features"]
    detail = api(server, "/projects/1/").json()["tasks"]["features"]

    ids = [feature["properties"]["taskId"] for feature in tasks]
    assert ids == untouched + changed
    assert ids != sorted(ids)
    assert [feature["properties"]["taskId"] for feature in detail] == ids


def test_search_last_updated_window(server: MockServer) -> None:
    query = "/projects/?omitMapResults=true&lastUpdatedFrom=2026-06-01&lastUpdatedTo=2026-09-01"
    results = walk(server, query, "results")
    expected = {
        p.id
        for p in server.dataset.projects.values()
        if p.status == "PUBLISHED"
        and not p.private
        and datetime(2026, 6, 1) <= p.last_updated <= datetime(2026, 9, 1)
    }

    assert {item["projectId"] for item in results} == expected
    assert expected
    assert api(server, "/projects/?lastUpdatedFrom=June").status == 400


# -- project sub-resources -----------------------------------------------------------------------


def test_activities_pagination_objects(server: MockServer) -> None:
    project = max(server.dataset.projects.values(), key=lambda p: len(server.dataset.activities(p)))
    total = len(server.dataset.activities(project))
    pages = -(-total // 10)
    path = f"/projects/{project.id}/activities/"
    assert pages >= 3

    middle = api(server, f"{path}?page=2").json()
    beyond = api(server, f"{path}?page={pages + 1}").json()
    walked = walk(server, path, "activity")

    assert middle["pagination"] == {
        "hasNext": True,
        "hasPrev": True,
        "nextNum": 3,
        "page": 2,
        "pages": pages,
        "prevNum": 1,
        "perPage": 10,
        "total": total,
    }
    assert len(middle["activity"]) == 10
    assert beyond["activity"] == []
    assert beyond["pagination"]["prevNum"] == pages
    assert len(walked) == total
    assert len({item["historyId"] for item in walked}) == total
    assert "COMMENT" not in {item["action"] for item in walked}
    dates = [item["actionDate"] for item in walked]
    assert dates == sorted(dates, reverse=True)
    assert api(server, f"{path}?page=0").status == 422


def test_activities_empty_pagination(server: MockServer) -> None:
    project = next(p for p in server.dataset.projects.values() if p.status == "DRAFT")

    body = api(server, f"/projects/{project.id}/activities/", "admin").json()

    assert body == {
        "pagination": {
            "hasNext": False,
            "hasPrev": False,
            "nextNum": None,
            "page": 1,
            "pages": 0,
            "prevNum": None,
            "perPage": 10,
            "total": 0,
        },
        "activity": [],
    }


def test_task_detail_full_history(server: MockServer) -> None:
    project = server.dataset.projects[1]
    task = next(t for t in project.tasks if t.status == "VALIDATED")

    body = api(server, f"/projects/1/tasks/{task.id}/").json()

    assert body["taskStatus"] == "VALIDATED"
    assert body["taskHistory"][0]["actionText"] == "VALIDATED"
    assert {item["taskId"] for item in body["taskHistory"]} == {None}
    assert body["lastUpdated"].endswith("+00:00Z")
    missing = api(server, "/projects/1/tasks/999/")
    assert missing.status == 404
    assert missing.json()["error"]["sub_code"] == "TASK_NOT_FOUND"


def test_locked_task_of_other(server: MockServer) -> None:
    assert api(server, "/users/queries/tasks/locked/", "other").json() == {
        "lockedTasks": [5],
        "projectId": 2,
        "taskStatus": "LOCKED_FOR_MAPPING",
    }
    assert api(server, "/users/queries/tasks/locked/", "admin").json() == {
        "lockedTasks": [],
        "projectId": None,
        "taskStatus": None,
    }


def test_private_project_rules(server: MockServer) -> None:
    for path in (
        "/",
        "/tasks/",
        "/contributions/",
        "/activities/",
        "/activities/latest/",
        "/queries/summary/",
    ):
        reply = api(server, f"/projects/9{path}")
        assert reply.status == 403, path
        assert reply.json() == PRIVATE, path
    assert api(server, "/projects/9/", "other").json() == PRIVATE
    assert api(server, "/projects/9/", "mapper").status == 200
    assert api(server, "/projects/9/", "admin").status == 200
    assert api(server, "/projects/9/statistics/").status == 200
    assert api(server, "/projects/9/contributions/queries/day/").status == 200


def test_draft_project_rules(server: MockServer) -> None:
    assert api(server, "/projects/6/").json() == NOT_FETCHED
    assert api(server, "/projects/6/tasks/").json() == PRIVATE
    assert api(server, "/projects/6/", "other").json() == NOT_FETCHED
    assert api(server, "/projects/6/tasks/", "other").json() == NOT_FETCHED
    summary = api(server, "/projects/6/queries/summary/", "other")
    assert summary.status == 500
    assert summary.body == b"Internal Server Error"
    assert api(server, "/projects/6/", "admin").status == 200
    assert api(server, "/projects/6/statistics/").status == 200


def test_deleted_project_404s(server: MockServer) -> None:
    detail = api(server, "/projects/12/")
    assert detail.status == 404
    assert detail.json() == {
        "error": {
            "code": 404,
            "sub_code": "Project not found",
            "message": "Project not found",
            "details": {},
        }
    }
    for path in ("/tasks/", "/contributions/", "/activities/", "/statistics/", "/queries/summary/"):
        reply = api(server, f"/projects/12{path}", "admin")
        assert reply.status == 404, path
        assert reply.json() == PROJECT_NOT_FOUND_12, path


# -- statistics and users ------------------------------------------------------------------------


def test_tasks_statistics_date_rules(server: MockServer) -> None:
    missing = api(server, "/tasks/statistics/", "admin")
    reversed_range = api(
        server, "/tasks/statistics/?startDate=2026-12-04&endDate=2026-08-01", "admin"
    )
    too_long = api(server, "/tasks/statistics/?startDate=2025-01-01&endDate=2026-01-03", "admin")
    longest = api(server, "/tasks/statistics/?startDate=2026-01-01&endDate=2027-01-02", "admin")

    assert missing.status == 422
    assert missing.json()["detail"][0]["type"] == "missing"
    assert missing.json()["detail"][0]["loc"] == ["query", "startDate"]
    assert reversed_range.status == 400
    assert reversed_range.json() == {
        "Error": " Start date must be earlier than end date",
        "SubCode": "InvalidDateRange",
    }
    assert too_long.status == 400
    assert too_long.json()["SubCode"] == "InvalidDateRange"
    assert longest.status == 200


def test_tasks_statistics_project_filter(server: MockServer) -> None:
    window = "startDate=2026-01-01&endDate=2026-12-31"
    everything = api(server, f"/tasks/statistics/?{window}", "mapper").json()["taskStats"]
    project_1 = api(server, f"/tasks/statistics/?{window}&projectId=1", "mapper").json()[
        "taskStats"
    ]

    mapped_1 = sum(
        1
        for e in server.dataset.projects[1].history
        if e.action == "STATE_CHANGE" and e.text == "MAPPED"
    )
    assert len(everything) == server.counts()["tasks_statistics"]
    assert sum(day["mapped"] for day in project_1) == mapped_1
    assert list(everything[0]) == ["date", "mapped", "validated", "badImagery"]


def test_users_pages_and_float_ids(server: MockServer) -> None:
    first = api(server, "/users/", "admin").json()
    small = api(server, "/users/?perPage=7&page=2", "admin").json()
    everyone = api(server, "/users/?pagination=false", "admin").json()

    assert first["pagination"]["perPage"] == 20
    assert first["pagination"]["total"] == len(server.dataset.users)
    assert len(first["users"]) == 20
    assert isinstance(first["users"][0]["id"], float)
    assert small["pagination"]["page"] == 2
    assert len(small["users"]) == 7
    assert small["users"][0] == everyone["users"][7]
    assert everyone["pagination"] is None


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/", 403),
        ("/tasks/statistics/?startDate=2026-08-01&endDate=2026-12-04", 403),
        ("/projects/queries/myself/owner/", 403),
        ("/projects/", 200),
        ("/projects/1/", 200),
        ("/projects/1/statistics/", 200),
    ],
)
def test_auth_without_header(server: MockServer, path: str, expected: int) -> None:
    reply = api(server, path)

    assert reply.status == expected
    if expected == 403:
        assert reply.json() == NOT_AUTHENTICATED


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/", 401),
        ("/users/queries/tasks/locked/", 401),
        ("/projects/", 200),
        ("/projects/1/activities/", 200),
        ("/projects/1/statistics/", 200),
    ],
)
def test_auth_unknown_token(server: MockServer, path: str, expected: int) -> None:
    reply = api(server, path, Authorization="Token bm90LWEtdmFsaWQtdG9rZW4=")

    assert reply.status == expected
    if expected == 401:
        assert reply.json() == INVALID_TOKEN
        assert reply.headers["www-authenticate"] == "Bearer"


def test_auth_unknown_token_anonymous(server: MockServer) -> None:
    reply = api(server, "/projects/9/", Authorization="Token bm90LWEtdmFsaWQtdG9rZW4=")

    assert reply.status == 403
    assert reply.json() == PRIVATE


@pytest.mark.parametrize("value", ["", "Token", "Token abcde", "Token abc", "Token a b"])
def test_auth_malformed_header_400(server: MockServer, value: str) -> None:
    for path in (
        "/api/v2/projects/1/statistics/",
        "/api/v2/system/heartbeat/",
        "/api/v2/no-such-path/",
    ):
        reply = fetch(server, path, {"Authorization": value})
        assert reply.status == 400, path
        assert reply.body == b"Invalid auth credentials", path
        assert reply.headers["content-type"].startswith("text/plain"), path


def test_auth_wrong_scheme(server: MockServer) -> None:
    bearer = {"Authorization": "Bearer xyz"}

    assert api(server, "/projects/1/statistics/", **bearer).status == 200
    reply = api(server, "/users/", **bearer)
    assert reply.status == 401
    assert reply.json()["error"]["message"] == "Invalid authentication scheme"


def test_auth_managers_only_owner_list(server: MockServer) -> None:
    rejected = api(server, "/projects/queries/myself/owner/", "mapper")
    admin = api(server, "/projects/queries/myself/owner/", "admin").json()

    assert rejected.status == 403
    assert rejected.json()["SubCode"] == "UserPermissionError"
    assert list(admin) == ["draftProjects", "activeProjects", "archivedProjects"]
    assert {p["status"] for p in admin["draftProjects"]} == {"DRAFT"}


# -- dataset and counts --------------------------------------------------------------------------


def test_dataset_roles_by_id() -> None:
    dataset = Dataset(projects=120, seed=3)

    assert [project_role(pid) for pid in (1, 2, 4, 6, 9, 12)] == [
        "public",
        "public",
        "archived",
        "draft",
        "private",
        "deleted",
    ]
    assert dataset.deleted_project_ids() == [12, 62, 112]
    assert dataset.projects[4].status == "ARCHIVED"
    assert dataset.projects[6].status == "DRAFT"
    assert dataset.projects[9].private
    assert dataset.projects[9].allowed_user_ids == (2001, 2002)
    assert dataset.users[1001].username == "tm_admin"
    assert dataset.users[2003].username == "mapper_chen"
    assert 99999 not in dataset.projects


def test_dataset_same_seed_same_data() -> None:
    first, second, other = Dataset(50, seed=7), Dataset(50, seed=7), Dataset(50, seed=8)

    assert first.counts() == second.counts()
    assert [p.last_updated for p in first.projects.values()] == [
        p.last_updated for p in second.projects.values()
    ]
    assert [p.last_updated for p in first.projects.values()] != [
        p.last_updated for p in other.projects.values()
    ]


def test_dataset_five_thousand_projects() -> None:
    counts = Dataset(projects=5000).counts()

    assert counts["projects"] == 4600
    assert counts["users"] > 500
    assert counts["project_activities"] > counts["project_tasks"]


def test_counts_match_http_walk() -> None:
    """Walk every catalog endpoint over HTTP and compare with the counts computed directly."""
    with MockServer(projects=30, seed=2) as server:
        expected = server.counts()
        found: dict[str, int] = dict.fromkeys(expected, 0)

        query = "/projects/?projectStatuses=PUBLISHED,ARCHIVED&omitMapResults=true&orderBy=id&orderByType=ASC"
        projects = walk(server, query, "results")
        found["projects"] = len(projects)
        for item in projects:
            base = f"/projects/{item['projectId']}"
            for name in ("project", "project_summary", "project_aoi", "project_statistics"):
                path = {
                    "project": "/",
                    "project_summary": "/queries/summary/",
                    "project_aoi": "/queries/aoi/",
                    "project_statistics": "/statistics/",
                }[name]
                found[name] += api(server, base + path).status == 200
            tasks = api(server, base + "/tasks/").json()["features"]
            found["project_tasks"] += len(tasks)
            for task in tasks:
                found["task"] += (
                    api(server, f"{base}/tasks/{task['properties']['taskId']}/").status == 200
                )
            found["project_contributions"] += len(
                api(server, base + "/contributions/").json()["userContributions"]
            )
            found["project_contributions_per_day"] += len(
                api(server, base + "/contributions/queries/day/").json()["stats"]
            )
            found["project_activities"] += len(walk(server, base + "/activities/", "activity"))
            found["project_latest_activities"] += len(
                api(server, base + "/activities/latest/").json()["activity"]
            )

        window = "/tasks/statistics/?startDate=2026-01-01&endDate=2026-12-31"
        found["tasks_statistics"] = len(api(server, window, "admin").json()["taskStats"])
        users = walk(server, "/users/", "users", role="admin")
        found["users"] = len(users)
        found["user_statistics"] = sum(
            api(server, f"/users/{user['username']}/statistics/", "admin").status == 200
            for user in users
        )
        organisations = api(server, "/organisations/").json()["organisations"]
        found["organisations"] = len(organisations)
        for organisation in organisations:
            found["organisation"] += (
                api(server, f"/organisations/{organisation['organisationId']}/").status == 200
            )
            found["organisation_statistics"] += (
                api(server, f"/organisations/{organisation['organisationId']}/statistics/").status
                == 200
            )
        found["campaigns"] = len(api(server, "/campaigns/").json()["campaigns"])
        found["teams"] = len(api(server, "/teams/", "admin").json()["teams"])
        found["interests"] = len(api(server, "/interests/").json()["interests"])
        found["countries"] = len(api(server, "/countries/").json()["tags"])
        found["licenses"] = len(api(server, "/licenses/").json()["licenses"])
        found["users_statistics"] = (
            api(server, "/users/statistics/?startDate=2026-01-01", "admin").status == 200
        )
        found["system_statistics"] = api(server, "/system/statistics/").status == 200
        found["system_heartbeat"] = api(server, "/system/heartbeat/").status == 200

        assert found == expected
        assert fetch(server, "/__mock__/counts").json() == expected


def test_admin_counts_include_private(server: MockServer) -> None:
    query = "/projects/?projectStatuses=PUBLISHED,ARCHIVED&omitMapResults=true"
    listed = walk(server, query, "results", role="admin")
    admin = server.counts(role="admin")
    tasks = sum(
        len(api(server, f"/projects/{item['projectId']}/tasks/", "admin").json()["features"])
        for item in listed
    )

    assert admin["projects"] == len(listed)
    assert admin["projects"] == server.counts()["projects"] + len(
        server.dataset.private_project_ids()
    )
    assert admin["project_tasks"] == tasks
    assert admin["teams"] == len(api(server, "/teams/", "admin").json()["teams"])
    assert server.counts(role="other")["teams"] == len(
        api(server, "/teams/", "other").json()["teams"]
    )
    assert fetch(server, "/__mock__/counts?role=admin").json() == admin
    assert fetch(server, "/__mock__/counts?role=root").status == 400
    with pytest.raises(ValueError, match="invalid role"):
        server.counts(role="root")


def test_counts_follow_mutations() -> None:
    with MockServer(projects=30) as server:
        before = server.counts()
        project_id = server.dataset.public_project_ids()[0]
        server.dataset.add_activity(
            project_id, task_id=1, text="VALIDATED", username="validator_gus"
        )
        server.dataset.touch_project(project_id, datetime(2026, 12, 20, 8, 0, 0, 123456))
        server.dataset.delete_project(server.dataset.public_project_ids()[-1])

        after = server.counts()
        search = api(server, "/projects/?omitMapResults=true&lastUpdatedFrom=2026-12-10").json()

        assert after["projects"] == before["projects"] - 1
        assert [item["projectId"] for item in search["results"]] == [project_id]
        assert search["results"][0]["lastUpdated"] == "2026-12-20T08:00:00.123456Z"
        task = api(server, f"/projects/{project_id}/tasks/1/").json()
        assert task["taskStatus"] == "VALIDATED"
        assert task["taskHistory"][0]["actionBy"] == "validator_gus"


# -- request log and control endpoints -----------------------------------------------------------


def test_request_log_roles_no_tokens() -> None:
    with MockServer(projects=20) as server:
        api(server, "/projects/1/")
        api(server, "/users/", "admin")
        api(server, "/users/", Authorization="Token bm90LWEtdmFsaWQtdG9rZW4=")
        fetch(server, "/__mock__/counts")

        entries = server.requests()
        over_http = fetch(server, "/__mock__/requests").json()

        assert [(e["path"], e["status"], e["user"]) for e in entries] == [
            ("/api/v2/projects/1/", 200, "anonymous"),
            ("/api/v2/users/", 200, "admin"),
            ("/api/v2/users/", 401, "anonymous"),
        ]
        assert over_http == {"total": 3, "requests": entries}
        assert server.tokens["admin"] not in json.dumps(entries)
        assert fetch(server, "/__mock__/reset-log", method="POST").json() == {"removed": 3}
        assert server.requests() == []
        assert server.request_count == 3


def test_data_changes_over_http() -> None:
    """Touching, adding history to and deleting a project change what the API serves."""
    with MockServer(projects=20) as server:
        before = api(server, "/projects/1/").json()["lastUpdated"]

        touched = fetch(server, "/__mock__/projects/1/touch", method="POST").json()
        added = fetch(server, "/__mock__/projects/1/activities", method="POST").json()
        newest = api(server, "/projects/1/activities/").json()["activity"][0]
        deleted = fetch(server, "/__mock__/projects/1", method="DELETE").json()
        unknown = fetch(server, "/__mock__/projects/999/touch", method="POST")

        assert sorted(touched) == ["lastUpdated", "projectId"]
        assert touched["projectId"] == 1
        assert touched["lastUpdated"] > before
        assert added == {"projectId": 1, "historyId": newest["historyId"]}
        assert deleted == {"deleted": 1}
        assert api(server, "/projects/1/").status == 404
        assert unknown.status == 404
        assert unknown.json() == {"error": "project 999 not found"}
        assert server.requests()[-1]["path"] == "/api/v2/projects/1/"


# -- fault rules ---------------------------------------------------------------------------------


def test_fault_status_window(server: MockServer) -> None:
    server.add_fault(
        path="^/api/v2/projects/$",
        query={"page": "2"},
        after=1,
        times=2,
        status=503,
        headers={"Retry-After": "2"},
    )
    statuses = [api(server, "/projects/?page=2").status for _ in range(4)]
    other_page = api(server, "/projects/?page=3")
    faulted = api(server, "/projects/?page=2&omitMapResults=true")

    assert statuses == [200, 503, 503, 200]
    assert other_page.status == 200
    assert faulted.status == 200  # the rule's window has passed
    assert server.faults()[0]["matched"] == 5
    assert server.faults()[0]["applied"] == 2


def test_fault_status_body_and_header(server: MockServer) -> None:
    server.add_fault(
        path="/statistics/$", status=429, body={"Error": "slow down"}, headers={"Retry-After": "3"}
    )

    reply = api(server, "/projects/1/statistics/")

    assert reply.status == 429
    assert reply.json() == {"Error": "slow down"}
    assert reply.headers["retry-after"] == "3"


def test_fault_html_gateway_page(server: MockServer) -> None:
    server.add_fault(path="/projects/1/$", html=504)

    reply = api(server, "/projects/1/")

    assert reply.status == 504
    assert reply.headers["content-type"] == "text/html"
    assert b"504 Gateway Timeout" in reply.body


def test_fault_reset_drops_connection(server: MockServer) -> None:
    server.add_fault(path="/projects/1/tasks/$", reset=True, times=1)

    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        api(server, "/projects/1/tasks/")
    assert api(server, "/projects/1/tasks/").status == 200


def test_fault_truncate_half_body(server: MockServer) -> None:
    server.add_fault(path="/projects/1/$", truncate=True)
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request("GET", "/api/v2/projects/1/")
        response = connection.getresponse()
        declared = int(response.getheader("content-length") or 0)
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
    finally:
        connection.close()

    assert response.status == 200
    assert len(caught.value.partial) == declared // 2


def test_fault_repeat_page(server: MockServer) -> None:
    first = api(server, "/projects/?omitMapResults=true").json()
    server.add_fault(path="^/api/v2/projects/$", query={"page": "2"}, repeat_page=1)

    repeated = api(server, "/projects/?omitMapResults=true&page=2").json()

    assert repeated["results"] == first["results"]
    assert repeated["pagination"]["page"] == 2
    assert repeated["pagination"]["hasNext"] is True
    assert repeated["pagination"]["nextNum"] == 3


def test_fault_empty_page(server: MockServer) -> None:
    server.add_fault(path="/activities/$", empty_page=True)

    body = api(server, "/projects/1/activities/").json()

    assert body["activity"] == []
    assert body["pagination"]["hasNext"] is True
    assert body["pagination"]["nextNum"] == 2


def test_fault_echo_headers(server: MockServer) -> None:
    server.add_fault(path="/users/", echo_headers=True)

    reply = api(server, "/users/", "admin")

    assert reply.status == 500
    assert reply.json()["headers"]["Authorization"] == f"Token {server.tokens['admin']}"


def test_fault_latency_then_normal(server: MockServer) -> None:
    server.add_fault(path="/countries/", latency_ms=20, times=1)

    reply = api(server, "/countries/")

    assert reply.status == 200
    assert server.requests()[-1]["fault"] == "latency_ms"


def test_fault_kill_child_process(server: MockServer) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        server.add_fault(path="/campaigns/", kill=child.pid)
        reply = api(server, "/campaigns/")
        returncode = child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert returncode == -signal.SIGKILL
    assert reply.status == 200


def test_fault_rules_over_http(server: MockServer) -> None:
    rules = [{"path": "/licenses/", "status": 502}, {"path": "/interests/", "empty_page": True}]

    added = fetch(server, "/__mock__/faults", method="POST", body=json.dumps(rules).encode())
    licenses = api(server, "/licenses/")
    listed = fetch(server, "/__mock__/faults").json()["rules"]
    bad = fetch(server, "/__mock__/faults", method="POST", body=b'{"path": "x", "explode": true}')
    cleared = fetch(server, "/__mock__/faults", method="DELETE").json()

    assert added.json() == {"added": 2, "rules": 2}
    assert licenses.status == 502
    assert [rule["applied"] for rule in listed] == [1, 0]
    assert bad.status == 400
    assert cleared == {"removed": 2}
    assert api(server, "/licenses/").status == 200


@pytest.mark.parametrize(
    "rule",
    [
        {"path": "x", "kill": 1},
        {"path": "x", "kill": os.getpid()},
        {"path": "x", "status": 700},
        {"path": "x", "status": 500, "html": 502},
        {"path": "x", "colour": "red", "status": 500},
        {"path": "("},
        {"path": "x"},
    ],
    ids=["init", "own-pid", "bad-status", "two-actions", "unknown-key", "bad-regex", "no-action"],
)
def test_fault_rule_rejected(rule: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultRule.from_json(rule)


def test_faults_given_at_construction() -> None:
    with MockServer(
        projects=20, faults=[{"path": "/heartbeat/", "status": 503, "times": 1}]
    ) as server:
        assert api(server, "/system/heartbeat/").status == 503
        assert api(server, "/system/heartbeat/").status == 200


# -- command line and the recorded shapes --------------------------------------------------------


def test_serve_rejects_public_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        serve(host="0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        MockServer(projects=1, host="example.org")


def test_serve_banner_and_ready_file(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    command = [
        sys.executable,
        "-m",
        "tm_export.mock",
        "--projects",
        "20",
        "--ready-file",
        str(ready),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = dict(process.stdout.readline().strip().split(": ", 1) for _ in range(5))
        described = json.loads(ready.read_text())
        port = int(urlsplit(banner["base_url"]).port or 0)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request(
            "GET", "/api/v2/users/", headers={"Authorization": f"Token {banner['admin']}"}
        )
        status = connection.getresponse().status
        connection.close()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    assert list(banner) == ["base_url", "api_url", "admin", "mapper", "other"]
    assert described == {
        "base_url": banner["base_url"],
        "api_url": banner["api_url"],
        "tokens": {"admin": banner["admin"], "mapper": banner["mapper"], "other": banner["other"]},
    }
    assert banner["api_url"] == banner["base_url"] + "/api/v2"
    assert status == 200
    assert returncode == 0


def test_shape_checker_66_matched() -> None:
    if not SHAPE_CHECKER.is_file():
        pytest.skip(f"the recorded-shape checker is not at {SHAPE_CHECKER}")
    with MockServer() as server:
        tokens = server.tokens
        result = subprocess.run(
            [
                sys.executable,
                str(SHAPE_CHECKER),
                "--base-url",
                server.base_url,
                "--admin-token",
                tokens["admin"],
                "--mapper-token",
                tokens["mapper"],
                "--other-token",
                tokens["other"],
                "--strict",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert result.returncode == 0, result.stdout
    assert (
        "66 compared, 66 matched, 0 differ, 0 skipped (no token given)"
        in result.stdout.splitlines()
    )
