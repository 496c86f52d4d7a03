"""JSON bodies of the mock Tasking Manager, built from dataset records.

Each function returns a dict whose keys come in the order the genuine backend (v5.5.2) emits
them, with the same JSON types. Date-times use the format of the endpoint that shows them:
``iso_z`` (search, activities), ``iso_ms_z`` (project detail), ``iso_naive`` (summary, users) or
``iso_offset_z`` (task detail).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from tm_export.mock.dataset import Dataset
from tm_export.mock.model import (
    MAPPING_LEVELS,
    TODAY,
    HistoryEntry,
    Organisation,
    Project,
    Task,
    Team,
    User,
    tile_corner,
)

JSON = dict[str, Any]

#: Seconds a lock lasts before the Tasking Manager releases it (its recorded ``autoUnlockSeconds``).
AUTO_UNLOCK_SECONDS = 2592000


# -- formats ----------------------------------------------------------------------------------


def iso_z(moment: datetime | None) -> str | None:
    """Format a naive UTC datetime with microseconds and a ``Z`` suffix."""
    return None if moment is None else moment.isoformat() + "Z"


def iso_ms_z(moment: datetime | None) -> str | None:
    """Format with the fraction cut to milliseconds but printed with 6 digits, then ``Z``."""
    if moment is None:
        return None
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000).isoformat() + "Z"


def iso_naive(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def iso_offset_z(moment: datetime | None) -> str | None:
    """Format with both ``+00:00`` and ``Z``, as the task detail does."""
    return None if moment is None else moment.isoformat() + "+00:00Z"


def pagination(page: int, per_page: int, total: int) -> JSON:
    """Build the Tasking Manager pagination object; ``pages`` is 0 when ``total`` is 0."""
    pages = math.ceil(total / per_page) if per_page > 0 else 0
    has_next = page < pages
    has_prev = page > 1
    return {
        "hasNext": has_next,
        "hasPrev": has_prev,
        "nextNum": page + 1 if has_next else None,
        "page": page,
        "pages": pages,
        "prevNum": page - 1 if has_prev else None,
        "perPage": per_page,
        "total": total,
    }


def seconds_of(duration: str | None) -> float:
    """Parse a lock duration ``HH:MM:SS.ffffff`` into seconds; 0 for a lock still held."""
    if not duration:
        return 0.0
    hours, minutes, seconds = duration.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# -- shared pieces ----------------------------------------------------------------------------


def _square(west: float, south: float, east: float, north: float) -> JSON:
    ring = [[west, north], [east, north], [east, south], [west, south], [west, north]]
    return {"type": "MultiPolygon", "coordinates": [[ring]]}


def aoi(project: Project) -> JSON:
    """Return the area of interest: the rectangle around the task grid."""
    return _square(*project.bbox())


def _point(project: Project) -> JSON:
    return {"type": "Point", "coordinates": list(project.centroid())}


def project_info(project: Project) -> JSON:
    return {
        "locale": "en",
        "name": project.name,
        "shortDescription": f"<p>Help map {project.city} for local responders.</p>",
        "description": f"<p>Trace features around {project.city}, {project.country}.</p>",
        "instructions": "<p>Trace every building and road visible on the imagery.</p>",
        "perTaskInstructions": "",
    }


def _campaigns(ds: Dataset, project: Project, full: bool) -> list[JSON]:
    items = []
    for campaign_id in project.campaign_ids:
        item: JSON = {"id": campaign_id, "name": ds.campaigns[campaign_id].name}
        if full:
            item.update(logo=None, url=None, description=None, organisations=None)
        items.append(item)
    return items


def _teams(ds: Dataset, project: Project) -> list[JSON]:
    return [
        {"teamId": team_id, "name": ds.teams[team_id].name, "role": role}
        for team_id, role in project.team_roles
    ]


def _allowed_usernames(ds: Dataset, project: Project) -> list[str]:
    return [ds.users[user_id].username for user_id in project.allowed_user_ids]


def _active_mappers(project: Project) -> int:
    return len({task.locked_by for task in project.tasks if task.locked_by is not None})


def _organisation_fields(ds: Dataset, project: Project) -> JSON:
    organisation = ds.organisations[project.organisation_id]
    return {
        "organisation": organisation.id,
        "organisationName": organisation.name,
        "organisationSlug": organisation.slug,
        "organisationLogo": None,
    }


def area_km2(project: Project) -> float:
    """Return the area of the project rectangle in square kilometres (equirectangular)."""
    west, south, east, north = project.bbox()
    middle = math.radians((south + north) / 2)
    return (east - west) * 111.320 * math.cos(middle) * (north - south) * 110.574


# -- projects ---------------------------------------------------------------------------------


def search_item(ds: Dataset, project: Project) -> JSON:
    """Return one ``results`` item of project search."""
    percent_mapped, percent_validated, _bad = ds.percentages(project)
    return {
        "projectId": project.id,
        "locale": "en",
        "name": project.name,
        "shortDescription": project_info(project)["shortDescription"],
        "difficulty": project.difficulty,
        "priority": project.priority,
        "organisationName": ds.organisations[project.organisation_id].name,
        "organisationLogo": None,
        "campaigns": _campaigns(ds, project, full=False),
        "percentMapped": percent_mapped,
        "percentValidated": percent_validated,
        "status": project.status,
        "activeMappers": _active_mappers(project),
        "lastUpdated": iso_z(project.last_updated),
        "dueDate": iso_z(project.due_date),
        "totalContributors": len({entry.user_id for entry in project.history}),
        "country": [project.country],
        "sandbox": project.sandbox,
        "database": project.database,
        "creationDate": None,
        "author": ds.users[project.author_id].username,
        "partnerNames": None,
        "totalAreaSquareKilometers": None,
    }


def map_feature(project: Project) -> JSON:
    """Return one ``mapResults`` feature: the project centroid and its priority."""
    return {
        "type": "Feature",
        "geometry": _point(project),
        "properties": {"projectId": project.id, "priority": project.priority},
    }


def task_feature(project: Project, task: Task, abbreviated: bool = False) -> JSON:
    """Return a task as a GeoJSON feature; abbreviated ones have no geometry and 6 properties."""
    properties: JSON = {
        "taskId": task.id,
        "taskX": task.x,
        "taskY": task.y,
        "taskZoom": 16,
        "taskIsSquare": True,
        "taskStatus": task.status,
    }
    if abbreviated:
        return {"type": "Feature", "geometry": None, "properties": properties}

    properties.update(
        lockedBy=task.locked_by, mappedBy=task.mapped_by, validatedBy=task.validated_by
    )
    west, north = tile_corner(task.x, task.y)
    east, south = tile_corner(task.x + 1, task.y + 1)
    return {
        "type": "Feature",
        "geometry": _square(west, south, east, north),
        "properties": properties,
    }


def stored_order(project: Project) -> list[Task]:
    """Return the project's tasks in the order the backend's table gives them: the tasks
    never changed by id, then the others by the time of their last change.

    The backend does not sort tasks, and PostgreSQL writes a changed row anew at the end of
    its table, so clients must not expect ids in order.
    """
    changed: dict[int, datetime] = {}
    for entry in project.history:
        changed[entry.task_id] = max(entry.when, changed.get(entry.task_id, entry.when))
    return sorted(
        project.tasks,
        key=lambda task: (task.id in changed, changed.get(task.id, datetime.min), task.id),
    )


def tasks_collection(project: Project, task_ids: set[int] | None = None) -> JSON:
    """Return the task grid as a FeatureCollection, optionally only some task ids."""
    features = [
        task_feature(project, task)
        for task in stored_order(project)
        if task_ids is None or task.id in task_ids
    ]
    return {"type": "FeatureCollection", "features": features}


def project_detail(ds: Dataset, project: Project, abbreviated: bool) -> JSON:
    """Return the body of ``GET /projects/{id}/``."""
    percent_mapped, percent_validated, percent_bad = ds.percentages(project)
    info = project_info(project)
    return {
        "projectId": project.id,
        "status": project.status,
        "projectPriority": project.priority,
        "areaOfInterest": aoi(project),
        "aoiBBOX": list(project.bbox()),
        "tasks": {
            "type": "FeatureCollection",
            "features": [
                task_feature(project, task, abbreviated) for task in stored_order(project)
            ],
        },
        "defaultLocale": "en",
        "projectInfo": info,
        "projectInfoLocales": [info],
        "difficulty": project.difficulty,
        "mappingPermission": "ANY",
        "mappingPermissionLevelId": 1,
        "validationPermission": "ANY",
        "validationPermissionLevelId": 1,
        "enforceRandomTaskSelection": False,
        "private": project.private,
        "changesetComment": f"#hotosm-project-{project.id}",
        "osmchaFilterId": None,
        "dueDate": iso_ms_z(project.due_date),
        "imagery": project.imagery,
        "josmPreset": None,
        "idPresets": [],
        "extraIdParams": None,
        "rapidPowerUser": False,
        "sandbox": project.sandbox,
        "mappingTypes": list(project.mapping_types),
        "campaigns": _campaigns(ds, project, full=False),
        **_organisation_fields(ds, project),
        "countryTag": [project.country],
        "licenseId": project.license_id,
        "allowedUsernames": _allowed_usernames(ds, project),
        "priorityAreas": None,
        "created": iso_ms_z(project.created),
        "lastUpdated": iso_ms_z(project.last_updated),
        "author": ds.users[project.author_id].username,
        "database": project.database,
        "activeMappers": _active_mappers(project),
        "percentMapped": percent_mapped,
        "percentValidated": percent_validated,
        "percentBadImagery": percent_bad,
        "taskCreationMode": "GRID",
        "teams": _teams(ds, project),
        "mappingEditors": ["ID", "JOSM"],
        "validationEditors": ["ID", "JOSM"],
        "customEditor": None,
        "interests": [
            {
                "id": interest_id,
                "name": ds.interests[interest_id].name,
                "userSelected": None,
                "countProjects": None,
                "countUsers": None,
            }
            for interest_id in project.interest_ids
        ],
    }


def project_summary(ds: Dataset, project: Project) -> JSON:
    """Return the body of ``GET /projects/{id}/queries/summary/``."""
    percent_mapped, percent_validated, percent_bad = ds.percentages(project)
    return {
        "projectId": project.id,
        "defaultLocale": "en",
        "author": ds.users[project.author_id].username,
        "created": iso_naive(project.created),
        "dueDate": iso_naive(project.due_date),
        "lastUpdated": iso_naive(project.last_updated),
        "projectPriority": project.priority,
        "campaigns": _campaigns(ds, project, full=True),
        **_organisation_fields(ds, project),
        "countryTag": [project.country],
        "osmchaFilterId": None,
        "mappingTypes": list(project.mapping_types),
        "changesetComment": f"#hotosm-project-{project.id}",
        "percentMapped": percent_mapped,
        "percentValidated": percent_validated,
        "percentBadImagery": percent_bad,
        "aoiCentroid": _point(project),
        "difficulty": project.difficulty,
        "mappingPermission": "ANY",
        "validationPermission": "ANY",
        "database": project.database,
        "allowedUsernames": _allowed_usernames(ds, project),
        "enforceRandomTaskSelection": False,
        "private": project.private,
        "sandbox": project.sandbox,
        "teams": _teams(ds, project),
        "projectInfo": project_info(project),
        "shortDescription": None,
        "status": project.status,
        "imagery": project.imagery,
        "licenseId": project.license_id,
        "idPresets": [],
        "extraIdParams": None,
        "rapidPowerUser": False,
        "mappingEditors": ["ID", "JOSM"],
        "validationEditors": ["ID", "JOSM"],
        "customEditor": None,
    }


def _history_item(ds: Dataset, entry: HistoryEntry, task_id: int | None) -> JSON:
    return {
        "historyId": entry.id,
        "taskId": task_id,
        "action": entry.action,
        "actionText": entry.text,
        "actionDate": iso_z(entry.when),
        "actionBy": ds.users[entry.user_id].username,
        "pictureUrl": None,
        "issues": None,
    }


def task_detail(ds: Dataset, project: Project, task: Task) -> JSON:
    """Return the body of ``GET /projects/{id}/tasks/{task_id}/``: full history, newest first."""
    rows = [entry for entry in project.history if entry.task_id == task.id]
    rows.sort(key=lambda entry: (entry.when, entry.id), reverse=True)
    lock_holder = ds.users[task.locked_by].username if task.locked_by is not None else None
    return {
        "taskId": task.id,
        "projectId": project.id,
        "taskStatus": task.status,
        "lockHolder": lock_holder,
        "taskHistory": [_history_item(ds, entry, None) for entry in rows],
        "taskAnnotation": [],
        "perTaskInstructions": "",
        "autoUnlockSeconds": AUTO_UNLOCK_SECONDS,
        "lastUpdated": iso_offset_z(rows[0].when) if rows else None,
        "numberOfComments": None,
    }


def activities_page(ds: Dataset, project: Project, page: int, per_page: int = 10) -> JSON:
    """Return one page of ``GET /projects/{id}/activities/``."""
    rows = ds.activities(project)
    start = (page - 1) * per_page
    return {
        "pagination": pagination(page, per_page, len(rows)),
        "activity": [
            _history_item(ds, entry, entry.task_id) for entry in rows[start : start + per_page]
        ],
    }


def latest_activities(ds: Dataset, project: Project) -> JSON:
    """Return ``GET /projects/{id}/activities/latest/``: one item per task, by task id."""
    latest = ds.latest_entries(project)
    items = []
    for task in sorted(project.tasks, key=lambda task: task.id):
        entry = latest.get(task.id)
        items.append(
            {
                "taskId": task.id,
                "taskStatus": task.status,
                "actionDate": iso_z(entry.when) if entry else None,
                "actionBy": ds.users[entry.user_id].username if entry else None,
            }
        )
    return {"activity": items}


def contributions(ds: Dataset, project: Project) -> JSON:
    """Return ``GET /projects/{id}/contributions/``, counted from the tasks' current holders."""
    items = []
    for row in ds.contributions(project):
        items.append(
            {
                "username": row.user.username,
                "mappingLevel": row.user.mapping_level,
                "pictureUrl": None,
                "mapped": len(row.mapped),
                "validated": len(row.validated),
                "badImagery": len(row.bad_imagery),
                "total": row.total,
                "mappedTasks": list(row.mapped),
                "validatedTasks": list(row.validated),
                "badImageryTasks": list(row.bad_imagery),
                "name": None,
                "dateRegistered": row.user.date_registered.date().isoformat(),
            }
        )
    return {"userContributions": items}


def contributions_per_day(ds: Dataset, project: Project) -> JSON:
    """Return ``GET /projects/{id}/contributions/queries/day/`` with running totals."""
    items = []
    mapped_total = validated_total = 0
    for day in ds.contribution_days(project):
        mapped_total += day.mapped
        validated_total += day.validated
        items.append(
            {
                "date": day.day.isoformat(),
                "mapped": day.mapped,
                "validated": day.validated,
                "cumulative_mapped": mapped_total,
                "cumulative_validated": validated_total,
                "total_tasks": len(project.tasks),
            }
        )
    return {"stats": items}


def project_statistics(ds: Dataset, project: Project) -> JSON:
    """Return ``GET /projects/{id}/statistics/``; times in seconds, ints when there is no history."""
    percent_mapped, percent_validated, percent_bad = ds.percentages(project)
    mapping = [seconds_of(e.text) for e in project.history if e.action == "LOCKED_FOR_MAPPING"]
    validation = [
        seconds_of(e.text) for e in project.history if e.action == "LOCKED_FOR_VALIDATION"
    ]
    states = Counter(task.status for task in project.tasks)
    total = len(project.tasks)
    mapped = states["MAPPED"] + states["VALIDATED"]

    figures: dict[str, float | int] = dict.fromkeys(
        (
            "totalMappingTime",
            "totalValidationTime",
            "totalTimeSpent",
            "averageMappingTime",
            "averageValidationTime",
            "timeToFinishMapping",
            "timeToFinishValidating",
        ),
        0,
    )
    if project.history:
        average_mapping = sum(mapping) / len(mapping) if mapping else 0.0
        average_validation = sum(validation) / len(validation) if validation else 0.0
        figures = {
            "totalMappingTime": float(sum(mapping)),
            "totalValidationTime": float(sum(validation)),
            "totalTimeSpent": float(sum(mapping) + sum(validation)),
            "averageMappingTime": average_mapping,
            "averageValidationTime": average_validation,
            "timeToFinishMapping": (total - mapped) * average_mapping,
            "timeToFinishValidating": (total - states["VALIDATED"]) * average_validation,
        }

    return {
        "projectId": project.id,
        "projectArea(in sq.km)": area_km2(project),
        "totalMappers": len({entry.user_id for entry in project.history}),
        "totalTasks": total,
        "totalComments": sum(1 for entry in project.history if entry.action == "COMMENT"),
        "totalMappingTime": figures["totalMappingTime"],
        "totalValidationTime": figures["totalValidationTime"],
        "totalTimeSpent": figures["totalTimeSpent"],
        "averageMappingTime": figures["averageMappingTime"],
        "averageValidationTime": figures["averageValidationTime"],
        "percentMapped": percent_mapped,
        "percentValidated": percent_validated,
        "percentBadImagery": percent_bad,
        "aoiCentroid": _point(project),
        "timeToFinishMapping": figures["timeToFinishMapping"],
        "timeToFinishValidating": figures["timeToFinishValidating"],
    }


# -- users ------------------------------------------------------------------------------------


def user_list_item(user: User) -> JSON:
    """Return one ``/users/`` item; the id is a float there, as the genuine backend sends it."""
    return {
        "id": float(user.id),
        "username": user.username,
        "role": user.role,
        "mappingLevel": user.mapping_level,
        "pictureUrl": None,
        "statsLastUpdated": iso_naive(user.stats_last_updated),
        "stats": user.stats,
        "requires_approval": None,
        "user_has_voted": None,
    }


def user_statistics(ds: Dataset, user: User) -> JSON:
    """Return ``GET /users/{username}/statistics/`` computed from the user's task history."""
    rows = ds.user_history(user)
    mapping = sum(seconds_of(e.text) for _p, e in rows if e.action == "LOCKED_FOR_MAPPING")
    validating = sum(seconds_of(e.text) for _p, e in rows if e.action == "LOCKED_FOR_VALIDATION")
    states = Counter(e.text for _p, e in rows if e.action == "STATE_CHANGE")

    countries: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    mapped_projects: set[int] = set()
    interest_projects: Counter[int] = Counter()
    for project, entry in rows:
        if entry.action != "STATE_CHANGE":
            continue
        if entry.text == "MAPPED":
            countries[project.country][0] += 1
            if project.id not in mapped_projects:
                interest_projects.update(project.interest_ids)
            mapped_projects.add(project.id)
        elif entry.text == "VALIDATED":
            countries[project.country][1] += 1

    by_others = _checked_by_others(ds, user, rows)
    since = TODAY - timedelta(days=365)
    per_day = Counter(entry.when.date() for _p, entry in rows if entry.when.date() >= since)
    return {
        "totalTimeSpent": mapping + validating,
        "timeSpentMapping": mapping,
        "timeSpentValidating": validating,
        "projectsMapped": len(mapped_projects),
        "countriesContributed": {
            "countries": [
                {"name": name, "mapped": counts[0], "validated": counts[1], "total": sum(counts)}
                for name, counts in sorted(countries.items())
            ],
            "total": len(countries),
        },
        "contributionsByDay": [
            {"date": f"{day.isoformat()}T00:00:00", "count": count}
            for day, count in sorted(per_day.items())
        ],
        "tasksMapped": states["MAPPED"],
        "tasksValidated": states["VALIDATED"],
        "tasksInvalidated": states["INVALIDATED"],
        "tasksInvalidatedByOthers": by_others["INVALIDATED"],
        "tasksValidatedByOthers": by_others["VALIDATED"],
        "ContributionsByInterest": [
            {
                "id": interest_id,
                "name": ds.interests[interest_id].name,
                "userSelected": interest_id in user.interest_ids,
                "countProjects": count,
                "countUsers": None,
            }
            for interest_id, count in sorted(interest_projects.items())
        ],
    }


def _checked_by_others(
    ds: Dataset, user: User, rows: list[tuple[Project, HistoryEntry]]
) -> Counter[str]:
    """Count validations and invalidations by other users of tasks this user mapped."""
    mapped_tasks: dict[int, set[int]] = defaultdict(set)
    projects: dict[int, Project] = {}
    for project, entry in rows:
        if entry.action == "STATE_CHANGE" and entry.text == "MAPPED":
            mapped_tasks[project.id].add(entry.task_id)
            projects[project.id] = project

    checks: Counter[str] = Counter()
    for project_id, task_ids in mapped_tasks.items():
        for entry in projects[project_id].history:
            if (
                entry.task_id in task_ids
                and entry.action == "STATE_CHANGE"
                and entry.text in ("VALIDATED", "INVALIDATED")
                and entry.user_id != user.id
            ):
                checks[entry.text] += 1
    return checks


def users_statistics(ds: Dataset, start: date, end: date) -> JSON:
    """Return ``GET /users/statistics/`` for users registered between two days, both included."""
    users = [user for user in ds.users.values() if start <= user.date_registered.date() <= end]
    levels = Counter(user.mapping_level for user in users)
    genders = Counter(user.gender for user in users)
    contributed = sum(1 for user in users if ds.user_history(user))
    return {
        "total": len(users),
        "byLevel": [{"name": level, "count": levels[level]} for level in MAPPING_LEVELS],
        "contributed": contributed,
        "emailVerified": sum(1 for user in users if user.email_verified),
        "genders": {
            "male": genders["MALE"],
            "female": genders["FEMALE"],
            "preferNotIdentify": genders["PREFER_NOT"],
            "selfDescribe": genders["SELF_DESCRIBE"],
        },
    }


# -- organisations, teams and the platform ------------------------------------------------------


def _managers(ds: Dataset, organisation: Organisation) -> list[JSON]:
    names = sorted(ds.users[user_id].username for user_id in organisation.manager_ids)
    return [{"username": name, "pictureUrl": None} for name in names]


def organisation_item(ds: Dataset, organisation: Organisation, managers: bool, stats: bool) -> JSON:
    """Return one ``/organisations/`` item; ``type`` is null in the list, as in the genuine one."""
    item: JSON = {"organisationId": organisation.id}
    if managers:
        item["managers"] = _managers(ds, organisation)
    item.update(
        name=organisation.name,
        slug=organisation.slug,
        logo=None,
        description=organisation.description,
        url=None,
        isManager=None,
        projects=[],
        teams=None,
        campaigns=None,
        stats=organisation_statistics(ds, organisation) if stats else None,
        type=None,
        subscriptionTier=None,
    )
    return item


def organisation_detail(
    ds: Dataset, organisation: Organisation, user: User | None, omit_managers: bool
) -> JSON:
    """Return ``GET /organisations/{id}/``: managers, and public teams unless the caller manages it."""
    is_manager = user is not None and (user.role == "ADMIN" or user.id in organisation.manager_ids)
    teams = None
    if not omit_managers:
        teams = [
            _team_summary(ds, team)
            for team in ds.teams.values()
            if team.organisation_id == organisation.id
            and (is_manager or team.visibility == "PUBLIC")
        ]
    return {
        "organisationId": organisation.id,
        "managers": [] if omit_managers else _managers(ds, organisation),
        "name": organisation.name,
        "slug": organisation.slug,
        "logo": None,
        "description": organisation.description,
        "url": None,
        "isManager": is_manager,
        "projects": [],
        "teams": teams,
        "campaigns": None,
        "stats": None,
        "type": organisation.type,
        "subscriptionTier": None,
    }


def _members(ds: Dataset, team: Team) -> list[JSON]:
    return [
        {
            "username": ds.users[member.user_id].username,
            "pictureUrl": None,
            "function": member.function,
            "active": "true",
        }
        for member in team.members
    ]


def _team_summary(ds: Dataset, team: Team) -> JSON:
    return {
        "teamId": team.id,
        "name": team.name,
        "description": team.description,
        "joinMethod": team.join_method,
        "visibility": team.visibility,
        "members": _members(ds, team),
    }


def organisation_statistics(ds: Dataset, organisation: Organisation) -> JSON:
    """Return ``GET /organisations/{id}/statistics/``.

    ``recent`` counts published and archived projects updated in the 180 days before TODAY,
    ``stale`` the other ones; ``activeTasks`` counts tasks of published projects only.
    """
    projects = [p for p in ds.projects.values() if p.organisation_id == organisation.id]
    statuses = Counter(project.status for project in projects)
    recent_since = datetime.combine(TODAY - timedelta(days=180), datetime.min.time())
    live = [p for p in projects if p.status != "DRAFT"]
    recent = sum(1 for project in live if project.last_updated >= recent_since)
    tasks = Counter(task.status for p in projects if p.status == "PUBLISHED" for task in p.tasks)
    return {
        "projects": {
            "draft": statuses["DRAFT"],
            "published": statuses["PUBLISHED"],
            "archived": statuses["ARCHIVED"],
            "recent": recent,
            "stale": len(live) - recent,
        },
        "activeTasks": {
            "ready": tasks["READY"],
            "lockedForMapping": tasks["LOCKED_FOR_MAPPING"],
            "lockedForValidation": tasks["LOCKED_FOR_VALIDATION"],
            "mapped": tasks["MAPPED"],
            "validated": tasks["VALIDATED"],
            "invalidated": tasks["INVALIDATED"],
            "badImagery": tasks["BADIMAGERY"],
        },
    }


def team_item(ds: Dataset, team: Team, omit_members: bool) -> JSON:
    """Return one ``/teams/`` item."""
    members = [] if omit_members else _members(ds, team)
    return {
        "teamId": team.id,
        "organisationId": team.organisation_id,
        "organisation": ds.organisations[team.organisation_id].name,
        "name": team.name,
        "logo": None,
        "description": team.description,
        "joinMethod": team.join_method,
        "visibility": team.visibility,
        "members": members,
        "membersCount": sum(1 for member in team.members if member.function == "MEMBER"),
        "managersCount": sum(1 for member in team.members if member.function == "MANAGER"),
    }


def system_statistics(ds: Dataset) -> JSON:
    """Return the abbreviated ``GET /system/statistics/``."""
    tasks = [task for project in ds.projects.values() for task in project.tasks]
    return {
        "mappersOnline": len({task.locked_by for task in tasks if task.locked_by is not None}),
        "tasksMapped": sum(1 for task in tasks if task.status in ("MAPPED", "VALIDATED")),
        "totalMappers": len(ds.users),
        "totalProjects": len(ds.projects),
        "averageCompletionTime": None,
    }


def locked_tasks(ds: Dataset, user: User) -> JSON:
    """Return ``GET /users/queries/tasks/locked/``: the tasks the user holds locked."""
    for project in ds.projects.values():
        locked = [task for task in project.tasks if task.locked_by == user.id]
        if locked:
            return {
                "lockedTasks": [task.id for task in locked],
                "projectId": project.id,
                "taskStatus": locked[0].status,
            }
    return {"lockedTasks": [], "projectId": None, "taskStatus": None}
