"""Shards for CI matrices: N jobs share an export, and merge gives the unsharded result."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe

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


def export_shards(tmp_path: Path, mock: MockServer, count: int) -> list[Path]:
    recipe = write_recipe(tmp_path, RECIPE)
    folders = []
    for index in range(1, count + 1):
        folder = tmp_path / f"shard-{index}"
        outcome = run_cli(
            "run",
            str(recipe),
            "--base-url",
            mock.api_url,
            "--shard",
            f"{index}/{count}",
            "--output",
            str(folder),
        )
        assert outcome.exit_code == 0, outcome.stderr
        folders.append(folder)
    return folders


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
