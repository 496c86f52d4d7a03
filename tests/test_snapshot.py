"""Snapshots: a full run and its incremental runs combine into what a full run would hold."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import admin_run, run_cli, write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}
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
  task_stats:
    endpoint: tasks_statistics
    params:
      dates: {start: 2026-01-01, end: END_OF_YEAR, step: 1 month}
  statistics:
    endpoint: project_statistics
    params: {project_id: {range: [1, 12]}}
"""
# The windows reach to the end of this year, so that some have not ended when the tests run.
RECIPE = RECIPE.replace("END_OF_YEAR", f"{max(dt.date.today().year, 2026)}-12-31")

STREAMS = ("projects", "details", "contributions", "activities", "task_stats", "statistics")


def sorted_lines(path: Path) -> list[bytes]:
    return sorted(path.read_bytes().splitlines())


def change_server(mock: MockServer, projects: list[int]) -> int:
    """Edit the second of ``projects``, add task history to the third and delete the
    fourth; return the deleted project."""
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    touched, busy, deleted = projects[1:4]
    mock.dataset.touch_project(touched, later)
    for seconds in (1, 2):
        mock.dataset.add_activity(busy, task_id=1, when=later + dt.timedelta(seconds=seconds))
    mock.dataset.delete_project(deleted)
    return deleted


def windows_as_archived(runs: Path, full: list[bytes]) -> list[bytes]:
    """Return the task statistics a snapshot holds: windows that incremental runs fetched
    again as a full run has them now, and the others as the first run archived them.

    A finished window is not fetched again, so it keeps the tasks of the project deleted
    since, which the server's statistics no longer count.
    """
    fetched = {
        entry["p"]
        for run in ("0002", "0003")
        for entry in map(orjson.loads, (runs / run / "manifest.jsonl").read_bytes().splitlines())
        if entry["t"] == "part" and entry["s"] == "task_stats" and entry["state"] == "done"
    }

    def window(line: bytes) -> str:
        return orjson.dumps(orjson.loads(line)["_partition"], option=orjson.OPT_SORT_KEYS).decode()

    archived = sorted_lines(runs / "0001/data/task_stats.jsonl")
    assert 0 < len(fetched) < len({window(line) for line in archived})
    unfetched = [line for line in archived if window(line) not in fetched]
    return sorted(unfetched + [line for line in full if window(line) in fetched])


def test_snapshot_equals_a_full_run(tmp_path: Path, mock: MockServer) -> None:
    """A snapshot of a full run and two incremental runs contains exactly the records of a
    full run made afterwards, line for line, but for the date windows they did not fetch."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    first = tmp_path / "out/runs/0001"
    archived = [
        orjson.loads(line)["projectId"] for line in sorted_lines(first / "data/projects.jsonl")
    ]
    deleted = [change_server(mock, archived[0:4])]
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    deleted.append(change_server(mock, archived[4:8]))
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0, outcome.stderr
    full = tmp_path / "full.yaml"
    full.write_text(recipe.read_text().replace(str(tmp_path / "out"), str(tmp_path / "full")))
    assert run_cli("run", str(full), "--base-url", mock.api_url, env=env).exit_code == 0
    for stream in STREAMS:
        expected = sorted_lines(tmp_path / "full/runs/0001/data" / f"{stream}.jsonl")
        if stream == "task_stats":
            expected = windows_as_archived(tmp_path / "out/runs", expected)
        assert sorted_lines(tmp_path / "now" / f"{stream}.jsonl") == expected, stream
    counts = {s: len(sorted_lines(tmp_path / "now" / f"{s}.jsonl")) for s in STREAMS}
    width = max(map(len, STREAMS))
    assert outcome.stdout.splitlines() == [
        f"{tmp_path / 'now'}: a snapshot of runs 0001, 0002, 0003",
        *(f"  {s:<{width}}  {counts[s]} records" for s in STREAMS),
        f"  left out: deleted projects {deleted[0]}, {deleted[1]}",
    ]


def test_snapshot_record(tmp_path: Path, mock: MockServer) -> None:
    """snapshot.json names the runs, the rule of each stream and each file's SHA-256."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    assert run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now")).exit_code == 0

    record = orjson.loads((tmp_path / "now/snapshot.json").read_bytes())
    runs = [tmp_path / "out/runs/0001", tmp_path / "out/runs/0002"]
    assert [run["folder"] for run in record["runs"]] == [str(run) for run in runs]
    assert [run["incremental"] for run in record["runs"]] == [False, True]
    assert [run["run_record_sha256"] for run in record["runs"]] == [
        hashlib.sha256((run / "run.json").read_bytes()).hexdigest() for run in runs
    ]
    assert record["base_url"] == mock.api_url
    assert record["deleted_projects"] == []
    assert {name: stream["rule"] for name, stream in record["streams"].items()} == {
        "projects": "key",
        "details": "partition",
        "contributions": "partition",
        "activities": "added",
        "task_stats": "partition",
        "statistics": "partition",
    }
    for name, stream in record["streams"].items():
        data = (tmp_path / "now" / f"{name}.jsonl").read_bytes()
        assert stream["sha256"] == hashlib.sha256(data).hexdigest()
        assert stream["records"] == len(data.splitlines())
    assert sorted(path.name for path in (tmp_path / "now").iterdir()) == sorted(
        [f"{name}.jsonl" for name in STREAMS] + ["snapshot.json"]
    )


def test_verify_snapshot(tmp_path: Path, mock: MockServer) -> None:
    """verify compares a snapshot's files with snapshot.json: a removed line is a mismatch
    (exit 3), and a file it does not name is a note."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    snapshot = tmp_path / "now"
    assert run_cli("snapshot", str(tmp_path / "out"), str(snapshot)).exit_code == 0
    record = orjson.loads((snapshot / "snapshot.json").read_bytes())["streams"]

    clean = run_cli("verify", str(snapshot))
    status = run_cli("status", str(snapshot))
    details = snapshot / "details.jsonl"
    details.write_bytes(b"".join(details.read_bytes().splitlines(keepends=True)[1:]))
    (snapshot / "notes.txt").write_text("mine\n")
    (snapshot / ".DS_Store").write_bytes(b"")
    changed = run_cli("verify", str(snapshot))
    as_json = orjson.loads(run_cli("verify", str(snapshot), "--json").stdout)

    assert clean.exit_code == 0, clean.stdout
    assert clean.stdout.splitlines()[-1] == (
        f"verified the snapshot: {len(STREAMS)} files match snapshot.json"
    )
    assert status.exit_code == 2
    assert status.stderr == (
        f"tm-export: error: {snapshot}: a snapshot, not a run folder; 'tm-export verify "
        f"{snapshot}' checks it, and its snapshot.json names the runs it combines\n"
    )
    assert changed.exit_code == 3
    assert [line for line in changed.stdout.splitlines() if "MISMATCH" in line] == [
        f"  MISMATCH  details.jsonl: the SHA-256 is {hashlib.sha256(details.read_bytes()).hexdigest()}"
        f", but snapshot.json records {record['details']['sha256']}",
        f"  MISMATCH  details.jsonl: {record['details']['records'] - 1} records, but "
        f"snapshot.json records {record['details']['records']}",
    ]
    assert "  note      notes.txt: not named in snapshot.json; not verified" in changed.stdout
    assert changed.stdout.splitlines()[-1] == (
        f"verified the snapshot: 1 of {len(STREAMS)} files differ; exit 3"
    )
    assert as_json["ok"] is False
    assert as_json["files"]["projects.jsonl"]["ok"] is True
    assert as_json["not_verified"] == ["notes.txt"]


def test_snapshot_of_bag_and_compressed_runs(tmp_path: Path, mock: MockServer) -> None:
    """A bagged, gzip-compressed full run and its incremental run combine into plain lines."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, "--compression", "gzip", "--bag", env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    assert run_cli(*args, "--start-over", env=env).exit_code == 0

    outcome = run_cli("snapshot", str(tmp_path / "out/runs/0002"), str(tmp_path / "now"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[0] == f"{tmp_path / 'now'}: a snapshot of runs 0001, 0002"
    for stream in STREAMS:
        expected = sorted_lines(tmp_path / "out/runs/0003/data" / f"{stream}.jsonl")
        assert sorted_lines(tmp_path / "now" / f"{stream}.jsonl") == expected, stream


def test_failed_partition_keeps_earlier_records(tmp_path: Path, mock: MockServer) -> None:
    """A partition that the newest run failed keeps the records of the run that finished it."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("rate_limit: 10000/s", "rate_limit: 10000/s, retries: {attempts: 1}"),
    )
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    mock.add_fault(path=r"^/api/v2/projects/7/statistics/$", status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0
    first = sorted_lines(tmp_path / "out/runs/0001/data/statistics.jsonl")
    assert sorted_lines(tmp_path / "now/statistics.jsonl") == first
    assert any(b'"project_id":7' in line for line in first)
    assert outcome.stderr == (
        "tm-export: warning: partitions failed in the newest run that fetched them (1 of "
        "statistics): their records are an earlier run's, or incomplete; snapshot.json lists "
        "them, and the next incremental run fetches them again\n"
    )
    record = orjson.loads((tmp_path / "now/snapshot.json").read_bytes())
    assert record["streams"]["statistics"]["failed"] == [{"project_id": 7}]
    assert [
        stream["failed"] for name, stream in record["streams"].items() if name != "statistics"
    ] == [[]] * 5


def test_snapshot_lists_problems(tmp_path: Path, mock: MockServer) -> None:
    """A stream problem of a run (here a from: field that no record has) is listed in
    snapshot.json with its run, and named in a warning, as failed partitions are."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
        "  projects: {endpoint: projects}\n"
        "  details:\n    endpoint: project_summary\n"
        "    params: {project_id: {from: projects.projectID}}\n",
    )
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 3
    run = tmp_path / "out" / "runs" / "0001"
    entries = map(orjson.loads, (run / "manifest.jsonl").read_bytes().splitlines())
    problems = [entry["problem"] for entry in entries if entry["t"] == "feed"]
    assert len(problems) == 1

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (
        "tm-export: warning: the runs recorded problems (1 of details), so these streams may "
        "lack records; snapshot.json lists each problem with its run, and 'tm-export status "
        "RUN' explains it\n"
    )
    record = orjson.loads((tmp_path / "now/snapshot.json").read_bytes())
    assert record["streams"]["details"]["problems"] == [
        {"run": str(run.resolve()), "partition": None, "problem": problems[0]}
    ]
    assert record["streams"]["projects"]["problems"] == []


def test_problems_of_deleted_projects_left_out(tmp_path: Path, mock: MockServer) -> None:
    """The problems of a deleted project's partitions are left out with its records."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
        "  projects: {endpoint: projects}\n"
        "  activities:\n    endpoint: project_activities\n    max_pages: 1\n"
        "    params: {project_id: {from: projects.projectId}}\n",
    )
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args).exit_code == 3
    parts = map(orjson.loads, (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes().splitlines())
    capped = sorted(
        orjson.loads(e["p"])["project_id"] for e in parts if e["t"] == "part" and e.get("problems")
    )
    assert len(capped) >= 2
    mock.dataset.delete_project(capped[0])
    assert run_cli(*args, "--incremental").exit_code == 0

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0, outcome.stderr
    record = orjson.loads((tmp_path / "now/snapshot.json").read_bytes())
    listed = {
        entry["partition"]["project_id"] for entry in record["streams"]["activities"]["problems"]
    }
    assert listed == set(capped[1:])


@pytest.mark.parametrize(
    ("setup", "message", "code"),
    [
        (
            "missing",
            "{tmp}/nowhere: folder not found; give an output folder (with runs/) or a run "
            "folder such as OUTPUT/runs/0001",
            2,
        ),
        (
            "exists",
            "{tmp}/now exists already; give a new folder for the snapshot, or delete this one",
            2,
        ),
        (
            "unfinished",
            "{tmp}/out/runs/0001: the run is unfinished, so a snapshot would miss what it has "
            "still to fetch; finish it with 'tm-export run {tmp}/recipe.yaml' and the options "
            "that started it, or give an earlier run folder",
            2,
        ),
        (
            "shard",
            "{tmp}/out/runs/0001: the run exports shard 1/2 only, so a snapshot of it would "
            "miss the partitions of the other shards; merge the shards with 'tm-export merge' "
            "and snapshot the merged run",
            2,
        ),
    ],
)
def test_snapshot_refusals(
    tmp_path: Path, mock: MockServer, setup: str, message: str, code: int
) -> None:
    """Each refusal names what is wrong and writes nothing."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    source = tmp_path / "out"
    if setup == "missing":
        source = tmp_path / "nowhere"
    elif setup == "unfinished":
        mock.add_fault(path=r"/activities/$", after=5, status=401, body={"SubCode": "InvalidToken"})
    sharded = ["--shard", "1/2"] if setup == "shard" else []
    first = run_cli("run", str(recipe), "--base-url", mock.api_url, *sharded, env=env)
    assert first.exit_code == (1 if setup == "unfinished" else 0)
    if setup == "exists":
        (tmp_path / "now").mkdir()

    outcome = run_cli("snapshot", str(source), str(tmp_path / "now"))

    assert outcome.exit_code == code
    assert outcome.stderr == f"tm-export: error: {message.format(tmp=tmp_path)}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["recipe.yaml", "out", *(["now"] if setup == "exists" else [])]
    )


def test_damaged_run_writes_nothing(tmp_path: Path, mock: MockServer) -> None:
    """A byte changed in a run of the chain stops the snapshot with exit 3."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    data = tmp_path / "out/runs/0001/data/contributions.jsonl"
    data.write_bytes(data.read_bytes().replace(b'"username":"', b'"username":"X', 1))

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 3
    assert outcome.stderr.startswith(
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: 4 mismatches in its files, no "
        "snapshot was written: data/contributions.jsonl: "
    )
    assert not (tmp_path / "now").exists()
    assert not (tmp_path / ".now.building").exists()


def test_missing_earlier_run(tmp_path: Path, mock: MockServer) -> None:
    """A chain whose full run was deleted cannot be combined."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    (tmp_path / "out/runs/0001").rename(tmp_path / "elsewhere")

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: run 0002 builds on this run, which "
        "is missing; a snapshot needs every run from the last full run on\n"
    )
    assert not (tmp_path / "now").exists()


REVIEW_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  statistics:
    endpoint: project_statistics
    params: {project_id: {range: [1, 12]}}
  task_stats:
    endpoint: tasks_statistics
    params:
      projectId: {from: projects.projectId}
      dates: {start: 2026-01-01, end: 2026-12-31, step: 6 months}
"""


def snapshot_and_full_run(
    tmp_path: Path, mock: MockServer, recipe: Path, env: dict[str, str]
) -> tuple[Path, Path]:
    """Make a snapshot of ``out`` into ``now``, and a full run into ``full``; return their
    folders of stream files."""
    assert run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now")).exit_code == 0
    full = tmp_path / "full.yaml"
    full.write_text(recipe.read_text().replace(str(tmp_path / "out"), str(tmp_path / "full")))
    assert run_cli("run", str(full), "--base-url", mock.api_url, env=env).exit_code == 0
    return tmp_path / "now", tmp_path / "full/runs/0001/data"


def test_skipped_partition_left_empty(tmp_path: Path, mock: MockServer) -> None:
    """A partition the newest run skipped (404) has no records, as in a full run."""
    recipe = write_recipe(tmp_path, REVIEW_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    draft = min(project for project in mock.dataset.draft_project_ids() if project <= 12)
    statistics = (tmp_path / "out/runs/0001/data/statistics.jsonl").read_bytes()
    assert f'"project_id":{draft}}}'.encode() in statistics
    mock.dataset.delete_project(draft)
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    now, full = snapshot_and_full_run(tmp_path, mock, recipe, env)

    assert sorted_lines(now / "statistics.jsonl") == sorted_lines(full / "statistics.jsonl")


def test_deleted_project_left_out_by_projectId(tmp_path: Path, mock: MockServer) -> None:
    """A deleted project's partitions go, also where the parameter is named projectId."""
    recipe = write_recipe(tmp_path, REVIEW_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    mock.dataset.delete_project(mock.dataset.public_project_ids()[3])
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    now, full = snapshot_and_full_run(tmp_path, mock, recipe, env)

    assert sorted_lines(now / "task_stats.jsonl") == sorted_lines(full / "task_stats.jsonl")


def test_history_below_failed_page_kept(tmp_path: Path, mock: MockServer) -> None:
    """Task history below a page that failed in one incremental run reaches the next one."""
    recipe = write_recipe(tmp_path, REVIEW_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_cli(*args, env=env).exit_code == 0
    busy = mock.dataset.public_project_ids()[1]
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=5)
    for second in range(25):
        mock.dataset.add_activity(busy, task_id=1, when=start + dt.timedelta(seconds=second))
    mock.add_fault(path=rf"^/api/v2/projects/{busy}/activities/$", query={"page": "2"}, status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    mock.clear_faults()
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    now, full = snapshot_and_full_run(tmp_path, mock, recipe, env)

    assert sorted_lines(now / "activities.jsonl") == sorted_lines(full / "activities.jsonl")


@pytest.mark.parametrize("inside", ["out/runs/0002", "out/runs/0001/data/now"])
def test_destination_among_runs_rejected(tmp_path: Path, mock: MockServer, inside: str) -> None:
    """A destination among the runs, or inside a bag, is refused and nothing is written."""
    recipe = write_recipe(tmp_path, REVIEW_RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    command = ["run", str(recipe), "--base-url", mock.api_url, "--bag"]
    assert run_cli(*command, env=env).exit_code == 0
    destination = tmp_path / inside

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(destination))

    where = tmp_path / ("out/runs" if inside.endswith("0002") else "out/runs/0001")
    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {destination} is inside {where}, where the runs are kept; give a "
        "folder outside it, such as one beside the output folder\n"
    )
    assert not destination.exists()
    assert run_cli("verify", str(tmp_path / "out")).exit_code == 0


def test_bag_payload_folder_as_dir(tmp_path: Path, mock: MockServer) -> None:
    """A bag's data/ folder names its run, as it does for verify and status."""
    args, env = admin_run(tmp_path, mock, REVIEW_RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli(*args, "--incremental", "--bag", env=env).exit_code == 0

    outcome = run_cli("snapshot", str(tmp_path / "out/runs/0002/data"), str(tmp_path / "now"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[0] == f"{tmp_path / 'now'}: a snapshot of runs 0001, 0002"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("out/runs/0001", "{output} is a run folder; give the output folder itself ({tmp}/out)"),
        (
            "out/runs/0001/data/more",
            "{output} is inside {tmp}/out/runs/0001, which is a run folder; give the output "
            "folder itself ({tmp}/out)",
        ),
        (
            "out/runs/0002",
            "{output} is inside {tmp}/out/runs, which is a runs/ folder of an output folder; "
            "give the output folder itself ({tmp}/out)",
        ),
        (
            "out/runs",
            "{output} is a runs/ folder of an output folder; give the output folder itself "
            "({tmp}/out)",
        ),
        ("now", "{output} is a snapshot; give an output folder"),
    ],
)
def test_run_into_run_or_snapshot_rejected(
    tmp_path: Path, mock: MockServer, output: str, message: str
) -> None:
    """An export into a run folder, a runs/ folder or a snapshot stops before any request."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    assert run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now")).exit_code == 0
    before = sorted(path for path in tmp_path.rglob("*"))
    mock.reset_log()

    outcome = run_cli(*args, "--output", str(tmp_path / output), env=env)

    expected = message.format(output=tmp_path / output, tmp=tmp_path)
    assert outcome.exit_code == 2
    assert outcome.stderr == f"tm-export: error: {expected} or a new one\n"
    assert sorted(path for path in tmp_path.rglob("*")) == before
    assert mock.requests() == []


USERS_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  users:
    endpoint: users
    params: {perPage: 5}
"""


def test_partial_pages_lose_to_finished_partition(tmp_path: Path, mock: MockServer) -> None:
    """Pages that a later run committed before the partition failed do not replace the
    records of the run that finished it."""
    args, env = admin_run(tmp_path, mock, USERS_RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    mock.add_fault(path=r"^/api/v2/users/$", query={"page": "3"}, status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    partial = sorted_lines(tmp_path / "out/runs/0002/data/users.jsonl")
    first = sorted_lines(tmp_path / "out/runs/0001/data/users.jsonl")
    assert 0 < len(partial) < len(first)

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0
    assert sorted_lines(tmp_path / "now/users.jsonl") == first


def test_run_into_linked_runs_folder_rejected(tmp_path: Path, mock: MockServer) -> None:
    """A runs/ folder linked to another disk protects its runs as well."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    (tmp_path / "out/runs").rename(tmp_path / "store")
    (tmp_path / "out/runs").symlink_to(tmp_path / "store")
    output = tmp_path / "out/runs/0001"

    outcome = run_cli(*args, "--output", str(output), env=env)

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {output} is a run folder; give the output folder itself "
        f"({tmp_path / 'out'}) or a new one\n"
    )
    assert not (tmp_path / "store/0001/runs").exists()


def test_output_folder_inside_run_rejected(tmp_path: Path, mock: MockServer) -> None:
    """An output folder made inside a run folder (by a merge, say) does not make the run
    folder around it a place to export to."""
    args, env = admin_run(tmp_path, mock, RECIPE)
    assert run_cli(*args, env=env).exit_code == 0
    run = tmp_path / "out/runs/0001"
    (run / "inner/runs/0001").mkdir(parents=True)
    output = run / "inner"

    exported = run_cli(*args, "--output", str(output), env=env)
    merged = run_cli("merge", str(output), str(tmp_path / "out"), env=env)

    message = (
        f"tm-export: error: {output} is inside {run}, which is a run folder; give the output "
        f"folder itself ({tmp_path / 'out'}) or a new one\n"
    )
    assert (exported.exit_code, exported.stderr) == (2, message)
    assert (merged.exit_code, merged.stderr) == (2, message)


def test_failed_partition_of_deleted_project_not_listed(tmp_path: Path, mock: MockServer) -> None:
    """A partition that failed for a project deleted since is neither kept nor listed as
    failed: no run fetches it again."""
    recipe = write_recipe(tmp_path, RECIPE.replace("10000/s", "10000/s, retries: {attempts: 1}"))
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(recipe), "--base-url", mock.api_url]
    project = mock.dataset.public_project_ids()[4]
    mock.add_fault(path=rf"^/api/v2/projects/{project}/$", status=500, times=1)
    assert run_cli(*args, env=env).exit_code == 3
    mock.clear_faults()
    mock.dataset.delete_project(project)
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    outcome = run_cli("snapshot", str(tmp_path / "out"), str(tmp_path / "now"))

    assert outcome.exit_code == 0
    assert outcome.stderr == ""
    record = orjson.loads((tmp_path / "now/snapshot.json").read_bytes())
    assert record["deleted_projects"] == [project]
    assert record["streams"]["details"]["failed"] == []


SPLIT_SEARCH = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {mappingTypes: {each: [ROADS, BUILDINGS]}}
"""


def recently() -> dt.datetime:
    """Return a time for an edit made between two runs: two seconds ago, so before the next
    run's start, which is kept in whole seconds (naive UTC, as the mock keeps it)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=2)


def mapping_types_of(folder: Path, project: int) -> list[str]:
    """Return the mapping types of the search partitions that list ``project`` in the
    projects file of ``folder``, sorted."""
    records = map(orjson.loads, sorted_lines(folder / "projects.jsonl"))
    return sorted(r["_partition"]["mappingTypes"] for r in records if r["projectId"] == project)


def edit_project_in_both(tmp_path: Path, mock: MockServer) -> tuple[list[str], dict[str, str], int]:
    """Run SPLIT_SEARCH, then edit a project that both partitions list; return the command,
    its environment and the project."""
    args, env = admin_run(tmp_path, mock, SPLIT_SEARCH)
    assert run_cli(*args, env=env).exit_code == 0
    ids = [
        orjson.loads(line)["projectId"]
        for line in sorted_lines(tmp_path / "out/runs/0001/data/projects.jsonl")
    ]
    twice = min(project for project in ids if ids.count(project) == 2)
    mock.dataset.touch_project(twice, recently())
    return args, env, twice


def test_project_in_two_search_partitions_kept_twice(tmp_path: Path, mock: MockServer) -> None:
    """A search split by mapping type lists a project in each partition it matches. After
    an edit, the snapshot keeps the newest run's line in each, as a full run writes them."""
    args, env, twice = edit_project_in_both(tmp_path, mock)
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    lines = sorted_lines(now / "projects.jsonl")
    assert [orjson.loads(line)["projectId"] for line in lines].count(twice) == 2
    assert lines == sorted_lines(full / "projects.jsonl")


def test_history_of_skipped_partition_left_out(tmp_path: Path, mock: MockServer) -> None:
    """Task history of a project that the newest run got a 404 for, with no project search
    to report it deleted, is left out, as a full run has none."""
    args, env = admin_run(
        tmp_path,
        mock,
        """\
        version: 1
        instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}
        output: OUT
        streams:
          activities:
            endpoint: project_activities
            params: {project_id: {range: [1, 5]}}
        """,
    )
    assert run_cli(*args, env=env).exit_code == 0
    archived = (tmp_path / "out/runs/0001/data/activities.jsonl").read_bytes()
    assert b'"_partition":{"project_id":1}' in archived
    mock.dataset.delete_project(1)
    assert run_cli(*args, "--incremental", env=env).exit_code == 0

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    lines = sorted_lines(now / "activities.jsonl")
    assert not any(b'"_partition":{"project_id":1}' in line for line in lines)
    assert lines == sorted_lines(full / "activities.jsonl")


def test_search_line_of_failed_partition_kept(tmp_path: Path, mock: MockServer) -> None:
    """A project edited and listed anew in one partition of a split search keeps its
    earlier line in a partition that the incremental run failed, as a failed partition
    keeps the records of the run before it."""
    args, env, twice = edit_project_in_both(tmp_path, mock)
    mock.add_fault(path=r"^/api/v2/projects/$", query={"mappingTypes": "ROADS"}, status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    mock.clear_faults()

    now, _ = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    kept = {
        record["_partition"]["mappingTypes"]: record["lastUpdated"]
        for record in map(orjson.loads, sorted_lines(now / "projects.jsonl"))
        if record["projectId"] == twice
    }
    # BUILDINGS has the edit. ROADS, which failed, has the line of the full run before it.
    assert sorted(kept) == ["BUILDINGS", "ROADS"]
    assert kept["ROADS"] < kept["BUILDINGS"]


def test_history_of_skipped_partition_stays_out_after_failure(
    tmp_path: Path, mock: MockServer
) -> None:
    """A partition skipped for a 404 and failed in a later run keeps what the skip left,
    no records, rather than the history archived before the project was deleted."""
    args, env = admin_run(
        tmp_path,
        mock,
        """\
        version: 1
        instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s, retries: {attempts: 1}}
        output: OUT
        streams:
          activities:
            endpoint: project_activities
            params: {project_id: {range: [1, 3]}}
        """,
    )
    assert run_cli(*args, env=env).exit_code == 0
    mock.dataset.delete_project(1)
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    mock.add_fault(path=r"^/api/v2/projects/1/", status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    mock.clear_faults()

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    lines = sorted_lines(now / "activities.jsonl")
    assert not any(b'"_partition":{"project_id":1}' in line for line in lines)
    assert lines == sorted_lines(full / "activities.jsonl")


def test_project_leaving_a_partition_across_failed_runs(tmp_path: Path, mock: MockServer) -> None:
    """A project that leaves the ROADS partition is listed anew in BUILDINGS by a run that
    failed ROADS; the next run finishes ROADS, without it, and fails BUILDINGS. Its search
    reached the project's last update, so the old ROADS line goes, as in a full run."""
    args, env, moved = edit_project_in_both(tmp_path, mock)
    project = mock.dataset.projects[moved]
    project.mapping_types = tuple(kind for kind in project.mapping_types if kind != "ROADS")
    for failing in ("ROADS", "BUILDINGS"):
        mock.add_fault(path=r"^/api/v2/projects/$", query={"mappingTypes": failing}, status=500)
        assert run_cli(*args, "--incremental", env=env).exit_code == 3
        mock.clear_faults()

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    assert mapping_types_of(now, moved) == mapping_types_of(full, moved) == ["BUILDINGS"]


def test_left_partition_known_from_a_line_dropped_later(tmp_path: Path, mock: MockServer) -> None:
    """Run 0002 finishes ROADS without a project that left it and lists the project in
    BUILDINGS; run 0003 lists it there again and fails ROADS. 0002's line gives way to
    0003's, but its update still shows that 0002's search reached the project, so the old
    ROADS line goes."""
    args, env, moved = edit_project_in_both(tmp_path, mock)
    project = mock.dataset.projects[moved]
    project.mapping_types = tuple(kind for kind in project.mapping_types if kind != "ROADS")
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    mock.dataset.touch_project(moved, recently())
    mock.add_fault(path=r"^/api/v2/projects/$", query={"mappingTypes": "ROADS"}, status=500)
    assert run_cli(*args, "--incremental", env=env).exit_code == 3
    mock.clear_faults()

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    assert mapping_types_of(now, moved) == mapping_types_of(full, moved) == ["BUILDINGS"]


def test_edit_during_search_keeps_walked_partition(tmp_path: Path, mock: MockServer) -> None:
    """A project edited while an incremental run searches, after the run walked ROADS and
    before it walks BUILDINGS, is listed in BUILDINGS only. Its edit came after the ROADS
    walk, so the snapshot keeps its earlier ROADS line, as a full run has it."""
    args, env = admin_run(
        tmp_path, mock, SPLIT_SEARCH.replace("{attempts: 1}", "{attempts: 1}, concurrency: 1")
    )
    assert run_cli(*args, env=env).exit_code == 0
    ids = [
        orjson.loads(line)["projectId"]
        for line in sorted_lines(tmp_path / "out/runs/0001/data/projects.jsonl")
    ]
    twice = min(project for project in ids if ids.count(project) == 2)
    mock.add_fault(
        path=r"^/api/v2/projects/$",
        query={"mappingTypes": "BUILDINGS"},
        times=1,
        call=lambda: mock.dataset.touch_project(
            twice, dt.datetime.now(dt.UTC).replace(tzinfo=None)
        ),
    )
    assert run_cli(*args, "--incremental", env=env).exit_code == 0
    mock.clear_faults()

    now, full = snapshot_and_full_run(tmp_path, mock, tmp_path / "recipe.yaml", env)

    assert (
        mapping_types_of(now, twice)
        == mapping_types_of(full, twice)
        == [
            "BUILDINGS",
            "ROADS",
        ]
    )
