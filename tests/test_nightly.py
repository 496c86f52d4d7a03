"""Nights of incremental runs with random edits and failures: a snapshot taken after a
clean night contains the records of a full run made then.

Each seed plays a fixed sequence of nights against its own mock server, with one output
folder or with shards merged each night. Before a night,
projects are edited, given task history or deleted; during it, some requests return 500
(the night ends with exit 3) or 401 (the night stops with exit 1 and is resumed). The
engine's clock is set to each night's time, so that date windows end between nights.

A 401 after the start looks like a token that expired during the night, so the streams
that finished partitions in that session keep a problem, and the snapshot warns of it.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

import tm_export.engine
from tm_export.mock import MockServer

from .conftest import run_cli

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project
    params: {project_id: {from: projects.projectId}, abbreviated: true}
  contributions:
    endpoint: project_contributions
    params: {project_id: {from: projects.projectId}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  statistics:
    endpoint: project_statistics
    params: {project_id: {range: [1, 26]}}
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2031-01-01, end: 2031-01-15, step: 3 days}
  project_task_stats:
    endpoint: tasks_statistics
    params:
      projectId: {from: projects.projectId}
      dates: {start: 2031-01-01, end: 2031-01-15, step: 3 days}
"""

STREAMS = (
    "projects",
    "details",
    "contributions",
    "activities",
    "statistics",
    "task_stats",
    "project_task_stats",
)

FAULT_PATHS = (
    r"^/api/v2/projects/$",
    r"^/api/v2/projects/\d+/$",
    r"^/api/v2/projects/\d+/contributions/$",
    r"^/api/v2/projects/\d+/activities/$",
    r"^/api/v2/projects/\d+/statistics/$",
    r"^/api/v2/tasks/statistics/$",
)

FIRST_NIGHT = dt.datetime(2031, 1, 1, 2, 0)


def change_data(mock: MockServer, rng: random.Random, since: dt.datetime, active: set[int]) -> None:
    """Edit, add task history to, and perhaps delete projects, in the 20 hours after
    ``since``, the last time a run started: an edit cannot predate the run before it."""
    dataset = mock.dataset
    live = sorted(dataset.projects)
    for _ in range(rng.randrange(4)):
        moment = since + dt.timedelta(minutes=rng.randrange(1, 1200))
        dataset.touch_project(rng.choice(live), moment)
    for _ in range(rng.randrange(6)):
        project = rng.choice(live)
        moment = since + dt.timedelta(minutes=rng.randrange(1, 1200))
        dataset.add_activity(
            project, task_id=1, text=rng.choice(["MAPPED", "VALIDATED"]), when=moment
        )
        active.add(project)
    # A deleted project's history would leave the server's date statistics, which ended
    # windows keep as archived (a documented difference), so only quiet ones go.
    quiet = [project for project in live if project not in active]
    if quiet and rng.random() < 0.3:
        dataset.delete_project(rng.choice(quiet))


def add_faults(mock: MockServer, rng: random.Random) -> None:
    """Add rules that fail some requests with 500, and perhaps one with 401."""
    for _ in range(rng.randrange(3)):
        path = rng.choice(FAULT_PATHS)
        mock.add_fault(path=path, status=500, after=rng.randrange(20), times=rng.randrange(1, 4))
    if rng.random() < 0.25:
        body = {"SubCode": "InvalidToken"}
        mock.add_fault(
            path=rng.choice(FAULT_PATHS), status=401, body=body, after=rng.randrange(15), times=1
        )


def run_night(
    mock: MockServer, clock: dict[str, dt.datetime], args: list[str], env: dict[str, str]
) -> int:
    """Run one night's command, and return its exit code.

    A night that stops (a 401, or a 500 on the check of deleted projects) is resumed half
    an hour later, without faults."""
    outcome = run_cli(*args, env=env)
    if outcome.exit_code == 1:
        mock.clear_faults()
        clock["now"] += dt.timedelta(minutes=30)
        outcome = run_cli(*args, env=env)
    assert outcome.exit_code in (0, 3), outcome.stderr
    return outcome.exit_code


def sorted_lines(path: Path) -> list[bytes]:
    return sorted(path.read_bytes().splitlines()) if path.exists() else []


@pytest.mark.parametrize(
    ("seed", "shards"), [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (7, 3), (8, 3)]
)
def test_snapshot_after_nights_equals_full_run(
    tmp_path: Path, seed: int, shards: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``shards``, each night runs that many shards and merges them into the output."""
    rng = random.Random(seed)
    clock = {"now": FIRST_NIGHT}
    monkeypatch.setattr(
        tm_export.engine, "utc_now_text", lambda: clock["now"].isoformat(timespec="seconds") + "Z"
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("OUT", str(tmp_path / "out")))
    jobs = [
        ["--shard", f"{shard}/{shards}", "--output", str(tmp_path / f"shard-{shard}")]
        for shard in range(1, shards + 1)
    ] or [[]]

    with MockServer(projects=24, seed=seed) as mock:
        env = {"TM_API_TOKEN": mock.tokens["admin"]}
        active: set[int] = set()
        for night in range(7):
            if night:
                change_data(mock, rng, clock["now"], active)
            clock["now"] = FIRST_NIGHT + dt.timedelta(days=night, minutes=rng.randrange(120))
            if night < 6:
                add_faults(mock, rng)
            args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet"]
            args += ["--incremental"] if night else []
            codes = [run_night(mock, clock, [*args, *job], env) for job in jobs]
            if shards:
                shard_folders = [job[-1] for job in jobs]
                merged = run_cli("merge", str(tmp_path / "out"), *shard_folders, env=env)
                assert merged.exit_code == 0, merged.stderr
            mock.clear_faults()
        # The last night had no faults, so it made every earlier failure good.
        assert codes == [0] * len(jobs)
        rejected = any(request["status"] == 401 for request in mock.requests())

        snapshot = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))
        full = tmp_path / "full.yaml"
        full.write_text(RECIPE.replace("OUT", str(tmp_path / "full")))
        assert (
            run_cli("run", str(full), "--base-url", mock.api_url, "--quiet", env=env).exit_code == 0
        )

    assert snapshot.exit_code == 0, snapshot.stderr
    if rejected:
        assert snapshot.stderr.startswith("tm-export: warning: the runs recorded problems (")
    else:
        assert snapshot.stderr == ""
    for stream in STREAMS:
        expected = sorted_lines(tmp_path / "full/runs/0001/data" / f"{stream}.jsonl")
        assert sorted_lines(tmp_path / "now" / f"{stream}.jsonl") == expected, stream
