"""QueryBuilder: the path and query of one page, shared by runs and plans."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from tm_export.query import QueryBuilder
from tm_export.recipe import load_recipe

from .conftest import write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN}
output: OUT
streams:
  windows:
    endpoint: projects
    params:
      projectStatuses: [PUBLISHED, ARCHIVED]
      window: {start: 2026-06-01, end: 2026-07-31, step: 1 month, bind: [createdFrom, createdTo]}
  activities:
    endpoint: project_activities
    params: {project_id: {each: [7]}}
  users:
    endpoint: user_statistics
    params: {username: {each: ["Ana María"]}}
"""


def builders(tmp_path: Path) -> dict[str, QueryBuilder]:
    recipe = load_recipe(write_recipe(tmp_path, RECIPE))
    return {name: QueryBuilder(spec) for name, spec in recipe.streams.items()}


def test_search_page_query(tmp_path: Path) -> None:
    """Catalog defaults, constants, the window's next-day bound and the page number."""
    partition = {"createdFrom": "2026-06-01", "createdTo": "2026-06-30"}

    path, query = builders(tmp_path)["windows"].build(partition, 3)

    assert path == "/projects/"
    assert query == {
        "omitMapResults": "true",
        "orderBy": "id",
        "orderByType": "ASC",
        "projectStatuses": "PUBLISHED,ARCHIVED",
        "createdFrom": "2026-06-01",
        "createdTo": "2026-07-01",
        "page": "3",
    }


def test_open_ended_window_sends_no_bound(tmp_path: Path) -> None:
    """A window ending 9999-12-31 has no next day, so its bound is not sent."""
    partition = {"createdFrom": "2026-06-01", "createdTo": "9999-12-31"}

    _, query = builders(tmp_path)["windows"].build(partition, 1)

    assert "createdTo" not in query
    assert query["createdFrom"] == "2026-06-01"


def test_path_parameter_leaves_query(tmp_path: Path) -> None:
    path, query = builders(tmp_path)["activities"].build({"project_id": 7}, 2)

    assert path == "/projects/7/activities/"
    assert query == {"page": "2"}


def test_path_parameter_quoted(tmp_path: Path) -> None:
    """A parent stream's username with a space or a slash stays one path segment."""
    path, query = builders(tmp_path)["users"].build({"username": "Ana María/x"}, 1)

    assert path == "/users/Ana%20Mar%C3%ADa%2Fx/statistics/"
    assert query == {}


def test_incremental_search_adds_day(tmp_path: Path) -> None:
    """An incremental search requests projects updated on or after the day of ``since``."""
    spec = load_recipe(write_recipe(tmp_path, RECIPE)).streams["windows"]
    builder = QueryBuilder(spec, since=dt.datetime(2026, 7, 2, 23, 59, 59, tzinfo=dt.UTC))

    _, query = builder.build({"createdFrom": "2026-07-01", "createdTo": "2026-07-31"}, 1)

    assert query["lastUpdatedFrom"] == "2026-07-02"
    assert query["createdTo"] == "2026-08-01"
