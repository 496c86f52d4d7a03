"""Handlers of the endpoints outside ``/projects/``: statistics, users, organisations, lists."""

from __future__ import annotations

from datetime import date, timedelta

from aiohttp import web

from tm_export.mock import errors, views
from tm_export.mock.context import Route, caller_of, dataset_of
from tm_export.mock.errors import json_response
from tm_export.mock.model import MAPPING_LEVELS, TODAY, Organisation
from tm_export.mock.params import parse_day, path_int, query_bool, query_int

#: Longest ``/tasks/statistics/`` range, in days between the two dates.
TASK_STATS_MAX_DAYS = 366
#: Longest ``/users/statistics/`` range, although the backend's message reads "1 year".
USER_STATS_MAX_DAYS = 3 * 366

USERS_PAGE_SIZE = 20
TEAMS_PAGE_SIZE = 10


def _date_range(request: web.Request, max_days: int) -> tuple[date, date]:
    """Read ``startDate`` (required) and ``endDate`` (default TODAY) and check the range."""
    start_text = request.query.get("startDate")
    if start_text is None:
        raise errors.validation_error(errors.missing("startDate"))
    end_text = request.query.get("endDate")

    start = parse_day(start_text)
    end = TODAY if end_text is None else parse_day(end_text)
    if start is None or end is None:
        raise errors.invalid_date_value()
    if end < start:
        raise errors.invalid_date_range("Start date must be earlier than end date")
    if end - start > timedelta(days=max_days):
        raise errors.invalid_date_range("Date range cannot be greater than 1 year")
    return start, end


async def tasks_statistics(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    start, end = _date_range(request, TASK_STATS_MAX_DAYS)
    query = request.query
    organisation_id = query_int(request, "organisationId", 0) if "organisationId" in query else None

    project_ids = None
    if query.get("projectId"):
        try:
            project_ids = {int(item) for item in query["projectId"].split(",")}
        except ValueError:
            # The backend splits the ValueError text on "-" to build its error body, and that fails.
            raise errors.internal_error() from None

    projects = [
        project
        for project in ds.projects.values()
        if (project_ids is None or project.id in project_ids)
        and (organisation_id is None or project.organisation_id == organisation_id)
        and (
            not query.get("organisationName")
            or ds.organisations[project.organisation_id].name == query["organisationName"]
        )
        and (
            not query.get("campaign")
            or any(ds.campaigns[c].name == query["campaign"] for c in project.campaign_ids)
        )
        and (not query.get("country") or query["country"].lower() in project.country.lower())
    ]
    days = ds.task_stats(projects, start, end)
    items = [
        {
            "date": day.day.isoformat(),
            "mapped": day.mapped,
            "validated": day.validated,
            "badImagery": day.bad_imagery,
        }
        for day in days
    ]
    return json_response({"taskStats": items})


async def users_statistics(request: web.Request) -> web.StreamResponse:
    start, end = _date_range(request, USER_STATS_MAX_DAYS)
    return json_response(views.users_statistics(dataset_of(request), start, end))


async def user_statistics(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    username = request.match_info["username"]
    user = ds.users_by_name.get(username)
    if user is None:
        raise errors.user_not_found(username)
    return json_response(views.user_statistics(ds, user))


async def users(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    page = query_int(request, "page", 1)
    per_page = query_int(request, "perPage", USERS_PAGE_SIZE)
    paginate = query_bool(request, "pagination", True)
    level = query_int(request, "level", 0) if "level" in request.query else None
    username = request.query.get("username", "").lower()
    role = request.query.get("role")

    selected = [
        user
        for user in ds.users.values()
        if username in user.username.lower()
        and (role is None or user.role == role)
        and (level is None or MAPPING_LEVELS.index(user.mapping_level) + 1 == level)
    ]
    selected.sort(key=lambda user: user.username)
    sort_key = request.query.get("sort")
    if sort_key:
        descending = request.query.get("sort_dir", "asc").lower() == "desc"
        selected.sort(key=lambda user: (user.stats or {}).get(sort_key, 0), reverse=descending)

    if not paginate:
        return json_response(
            {"pagination": None, "users": [views.user_list_item(u) for u in selected]}
        )
    if per_page < 1 or page < 1:
        # Division by zero or a negative OFFSET in the genuine backend.
        raise errors.internal_error()
    start = (page - 1) * per_page
    return json_response(
        {
            "pagination": views.pagination(page, per_page, len(selected)),
            "users": [views.user_list_item(user) for user in selected[start : start + per_page]],
        }
    )


async def locked_tasks(request: web.Request) -> web.StreamResponse:
    user = caller_of(request).user
    assert user is not None  # the route requires a login
    return json_response(views.locked_tasks(dataset_of(request), user))


async def organisations(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    user = caller_of(request).user
    omit_stats = query_bool(request, "omitOrgStats", True)
    omit_managers = query_bool(request, "omitManagerList", False)

    selected = sorted(ds.organisations.values(), key=lambda org: org.name)
    if "manager_user_id" in request.query:
        manager_id = query_int(request, "manager_user_id", 0)
        if user is None:
            # NOTE: only the SubCode of this error is documented; its message is a guess.
            raise errors.legacy_error(
                403,
                "Unauthorized - Filter by manager_user_id is not allowed to unauthenticated requests",
                "LoginToFilterManager",
            )
        selected = [org for org in selected if manager_id in org.manager_ids]

    with_managers = user is not None and not omit_managers
    items = [views.organisation_item(ds, org, with_managers, not omit_stats) for org in selected]
    return json_response({"organisations": items})


def _organisation(request: web.Request) -> Organisation:
    ds = dataset_of(request)
    key = request.match_info["organisation_id"]
    if key.isdigit():
        found = ds.organisations.get(int(key))
    else:
        found = next((org for org in ds.organisations.values() if org.slug == key), None)
    if found is None:
        raise errors.organisation_not_found(key)
    return found


async def organisation(request: web.Request) -> web.StreamResponse:
    omit_managers = query_bool(request, "omitManagerList", False)
    body = views.organisation_detail(
        dataset_of(request), _organisation(request), caller_of(request).user, omit_managers
    )
    return json_response(body)


async def organisation_statistics(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    organisation_id = path_int(request, "organisation_id")
    found = ds.organisations.get(organisation_id)
    if found is None:
        raise errors.organisation_not_found(organisation_id)
    return json_response(views.organisation_statistics(ds, found))


async def campaigns(request: web.Request) -> web.StreamResponse:
    items = sorted(dataset_of(request).campaigns.values(), key=lambda campaign: campaign.name)
    return json_response({"campaigns": [{"id": item.id, "name": item.name} for item in items]})


async def teams(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    user = caller_of(request).user
    assert user is not None  # the route requires a login
    omit_members = query_bool(request, "omitMemberList", False)
    paginate = query_bool(request, "paginate", False)
    page = query_int(request, "page", 1)
    per_page = query_int(request, "perPage", TEAMS_PAGE_SIZE)
    query = request.query

    selected = []
    for team in sorted(ds.visible_teams(user), key=lambda team: team.name):
        members = {member.user_id for member in team.members}
        managers = {member.user_id for member in team.members if member.function == "MANAGER"}
        if query.get("team_name") and query["team_name"].lower() not in team.name.lower():
            continue
        if query.get("organisation") and str(team.organisation_id) != query["organisation"]:
            continue
        if query.get("member") and int(query["member"]) not in members:
            continue
        if query.get("manager") and int(query["manager"]) not in managers:
            continue
        selected.append(team)

    if not paginate:
        return json_response(
            {"teams": [views.team_item(ds, t, omit_members) for t in selected], "pagination": None}
        )
    start = (page - 1) * per_page
    chosen = selected[start : start + per_page]
    return json_response(
        {
            "teams": [views.team_item(ds, team, omit_members) for team in chosen],
            "pagination": views.pagination(page, per_page, len(selected)),
        }
    )


async def interests(request: web.Request) -> web.StreamResponse:
    items = [
        {
            "id": item.id,
            "name": item.name,
            "userSelected": None,
            "countProjects": None,
            "countUsers": None,
        }
        for item in sorted(dataset_of(request).interests.values(), key=lambda item: item.id)
    ]
    return json_response({"interests": items})


async def countries(request: web.Request) -> web.StreamResponse:
    return json_response({"tags": dataset_of(request).countries()})


async def licenses(request: web.Request) -> web.StreamResponse:
    items = [
        {
            "licenseId": item.id,
            "name": item.name,
            "description": item.description,
            "plainText": item.plain_text,
        }
        for item in sorted(dataset_of(request).licenses.values(), key=lambda item: item.id)
    ]
    return json_response({"licenses": items})


async def system_statistics(request: web.Request) -> web.StreamResponse:
    if not query_bool(request, "abbreviated", True):
        # The full variant of the genuine backend (v5.5.2) fails with an unhandled error.
        raise errors.internal_error()
    return json_response(views.system_statistics(dataset_of(request)))


async def system_heartbeat(request: web.Request) -> web.StreamResponse:
    release = {"version": "v5.5.2", "published_at": "2026-03-31T14:03:44"}
    return json_response({"status": "Fastapi healthy", "release": release})


ROUTES = (
    Route("/tasks/statistics/", tasks_statistics, "required"),
    Route("/users/", users, "required"),
    Route("/users/statistics/", users_statistics, "required"),
    Route("/users/queries/tasks/locked/", locked_tasks, "required"),
    Route("/users/{username}/statistics/", user_statistics, "required"),
    Route("/organisations/", organisations),
    Route("/organisations/{organisation_id}/", organisation),
    Route("/organisations/{organisation_id}/statistics/", organisation_statistics),
    Route("/campaigns/", campaigns),
    Route("/teams/", teams, "required"),
    Route("/interests/", interests),
    Route("/countries/", countries),
    Route("/licenses/", licenses),
    Route("/system/statistics/", system_statistics),
    Route("/system/heartbeat/", system_heartbeat),
)
