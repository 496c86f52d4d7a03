"""Build the records of a mock Tasking Manager from a project count and a seed.

Every random choice goes through one ``random.Random(seed)``, in a fixed order, so the same
arguments always give the same records. Project ids run from 1 to ``projects``; the id of each
project decides its role, matching the ids of the recorded genuine responses:

=====================  ==========================  ================================
role                   ids                         recorded example
=====================  ==========================  ================================
deleted (a gap)        ``id % 50 == 12``           12
archived               ``id % 25 == 4``            4
draft                  ``id % 25 == 6``            6
private, published     ``id % 50 == 9``            9 (allow-list: mapper_ann, mapper_bob)
public, published      every other id              1; 2 holds mapper_chen's lock on task 5
=====================  ==========================  ================================
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from tm_export.mock.model import (
    DATA_START,
    MAPPING_TYPES,
    NOW,
    Campaign,
    HistoryEntry,
    Interest,
    License,
    Organisation,
    Project,
    Task,
    Team,
    TeamMember,
    User,
    tile_of,
)

ADMIN_ID = 1001
MANAGER_ID = 1002
MAPPER_ANN_ID = 2001
MAPPER_BOB_ID = 2002
MAPPER_CHEN_ID = 2003

LOCKED_PROJECT_ID = 2
LOCKED_TASK_ID = 5

# (id, username, role, mapping level, registration day) of the users the recordings name.
_NAMED_USERS = (
    (1001, "tm_admin", "ADMIN", "ADVANCED", datetime(2026, 1, 10, 9, 0, 0, 120044)),
    (1002, "pm_alice", "MAPPER", "BEGINNER", datetime(2026, 1, 12, 10, 30, 0, 310455)),
    (2001, "mapper_ann", "MAPPER", "BEGINNER", datetime(2026, 3, 18, 8, 12, 5, 4411)),
    (2002, "mapper_bob", "MAPPER", "BEGINNER", datetime(2026, 3, 17, 14, 2, 44, 92001)),
    (2003, "mapper_chen", "MAPPER", "INTERMEDIATE", datetime(2026, 3, 16, 7, 45, 1, 7710)),
    (2004, "mapper_dina", "MAPPER", "INTERMEDIATE", datetime(2026, 3, 15, 16, 20, 9, 55012)),
    (2005, "mapper_eko", "MAPPER", "BEGINNER", datetime(2026, 3, 14, 11, 8, 30, 640012)),
    (2006, "mapper_fatima", "MAPPER", "BEGINNER", datetime(2026, 3, 13, 19, 51, 2, 300120)),
    (3001, "validator_gus", "MAPPER", "ADVANCED", datetime(2026, 2, 16, 9, 9, 9, 90909)),
    (3002, "validator_hana", "MAPPER", "ADVANCED", datetime(2026, 2, 15, 12, 0, 1, 1)),
    (3003, "validator_ivan", "MAPPER", "ADVANCED", datetime(2026, 2, 14, 13, 31, 7, 700123)),
)

# (name, country, longitude, latitude): towns the projects are placed around.
_PLACES = (
    ("Kathmandu", "Nepal", 85.324, 27.717),
    ("Pokhara", "Nepal", 83.985, 28.209),
    ("Dhaka", "Bangladesh", 90.412, 23.810),
    ("Cox's Bazar", "Bangladesh", 91.983, 21.427),
    ("Mombasa", "Kenya", 39.668, -4.043),
    ("Kisumu", "Kenya", 34.768, -0.092),
    ("Dar es Salaam", "Tanzania", 39.283, -6.792),
    ("Manila", "Philippines", 120.984, 14.599),
    ("Cebu", "Philippines", 123.894, 10.316),
    ("Niamey", "Niger", 2.112, 13.512),
    ("Palu", "Indonesia", 119.870, -0.895),
    ("Freetown", "Sierra Leone", -13.234, 8.484),
    ("Lima", "Peru", -77.043, -12.046),
    ("Cusco", "Peru", -71.967, -13.532),
    ("Tegucigalpa", "Honduras", -87.192, 14.072),
    ("Beira", "Mozambique", 34.839, -19.843),
    ("Goma", "Democratic Republic of the Congo", 29.228, -1.679),
    ("Juba", "South Sudan", 31.582, 4.859),
    ("Bamako", "Mali", -8.003, 12.639),
    ("Antananarivo", "Madagascar", 47.508, -18.879),
    ("Quito", "Ecuador", -78.467, -0.180),
    ("Kabul", "Afghanistan", 69.207, 34.555),
    ("Lilongwe", "Malawi", 33.787, -13.963),
    ("Port-au-Prince", "Haiti", -72.335, 18.594),
    ("Monrovia", "Liberia", -10.801, 6.300),
    ("Suva", "Fiji", 178.441, -18.141),
    ("Port Vila", "Vanuatu", 168.321, -17.734),
    ("Colombo", "Sri Lanka", 79.861, 6.927),
    ("Yangon", "Myanmar", 96.195, 16.866),
    ("Kampala", "Uganda", 32.582, 0.347),
    ("Accra", "Ghana", -0.187, 5.603),
    ("Maputo", "Mozambique", 32.573, -25.969),
    ("Lusaka", "Zambia", 28.322, -15.387),
    ("Addis Ababa", "Ethiopia", 38.757, 9.005),
    ("Dili", "Timor-Leste", 125.573, -8.556),
)

_TOPICS = ("buildings", "roads", "waterways", "land use", "mapping")
_COMMENTS = (
    "Done, please check the roads in the south.",
    "Imagery is cloudy in the north-east corner.",
    "Split buildings along the river bank.",
    "Missed a few huts, fixed now.",
)
_IMAGERY = "tms[1,22]:https://127.0.0.1:9/{zoom}/{x}/{y}.png"


@dataclass(slots=True)
class Records:
    """Every table of a generated mock Tasking Manager."""

    users: list[User]
    organisations: list[Organisation]
    campaigns: list[Campaign]
    interests: list[Interest]
    licenses: list[License]
    teams: list[Team]
    projects: list[Project]
    next_history_id: int


def project_role(project_id: int) -> str:
    """Return the role an id plays: deleted, archived, draft, private or public."""
    if project_id % 50 == 12:
        return "deleted"
    if project_id % 25 == 4:
        return "archived"
    if project_id % 25 == 6:
        return "draft"
    if project_id % 50 == 9:
        return "private"
    return "public"


def generate(projects: int, seed: int) -> Records:
    """Generate every table for project ids 1..``projects``, deleted ids left out."""
    if projects < 0:
        raise ValueError(f"invalid project count {projects}: expected 0 or more")
    rng = random.Random(seed)

    users = _users(rng, projects)
    mappers = [user.id for user in users if user.username.startswith("mapper_")]
    validators = [user.id for user in users if user.username.startswith("validator_")]
    organisations = _organisations()
    teams = _teams(rng, users)

    history_ids = itertools.count(1)
    lock_holders = iter(mappers[6:])
    records = []
    for project_id in range(1, projects + 1):
        role = project_role(project_id)
        if role == "deleted":
            continue
        project = _project(rng, project_id, role, teams)
        _fill_tasks(rng, project, role, mappers, validators, history_ids, lock_holders)
        records.append(project)

    return Records(
        users=users,
        organisations=organisations,
        campaigns=[
            Campaign(1, "Flood Response 2026"),
            Campaign(2, "Cyclone Preparedness"),
            Campaign(3, "Missing Maps"),
            Campaign(4, "Road Access"),
            Campaign(5, "Health Facilities"),
            Campaign(6, "School Mapping"),
        ],
        interests=[
            Interest(1, "Disaster response"),
            Interest(2, "Public health"),
            Interest(3, "Infrastructure"),
            Interest(4, "Environment"),
            Interest(5, "Education"),
        ],
        licenses=[
            License(1, "Imagery for OSM only", "Tracing for OpenStreetMap only.", "OSM use only."),
            License(2, "Partner imagery", "Imagery lent by a partner agency.", "No export."),
            License(3, "Drone survey", "Drone imagery flown by a local team.", "Credit the team."),
        ],
        teams=teams,
        projects=records,
        next_history_id=next(history_ids),
    )


def _users(rng: random.Random, projects: int) -> list[User]:
    users = []
    for user_id, username, role, level, registered in _NAMED_USERS:
        users.append(_user(rng, user_id, username, role, level, registered))

    # More users as the dataset grows, so /users/ spans several pages of 20.
    extra = 4 + projects // 10
    for index in range(extra):
        is_validator = index % 4 == 3
        user_id = (3100 if is_validator else 2100) + index
        username = f"{'validator' if is_validator else 'mapper'}_{index:04d}"
        level = "ADVANCED" if is_validator else rng.choice(("BEGINNER", "INTERMEDIATE"))
        registered = datetime(2025, 6, 1) + timedelta(
            days=rng.randint(0, 540),
            seconds=rng.randint(0, 86399),
            microseconds=rng.randint(1, 999999),
        )
        users.append(_user(rng, user_id, username, "MAPPER", level, registered))
    return users


def _user(
    rng: random.Random, user_id: int, username: str, role: str, level: str, registered: datetime
) -> User:
    has_stats = username.startswith("mapper_")
    stats = None
    if has_stats:
        stats = {
            "highway": rng.randint(0, 120),
            "waterway": rng.randint(0, 80),
            "building": rng.randint(0, 60),
            "poi": rng.randint(0, 100),
            "changeset": rng.randint(1, 60),
        }
    return User(
        id=user_id,
        username=username,
        role=role,
        mapping_level=level,
        date_registered=registered,
        stats=stats,
        stats_last_updated=NOW - timedelta(seconds=rng.randint(60, 3600)) if has_stats else None,
        gender=rng.choice(("MALE", "FEMALE", "PREFER_NOT", "SELF_DESCRIBE", None)),
        email_verified=rng.random() < 0.6,
        interest_ids=tuple(sorted(rng.sample(range(1, 6), rng.randint(0, 2)))),
    )


def _organisations() -> list[Organisation]:
    return [
        Organisation(1, "TM3", "tm3", None, "FREE", ()),
        Organisation(
            2,
            "Humanitarian Mappers Local",
            "hml",
            "Local mappers in the field.",
            "FREE",
            (1002, 1001),
        ),
        Organisation(
            3,
            "Open Cities Collective",
            "occ",
            "Open data for growing cities.",
            "DISCOUNTED",
            (1001,),
        ),
        Organisation(
            4, "University Mapping Club", "umc", "Students mapping together.", "FREE", (1001,)
        ),
        Organisation(
            5, "Coastal Resilience Network", "crn", "Mapping coasts at risk.", "FULL_FEE", ()
        ),
        Organisation(6, "Youth Mappers Guild", "ymg", "Young mappers worldwide.", "FREE", (1002,)),
    ]


def _teams(rng: random.Random, users: list[User]) -> list[Team]:
    mapper_ids = [user.id for user in users if user.username.startswith("mapper_")]
    validator_ids = [user.id for user in users if user.username.startswith("validator_")]
    teams: list[Team] = []
    for organisation_id, slug in ((2, "HML"), (3, "OCC"), (4, "UMC"), (5, "CRN"), (6, "YMG")):
        validators = rng.sample(validator_ids, min(3, len(validator_ids)))
        teams.append(
            Team(
                id=len(teams) + 1,
                organisation_id=organisation_id,
                name=f"{slug} Validators",
                description=f"Validators of {slug} projects.",
                join_method="BY_REQUEST",
                visibility="PUBLIC",
                members=(TeamMember(ADMIN_ID, "MANAGER"),)
                + tuple(TeamMember(user_id, "MEMBER") for user_id in validators),
            )
        )
        mappers = rng.sample(mapper_ids, min(4, len(mapper_ids)))
        teams.append(
            Team(
                id=len(teams) + 1,
                organisation_id=organisation_id,
                name=f"{slug} Core Mappers",
                description=f"Invited mappers of {slug}.",
                join_method="BY_INVITE",
                visibility="PRIVATE",
                members=(TeamMember(ADMIN_ID, "MANAGER"),)
                + tuple(TeamMember(user_id, "MEMBER") for user_id in mappers),
            )
        )
    return teams


def _project(rng: random.Random, project_id: int, role: str, teams: list[Team]) -> Project:
    place, country, longitude, latitude = rng.choice(_PLACES)
    longitude += rng.uniform(-0.05, 0.05)
    latitude += rng.uniform(-0.05, 0.05)
    columns = rng.randint(2, 6)
    rows = rng.randint(2, 7)
    if project_id in (1, LOCKED_PROJECT_ID):
        # Enough tasks for several activity pages, and a task 5 for the recorded lock.
        columns, rows = max(columns, 3), 4
    grid_x, grid_y = tile_of(longitude, latitude)

    organisation_id = 2 if project_id == 1 else rng.randint(2, 6)
    author_id = MANAGER_ID if organisation_id in (2, 6) and rng.random() < 0.4 else ADMIN_ID
    created = DATA_START + timedelta(
        days=rng.randint(0, 320), seconds=rng.randint(0, 86399), microseconds=rng.randint(1, 999999)
    )
    due_date = None
    if rng.random() < 0.15:
        due_date = created + timedelta(days=rng.randint(120, 300))

    team_roles: tuple[tuple[int, str], ...] = ()
    if role == "public" and rng.random() < 0.2:
        own_teams = [team.id for team in teams if team.organisation_id == organisation_id]
        team_roles = ((rng.choice(own_teams), rng.choice(("MAPPER", "VALIDATOR"))),)

    allowed: tuple[int, ...] = ()
    if role == "private":
        allowed = (MAPPER_ANN_ID, MAPPER_BOB_ID)

    return Project(
        id=project_id,
        status={"archived": "ARCHIVED", "draft": "DRAFT"}.get(role, "PUBLISHED"),
        priority=rng.choice(("URGENT", "HIGH", "MEDIUM", "MEDIUM", "LOW")),
        difficulty=rng.choice(("EASY", "MODERATE", "CHALLENGING")),
        private=role == "private",
        organisation_id=organisation_id,
        author_id=author_id,
        city=place,
        country=country,
        name=f"{place} {rng.choice(_TOPICS)} ({country})",
        created=created,
        last_updated=created,
        due_date=due_date,
        mapping_types=tuple(rng.sample(MAPPING_TYPES, rng.randint(1, 3))),
        campaign_ids=tuple(sorted(rng.sample(range(1, 7), rng.randint(0, 2)))),
        interest_ids=tuple(sorted(rng.sample(range(1, 6), rng.randint(0, 2)))),
        allowed_user_ids=allowed,
        team_roles=team_roles,
        imagery=_IMAGERY if rng.random() < 0.8 else None,
        license_id=rng.randint(1, 3) if rng.random() < 0.2 else None,
        grid_x=grid_x - columns // 2,
        grid_y=grid_y - rows // 2,
        columns=columns,
        rows=rows,
    )


def _fill_tasks(
    rng: random.Random,
    project: Project,
    role: str,
    mappers: list[int],
    validators: list[int],
    history_ids: Iterator[int],
    lock_holders: Iterator[int],
) -> None:
    """Create the task grid, the final task states and the history that leads to them."""
    progress = 0.0
    if role != "draft" and rng.random() >= 0.1:
        progress = rng.uniform(0.15, 1.0)
    if project.id == 1:
        progress = max(progress, 0.7)

    # History falls between the creation and a window end at least 3 h before NOW.
    start = project.created + timedelta(hours=1)
    end = min(project.created + timedelta(days=rng.randint(10, 90)), NOW - timedelta(hours=3))
    end = max(end, start + timedelta(hours=1))

    entries: list[HistoryEntry] = []
    task_ids = itertools.count(1)
    for column in range(project.columns):
        for row in range(project.rows):
            task = Task(
                id=next(task_ids), x=project.grid_x + column, y=project.grid_y + row, status="READY"
            )
            entries += _task_history(rng, task, progress, start, end, mappers, validators)
            project.tasks.append(task)

    _add_locks(rng, project, role, entries, lock_holders)

    entries.sort(key=lambda entry: entry.when)
    for entry in entries:
        entry.id = next(history_ids)
    project.history = entries
    if entries:
        project.last_updated = entries[-1].when
    else:
        project.last_updated = project.created + timedelta(days=2)


def _task_history(
    rng: random.Random,
    task: Task,
    progress: float,
    start: datetime,
    end: datetime,
    mappers: list[int],
    validators: list[int],
) -> list[HistoryEntry]:
    """Pick the final state of one task and return the history rows that lead to it."""
    draw = rng.random()
    if draw < progress * 0.55:
        final = "VALIDATED"
    elif draw < progress:
        final = "MAPPED"
    elif draw < progress + 0.04 and progress > 0:
        final = "BADIMAGERY"
    elif draw < progress + 0.07 and progress > 0:
        final = "INVALIDATED"
    else:
        return []

    mapper = rng.choice(mappers)
    span = (end - start).total_seconds()
    locked_at = start + timedelta(
        seconds=rng.uniform(0, span * 0.6), microseconds=rng.randint(1, 999999)
    )
    mapped_at = locked_at + timedelta(minutes=rng.randint(2, 60))
    mapped_state = "BADIMAGERY" if final == "BADIMAGERY" else "MAPPED"
    entries = [
        HistoryEntry(
            0, task.id, "LOCKED_FOR_MAPPING", _duration(mapped_at - locked_at), locked_at, mapper
        ),
    ]
    if rng.random() < 0.2:
        comment_at = mapped_at - timedelta(seconds=20)
        entries.append(
            HistoryEntry(0, task.id, "COMMENT", rng.choice(_COMMENTS), comment_at, mapper)
        )
    entries.append(HistoryEntry(0, task.id, "STATE_CHANGE", mapped_state, mapped_at, mapper))
    task.status = mapped_state
    task.mapped_by = mapper

    if final in ("VALIDATED", "INVALIDATED"):
        validator = rng.choice(validators)
        remaining = max((end - mapped_at).total_seconds(), 60.0)
        checked_from = mapped_at + timedelta(
            seconds=rng.uniform(30, remaining), microseconds=rng.randint(1, 999)
        )
        checked_at = checked_from + timedelta(minutes=rng.randint(2, 30))
        entries.append(
            HistoryEntry(
                0,
                task.id,
                "LOCKED_FOR_VALIDATION",
                _duration(checked_at - checked_from),
                checked_from,
                validator,
            )
        )
        entries.append(HistoryEntry(0, task.id, "STATE_CHANGE", final, checked_at, validator))
        task.status = final
        if final == "VALIDATED":
            task.validated_by = validator
        else:
            task.mapped_by = None
    return entries


def _add_locks(
    rng: random.Random,
    project: Project,
    role: str,
    entries: list[HistoryEntry],
    lock_holders: Iterator[int],
) -> None:
    """Lock task 5 of project 2 for mapper_chen, and a READY task of a few public projects."""
    holder: int | None = None
    candidates = [task for task in project.tasks if task.status == "READY"]
    if project.id == LOCKED_PROJECT_ID:
        holder = MAPPER_CHEN_ID
        candidates = [task for task in project.tasks if task.id == LOCKED_TASK_ID]
        for entry in entries[:]:
            if entry.task_id == LOCKED_TASK_ID:
                entries.remove(entry)
    elif role == "public" and candidates and rng.random() < 0.03:
        holder = next(lock_holders, None)
    if holder is None or not candidates:
        return

    task = candidates[0]
    task.status = "LOCKED_FOR_MAPPING"
    task.locked_by = holder
    task.mapped_by = None
    task.validated_by = None
    locked_at = NOW - timedelta(minutes=rng.randint(5, 90), microseconds=rng.randint(1, 999999))
    entries.append(HistoryEntry(0, task.id, "LOCKED_FOR_MAPPING", None, locked_at, holder))


def _duration(span: timedelta) -> str:
    """Format a lock duration as the Tasking Manager does: ``HH:MM:SS.ffffff``."""
    total_microseconds = span // timedelta(microseconds=1)
    seconds, microseconds = divmod(total_microseconds, 1_000_000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{microseconds:06d}"
