"""Large responses go to a spool file and are parsed as a stream, with the same result."""

from __future__ import annotations

from pathlib import Path

from tm_export.errors import ExitCode
from tm_export.mock import MockServer

from .conftest import data_file, export_here, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  tasks:
    endpoint: project_tasks
    params: {project_id: {from: projects.projectId}}
  details:
    endpoint: project
    params: {project_id: {each: [1, 2]}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""
STREAMS = ("projects", "tasks", "details", "activities")


def test_spooled_equals_in_memory(tmp_path: Path, mock: MockServer) -> None:
    """With a 200-byte threshold every page is spooled; the files equal an in-memory export."""
    (tmp_path / "memory").mkdir()
    (tmp_path / "spooled").mkdir()
    in_memory = export_here(write_recipe(tmp_path / "memory", RECIPE), mock)
    spooled = export_here(write_recipe(tmp_path / "spooled", RECIPE), mock, spool_over=200)

    assert in_memory.exit_code() == spooled.exit_code() == ExitCode.COMPLETE
    for stream in STREAMS:
        expected = sorted(data_file(tmp_path / "memory/out", stream).read_bytes().splitlines())
        actual = sorted(data_file(tmp_path / "spooled/out", stream).read_bytes().splitlines())
        assert actual == expected, stream
    assert not any((tmp_path / "spooled/out/runs/0001/.spool").glob("*"))


def test_spooled_page_deduplicates(tmp_path: Path, mock: MockServer) -> None:
    """A spooled page that repeats a task is written once and the repeat is counted."""
    import urllib.request

    import orjson

    with urllib.request.urlopen(f"{mock.api_url}/projects/1/tasks/") as reply:
        body = orjson.loads(reply.read())
    body["features"].append(body["features"][0])
    mock.add_fault(path=r"^/api/v2/projects/1/tasks/$", status=200, body=body)
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          tasks:
            endpoint: project_tasks
            params: {project_id: {each: [1]}}
        """,
    )

    result = export_here(recipe, mock, spool_over=200)

    lines = data_file(tmp_path / "out", "tasks").read_bytes().splitlines()
    assert len(lines) == len(body["features"]) - 1
    assert result.streams["tasks"].duplicates == 1
