"""The endpoint catalog: every Tasking Manager GET endpoint a recipe can name.

Each entry records what tm-export must know to walk the endpoint without the user
reading the API source: the path template, where the records are in the body, the
key that identifies a record, how it paginates, whether it needs a token, the
defaults that make a walk stable, and the limits of its date-range parameters.
Facts come from the TM backend at v5.5.2 (FastAPI) and from recorded responses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Auth = Literal["none", "optional", "required"]

#: ``records`` value for endpoints whose whole body is one record.
WHOLE_BODY = "$"


@dataclass(frozen=True, slots=True)
class DateWindow:
    """The pair of query parameters that bound a date range, and the longest range accepted."""

    start_param: str
    end_param: str
    max_days: int | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One GET endpoint of the Tasking Manager API."""

    name: str
    path: str
    """Path template below the base URL, with ``{name}`` path parameters and a trailing slash."""
    records: str
    """Top-level key of the record list, ``features`` for GeoJSON, or ``$`` for the whole body."""
    key: str | None
    """Dotted path of the field that identifies a record, ``$`` for the record itself, or None
    when a partition has exactly one record."""
    summary: str
    auth: Auth = "none"
    paginated: bool = False
    """True when the endpoint takes ``page`` and returns TM's ``pagination`` object."""
    query_params: frozenset[str] = frozenset()
    required_params: frozenset[str] = frozenset()
    """Query parameters without which the server rejects a request (422)."""
    defaults: Mapping[str, str] = field(default_factory=dict)
    window: DateWindow | None = None
    rejected_params: Mapping[str, str] = field(default_factory=dict)
    """Query parameters the server takes but a recipe may not set, each with the reason."""

    @property
    def path_params(self) -> tuple[str, ...]:
        """Names of the parameters in the path template, in order."""
        return tuple(re.findall(r"{(\w+)}", self.path))

    @property
    def raw(self) -> bool:
        """True for an endpoint made from a stream's own ``path``, which the catalog does not know."""
        return self.name.startswith("path:")

    def takes_id(self, name: str) -> bool:
        """Tell whether parameter ``name`` is a numeric TM id: an ``_id`` path parameter of a
        catalog endpoint. A raw path's parameters can be anything."""
        return not self.raw and name in self.path_params and name.endswith("_id")

    @property
    def accepted_params(self) -> frozenset[str]:
        """Every parameter name a recipe may set for this endpoint."""
        names = set(self.query_params) | set(self.path_params)
        if self.window is not None:
            names |= {"dates", self.window.start_param, self.window.end_param}
        # The engine owns paging; a recipe never sets the page number itself.
        names.discard("page")
        return frozenset(names)


#: Project search parameters whose upper bound the server compares with midnight at the
#: start of the given day, and the record field each one bounds. A date window bound to
#: one of them sends the day after its last day, and drops the records of that next day's
#: first instant, which the next window holds.
#: NOTE: search results carry no creation time (``creationDate`` is null), so a project
#: created at the very midnight between two ``createdTo`` windows is written by both.
DAY_START_UPPER_BOUNDS = {"createdTo": "created", "lastUpdatedTo": "lastUpdated"}

_PROJECT_SEARCH_PARAMS = frozenset(
    {
        "action",
        "basedOnMyInterests",
        "campaign",
        "country",
        "createdByMe",
        "createdFrom",
        "createdTo",
        "database",
        "difficulty",
        "favoritedByMe",
        "imagery",
        "interests",
        "lastUpdatedFrom",
        "lastUpdatedTo",
        "managedByMe",
        "mappedByMe",
        "mappingTypes",
        "mappingTypesExact",
        "omitMapResults",
        "orderBy",
        "orderByType",
        "organisationId",
        "organisationName",
        "partnerId",
        "partnershipFrom",
        "partnershipTo",
        "projectStatuses",
        "sandbox",
        "teamId",
        "textSearch",
    }
)

_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        name="projects",
        path="/projects/",
        records="results",
        key="projectId",
        summary="Project search, 14 projects a page; anonymous callers see public projects only.",
        auth="optional",
        paginated=True,
        query_params=_PROJECT_SEARCH_PARAMS,
        # omitMapResults keeps every page from repeating all matching centroids, and the
        # id order keeps the walk stable while projects are edited.
        defaults={"omitMapResults": "true", "orderBy": "id", "orderByType": "ASC"},
    ),
    Endpoint(
        name="project",
        path="/projects/{project_id}/",
        records=WHOLE_BODY,
        key="projectId",
        summary="Project detail with AOI and every task geometry.",
        auth="optional",
        query_params=frozenset({"abbreviated"}),
        rejected_params={
            "as_file": "as_file=true makes the server rename every key of the project to "
            "snake_case, so the records would lack projectId; remove it, the record holds the "
            "same data without it",
        },
    ),
    Endpoint(
        name="project_summary",
        path="/projects/{project_id}/queries/summary/",
        records=WHOLE_BODY,
        key="projectId",
        summary="Project metadata without AOI or tasks; the lightest full-metadata call.",
        auth="optional",
    ),
    Endpoint(
        name="project_aoi",
        path="/projects/{project_id}/queries/aoi/",
        records=WHOLE_BODY,
        key=None,
        summary="Area of interest of a project as a bare GeoJSON geometry.",
        query_params=frozenset({"as_file"}),
    ),
    Endpoint(
        name="project_tasks",
        path="/projects/{project_id}/tasks/",
        records="features",
        key="properties.taskId",
        summary="Task grid of a project as GeoJSON features, with status and user ids.",
        auth="optional",
        query_params=frozenset({"tasks", "as_file"}),
    ),
    Endpoint(
        name="task",
        path="/projects/{project_id}/tasks/{task_id}/",
        records=WHOLE_BODY,
        key="taskId",
        summary="One task with its full history, comments included.",
    ),
    Endpoint(
        name="project_contributions",
        path="/projects/{project_id}/contributions/",
        records="userContributions",
        key="username",
        summary="Per-user mapped, validated and bad-imagery counts of a project.",
        auth="optional",
    ),
    Endpoint(
        name="project_contributions_per_day",
        path="/projects/{project_id}/contributions/queries/day/",
        records="stats",
        key="date",
        summary="Mapped and validated tasks per day of a project, with running totals.",
    ),
    Endpoint(
        name="project_activities",
        path="/projects/{project_id}/activities/",
        records="activity",
        key="historyId",
        summary="Task history of a project without comments, newest first, 10 a page.",
        auth="optional",
        paginated=True,
    ),
    Endpoint(
        name="project_latest_activities",
        path="/projects/{project_id}/activities/latest/",
        records="activity",
        key="taskId",
        summary="Latest action on each task of a project.",
        auth="optional",
    ),
    Endpoint(
        name="project_statistics",
        path="/projects/{project_id}/statistics/",
        records=WHOLE_BODY,
        key="projectId",
        summary="Area, time spent, mappers and percentages of a project (cached 10 min).",
    ),
    Endpoint(
        name="tasks_statistics",
        path="/tasks/statistics/",
        records="taskStats",
        key="date",
        summary="Tasks mapped, validated and marked bad imagery per day; at most 366 days a call.",
        auth="required",
        query_params=frozenset(
            {
                "startDate",
                "endDate",
                "organisationId",
                "organisationName",
                "campaign",
                "projectId",
                "country",
            }
        ),
        required_params=frozenset({"startDate"}),
        window=DateWindow("startDate", "endDate", max_days=366),
    ),
    Endpoint(
        name="users_statistics",
        path="/users/statistics/",
        records=WHOLE_BODY,
        key=None,
        summary="Users registered in a date range, by level and gender; at most 1098 days a call.",
        auth="required",
        query_params=frozenset({"startDate", "endDate"}),
        required_params=frozenset({"startDate"}),
        window=DateWindow("startDate", "endDate", max_days=3 * 366),
    ),
    Endpoint(
        name="user_statistics",
        path="/users/{username}/statistics/",
        records=WHOLE_BODY,
        key=None,
        summary="Time spent, tasks and countries of one user.",
        auth="required",
    ),
    Endpoint(
        name="users",
        path="/users/",
        records="users",
        key="id",
        summary="Registered users with their stats, 20 a page by default.",
        auth="required",
        paginated=True,
        query_params=frozenset({"perPage", "username", "role", "level", "sort", "sort_dir"}),
    ),
    Endpoint(
        name="organisations",
        path="/organisations/",
        records="organisations",
        key="organisationId",
        summary="All organisations, sorted by name.",
        query_params=frozenset({"omitOrgStats", "omitManagerList", "manager_user_id"}),
    ),
    Endpoint(
        name="organisation",
        path="/organisations/{organisation_id}/",
        records=WHOLE_BODY,
        key="organisationId",
        summary="One organisation with its managers and public teams.",
        query_params=frozenset({"omitManagerList"}),
    ),
    Endpoint(
        name="organisation_statistics",
        path="/organisations/{organisation_id}/statistics/",
        records=WHOLE_BODY,
        key=None,
        summary="Project counts and active task counts of one organisation.",
    ),
    Endpoint(
        name="campaigns",
        path="/campaigns/",
        records="campaigns",
        key="id",
        summary="All campaigns, sorted by name.",
    ),
    Endpoint(
        name="teams",
        path="/teams/",
        records="teams",
        key="teamId",
        summary="All teams visible to the token's user, with member lists.",
        auth="required",
        query_params=frozenset(
            {
                "team_name",
                "member",
                "manager",
                "member_request",
                "team_role",
                "organisation",
                "omitMemberList",
                "fullMemberList",
            }
        ),
    ),
    Endpoint(
        name="interests",
        path="/interests/",
        records="interests",
        key="id",
        summary="Mapping interests (topics) that projects and users pick.",
    ),
    Endpoint(
        name="countries",
        path="/countries/",
        records="tags",
        key=WHOLE_BODY,
        summary="Distinct country names used by projects; each record is a string.",
    ),
    Endpoint(
        name="licenses",
        path="/licenses/",
        records="licenses",
        key="licenseId",
        summary="Imagery licenses that projects can require.",
    ),
    Endpoint(
        name="system_statistics",
        path="/system/statistics/",
        records=WHOLE_BODY,
        key=None,
        summary="Platform totals: mappers online, tasks mapped, projects (cached 10 min).",
        query_params=frozenset({"abbreviated"}),
    ),
    Endpoint(
        name="system_heartbeat",
        path="/system/heartbeat/",
        records=WHOLE_BODY,
        key=None,
        summary="Server health and the TM release it runs.",
    ),
)

CATALOG: Mapping[str, Endpoint] = {endpoint.name: endpoint for endpoint in _ENDPOINTS}

#: An endpoint that needs a token and costs the server little, used to check a token before a run.
TOKEN_CHECK_PATH = "/users/queries/tasks/locked/"
