"""Records of the mock Tasking Manager: plain dataclasses, enum orders and the reference clock.

Timestamps are naive datetimes in UTC, like the ones the Tasking Manager stores. Nothing here
reads the wall clock: ``TODAY`` and ``NOW`` fix the day the mock data ends, so every run of the
mock produces the same bodies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime

#: The day the mock data ends; plays the role of "today" wherever the API uses the current date.
TODAY = date(2026, 12, 4)

#: No generated timestamp is later than this instant.
NOW = datetime(2026, 12, 4, 18, 0, 0)

#: The first day generated history can fall on.
DATA_START = datetime(2026, 1, 1)

# Sort order of enum names, as the integers the Tasking Manager stores.
PRIORITY_ORDER = {"URGENT": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}
DIFFICULTY_ORDER = {"EASY": 1, "MODERATE": 2, "CHALLENGING": 3}
STATUS_ORDER = {"ARCHIVED": 0, "PUBLISHED": 1, "DRAFT": 2}
MAPPING_TYPES = ("ROADS", "BUILDINGS", "WATERWAYS", "LAND_USE", "OTHER")
MAPPING_LEVELS = ("BEGINNER", "INTERMEDIATE", "ADVANCED")

#: Zoom level of every generated task square.
TASK_ZOOM = 16


@dataclass(slots=True)
class User:
    id: int
    username: str
    role: str
    """``ADMIN``, ``MAPPER`` or ``READ_ONLY``."""
    mapping_level: str
    date_registered: datetime
    stats: dict[str, int] | None
    """OSM edit counters shown by ``/users/``; None for users whose stats were never fetched."""
    stats_last_updated: datetime | None
    gender: str | None
    """``MALE``, ``FEMALE``, ``PREFER_NOT`` or ``SELF_DESCRIBE``."""
    email_verified: bool
    interest_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class Organisation:
    id: int
    name: str
    slug: str
    description: str | None
    type: str
    manager_ids: tuple[int, ...]


@dataclass(slots=True)
class Campaign:
    id: int
    name: str


@dataclass(slots=True)
class Interest:
    id: int
    name: str


@dataclass(slots=True)
class License:
    id: int
    name: str
    description: str
    plain_text: str


@dataclass(slots=True)
class TeamMember:
    user_id: int
    function: str
    """``MANAGER`` or ``MEMBER``."""


@dataclass(slots=True)
class Team:
    id: int
    organisation_id: int
    name: str
    description: str
    join_method: str
    visibility: str
    """``PUBLIC`` or ``PRIVATE``."""
    members: tuple[TeamMember, ...]


@dataclass(slots=True)
class Task:
    id: int
    x: int
    y: int
    status: str
    locked_by: int | None = None
    mapped_by: int | None = None
    validated_by: int | None = None


@dataclass(slots=True)
class HistoryEntry:
    id: int
    task_id: int
    action: str
    text: str | None
    """New state for ``STATE_CHANGE``, the comment, or the lock duration ``HH:MM:SS.ffffff``."""
    when: datetime
    user_id: int


@dataclass(slots=True)
class Project:
    id: int
    status: str
    priority: str
    difficulty: str
    private: bool
    organisation_id: int
    author_id: int
    city: str
    country: str
    name: str
    created: datetime
    last_updated: datetime
    due_date: datetime | None
    mapping_types: tuple[str, ...]
    campaign_ids: tuple[int, ...]
    interest_ids: tuple[int, ...]
    allowed_user_ids: tuple[int, ...]
    team_roles: tuple[tuple[int, str], ...]
    """Pairs of team id and the team's role on the project."""
    imagery: str | None
    license_id: int | None
    grid_x: int
    """Tile column of the north-west task square."""
    grid_y: int
    """Tile row of the north-west task square."""
    columns: int
    rows: int
    tasks: list[Task] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    sandbox: bool = False
    database: str = "OSM"

    def bbox(self) -> tuple[float, float, float, float]:
        """Return the bounding box of the task grid as (west, south, east, north) degrees."""
        west, north = tile_corner(self.grid_x, self.grid_y)
        east, south = tile_corner(self.grid_x + self.columns, self.grid_y + self.rows)
        return west, south, east, north

    def centroid(self) -> tuple[float, float]:
        """Return the centre of the task grid as (longitude, latitude), rounded to 6 decimals."""
        west, south, east, north = self.bbox()
        return round((west + east) / 2, 6), round((south + north) / 2, 6)


def tile_corner(x: int, y: int, zoom: int = TASK_ZOOM) -> tuple[float, float]:
    """Return the north-west corner (longitude, latitude) of a Web Mercator tile, 6 decimals."""
    scale = 2**zoom
    longitude = x / scale * 360.0 - 180.0
    latitude = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / scale))))
    return round(longitude, 6), round(latitude, 6)


def tile_of(longitude: float, latitude: float, zoom: int = TASK_ZOOM) -> tuple[int, int]:
    """Return the (column, row) of the Web Mercator tile that contains a point."""
    scale = 2**zoom
    x = int((longitude + 180.0) / 360.0 * scale)
    radians = math.radians(latitude)
    y = int((1 - math.asinh(math.tan(radians)) / math.pi) / 2 * scale)
    return x, y
