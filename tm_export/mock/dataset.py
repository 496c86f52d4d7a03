"""The mock Tasking Manager's data: tables, access rules, derived figures, mutations and counts.

``Dataset(projects, seed)`` generates its tables with ``random.Random(seed)`` only, against a fixed
reference day (``model.TODAY``), so the same arguments give the same data on every run. The id
roles (public, archived, draft, private, deleted) are described in ``tm_export.mock.generate``.

Counts: ``Dataset.counts()`` returns, per catalog endpoint, the number of records that an export
of the whole dataset should hold. They are computed from the tables, never over HTTP:

* ``projects``: the projects an anonymous search with ``projectStatuses=PUBLISHED,ARCHIVED``
  returns (the "public projects": published or archived, not private).
* ``project``, ``project_summary``, ``project_aoi``, ``project_statistics``: one per public
  project.
* ``project_tasks``, ``project_latest_activities``, ``task``: tasks of the public projects.
* ``project_contributions``: per public project, the users who currently hold a task as mapper,
  validator or bad-imagery reporter; summed.
* ``project_contributions_per_day``: per public project, the days with at least one MAPPED or
  VALIDATED state change; summed.
* ``project_activities``: task history rows other than ``COMMENT`` of the public projects.
* ``tasks_statistics``: distinct days with at least one MAPPED, VALIDATED or BADIMAGERY state
  change over all projects, private and draft ones included.
* ``users``, ``user_statistics``: users. ``organisations``, ``organisation``,
  ``organisation_statistics``: organisations. ``campaigns``, ``interests``, ``licenses``,
  ``teams``: table sizes. ``countries``: distinct countries over all projects.
* ``users_statistics``, ``system_statistics``, ``system_heartbeat``: 1.

``counts(role=...)`` gives the same figures for the caller of one of the mock's tokens
(``admin``, ``mapper``, ``other``): the projects are then those that role's search with
``projectStatuses=PUBLISHED,ARCHIVED`` returns (for ``admin``, private projects too), and
``teams`` counts the teams that role can list.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TypeVar

from tm_export.mock.auth import TOKEN_USERS
from tm_export.mock.generate import generate
from tm_export.mock.model import (
    Campaign,
    HistoryEntry,
    Interest,
    License,
    Organisation,
    Project,
    Task,
    Team,
    User,
)

T = TypeVar("T")

_PUBLIC_STATUSES = frozenset({"PUBLISHED", "ARCHIVED"})
_STATE_TEXTS = frozenset({"READY", "MAPPED", "VALIDATED", "INVALIDATED", "BADIMAGERY"})


@dataclass(frozen=True, slots=True)
class Contribution:
    """Tasks of one project whose current mapper, validator or bad-imagery reporter is a user."""

    user: User
    mapped: tuple[int, ...]
    validated: tuple[int, ...]
    bad_imagery: tuple[int, ...]

    @property
    def total(self) -> int:
        return len(self.mapped) + len(self.validated) + len(self.bad_imagery)


@dataclass(frozen=True, slots=True)
class DayProgress:
    """State changes of one day, counted per new state."""

    day: date
    mapped: int
    validated: int
    bad_imagery: int


class Dataset:
    """Tables of a mock Tasking Manager, safe to read and change from several threads.

    Readers that walk several tables hold ``lock``; every mutation method takes it itself.
    """

    def __init__(self, projects: int = 300, seed: int = 1) -> None:
        records = generate(projects, seed)
        self.project_range = projects
        """Ids 1..project_range were generated; missing ones are deleted projects."""
        self.seed = seed
        self.lock = threading.RLock()
        self.users: dict[int, User] = {user.id: user for user in records.users}
        self.users_by_name: dict[str, User] = {user.username: user for user in records.users}
        self.organisations: dict[int, Organisation] = {org.id: org for org in records.organisations}
        self.campaigns: dict[int, Campaign] = {item.id: item for item in records.campaigns}
        self.interests: dict[int, Interest] = {item.id: item for item in records.interests}
        self.licenses: dict[int, License] = {item.id: item for item in records.licenses}
        self.teams: dict[int, Team] = {team.id: team for team in records.teams}
        self.projects: dict[int, Project] = {project.id: project for project in records.projects}
        self._next_history_id = records.next_history_id
        self._cache: dict[tuple[object, ...], object] = {}

    # -- access rules -------------------------------------------------------------------------

    def is_manager(self, user: User | None, project: Project) -> bool:
        """Tell whether a user may manage a project: admin, author or organisation manager."""
        if user is None:
            return False
        if user.role == "ADMIN" or user.id == project.author_id:
            return True
        return user.id in self.organisations[project.organisation_id].manager_ids

    def is_team_member(self, user: User, project: Project) -> bool:
        """Tell whether a user belongs to a team assigned to the project."""
        for team_id, _role in project.team_roles:
            if any(member.user_id == user.id for member in self.teams[team_id].members):
                return True
        return False

    def can_view(self, user: User | None, project: Project) -> bool:
        """Tell whether the detail endpoints show a private or draft project to a user."""
        if not project.private and project.status != "DRAFT":
            return True
        if user is None:
            return False
        if self.is_manager(user, project):
            return True
        if project.status == "DRAFT":
            return False
        return user.id in project.allowed_user_ids or self.is_team_member(user, project)

    def searchable(self, user: User | None, project: Project) -> bool:
        """Tell whether project search may list a project to a user, whatever its status.

        Search ignores allow-lists: a private project shows only to admins, its managers and
        members of its teams. Drafts never show to anonymous callers.
        """
        if user is not None and user.role == "ADMIN":
            return True
        if project.status == "DRAFT" and not self.is_manager(user, project):
            return False
        if project.private:
            return user is not None and (
                self.is_manager(user, project) or self.is_team_member(user, project)
            )
        return True

    def can_manage_any(self, user: User) -> bool:
        """Tell whether a user is an admin or manages at least one organisation."""
        if user.role == "ADMIN":
            return True
        return any(user.id in org.manager_ids for org in self.organisations.values())

    # -- derived figures (cached until the next mutation) -------------------------------------

    def _cached(self, key: tuple[object, ...], build: Callable[[], T]) -> T:
        with self.lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]  # type: ignore[return-value]

    def activities(self, project: Project) -> list[HistoryEntry]:
        """Return the history of a project without comments, newest first."""

        def build() -> list[HistoryEntry]:
            rows = [entry for entry in project.history if entry.action != "COMMENT"]
            rows.sort(key=lambda entry: (entry.when, entry.id), reverse=True)
            return rows

        return self._cached(("activities", project.id), build)

    def latest_entries(self, project: Project) -> dict[int, HistoryEntry]:
        """Return the newest history row other than a comment of each task, by task id."""

        def build() -> dict[int, HistoryEntry]:
            latest: dict[int, HistoryEntry] = {}
            for entry in reversed(self.activities(project)):
                latest[entry.task_id] = entry
            return latest

        return self._cached(("latest", project.id), build)

    def percentages(self, project: Project) -> tuple[int, int, int]:
        """Return percent mapped, validated and bad imagery, truncated like the Tasking Manager.

        Mapped counts MAPPED and VALIDATED tasks; both are relative to the tasks that are not
        bad imagery. Bad imagery is relative to all tasks.
        """
        states = Counter(task.status for task in project.tasks)
        total = len(project.tasks)
        bad = states["BADIMAGERY"]
        usable = total - bad
        mapped = states["MAPPED"] + states["VALIDATED"]
        percent_mapped = int(mapped * 100 / usable) if usable else 0
        percent_validated = int(states["VALIDATED"] * 100 / usable) if usable else 0
        percent_bad = int(bad * 100 / total) if total else 0
        return percent_mapped, percent_validated, percent_bad

    def contributions(self, project: Project) -> list[Contribution]:
        """Return the users holding tasks of a project, most tasks first, then by username."""

        def build() -> list[Contribution]:
            mapped: dict[int, list[int]] = defaultdict(list)
            validated: dict[int, list[int]] = defaultdict(list)
            bad: dict[int, list[int]] = defaultdict(list)
            for task in project.tasks:
                if task.status == "BADIMAGERY" and task.mapped_by is not None:
                    bad[task.mapped_by].append(task.id)
                elif task.mapped_by is not None:
                    mapped[task.mapped_by].append(task.id)
                if task.validated_by is not None:
                    validated[task.validated_by].append(task.id)
            user_ids = set(mapped) | set(validated) | set(bad)
            rows = [
                Contribution(
                    self.users[user_id],
                    tuple(mapped[user_id]),
                    tuple(validated[user_id]),
                    tuple(bad[user_id]),
                )
                for user_id in user_ids
            ]
            rows.sort(key=lambda row: (-row.total, row.user.username))
            return rows

        return self._cached(("contributions", project.id), build)

    def daily_progress(self, project: Project) -> list[DayProgress]:
        """Return the days with state changes of a project, oldest first."""

        def build() -> list[DayProgress]:
            days: dict[date, Counter[str]] = defaultdict(Counter)
            for entry in project.history:
                if entry.action == "STATE_CHANGE" and entry.text in (
                    "MAPPED",
                    "VALIDATED",
                    "BADIMAGERY",
                ):
                    days[entry.when.date()][entry.text] += 1
            return [
                DayProgress(day, counts["MAPPED"], counts["VALIDATED"], counts["BADIMAGERY"])
                for day, counts in sorted(days.items())
            ]

        return self._cached(("daily", project.id), build)

    def contribution_days(self, project: Project) -> list[DayProgress]:
        """Return the days of a project with at least one MAPPED or VALIDATED state change."""
        return [day for day in self.daily_progress(project) if day.mapped or day.validated]

    def task_stats(self, projects: Iterable[Project], start: date, end: date) -> list[DayProgress]:
        """Sum the daily state changes of several projects between two days, both included."""
        totals: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0])
        for project in projects:
            for day in self.daily_progress(project):
                if start <= day.day <= end:
                    counts = totals[day.day]
                    counts[0] += day.mapped
                    counts[1] += day.validated
                    counts[2] += day.bad_imagery
        return [DayProgress(day, *counts) for day, counts in sorted(totals.items())]

    def user_history(self, user: User) -> list[tuple[Project, HistoryEntry]]:
        """Return every history row a user wrote, with its project, oldest first."""

        def build() -> dict[int, list[tuple[Project, HistoryEntry]]]:
            by_user: dict[int, list[tuple[Project, HistoryEntry]]] = defaultdict(list)
            for project in self.projects.values():
                for entry in project.history:
                    by_user[entry.user_id].append((project, entry))
            for rows in by_user.values():
                rows.sort(key=lambda row: row[1].when)
            return dict(by_user)

        return self._cached(("user_history",), build).get(user.id, [])

    # -- project lists --------------------------------------------------------------------------

    def public_project_ids(self) -> list[int]:
        """Return the ids an anonymous ``projectStatuses=PUBLISHED,ARCHIVED`` search returns."""
        with self.lock:
            return sorted(
                project.id
                for project in self.projects.values()
                if project.status in _PUBLIC_STATUSES and not project.private
            )

    def featured_projects(self) -> list[Project]:
        """Return the featured projects: published, not private, with an id that ends in 3.

        The generated data has no featured flag, so this fixed rule replaces the
        choice that managers make on the genuine server.
        """
        with self.lock:
            return sorted(
                (
                    project
                    for project in self.projects.values()
                    if project.status == "PUBLISHED"
                    and not project.private
                    and project.id % 10 == 3
                ),
                key=lambda project: project.id,
            )

    def private_project_ids(self) -> list[int]:
        with self.lock:
            return sorted(project.id for project in self.projects.values() if project.private)

    def draft_project_ids(self) -> list[int]:
        with self.lock:
            return sorted(
                project.id for project in self.projects.values() if project.status == "DRAFT"
            )

    def deleted_project_ids(self) -> list[int]:
        """Return the ids in 1..project_range with no project (generated gaps and deletions)."""
        with self.lock:
            return [pid for pid in range(1, self.project_range + 1) if pid not in self.projects]

    def countries(self) -> list[str]:
        """Return the distinct country names of all projects, sorted."""
        with self.lock:
            return sorted({project.country for project in self.projects.values()})

    # -- counts -------------------------------------------------------------------------------

    def count(self, endpoint: str, **params: object) -> int:
        """Return the number of records one partition of an endpoint returns to an admin.

        Per-project endpoints take ``project_id``. ``projects`` takes an optional
        ``projectStatuses`` (comma list, default ``PUBLISHED,ARCHIVED``) and counts private
        projects too. ``tasks_statistics`` takes optional ``startDate`` and ``endDate``
        (``YYYY-MM-DD``, default: every day). Raises KeyError for an unknown endpoint or project.
        """
        with self.lock:
            if endpoint == "projects":
                statuses = str(params.get("projectStatuses", "PUBLISHED,ARCHIVED")).split(",")
                return sum(1 for project in self.projects.values() if project.status in statuses)
            if endpoint == "tasks_statistics":
                start = date.fromisoformat(str(params.get("startDate", "1970-01-01")))
                end = date.fromisoformat(str(params.get("endDate", "9999-12-31")))
                return len(self.task_stats(self.projects.values(), start, end))
            if "project_id" in params:
                project = self.projects[int(str(params["project_id"]))]
                return self._project_count(endpoint, project)
            return self._table_count(endpoint)

    def counts(self, role: str = "anonymous") -> dict[str, int]:
        """Return the number of records of every catalog endpoint; see the module docstring.

        ``role`` is ``anonymous`` or the name of a token: ``admin``, ``mapper`` or ``other``.
        """
        user = self.role_user(role)
        with self.lock:
            listed = sorted(
                (
                    p
                    for p in self.projects.values()
                    if p.status in _PUBLIC_STATUSES and self.searchable(user, p)
                ),
                key=lambda project: project.id,
            )
            result = {"projects": len(listed)}
            for endpoint in _PER_PROJECT:
                result[endpoint] = sum(self._project_count(endpoint, project) for project in listed)
            result["tasks_statistics"] = len(
                self.task_stats(self.projects.values(), date.min, date.max)
            )
            for endpoint in _TABLES:
                result[endpoint] = self._table_count(endpoint)
            if user is not None:
                result["teams"] = len(self.visible_teams(user))
            return result

    def role_user(self, role: str) -> User | None:
        """Return the user behind a token name, or None for ``anonymous``."""
        if role == "anonymous":
            return None
        if role not in TOKEN_USERS:
            raise ValueError(f"invalid role {role!r}: expected anonymous, {', '.join(TOKEN_USERS)}")
        return self.users_by_name[TOKEN_USERS[role]]

    def visible_teams(self, user: User) -> list[Team]:
        """Return the teams ``/teams/`` lists to a user: all for admins, else public or joined."""
        return [
            team
            for team in self.teams.values()
            if user.role == "ADMIN"
            or team.visibility == "PUBLIC"
            or any(member.user_id == user.id for member in team.members)
        ]

    def _project_count(self, endpoint: str, project: Project) -> int:
        if endpoint in ("project", "project_summary", "project_aoi", "project_statistics"):
            return 1
        if endpoint in ("project_tasks", "project_latest_activities", "task"):
            return len(project.tasks)
        if endpoint == "project_contributions":
            return len(self.contributions(project))
        if endpoint == "project_contributions_per_day":
            return len(self.contribution_days(project))
        if endpoint == "project_activities":
            return len(self.activities(project))
        raise KeyError(f"unknown per-project endpoint {endpoint!r}")

    def _table_count(self, endpoint: str) -> int:
        sizes = {
            "users": len(self.users),
            "user_statistics": len(self.users),
            "organisations": len(self.organisations),
            "organisation": len(self.organisations),
            "organisation_statistics": len(self.organisations),
            "campaigns": len(self.campaigns),
            "interests": len(self.interests),
            "countries": len(self.countries()),
            "licenses": len(self.licenses),
            "teams": len(self.teams),
            "users_statistics": 1,
            "system_statistics": 1,
            "system_heartbeat": 1,
        }
        return sizes[endpoint]

    # -- mutations ----------------------------------------------------------------------------

    def touch_project(self, project_id: int, when: datetime) -> None:
        """Set a project's ``lastUpdated`` (naive UTC), as an edit by its manager would."""
        with self.lock:
            self.projects[project_id].last_updated = when
            self._cache.clear()

    def delete_project(self, project_id: int) -> None:
        """Remove a project, leaving a gap in the ids as a hard delete does."""
        with self.lock:
            del self.projects[project_id]
            self._cache.clear()

    def add_activity(
        self,
        project_id: int,
        task_id: int = 1,
        action: str = "STATE_CHANGE",
        text: str | None = "MAPPED",
        username: str = "mapper_ann",
        when: datetime | None = None,
    ) -> int:
        """Append a task history row, apply it to the task and the project, and return its id.

        A ``STATE_CHANGE`` to MAPPED, VALIDATED, INVALIDATED, BADIMAGERY or READY sets the task
        state and its mapper or validator. A lock action locks the task for the user. ``when``
        defaults to one minute after the project's ``lastUpdated``, and becomes the new value.
        """
        with self.lock:
            project = self.projects[project_id]
            task = next(task for task in project.tasks if task.id == task_id)
            user = self.users_by_name[username]
            if when is None:
                when = project.last_updated + timedelta(minutes=1)
            if action == "STATE_CHANGE" and text not in _STATE_TEXTS:
                raise ValueError(f"invalid state {text!r}: expected one of {sorted(_STATE_TEXTS)}")

            entry = HistoryEntry(self._next_history_id, task_id, action, text, when, user.id)
            self._next_history_id += 1
            project.history.append(entry)
            _apply_to_task(task, entry)
            project.last_updated = max(project.last_updated, when)
            self._cache.clear()
            return entry.id


def _apply_to_task(task: Task, entry: HistoryEntry) -> None:
    if entry.action in ("LOCKED_FOR_MAPPING", "LOCKED_FOR_VALIDATION"):
        task.status = entry.action
        task.locked_by = entry.user_id
        return
    if entry.action != "STATE_CHANGE" or entry.text is None:
        return

    task.status = entry.text
    task.locked_by = None
    if entry.text in ("MAPPED", "BADIMAGERY"):
        task.mapped_by = entry.user_id
        task.validated_by = None
    elif entry.text == "VALIDATED":
        task.validated_by = entry.user_id
    else:
        task.mapped_by = None
        task.validated_by = None


_PER_PROJECT = (
    "project",
    "project_summary",
    "project_aoi",
    "project_tasks",
    "task",
    "project_contributions",
    "project_contributions_per_day",
    "project_activities",
    "project_latest_activities",
    "project_statistics",
)

_TABLES = (
    "users",
    "user_statistics",
    "users_statistics",
    "organisations",
    "organisation",
    "organisation_statistics",
    "campaigns",
    "teams",
    "interests",
    "countries",
    "licenses",
    "system_statistics",
    "system_heartbeat",
)
