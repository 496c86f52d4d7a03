"""Every catalog endpoint, exported from the mock server, has the count the mock reports."""

from __future__ import annotations

from pathlib import Path

from tm_export.catalog import CATALOG
from tm_export.mock import MockServer

from .conftest import data_file, run_cli, write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 100000/s, concurrency: 16}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  project:
    endpoint: project
    params: {project_id: {from: projects.projectId}, abbreviated: true}
  project_summary:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
  project_aoi:
    endpoint: project_aoi
    params: {project_id: {from: projects.projectId}}
  project_tasks:
    endpoint: project_tasks
    params: {project_id: {from: projects.projectId}}
  task:
    endpoint: task
    params:
      project_id: {from: project_tasks._partition.project_id}
      task_id: {from: project_tasks.properties.taskId}
  project_contributions:
    endpoint: project_contributions
    params: {project_id: {from: projects.projectId}}
  project_contributions_per_day:
    endpoint: project_contributions_per_day
    params: {project_id: {from: projects.projectId}}
  project_activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  project_latest_activities:
    endpoint: project_latest_activities
    params: {project_id: {from: projects.projectId}}
  project_statistics:
    endpoint: project_statistics
    params: {project_id: {from: projects.projectId}}
  tasks_statistics:
    endpoint: tasks_statistics
    params:
      dates: {start: 2020-01-01, end: 2026-12-31}
  users_statistics:
    endpoint: users_statistics
    params:
      dates: {start: 2024-01-01, end: 2026-12-31}
  users:
    endpoint: users
  user_statistics:
    endpoint: user_statistics
    params: {username: {from: users.username}}
  organisations:
    endpoint: organisations
  organisation:
    endpoint: organisation
    params: {organisation_id: {from: organisations.organisationId}}
  organisation_statistics:
    endpoint: organisation_statistics
    params: {organisation_id: {from: organisations.organisationId}}
  campaigns:
    endpoint: campaigns
  teams:
    endpoint: teams
  interests:
    endpoint: interests
  countries:
    endpoint: countries
  licenses:
    endpoint: licenses
  system_statistics:
    endpoint: system_statistics
  system_heartbeat:
    endpoint: system_heartbeat
"""


def test_every_endpoint_matches_mock(tmp_path: Path) -> None:
    """One stream per catalog endpoint; each stream's record count equals the mock's own count."""
    recipe = write_recipe(tmp_path, RECIPE)

    with MockServer(projects=25) as mock:
        outcome = run_cli(
            "run",
            str(recipe),
            "--base-url",
            mock.api_url,
            env={"TM_API_TOKEN": mock.tokens["admin"]},
        )
        truth = mock.counts(role="admin")

    assert outcome.exit_code == 0, outcome.stderr
    streams = {name for name in CATALOG}
    assert streams <= set(truth)
    counts = {
        name: len(data_file(tmp_path / "out", name).read_bytes().splitlines()) for name in streams
    }
    assert counts == {name: truth[name] for name in streams}
    assert all(counts[name] > 0 for name in streams)
