"""Shards for CI matrices: N jobs share an export, and merge gives the unsharded result."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import PROJECTS, Outcome, append_stopped_retry, run_cli, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  stats:
    endpoint: project_statistics
    params: {project_id: {range: [1, 30]}}
"""
STREAMS = ("projects", "activities", "stats")


def lines(run_folder: Path) -> dict[str, Counter[bytes]]:
    return {
        name: Counter((run_folder / "data" / f"{name}.jsonl").read_bytes().splitlines())
        for name in STREAMS
    }


def run_shard(recipe: Path, api_url: str, shard: str, output: Path, *options: str) -> Outcome:
    """Run ``recipe`` as shard ``K/N`` into ``output``."""
    return run_cli(
        "run",
        str(recipe),
        "--base-url",
        api_url,
        "--shard",
        shard,
        "--output",
        str(output),
        *options,
    )


def export_shards(
    tmp_path: Path, mock: MockServer, count: int, *options: str, recipe_text: str = RECIPE
) -> list[Path]:
    recipe = write_recipe(tmp_path, recipe_text)
    folders = []
    for index in range(1, count + 1):
        folder = tmp_path / f"shard-{index}"
        outcome = run_shard(recipe, mock.api_url, f"{index}/{count}", folder, *options)
        assert outcome.exit_code == 0, outcome.stderr
        folders.append(folder)
    return folders


def export_shards_with_failure(tmp_path: Path, mock: MockServer) -> tuple[Path, list[Path]]:
    """Export two shards in which the statistics of project 8 fail (one attempt each), and
    return the recipe and the shard folders. The mock keeps failing until its faults are
    cleared."""
    text = RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}")
    recipe = write_recipe(tmp_path, text)
    mock.add_fault(path=r"^/api/v2/projects/8/statistics/$", status=500)
    shards = [tmp_path / f"shard-{index}" for index in (1, 2)]
    for index, folder in enumerate(shards, start=1):
        run_shard(recipe, mock.api_url, f"{index}/2", folder)
    return recipe, shards


def header(run_folder: Path) -> dict[str, object]:
    manifest = run_folder / "manifest.jsonl"
    if not manifest.exists():
        manifest = run_folder / "data/manifest.jsonl"
    first: dict[str, object] = orjson.loads(manifest.read_bytes().splitlines()[0])
    return first


def test_merged_shards_equal_one_run(tmp_path: Path, mock: MockServer) -> None:
    """Three shards merged hold the same records as one unsharded run, none written twice."""
    recipe = write_recipe(tmp_path, RECIPE)
    whole = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--output", str(tmp_path / "whole")
    )
    assert whole.exit_code == 0
    shards = export_shards(tmp_path, mock, 3)
    per_shard = [lines(folder / "runs/0001") for folder in shards]

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 0, outcome.stderr
    expected = lines(tmp_path / "whole/runs/0001")
    merged = lines(tmp_path / "merged/runs/0001")
    for name in STREAMS:
        assert merged[name] == expected[name]
        assert sum(sum(shard[name].values()) for shard in per_shard) == sum(expected[name].values())
        assert max(merged[name].values()) == 1
    assert sum(1 for shard in per_shard if shard["activities"]) >= 2
    assert outcome.stdout.splitlines()[0] == f"merged run: {tmp_path / 'merged/runs/0001'}"


def test_merged_manifest_offsets(tmp_path: Path, mock: MockServer) -> None:
    """Each page entry of the merged manifest points at its own lines in the merged files."""
    shards = export_shards(tmp_path, mock, 2)
    run_cli("merge", str(tmp_path / "merged"), *map(str, shards))
    run = tmp_path / "merged/runs/0001"
    data = {name: (run / "data" / f"{name}.jsonl").read_bytes() for name in STREAMS}

    pages = [
        e
        for e in map(orjson.loads, (run / "manifest.jsonl").read_bytes().splitlines())
        if e["t"] == "page"
    ]

    assert pages
    for page in pages:
        chunk = data[page["s"]][page["start"] : page["end"]]
        assert chunk.count(b"\n") == page["records"]
        for line in chunk.splitlines():
            record = orjson.loads(line)
            if page["s"] != "projects":
                assert (
                    orjson.dumps(record["_partition"], option=orjson.OPT_SORT_KEYS).decode()
                    == page["p"]
                )


def test_merge_refuses_missing_shard(tmp_path: Path, mock: MockServer) -> None:
    shards = export_shards(tmp_path, mock, 3)

    outcome = run_cli("merge", str(tmp_path / "merged"), str(shards[0]), str(shards[2]))

    assert outcome.exit_code == 2
    assert outcome.stderr == "tm-export: error: missing shard 2/3; give all 3 shard folders\n"
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_other_recipe(tmp_path: Path, mock: MockServer) -> None:
    shards = export_shards(tmp_path, mock, 2)
    other = tmp_path / "other"
    other.mkdir()
    recipe = write_recipe(other, RECIPE.replace("[1, 30]", "[1, 31]"))
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--shard", "2/2").exit_code == 0

    outcome = run_cli("merge", str(tmp_path / "merged"), str(shards[0]), str(other / "out"))

    assert outcome.exit_code == 2
    assert outcome.stderr.startswith(
        f"tm-export: error: {other / 'out/runs/0001'}: this shard was made by another recipe than "
        f"{shards[0] / 'runs/0001'} (recipe hash "
    )


def test_merge_refuses_repeated_shard(tmp_path: Path, mock: MockServer) -> None:
    shards = export_shards(tmp_path, mock, 2)

    outcome = run_cli(
        "merge", str(tmp_path / "merged"), str(shards[0]), str(shards[0]), str(shards[1])
    )

    assert outcome.exit_code == 2
    assert "shard 1/2 is given twice" in outcome.stderr


def test_shard_flag_must_match(tmp_path: Path, mock: MockServer) -> None:
    recipe = write_recipe(tmp_path, RECIPE)
    run_cli("run", str(recipe), "--base-url", mock.api_url, "--shard", "1/2")

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--shard", "2/2")

    assert outcome.exit_code == 1
    assert "this run exports shard 1/2, but this command asks for shard 2/2" in outcome.stderr


def test_invalid_shard_is_usage_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--shard", "4/3")

    assert outcome.exit_code == 2
    assert "'4/3' is not K/N with 1 <= K <= N, e.g. 2/4" in outcome.stderr


def test_merge_refuses_canonical_shard(tmp_path: Path, mock: MockServer) -> None:
    """A shard sorted by 'canonical' no longer matches its pages, so merge writes nothing."""
    shards = export_shards(tmp_path, mock, 2)
    assert run_cli("canonical", str(shards[1])).exit_code == 0

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {shards[1] / 'runs/0001'}: the files of shard 2/2 were made canonical "
        "(activities, projects, stats), which moves lines out of the pages that the merge copies; "
        "merge shards as their runs wrote them (run this shard again with --start-over), then run "
        "'tm-export canonical' on the merged run\n"
    )
    assert not (tmp_path / "merged").exists()


def test_merge_reads_bagged_shard(tmp_path: Path, mock: MockServer) -> None:
    """A shard made a bag is merged from the bag's payload, and the merged run verifies."""
    shards = export_shards(tmp_path, mock, 2)
    expected = [lines(folder / "runs/0001") for folder in shards]
    assert run_cli("bag", str(shards[1])).exit_code == 0

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 0, outcome.stderr
    merged = lines(tmp_path / "merged/runs/0001")
    for name in STREAMS:
        assert merged[name] == expected[0][name] + expected[1][name]
    assert run_cli("verify", str(tmp_path / "merged")).exit_code == 0
    status = run_cli("status", str(shards[1]))
    assert status.stdout.splitlines()[0] == f"run: {shards[1] / 'runs/0001'} (shard 2/2) (a bag)"


def backdate(run_folder: Path, hours: int) -> str:
    """Move a run's start back, as for a matrix job that started before the others."""
    manifest = run_folder / "manifest.jsonl"
    first, rest = manifest.read_bytes().split(b"\n", 1)
    entry = orjson.loads(first)
    started = dt.datetime.fromisoformat(entry["started"].replace("Z", "+00:00"))
    entry["started"] = (started - dt.timedelta(hours=hours)).isoformat().replace("+00:00", "Z")
    manifest.write_bytes(orjson.dumps(entry) + b"\n" + rest)
    # The record describes the old header, so it is written again for the new one.
    (run_folder / "run.json").unlink()
    assert run_cli("record", str(run_folder)).exit_code == 0
    return str(entry["started"])


def test_merged_run_record_keeps_sessions(tmp_path: Path, mock: MockServer) -> None:
    """The merged run starts with its earliest shard and cites the shards' sessions."""
    shards = export_shards(tmp_path, mock, 3)
    shard_runs = [folder / "runs/0001" for folder in shards]
    started = backdate(shard_runs[1], hours=1)

    assert run_cli("merge", str(tmp_path / "merged"), *map(str, shards)).exit_code == 0

    run = tmp_path / "merged/runs/0001"
    record = orjson.loads((run / "run.json").read_bytes())
    assert record["started"] == started
    assert record["base_url"] == mock.api_url
    assert record["tm_release"] == "v5.5.2"
    assert record["authenticated"] is False
    assert [session["base_url"] for session in record["sessions"]] == [mock.api_url] * 3
    assert "merged_at" in header(run)
    status = run_cli("status", str(run))
    assert f"; merged from 3 shards: {', '.join(map(str, shard_runs))}" in status.stdout


INCREMENTAL_RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  details:
    endpoint: project
    params: {project_id: {from: projects.projectId}}
"""


def test_merge_starts_at_first_shard(tmp_path: Path, mock: MockServer) -> None:
    """A change after the first shard started and before the merge is in the next run."""
    shards = export_shards(tmp_path, mock, 2, recipe_text=INCREMENTAL_RECIPE)
    started = backdate(shards[1] / "runs/0001", hours=1)
    touched = sorted(mock.dataset.public_project_ids())[0]
    moment = dt.datetime.fromisoformat(started.replace("Z", "+00:00")).replace(tzinfo=None)
    mock.dataset.touch_project(touched, moment + dt.timedelta(minutes=1))
    assert run_cli("merge", str(tmp_path / "merged"), *map(str, shards)).exit_code == 0
    recipe = tmp_path / "recipe.yaml"

    outcome = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "--incremental",
        "-o",
        str(tmp_path / "merged"),
    )

    assert outcome.exit_code == 0, outcome.stderr
    second = tmp_path / "merged/runs/0002"
    baseline = header(second)["incremental"]
    assert baseline == {"since": started, "search_since": started, "previous": ["0001"]}
    projects = [
        orjson.loads(line) for line in (second / "data/projects.jsonl").read_bytes().splitlines()
    ]
    assert touched in [record["projectId"] for record in projects]


def test_merged_incremental_shards_keep_deleted(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Incremental shards each record a deleted project; the merged run lists it once."""
    shards = export_shards(tmp_path, mock, 2, recipe_text=INCREMENTAL_RECIPE)
    deleted_id = sorted(mock.dataset.public_project_ids())[1]
    mock.dataset.delete_project(deleted_id)
    export_shards(tmp_path, mock, 2, "--incremental", recipe_text=INCREMENTAL_RECIPE)

    # Relative shard paths, as a CI job gives them: the header keeps absolute ones.
    monkeypatch.chdir(tmp_path)
    assert run_cli("merge", "merged", "shard-1", "shard-2").exit_code == 0

    run = tmp_path / "merged/runs/0001"
    record = orjson.loads((run / "run.json").read_bytes())
    assert record["deleted_projects"] == [deleted_id]
    assert record["incremental"]["previous"] == [
        str(shards[0] / "runs/0001"),
        str(shards[1] / "runs/0001"),
    ]
    firsts = [header(folder / "runs/0002")["incremental"]["since"] for folder in shards]  # type: ignore[index]
    assert record["incremental"]["since"] == min(firsts)
    # A new session on the merged run reads the shards' earlier runs at the header's paths.
    retried = run_cli(
        "run",
        str(tmp_path / "recipe.yaml"),
        "--base-url",
        mock.api_url,
        "--retry-failed",
        "-o",
        str(tmp_path / "merged"),
    )
    assert retried.exit_code == 0, retried.stderr


def test_merge_refuses_damaged_shard(tmp_path: Path, mock: MockServer) -> None:
    """A byte changed inside a shard's value is caught by its page's CRC-32 and its run record;
    nothing is merged."""
    shards = export_shards(tmp_path, mock, 2)
    path = shards[1] / "runs/0001/data/stats.jsonl"
    data = path.read_bytes()
    at = data.index(b'"totalTasks":') + len(b'"totalTasks":')
    digit = b"1" if data[at : at + 1] != b"1" else b"2"
    path.write_bytes(data[:at] + digit + data[at + 1 :])

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 3
    assert outcome.stderr.startswith(
        f"tm-export: error: {shards[1] / 'runs/0001'}: 2 mismatches in its files, so no shard "
        "was merged: data/stats.jsonl: page "
    )
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_full_and_incremental(tmp_path: Path, mock: MockServer) -> None:
    """An incremental shard beside full shards would leave most records out."""
    shards = export_shards(tmp_path, mock, 2)
    recipe = tmp_path / "recipe.yaml"
    later = run_shard(recipe, mock.api_url, "1/2", shards[0], "--incremental")
    assert later.exit_code == 0, later.stderr

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {shards[1] / 'runs/0001'}: this shard is a full run, but "
        f"{shards[0] / 'runs/0002'} is an incremental run; give the runs of one night, whose "
        "shards are all full or all incremental\n"
    )
    assert not (tmp_path / "merged").exists()


def test_merge_never_writes_into_shard(tmp_path: Path, mock: MockServer) -> None:
    """An output folder that is, contains or lies inside a shard's folder is refused."""
    shards = export_shards(tmp_path, mock, 2)

    for output in (shards[0], tmp_path, shards[1] / "merged"):
        outcome = run_cli("merge", str(output), *map(str, shards))

        assert outcome.exit_code == 2
        overlapped = shards[1] if output == shards[1] / "merged" else shards[0]
        assert outcome.stderr == (
            f"tm-export: error: {output}: this output folder overlaps shard "
            f"{overlapped / 'runs/0001'}, and a merge never writes into a shard; give another "
            "output folder\n"
        )
    assert sorted(path.name for path in (shards[0] / "runs").iterdir()) == ["0001"]
    assert not (shards[1] / "merged").exists()


def test_merge_beside_unfinished_or_other_run(tmp_path: Path, mock: MockServer) -> None:
    """A merged run never hides an unfinished run, nor joins runs of another recipe."""
    shards = export_shards(tmp_path, mock, 2)
    (tmp_path / "other").mkdir()
    other = write_recipe(tmp_path / "other", RECIPE.replace("[1, 30]", "[1, 31]"))
    assert run_cli("run", str(other), "--base-url", mock.api_url).exit_code == 0
    unfinished = tmp_path / "unfinished/runs/0001"
    unfinished.mkdir(parents=True)
    header = (shards[0] / "runs/0001/manifest.jsonl").read_bytes().splitlines()[0]
    (unfinished / "manifest.jsonl").write_bytes(header + b"\n")

    beside_other = run_cli("merge", str(tmp_path / "other/out"), *map(str, shards))
    beside_unfinished = run_cli("merge", str(tmp_path / "unfinished"), *map(str, shards))

    assert beside_other.exit_code == 2
    assert beside_other.stderr == (
        f"tm-export: error: {tmp_path / 'other/out'}: the runs in this output folder were made "
        "by another recipe than the shards, so an incremental run could not build on the "
        "merged run; give another output folder\n"
    )
    assert beside_unfinished.exit_code == 2
    assert beside_unfinished.stderr == (
        f"tm-export: error: {unfinished}: this run is unfinished, and a merged run beside it "
        "would hide it from the next run of its command; finish it first, or give another "
        "output folder\n"
    )
    assert sorted(path.name for path in (tmp_path / "other/out/runs").iterdir()) == ["0001"]
    assert sorted(path.name for path in (tmp_path / "unfinished/runs").iterdir()) == ["0001"]


def test_merge_warns_of_other_servers(tmp_path: Path, mock: MockServer) -> None:
    """Shards read from two API URLs are merged with a warning that names both."""
    recipe = write_recipe(tmp_path, RECIPE)
    with MockServer(projects=PROJECTS) as other:
        for index, server in ((1, mock), (2, other)):
            outcome = run_shard(recipe, server.api_url, f"{index}/2", tmp_path / f"shard-{index}")
            assert outcome.exit_code == 0, outcome.stderr
        urls = sorted([(mock.api_url, 1), (other.api_url, 2)])

    outcome = run_cli(
        "merge", str(tmp_path / "merged"), *(str(tmp_path / f"shard-{i}") for i in (1, 2))
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr == (
        "tm-export: WARNING: the shards read from different API URLs: "
        f"{urls[0][0]} (shard {urls[0][1]}); {urls[1][0]} (shard {urls[1][1]}); merge them only "
        "if these are one Tasking Manager\n"
    )
    record = orjson.loads((tmp_path / "merged/runs/0001/run.json").read_bytes())
    assert record["merged_from"] == [str(tmp_path / f"shard-{i}/runs/0001") for i in (1, 2)]


def test_finished_shard_rerun_sends_nothing(tmp_path: Path, mock: MockServer) -> None:
    """A finished shard run again reads no parent page and leaves every file as it was."""
    shards = export_shards(tmp_path, mock, 2)
    run = shards[1] / "runs/0001"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
    sent = len(mock.requests())

    outcome = run_shard(tmp_path / "recipe.yaml", mock.api_url, "2/2", shards[1])

    assert outcome.exit_code == 0, outcome.stderr
    assert mock.requests()[sent:] == []
    assert {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()
    } == before


def test_merge_refuses_mixed_compression(tmp_path: Path, mock: MockServer) -> None:
    shards = export_shards(tmp_path, mock, 2)
    again = run_shard(
        tmp_path / "recipe.yaml",
        mock.api_url,
        "1/2",
        shards[0],
        "--start-over",
        "--compression",
        "gzip",
    )
    assert again.exit_code == 0, again.stderr

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {shards[1] / 'runs/0001'}: this shard's files are not compressed, "
        f"but those of {shards[0] / 'runs/0002'} are compressed with gzip; make every shard "
        "with the same --compression\n"
    )


def test_merge_names_failed_partitions(tmp_path: Path, mock: MockServer) -> None:
    """Partitions that failed in a shard are named in the order of their values (8 before 10),
    and --retry-failed on the merge fetches them."""
    text = RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}")
    recipe = write_recipe(tmp_path, text)
    mock.add_fault(path=r"^/api/v2/projects/(8|10)/statistics/$", status=500)
    for index in (1, 2):
        outcome = run_shard(recipe, mock.api_url, f"{index}/2", tmp_path / f"shard-{index}")
        assert outcome.exit_code in (0, 3), outcome.stderr
    mock.clear_faults()

    merged = run_cli(
        "merge", str(tmp_path / "merged"), *(str(tmp_path / f"shard-{i}") for i in (1, 2))
    )

    assert merged.exit_code == 0, merged.stderr
    assert "stats: last error, partition" in run_cli("status", str(tmp_path / "merged")).stdout
    failed = '2 failed partitions: stats {"project_id":8}, {"project_id":10}'
    assert merged.stdout.splitlines()[-1] == f"  {failed}"
    assert merged.stderr == (
        f"tm-export: WARNING: the shards left {failed}; to fetch them again, run: tm-export run "
        f"{recipe} --base-url {mock.api_url} --retry-failed --output {tmp_path / 'merged'}\n"
    )
    retried = run_cli(
        "run",
        str(recipe),
        "--base-url",
        mock.api_url,
        "--retry-failed",
        "--output",
        str(tmp_path / "merged"),
    )
    assert retried.exit_code == 0, retried.stderr
    assert sorted(r["path"] for r in mock.requests()[-2:]) == [
        "/api/v2/projects/10/statistics/",
        "/api/v2/projects/8/statistics/",
    ]
    status = run_cli("status", str(tmp_path / "merged"))
    assert "state: complete" in status.stdout
    assert "last error" not in status.stdout


def test_unread_parent_page_fails_shard(tmp_path: Path, mock: MockServer) -> None:
    """A shard that cannot read a parent page another shard writes exits 1, and a rerun
    fetches the children that page names, so no record is lost without a word."""
    text = RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}")
    recipe = write_recipe(tmp_path, text)
    owner = int.from_bytes(hashlib.sha256(b"projects\n{}").digest()[:8], "big") % 3 + 1
    index = owner % 3 + 1  # a shard that reads the project list but does not write it
    shard = f"{index}/3"
    mock.add_fault(path=r"^/api/v2/projects/$", status=500, after=1, times=1)

    first = run_shard(recipe, mock.api_url, shard, tmp_path / "shard")

    assert first.exit_code == 1, first.stderr
    query = "omitMapResults=true&orderBy=id&orderByType=ASC&projectStatuses=PUBLISHED,ARCHIVED"
    assert first.stderr.endswith(
        f"tm-export: error: shard {shard} could not read 1 partition that another shard writes "
        f"(first: projects: GET {mock.api_url}/projects/?{query}&page=2: 500 Internal "
        'Server Error (application/json): {"detail":"Internal Server Error"}), so the child '
        "partitions named by their records are unknown; the run is left unfinished: run the "
        "same command again to resume\n"
    )
    # Without that page, the child partitions are not all known, so none are counted.
    manifest = tmp_path / "shard/runs/0001/manifest.jsonl"
    assert b'"t":"known"' not in manifest.read_bytes()

    early = run_cli("merge", str(tmp_path / "merged"), str(tmp_path / "shard"))
    assert early.exit_code == 2
    assert early.stderr == (
        f"tm-export: error: {tmp_path / 'shard/runs/0001'}: shard {shard} has not finished; run "
        f"it to the end first, with the command that made it: tm-export run {recipe} "
        f"--base-url {mock.api_url} --shard {shard} --output {tmp_path / 'shard'}\n"
    )

    again = run_shard(recipe, mock.api_url, shard, tmp_path / "shard")

    assert again.exit_code == 0, again.stderr
    status = run_cli("status", str(tmp_path / "shard"), "--json")
    assert orjson.loads(status.stdout)["state"] == "complete"
    whole = run_cli("run", str(recipe), "--base-url", mock.api_url, "--output", str(tmp_path / "w"))
    assert whole.exit_code == 0, whole.stderr
    activities = lines(tmp_path / "w/runs/0001")["activities"]
    written = lines(tmp_path / "shard/runs/0001")["activities"]
    owned = Counter(
        {
            line: count
            for line, count in activities.items()
            if _owned_by(index, orjson.loads(line)["_partition"])
        }
    )
    assert written == owned
    assert sum(written.values()) > 0


def _owned_by(
    index: int, partition: dict[str, object], stream: str = "activities", count: int = 3
) -> bool:
    """Tell whether shard ``index`` of ``count`` writes ``partition``, by the rule
    docs/design.md gives."""
    key = orjson.dumps(partition, option=orjson.OPT_SORT_KEYS).decode()
    digest = hashlib.sha256(f"{stream}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index - 1


def test_retry_command_from_other_folder(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merged elsewhere, the retry command names the output by its absolute path, and the
    folder where the relative recipe path is valid."""
    text = RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "merge").mkdir()
    write_recipe(tmp_path / "jobs", text)
    mock.add_fault(path=r"^/api/v2/projects/8/statistics/$", status=500)
    monkeypatch.chdir(tmp_path / "jobs")
    for index in (1, 2):
        outcome = run_shard(Path("recipe.yaml"), mock.api_url, f"{index}/2", Path(f"s{index}"))
        assert outcome.exit_code in (0, 3), outcome.stderr
    monkeypatch.chdir(tmp_path / "merge")

    merged = run_cli("merge", "../merged", "../jobs/s1", "../jobs/s2")

    assert merged.exit_code == 0, merged.stderr
    assert merged.stderr.endswith(
        "to fetch it again, run in the folder the shards ran in, since the recipe path "
        f"recipe.yaml is relative to it: tm-export run recipe.yaml --base-url {mock.api_url} "
        f"--retry-failed --output {tmp_path / 'merged'}\n"
    )
    record = orjson.loads((tmp_path / "merged/runs/0001/run.json").read_bytes())
    assert record["merged_from"] == [str(tmp_path / f"jobs/s{i}/runs/0001") for i in (1, 2)]


def test_status_counts_shard_pending(tmp_path: Path, mock: MockServer) -> None:
    """status of a stopped shard counts as pending exactly the static partitions that the
    shard owns and has not finished."""
    recipe = write_recipe(tmp_path, RECIPE)
    owned = [pid for pid in range(1, 31) if _owned_by(1, {"project_id": pid}, "stats")]
    mock.add_fault(
        path=rf"^/api/v2/projects/{owned[0]}/statistics/$",
        status=429,
        headers={"Retry-After": "99999"},
    )

    stopped = run_shard(recipe, mock.api_url, "1/3", tmp_path / "shard")

    assert stopped.exit_code == 1, stopped.stderr
    status = orjson.loads(run_cli("status", str(tmp_path / "shard"), "--json").stdout)
    stats = status["streams"]["stats"]
    finals = stats["partitions"]["done"] + stats["partitions"]["skipped"]
    finals += stats["partitions"]["failed"]
    assert stats["partitions"]["pending"] == len(owned) - finals
    assert stats["partitions"]["pending"] >= 1
    assert stats["pending_final"] is True


def test_shard_progress_counts_own_partitions(tmp_path: Path, mock: MockServer) -> None:
    """A shard's progress and known entries count the partitions it writes, not all of them."""
    recipe = write_recipe(tmp_path, RECIPE)
    known = {}

    for index in (1, 2):
        output = tmp_path / f"shard-{index}"
        outcome = run_shard(recipe, mock.api_url, f"{index}/2", output, "--log-format", "json")
        assert outcome.exit_code == 0, outcome.stderr
        events = [orjson.loads(line) for line in outcome.stderr.splitlines()]
        last = [event for event in events if event.get("event") == "progress"][-1]
        manifest = (output / "runs/0001/manifest.jsonl").read_bytes().splitlines()
        entries = [orjson.loads(line) for line in manifest]
        finals = Counter(entry["s"] for entry in entries if entry["t"] == "part")
        for name in ("activities", "stats"):
            assert last["streams"][name]["known"] == finals[name]
            assert last["streams"][name]["partitions"] == finals[name]
        known[index] = [entry for entry in entries if entry["t"] == "known"]
        assert known[index] == [
            {"t": "known", "s": "activities", "partitions": finals["activities"]}
        ]

    published = mock.counts()["projects"]
    assert known[1][0]["partitions"] + known[2][0]["partitions"] == published


def test_merge_keeps_feed_problem_once(tmp_path: Path, mock: MockServer) -> None:
    """Every shard reads the parent's records, so each finds the same from: field without
    a value. The merged run keeps that problem once and is not complete."""
    recipe = write_recipe(tmp_path, RECIPE.replace("projects.projectId", "projects.projectID"))
    shards = [tmp_path / "shard-1", tmp_path / "shard-2"]
    for index, folder in enumerate(shards, start=1):
        outcome = run_shard(recipe, mock.api_url, f"{index}/2", folder)
        assert outcome.exit_code == 3, outcome.stderr

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 0, outcome.stderr
    run = tmp_path / "merged/runs/0001"
    entries = [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]
    feeds = [entry for entry in entries if entry["t"] == "feed"]
    assert [entry["s"] for entry in feeds] == ["activities"]
    assert feeds[0]["problem"].startswith("no string or integer value for projectID in the ")
    assert entries[-1]["outcome"] == "failures"
    record = orjson.loads((run / "run.json").read_bytes())
    assert record["outcome"] == "failures"
    assert record["streams"]["activities"]["problems"] == [
        {"partition": None, "problem": feeds[0]["problem"]}
    ]
    rerun = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--output", str(tmp_path / "merged")
    )
    assert rerun.exit_code == 3, rerun.stderr


def test_interrupted_merge_leaves_output_unchanged(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C during a merge exits 130 and leaves no run behind, so the same command then
    merges. The next merge deletes a folder that a killed merge left."""
    from tm_export import merge

    shards = export_shards(tmp_path, mock, 2)
    output = tmp_path / "merged"
    original = merge.write_run_record

    def interrupted(run_folder: Path, *args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "write_run_record", interrupted)
    stopped = run_cli("merge", str(output), *map(str, shards))
    monkeypatch.setattr(merge, "write_run_record", original)
    killed = output / "runs/.0001.merging"
    (killed / "data").mkdir(parents=True)
    (killed / "manifest.jsonl").write_bytes(b"{}\n")

    merged = run_cli("merge", str(output), *map(str, shards))

    assert stopped.exit_code == 130
    assert stopped.stderr == (
        "tm-export: error: interrupted; run the same command again to finish\n"
    )
    assert merged.exit_code == 0, merged.stderr
    assert merged.stderr == (
        f"tm-export: WARNING: deleting {killed}, left by a merge that was killed\n"
    )
    assert sorted(path.name for path in (output / "runs").iterdir()) == ["0001"]
    record = orjson.loads((output / "runs/0001/run.json").read_bytes())
    assert record["run"] == "0001"
    assert run_cli("verify", str(output)).exit_code == 0


def test_merge_again_writes_only_after_change(tmp_path: Path, mock: MockServer) -> None:
    """Merging the same unchanged shards again writes nothing; once a shard has fetched its
    failed partitions again, the next merge writes a new run."""
    recipe, shards = export_shards_with_failure(tmp_path, mock)
    mock.clear_faults()
    output = tmp_path / "merged"
    first = run_cli("merge", str(output), *map(str, shards))

    again = run_cli("merge", str(output), *map(str, shards))
    # The same shards, copied to another folder as a retried CI job downloads them.
    copies = [tmp_path / "copies" / folder.name for folder in shards]
    for folder, copy in zip(shards, copies, strict=True):
        shutil.copytree(folder, copy)
    from_copies = run_cli("merge", str(output), *map(str, copies))
    for index, folder in enumerate(shards, start=1):
        retried = run_shard(recipe, mock.api_url, f"{index}/2", folder, "--retry-failed")
        assert retried.exit_code == 0, retried.stderr
    after_retry = run_cli("merge", str(output), *map(str, shards))

    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"merged run: {output / 'runs/0001'}"
    assert again.exit_code == 0
    assert again.stdout == (
        f"already merged: {output / 'runs/0001'} is a merge of these shards as they are now, "
        f"so nothing was written; 'tm-export status {output / 'runs/0001'}' shows what it "
        "holds\n"
    )
    assert again.stderr == (
        'tm-export: WARNING: the merged run still has 1 failed partition: stats {"project_id":8}; '
        f"to fetch it again, run: tm-export run {recipe} --base-url {mock.api_url} "
        f"--retry-failed --output {output}\n"
    )
    assert (from_copies.exit_code, from_copies.stdout) == (0, again.stdout)
    assert (after_retry.exit_code, after_retry.stderr) == (0, "")
    assert after_retry.stdout.splitlines()[0] == f"merged run: {output / 'runs/0002'}"
    assert sorted(path.name for path in (output / "runs").iterdir()) == ["0001", "0002"]
    assert "state: complete" in run_cli("status", str(output)).stdout


def test_merge_refuses_shard_with_unended_retry(tmp_path: Path, mock: MockServer) -> None:
    """A shard that finished, was run again with --retry-failed and was killed is unfinished."""
    shards = export_shards(tmp_path, mock, 2)
    append_stopped_retry(shards[1] / "runs/0001")

    outcome = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert outcome.exit_code == 2
    assert outcome.stderr.startswith(
        f"tm-export: error: {shards[1] / 'runs/0001'}: shard 2/2 has not finished; run it to "
        "the end first, with the command that made it"
    )
    assert not (tmp_path / "merged").exists()


def test_shard_after_stopped_retry_resumes(tmp_path: Path, mock: MockServer) -> None:
    """A shard whose --retry-failed session stopped before its end is unfinished everywhere:
    merge names the retry command, and running it ends the shard so that merge takes it."""
    recipe, shards = export_shards_with_failure(tmp_path, mock)
    failing = next(
        folder
        for folder in shards
        if b'"state":"failed"' in (folder / "runs/0001/manifest.jsonl").read_bytes()
    )
    index = shards.index(failing) + 1
    append_stopped_retry(failing / "runs/0001")
    mock.clear_faults()

    rejected = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))
    status = run_cli("status", str(failing))
    resumed = run_shard(recipe, mock.api_url, f"{index}/2", failing, "--retry-failed")
    merged = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert rejected.exit_code == 2
    assert rejected.stderr == (
        f"tm-export: error: {failing / 'runs/0001'}: shard {index}/2 has not finished; run it "
        f"to the end first, with the command that made it: tm-export run {recipe} --base-url "
        f"{mock.api_url} --shard {index}/2 --output {failing} --retry-failed\n"
    )
    assert "state: unfinished" in status.stdout
    assert resumed.exit_code == 0, resumed.stderr
    assert (merged.exit_code, merged.stderr) == (0, "")
    assert "state: complete" in run_cli("status", str(tmp_path / "merged")).stdout


def test_merged_status_names_newest_session(tmp_path: Path, mock: MockServer) -> None:
    """status of a merged run names the session that started last, not the last shard's."""
    shards = export_shards(tmp_path, mock, 2)
    # Shard 2 ran an hour before shard 1, as a matrix job that started early would.
    manifest = shards[1] / "runs/0001/manifest.jsonl"
    entries = [orjson.loads(line) for line in manifest.read_bytes().splitlines()]
    for entry in entries:
        if entry["t"] == "session":
            moved = dt.datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
            entry["at"] = (moved - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    manifest.write_bytes(b"".join(orjson.dumps(entry) + b"\n" for entry in entries))
    (shards[1] / "runs/0001/run.json").unlink()
    assert run_cli("record", str(shards[1] / "runs/0001")).exit_code == 0
    first = next(
        orjson.loads(line)
        for line in (shards[0] / "runs/0001/manifest.jsonl").read_bytes().splitlines()
        if b'"t":"session"' in line
    )
    assert run_cli("merge", str(tmp_path / "merged"), *map(str, shards)).exit_code == 0

    status = run_cli("status", str(tmp_path / "merged"))

    line = next(x for x in status.stdout.splitlines() if x.startswith("sessions: 2"))
    assert line.startswith(f"sessions: 2, the last started {first['at']}; ")


def test_merge_checks_output_again_under_lock(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge that finishes while another one verifies its shards is seen by the other."""
    from tm_export import merge

    shards = export_shards(tmp_path, mock, 2)
    output = tmp_path / "merged"
    original = merge.require_verified
    inner: list[Outcome] = []

    def verify_slowly(*args: Any) -> None:
        # The first call starts the other merge, which runs to its end in the meantime.
        monkeypatch.setattr(merge, "require_verified", original)
        inner.append(run_cli("merge", str(output), *map(str, shards)))
        original(*args)

    monkeypatch.setattr(merge, "require_verified", verify_slowly)
    outer = run_cli("merge", str(output), *map(str, shards))

    assert [outcome.exit_code for outcome in inner] == [0]
    assert outer.exit_code == 0
    assert outer.stdout.startswith(f"already merged: {output / 'runs/0001'} ")
    assert sorted(path.name for path in (output / "runs").iterdir()) == ["0001"]


def test_merge_again_after_bag_offers_no_retry(tmp_path: Path, mock: MockServer) -> None:
    """An earlier merge that was made a bag cannot take pages, so merging the same shards
    again names its failed partitions without the --retry-failed command."""
    _, shards = export_shards_with_failure(tmp_path, mock)
    output = tmp_path / "merged"
    assert run_cli("merge", str(output), *map(str, shards)).exit_code == 0
    assert run_cli("bag", str(output / "runs/0001")).exit_code == 0

    again = run_cli("merge", str(output), *map(str, shards))

    assert again.exit_code == 0
    assert again.stdout.startswith(f"already merged: {output / 'runs/0001'} ")
    assert again.stderr == (
        'tm-export: WARNING: the merged run still has 1 failed partition: stats {"project_id":8}; '
        "it is a bag, so 'run --retry-failed' cannot add pages to it\n"
    )


def test_merge_into_folder_in_use(tmp_path: Path, mock: MockServer) -> None:
    """A merge into an output folder that another process is writing exits 1, as run does,
    rather than calling that process's run unfinished."""
    from tm_export.layout import OutputLock

    shards = export_shards(tmp_path, mock, 2)
    output = tmp_path / "merged"
    # The run that the other process is writing: so far only its manifest's header.
    writing = output / "runs/0001"
    writing.mkdir(parents=True)
    header = (shards[0] / "runs/0001/manifest.jsonl").read_bytes().splitlines()[0]
    (writing / "manifest.jsonl").write_bytes(header + b"\n")

    with OutputLock(output):
        outcome = run_cli("merge", str(output), *map(str, shards))

    assert outcome.exit_code == 1
    assert outcome.stderr == (
        f"tm-export: error: {output}: another tm-export process is writing this output folder; "
        "wait for it to finish, or choose another output folder\n"
    )
    assert sorted(path.name for path in (output / "runs").iterdir()) == ["0001"]


def test_merge_reports_problems(tmp_path: Path, mock: MockServer) -> None:
    """A shard's page cap is a problem of the merged run, which merge names with the
    command that lists it, and still exits 0."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
        "  projects: {endpoint: projects, max_pages: 1}\n"
        "  stats:\n    endpoint: project_statistics\n    params: {project_id: {range: [1, 4]}}\n",
    )
    for index in (1, 2):
        outcome = run_shard(recipe, mock.api_url, f"{index}/2", tmp_path / f"shard-{index}")
        assert outcome.exit_code in (0, 3), outcome.stderr

    merged = run_cli(
        "merge", str(tmp_path / "merged"), *(str(tmp_path / f"shard-{i}") for i in (1, 2))
    )

    assert merged.exit_code == 0, merged.stderr
    run = tmp_path / "merged/runs/0001"
    assert merged.stdout.endswith(
        "  problems: 1 of projects, so this stream may lack records; "
        f"'tm-export status {run}' lists them\n"
    )


@pytest.mark.parametrize(
    ("second", "reader"),
    [
        ("mapper", "as TM user 2001"),
        ("", "without an API token"),
        (",admin", "as TM user 1001 and without an API token"),
    ],
    ids=["other-user", "no-token", "no-token-first"],
)
def test_merge_refuses_shards_of_other_users(
    tmp_path: Path, mock: MockServer, second: str, reader: str
) -> None:
    """Shards read with the keys of different users, or one without a key in any session,
    saw different private projects. A child partition that only one of them could list
    would be missing from the merged run with no sign, so the merge is rejected (exit 2)."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, token_env: TM_API_TOKEN}"),
    )
    shards = [tmp_path / "shard-1", tmp_path / "shard-2"]
    for index, (folder, roles) in enumerate(zip(shards, ("admin", second), strict=True), start=1):
        # With two roles, a long Retry-After stops the first session, and the second
        # resumes the run with its own key.
        sessions = roles.split(",")
        if len(sessions) > 1:
            owned = next(
                pid for pid in range(1, 31) if _owned_by(index, {"project_id": pid}, "stats", 2)
            )
            mock.add_fault(
                path=rf"^/api/v2/projects/{owned}/statistics/$",
                status=429,
                headers={"Retry-After": "99999"},
            )
        for session, role in enumerate(sessions):
            token = mock.tokens[role] if role else ""
            outcome = run_cli(
                "run",
                str(recipe),
                "--base-url",
                mock.api_url,
                "--shard",
                f"{index}/2",
                "--output",
                str(folder),
                env={"TM_API_TOKEN": token},
            )
            assert outcome.exit_code == (1 if session < len(sessions) - 1 else 0), outcome.stderr
            mock.clear_faults()

    merged = run_cli("merge", str(tmp_path / "merged"), *map(str, shards))

    assert merged.exit_code == 2
    assert merged.stderr == (
        f"tm-export: error: {shards[1] / 'runs/0001'}: shard 2/2 read {reader}, but shard 1/2 "
        "as TM user 1001. Users see different private projects, so the merged run would lack "
        "what only one of them could read, with no sign. Run the shard again with --start-over "
        "and the key the others sent, then merge again\n"
    )
    assert not (tmp_path / "merged").exists()


def test_merge_command_names_base_url(tmp_path: Path, mock: MockServer) -> None:
    """A shard whose first session stopped at the server check recorded no base URL. The
    command that the merge gives to finish it still names --base-url, with a placeholder,
    since without it the command would go to the production API."""
    recipe = write_recipe(tmp_path, RECIPE)
    mock.add_fault(path=r"^/api/v2/system/heartbeat/$", status=404, times=1)
    stopped = run_shard(recipe, mock.api_url, "1/1", tmp_path / "shard", "--start-over")
    assert stopped.exit_code == 1

    early = run_cli("merge", str(tmp_path / "merged"), str(tmp_path / "shard"))

    assert early.exit_code == 2
    assert early.stderr == (
        f"tm-export: error: {tmp_path / 'shard/runs/0001'}: shard 1/1 has not finished; run "
        f"it to the end first, with the command that made it: tm-export run {recipe} "
        f"--base-url API_URL --shard 1/1 --output {tmp_path / 'shard'} (API_URL: the base URL "
        "that the other shards read from)\n"
    )


def test_merge_offers_no_retry_for_unknown_path(tmp_path: Path, mock: MockServer) -> None:
    """A partition that failed for a path the server does not have fails again on every
    --retry-failed, so the merge advises fixing the recipe and starting over instead."""
    recipe = write_recipe(
        tmp_path,
        "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
        "  featured: {path: /projcts/queries/featured/, records: results, key: projectId}\n",
    )
    outcome = run_shard(recipe, mock.api_url, "1/1", tmp_path / "shard")
    assert outcome.exit_code == 3

    merged = run_cli("merge", str(tmp_path / "merged"), str(tmp_path / "shard"))

    assert merged.exit_code == 0, merged.stderr
    assert merged.stderr.splitlines()[-1] == (
        "tm-export: WARNING: the shards left 1 failed partition: featured {}; it needs a "
        "changed recipe or the key of another user, which only new runs take: fix it, and "
        "make the shards again with --start-over"
    )
