"""Handlers of the project endpoints: search, one project and its sub-resources.

Private and draft projects are enforced only where the genuine backend enforces them:
detail, summary, tasks, activities, latest activities and contributions. Statistics, task
detail, AOI and contributions per day return data for any existing project.
"""

from __future__ import annotations

from aiohttp import web

from tm_export.mock import errors, views
from tm_export.mock.context import Route, caller_of, dataset_of
from tm_export.mock.dataset import Dataset
from tm_export.mock.errors import ApiError, json_response
from tm_export.mock.model import Project, User
from tm_export.mock.params import path_int, query_bool, query_int, query_strtobool
from tm_export.mock.search import SEARCH_PAGE_SIZE, order, search

ACTIVITIES_PAGE_SIZE = 10


async def search_projects(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    user = caller_of(request).user
    page = query_int(request, "page", 1)
    omit_map_results = query_bool(request, "omitMapResults", False)

    matches = search(ds, user, request.query)
    if not matches:
        return json_response({"mapResults": {}, "results": []})
    if page < 1 and omit_map_results:
        # A zero or negative page becomes a negative SQL OFFSET in the genuine backend.
        raise errors.internal_error()

    start = (page - 1) * SEARCH_PAGE_SIZE
    results = matches[start : start + SEARCH_PAGE_SIZE] if page >= 1 else []
    map_results: object = []
    if not omit_map_results:
        features = [views.map_feature(project) for project in matches]
        map_results = {"type": "FeatureCollection", "features": features}
    return json_response(
        {
            "mapResults": map_results,
            "results": [views.search_item(ds, project) for project in results],
            "pagination": views.pagination(page, SEARCH_PAGE_SIZE, len(matches)),
        }
    )


async def featured_projects(request: web.Request) -> web.StreamResponse:
    """``/projects/queries/featured/``: every featured project in one response, unpaginated."""
    ds = dataset_of(request)
    results = [views.search_item(ds, project) for project in ds.featured_projects()]
    return json_response({"mapResults": [], "results": results, "pagination": None})


async def my_projects(request: web.Request) -> web.StreamResponse:
    """``/projects/queries/myself/owner/``: the caller's own projects, for managers only."""
    ds = dataset_of(request)
    user = caller_of(request).user
    assert user is not None  # the route requires a login
    if not ds.can_manage_any(user):
        raise errors.not_a_manager()

    own = [project for project in ds.projects.values() if project.author_id == user.id]
    own = order(
        ds, own, request.query.get("orderBy", "priority"), request.query.get("orderByType", "ASC")
    )
    groups = {
        "draftProjects": "DRAFT",
        "activeProjects": "PUBLISHED",
        "archivedProjects": "ARCHIVED",
    }
    body = {
        key: [views.project_summary(ds, project) for project in own if project.status == status]
        for key, status in groups.items()
    }
    return json_response(body)


async def project_detail(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    user = caller_of(request).user
    project_id = path_int(request, "project_id")
    abbreviated = query_strtobool(request, "abbreviated")
    as_file = query_strtobool(request, "as_file")

    project = ds.projects.get(project_id)
    if project is None:
        raise errors.project_detail_not_found()
    if project.status == "DRAFT" and not ds.is_manager(user, project):
        raise errors.project_not_fetched()
    if not ds.can_view(user, project):
        raise errors.private_project()

    response = json_response(views.project_detail(ds, project, abbreviated))
    if as_file:
        # NOTE: the genuine download also renames every key to snake_case; the mock keeps camelCase.
        response.headers["Content-Disposition"] = (
            f'attachment; filename="project_{project.id}.json"'
        )
    return response


def _project(ds: Dataset, request: web.Request) -> Project:
    project_id = path_int(request, "project_id")
    project = ds.projects.get(project_id)
    if project is None:
        raise errors.project_not_found(project_id)
    return project


def _check_access(ds: Dataset, user: User | None, project: Project, draft_error: ApiError) -> None:
    """Apply the sub-resource rules: login needed for private and draft projects, then rights."""
    if not project.private and project.status != "DRAFT":
        return
    if user is None:
        raise errors.private_project()
    if project.status == "DRAFT" and not ds.is_manager(user, project):
        raise draft_error
    if not ds.can_view(user, project):
        raise errors.private_project()


async def project_summary(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    # A logged-in user without rights on a draft meets an unhandled error (500) here.
    _check_access(ds, caller_of(request).user, project, errors.internal_error())
    return json_response(views.project_summary(ds, project))


async def project_aoi(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    as_file = query_bool(request, "as_file", False)
    response = json_response(views.aoi(project))
    if as_file:
        response.headers["Content-Type"] = "application/geo+json"
        response.headers["Content-Disposition"] = f'attachment; filename="{project.id}-aoi.geojson"'
    return response


async def project_tasks(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    _check_access(ds, caller_of(request).user, project, errors.project_not_fetched())
    as_file = query_bool(request, "as_file", False)

    task_ids = None
    requested = request.query.get("tasks")
    if requested:
        try:
            task_ids = {int(item) for item in requested.split(",")}
        except ValueError:
            raise errors.internal_error() from None

    response = json_response(views.tasks_collection(project, task_ids))
    if as_file:
        response.headers["Content-Type"] = "application/geo+json"
        response.headers["Content-Disposition"] = (
            f'attachment; filename="{project.id}-tasks.geojson"'
        )
    return response


async def task_detail(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project_id = path_int(request, "project_id")
    task_id = path_int(request, "task_id")
    project = ds.projects.get(project_id)
    task = next((t for t in project.tasks if t.id == task_id), None) if project else None
    if project is None or task is None:
        raise errors.task_not_found(project_id, task_id)
    return json_response(views.task_detail(ds, project, task))


async def project_contributions(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    _check_access(ds, caller_of(request).user, project, errors.internal_error())
    return json_response(views.contributions(ds, project))


async def project_contributions_per_day(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = ds.projects.get(path_int(request, "project_id"))
    if project is None:
        raise errors.project_detail_not_found()
    return json_response(views.contributions_per_day(ds, project))


async def project_activities(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    page = query_int(request, "page", 1, minimum=1)
    _check_access(ds, caller_of(request).user, project, errors.internal_error())
    return json_response(views.activities_page(ds, project, page, ACTIVITIES_PAGE_SIZE))


async def project_latest_activities(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    _check_access(ds, caller_of(request).user, project, errors.internal_error())
    return json_response(views.latest_activities(ds, project))


async def project_statistics(request: web.Request) -> web.StreamResponse:
    ds = dataset_of(request)
    project = _project(ds, request)
    return json_response(views.project_statistics(ds, project))


ROUTES = (
    Route("/projects/", search_projects, "optional"),
    Route("/projects/queries/myself/owner/", my_projects, "required"),
    Route("/projects/queries/featured/", featured_projects),
    Route("/projects/{project_id}/", project_detail, "optional"),
    Route("/projects/{project_id}/queries/summary/", project_summary, "optional"),
    Route("/projects/{project_id}/queries/aoi/", project_aoi),
    Route("/projects/{project_id}/tasks/", project_tasks, "optional"),
    Route("/projects/{project_id}/tasks/{task_id}/", task_detail),
    Route("/projects/{project_id}/contributions/", project_contributions, "optional"),
    Route("/projects/{project_id}/contributions/queries/day/", project_contributions_per_day),
    Route("/projects/{project_id}/activities/", project_activities, "optional"),
    Route("/projects/{project_id}/activities/latest/", project_latest_activities, "optional"),
    Route("/projects/{project_id}/statistics/", project_statistics),
)
