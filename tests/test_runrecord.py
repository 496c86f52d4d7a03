"""The run record, run.json: its content, its atomic write, and when it is rejected."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from tm_export import __version__
from tm_export.errors import ManifestError
from tm_export.mock import MockServer
from tm_export.recipe import load_recipe
from tm_export.runrecord import RunDamagedError, write_run_record

from .conftest import export_here, run_cli, write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 4, 12]}}
  summaries:
    endpoint: project_summary
    params: {project_id: {each: [5, 9]}}
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]


def test_record_content(tmp_path: Path, mock: MockServer) -> None:
    """run.json names the recipe, server, times, and each file's records, bytes and hash."""
    recipe = write_recipe(tmp_path, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    ran = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", env=env)
    assert ran.exit_code == 0, ran.stderr
    run = tmp_path / "out/runs/0001"
    journal = entries(run)
    header, session, end = journal[0], journal[1], journal[-1]
    manifest = (run / "manifest.jsonl").read_bytes()
    contributions = (run / "data/contributions.jsonl").read_bytes()
    summaries = (run / "data/summaries.jsonl").read_bytes()
    text = recipe.read_text()

    outcome = run_cli("record", str(tmp_path / "out"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout == f"wrote {run / 'run.json'}\n"
    assert session["t"] == "session"
    assert end["t"] == "end"
    assert orjson.loads((run / "run.json").read_bytes()) == {
        "format": 1,
        "run": "0001",
        "tool": {"name": "tm-export", "version": __version__, "session_versions": [__version__]},
        "recipe": {
            "path": str(recipe),
            "sha256": sha256(text.encode()),
            "export_hash": load_recipe(recipe).export_hash(),
            "text": text,
        },
        "base_url": mock.api_url,
        "tm_release": "v5.5.2",
        "authenticated": True,
        "started": header["started"],
        "ended": end["at"],
        "outcome": "complete",
        "sessions": [
            {
                "at": session["at"],
                "version": __version__,
                "base_url": mock.api_url,
                "authenticated": True,
                "tm_release": "v5.5.2",
            }
        ],
        "manifest": {"file": "manifest.jsonl", "bytes": len(manifest), "sha256": sha256(manifest)},
        "incremental": None,
        "deleted_projects": [],
        "merged_from": None,
        "streams": {
            "contributions": {
                "file": "data/contributions.jsonl",
                "records": mock.dataset.count("project_contributions", project_id=1)
                + mock.dataset.count("project_contributions", project_id=4),
                "bytes": len(contributions),
                "sha256": sha256(contributions),
                "canonical": False,
                "duplicates": 0,
                "partitions": {"done": 2, "skipped": 1, "failed": 0, "pending": 0},
                "skipped": [
                    {
                        "partition": {"project_id": 12},
                        "status": 404,
                        "sub_code": "PROJECT_NOT_FOUND",
                    }
                ],
                "failed": [],
                "problems": [],
            },
            "summaries": {
                "file": "data/summaries.jsonl",
                "records": 2,
                "bytes": len(summaries),
                "sha256": sha256(summaries),
                "canonical": False,
                "duplicates": 0,
                "partitions": {"done": 2, "skipped": 0, "failed": 0, "pending": 0},
                "skipped": [],
                "failed": [],
                "problems": [],
            },
        },
    }


def test_record_partitions_number_order(tmp_path: Path, mock: MockServer) -> None:
    """Skipped partitions are listed by project id as a number: 6 before 12, not after 31."""
    recipe = write_recipe(
        tmp_path,
        """\
        version: 1
        instance: {rate_limit: 10000/s}
        output: OUT
        streams:
          summaries:
            endpoint: project_summary
            params: {project_id: {each: [31, 12, 9, 6, 1]}}
        """,
    )
    ran = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert ran.exit_code == 0, ran.stderr

    record = orjson.loads((tmp_path / "out/runs/0001/run.json").read_bytes())

    skipped = record["streams"]["summaries"]["skipped"]
    assert [(entry["partition"]["project_id"], entry["status"]) for entry in skipped] == [
        (6, 403),
        (9, 403),
        (12, 404),
        (31, 403),
    ]


def test_record_from_engine_equals_command(tmp_path: Path, mock: MockServer) -> None:
    """The record the engine writes at the end of a run equals the one the command writes."""
    recipe_path = write_recipe(tmp_path, RECIPE)
    result = export_here(recipe_path, mock, token=mock.tokens["admin"])
    run = tmp_path / "out/runs/0001"

    written = write_run_record(run, load_recipe(recipe_path), result)
    first = written.read_bytes()
    outcome = run_cli("record", str(run))

    assert written == run / "run.json"
    assert outcome.exit_code == 0, outcome.stderr
    assert (run / "run.json").read_bytes() == first
    assert sorted(path.name for path in run.iterdir()) == ["data", "manifest.jsonl", "run.json"]


def test_record_other_recipe(tmp_path: Path, mock: MockServer) -> None:
    """A recipe that exports something else than the run is rejected; nothing is written."""
    recipe_path = write_recipe(tmp_path, RECIPE)
    export_here(recipe_path, mock, token=mock.tokens["admin"])
    # Delete the run's own record, because a record written despite the error would have
    # the same bytes.
    (tmp_path / "out/runs/0001/run.json").unlink()
    other = write_recipe(tmp_path, RECIPE.replace("[5, 9]", "[5, 6]"), name="other.yaml")

    with pytest.raises(ManifestError, match="exports something else"):
        write_run_record(tmp_path / "out/runs/0001", load_recipe(other))

    assert not (tmp_path / "out/runs/0001/run.json").exists()


def test_record_unfinished_run(tmp_path: Path, mock: MockServer) -> None:
    """A run stopped half-way gets a record with no end, no outcome and its pending count."""
    recipe = write_recipe(tmp_path, RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/4/contributions/$", status=401)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    ran = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", env=env)
    assert ran.exit_code == 1, ran.stderr
    run = tmp_path / "out/runs/0001"

    outcome = run_cli("record", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    record = orjson.loads((run / "run.json").read_bytes())
    finals = [e["state"] for e in entries(run) if e["t"] == "part" and e["s"] == "contributions"]
    assert record["ended"] is None
    assert record["outcome"] is None
    assert record["streams"]["contributions"]["partitions"] == {
        "done": finals.count("done"),
        "skipped": finals.count("skipped"),
        "failed": 0,
        "pending": 3 - len(finals),
    }
    assert 3 - len(finals) >= 1


def test_record_rejects_damaged_file(tmp_path: Path, mock: MockServer) -> None:
    """A stream file that does not match the manifest gets no record; exit 3 names it."""
    recipe_path = write_recipe(tmp_path, RECIPE)
    export_here(recipe_path, mock, token=mock.tokens["admin"])
    run = tmp_path / "out/runs/0001"
    # Delete the run's own record, because a record written despite the error would have
    # the same bytes.
    (run / "run.json").unlink()
    path = run / "data/summaries.jsonl"
    path.write_bytes(path.read_bytes() + b"{}\n")

    outcome = run_cli("record", str(run))

    assert outcome.exit_code == 3
    assert outcome.stderr.startswith(
        f"tm-export: error: {run}: 1 mismatch in its files, no run record was written: "
        "data/summaries.jsonl: 3 bytes follow the committed end"
    )
    assert not (run / "run.json").exists()
    with pytest.raises(RunDamagedError):
        write_run_record(run)


def test_record_rejects_bag(tmp_path: Path, mock: MockServer) -> None:
    """A bag's run record is part of its payload, so record exits 2 and changes nothing."""
    recipe_path = write_recipe(tmp_path, RECIPE)
    export_here(recipe_path, mock, token=mock.tokens["admin"])
    run = tmp_path / "out/runs/0001"
    assert run_cli("bag", str(run)).exit_code == 0
    before = (run / "data/run.json").read_bytes()

    outcome = run_cli("record", str(run))

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {run}: the run is a bag, and its run record is part of the bag's "
        "payload; a new record would make the bag invalid, so none was written\n"
    )
    assert (run / "data/run.json").read_bytes() == before
