"""Project search of the mock server: the filters and orders of ``GET /projects/``.

Search returns PUBLISHED projects unless ``projectStatuses`` lists others, orders by
``priority`` ascending by default and always adds ``id`` descending as a tie-break (unless the
order is by ``id`` itself). Descending orders put missing values first, ascending ones last, as
PostgreSQL does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from tm_export.mock import errors, views
from tm_export.mock.dataset import Dataset
from tm_export.mock.model import DIFFICULTY_ORDER, PRIORITY_ORDER, STATUS_ORDER, Project, User
from tm_export.mock.params import parse_bool, parse_day

SEARCH_PAGE_SIZE = 14

_STRIPPED = set("@|&!><\\():'")
_TAG = re.compile(r"<[^>]*>")
_WORD = re.compile(r"\w+")
_KNOWN_STATUSES = frozenset(STATUS_ORDER)


def search(ds: Dataset, user: User | None, query: Mapping[str, str]) -> list[Project]:
    """Return the projects a search query selects, in the requested order."""
    statuses = _statuses(query.get("projectStatuses"))
    checks = _filters(ds, user, query)
    selected = [
        project
        for project in ds.projects.values()
        if project.status in statuses
        and ds.searchable(user, project)
        and all(check(project) for check in checks)
    ]
    return order(ds, selected, query.get("orderBy", "priority"), query.get("orderByType", "ASC"))


def order(ds: Dataset, projects: list[Project], order_by: str, direction: str) -> list[Project]:
    """Sort projects by a column name; an unknown column raises the 500 the backend sends."""
    keys: dict[str, Callable[[Project], Any]] = {
        "id": lambda p: p.id,
        "priority": lambda p: PRIORITY_ORDER[p.priority],
        "difficulty": lambda p: DIFFICULTY_ORDER[p.difficulty],
        "status": lambda p: STATUS_ORDER[p.status],
        "last_updated": lambda p: p.last_updated,
        "created": lambda p: p.created,
        "due_date": lambda p: (p.due_date is None, p.due_date or datetime.min),
        "total_tasks": lambda p: len(p.tasks),
        "percent_mapped": lambda p: ds.percentages(p)[0],
        "percent_validated": lambda p: ds.percentages(p)[1],
    }
    if order_by not in keys:
        raise errors.internal_error()

    descending = direction == "DESC"
    # The tie-break first, then a stable sort on the requested column.
    result = sorted(projects, key=lambda p: p.id, reverse=True)
    if order_by != "id" or not descending:
        result.sort(key=keys[order_by], reverse=descending)
    return result


def _statuses(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset({"PUBLISHED"})
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if name not in _KNOWN_STATUSES:
            raise errors.legacy_error(400, f"Projects GET - '{name}'")
    return frozenset(names)


def _filters(
    ds: Dataset, user: User | None, query: Mapping[str, str]
) -> list[Callable[[Project], bool]]:
    """Build one predicate per filter parameter present in the query."""
    checks: list[Callable[[Project], bool]] = []

    text = "".join(char for char in query.get("textSearch", "") if char not in _STRIPPED).strip()
    if text:
        checks.append(lambda p: text.lower() in p.name.lower() or _text_matches(p, text))

    difficulty = query.get("difficulty")
    if difficulty and difficulty != "ALL":
        checks.append(lambda p: p.difficulty == difficulty)

    mapping_types = {name for name in query.get("mappingTypes", "").split(",") if name}
    if mapping_types:
        if query.get("mappingTypesExact", "").lower() == "true":
            checks.append(lambda p: set(p.mapping_types) == mapping_types)
        else:
            checks.append(lambda p: bool(mapping_types & set(p.mapping_types)))

    organisation_name = query.get("organisationName")
    if organisation_name:
        checks.append(lambda p: ds.organisations[p.organisation_id].name == organisation_name)
    organisation_id = _optional_int(query, "organisationId")
    if organisation_id is not None:
        checks.append(lambda p: p.organisation_id == organisation_id)

    campaign = query.get("campaign")
    if campaign:
        checks.append(lambda p: any(ds.campaigns[c].name == campaign for c in p.campaign_ids))
    team_id = _optional_int(query, "teamId")
    if team_id is not None:
        checks.append(lambda p: any(team == team_id for team, _role in p.team_roles))
    country = query.get("country")
    if country:
        checks.append(lambda p: p.country.lower() == country.lower())
    interests = {
        int(item) for item in query.get("interests", "").split(",") if item.strip().isdigit()
    }
    if interests:
        checks.append(lambda p: bool(interests & set(p.interest_ids)))

    sandbox = query.get("sandbox")
    if sandbox is not None:
        wanted = parse_bool("sandbox", sandbox)
        checks.append(lambda p: p.sandbox == wanted)
        # The backend reads database only together with sandbox.
        database = query.get("database")
        if database:
            checks.append(lambda p: p.database == database)
    imagery = query.get("imagery")
    if imagery == "custom":
        checks.append(lambda p: (p.imagery or "").startswith("https://"))
    elif imagery:
        checks.append(lambda p: p.imagery == imagery)

    checks += _date_filters(query)
    checks += _action_filter(ds, query.get("action"))
    checks += _personal_filters(ds, user, query)
    return checks


def _text_matches(project: Project, text: str) -> bool:
    """Tell whether every word of ``text`` is a word of the project's id, short description
    or description: the backend's full-text search, without its stemming."""
    info = views.project_info(project)
    searched = _TAG.sub(" ", f"{project.id} {info['shortDescription']} {info['description']}")
    words = set(_WORD.findall(searched.lower()))
    query_words = _WORD.findall(text.lower())
    # Text without a word (".", "-") finds nothing in the full-text index.
    return bool(query_words) and all(word in words for word in query_words)


def _optional_int(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not value.strip().lstrip("+-").isdigit():
        raise errors.validation_error(errors.int_parsing("query", name, value))
    return int(value)


def _date_filters(query: Mapping[str, str]) -> list[Callable[[Project], bool]]:
    """Build the date bounds; an upper bound is midnight at the start of its day."""
    checks: list[Callable[[Project], bool]] = []
    for name, field, is_lower in (
        ("lastUpdatedFrom", "last_updated", True),
        ("lastUpdatedTo", "last_updated", False),
        ("createdFrom", "created", True),
        ("createdTo", "created", False),
    ):
        value = query.get(name)
        if value is None:
            continue
        day = parse_day(value)
        if day is None:
            raise errors.legacy_error(400, "Projects GET - InvalidDateValue- Invalid date value")
        checks.append(_bound(field, datetime.combine(day, datetime.min.time()), is_lower))
    return checks


def _bound(field: str, bound: datetime, is_lower: bool) -> Callable[[Project], bool]:
    def check(project: Project) -> bool:
        value: datetime = getattr(project, field)
        return value >= bound if is_lower else value <= bound

    return check


def _action_filter(ds: Dataset, action: str | None) -> list[Callable[[Project], bool]]:
    if action == "map":
        return [lambda p: ds.percentages(p)[0] < 100]
    if action == "validate":
        return [lambda p: ds.percentages(p)[1] < 100 and ds.percentages(p)[0] > 0]
    return []


def _personal_filters(
    ds: Dataset, user: User | None, query: Mapping[str, str]
) -> list[Callable[[Project], bool]]:
    """Build the filters that need a logged-in user; anonymous callers have them ignored."""
    if query.get("partnerId") is not None:
        if user is None or user.role != "ADMIN":
            message = (
                "Only admins can search projects by partnerId, partnershipFrom or partnershipTo"
            )
            raise errors.legacy_error(401, message)
        # The mock has no partners, so a partner filter matches nothing.
        return [lambda p: False]
    if user is None:
        return []

    def flag(name: str) -> bool:
        return query.get(name, "").lower() == "true"

    checks: list[Callable[[Project], bool]] = []
    if flag("createdByMe"):
        checks.append(lambda p: p.author_id == user.id)
    if flag("managedByMe"):
        checks.append(lambda p: ds.is_manager(user, p))
    if flag("mappedByMe"):
        checks.append(lambda p: any(entry.user_id == user.id for entry in p.history))
    if flag("favoritedByMe"):
        # The mock stores no favourites.
        checks.append(lambda p: False)
    if flag("basedOnMyInterests"):
        checks.append(lambda p: bool(set(user.interest_ids) & set(p.interest_ids)))
    return checks
