"""tm-export canonical: identical data gives identical files, and the manifest stays true."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tm_export import __version__, canonical
from tm_export.canonical import line_sort_key, make_canonical, sorted_lines
from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, concurrency: 8, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  contributions:
    endpoint: project_contributions
    params: {project_id: {from: projects.projectId}}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  summaries:
    endpoint: project_summary
    params: {project_id: {each: [1, 4, 5, 9, 12]}}
"""

STREAMS = ("projects", "contributions", "activities", "summaries")


def export(folder: Path, mock: MockServer) -> Path:
    """Export RECIPE with the admin token into ``folder/out``; return the run folder."""
    folder.mkdir(exist_ok=True)
    recipe = write_recipe(folder, RECIPE)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", env=env)
    assert outcome.exit_code == 0, outcome.stderr
    return folder / "out/runs/0001"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_canonical(run: Path, after_streams: int) -> None:
    """Run 'tm-export canonical' on ``run`` and kill it once the canonical entry of stream
    number ``after_streams`` is committed, before that stream's copy is renamed."""
    killed = subprocess.run(
        [sys.executable, "-m", "tm_export", "canonical", str(run)],
        capture_output=True,
        check=False,
        timeout=120,
        env={**os.environ, "TM_EXPORT_CRASH_AT": f"canonical-entry-written:{after_streams}"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode(errors="replace")


def entries(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]


def test_two_exports_same_hashes(tmp_path: Path, mock: MockServer) -> None:
    """Two exports of the same data, each made canonical, have identical files."""
    first = export(tmp_path / "first", mock)
    second = export(tmp_path / "second", mock)
    lines_before = {
        stream: Counter((first / f"data/{stream}.jsonl").read_bytes().splitlines())
        for stream in STREAMS
    }

    assert run_cli("canonical", str(tmp_path / "first/out")).exit_code == 0
    assert run_cli("canonical", str(tmp_path / "second/out")).exit_code == 0

    for stream in STREAMS:
        one, two = first / f"data/{stream}.jsonl", second / f"data/{stream}.jsonl"
        assert sha256(one) == sha256(two), stream
        assert Counter(one.read_bytes().splitlines()) == lines_before[stream], stream
    assert run_cli("verify", str(tmp_path / "first/out")).exit_code == 0
    assert run_cli("verify", str(tmp_path / "second/out")).exit_code == 0


def test_canonical_order(tmp_path: Path, mock: MockServer) -> None:
    """Lines are sorted by partition values as numbers, then by the record key."""
    run = export(tmp_path, mock)

    outcome = run_cli("canonical", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    records = [
        orjson.loads(line) for line in (run / "data/contributions.jsonl").read_bytes().splitlines()
    ]
    order = [(record["_partition"]["project_id"], record["username"]) for record in records]
    assert order == sorted(order)
    assert len({project for project, _ in order}) > 10
    projects = [
        orjson.loads(line)["projectId"]
        for line in (run / "data/projects.jsonl").read_bytes().splitlines()
    ]
    assert projects == sorted(projects)
    activities = [
        orjson.loads(line) for line in (run / "data/activities.jsonl").read_bytes().splitlines()
    ]
    keys = [(a["_partition"]["project_id"], a["historyId"]) for a in activities]
    assert keys == sorted(keys)


def test_canonical_output_and_journal(tmp_path: Path, mock: MockServer) -> None:
    """Each file gets one canonical entry with its new hash; page entries stay as they were."""
    run = export(tmp_path, mock)
    before = {stream: sha256(run / f"data/{stream}.jsonl") for stream in STREAMS}
    journal_before = (run / "manifest.jsonl").read_bytes()

    outcome = run_cli("canonical", str(tmp_path / "out"))

    assert outcome.exit_code == 0, outcome.stderr
    after = {stream: sha256(run / f"data/{stream}.jsonl") for stream in STREAMS}
    # A file whose lines arrived in canonical order keeps its bytes. Which files did depends
    # on the order of the responses, but activities come newest first, so theirs never does.
    actions = {
        stream: "already in order" if after[stream] == before[stream] else "rewritten"
        for stream in STREAMS
    }
    assert actions["activities"] == "rewritten"
    width = max(len(action) for action in actions.values())
    assert outcome.stdout.splitlines() == [
        f"{run}:",
        *(
            f"  {actions[stream]:<{width}}  data/{stream}.jsonl: sha256 {after[stream]}"
            for stream in STREAMS
        ),
        f"updated {run / 'run.json'}",
    ]
    assert (run / "manifest.jsonl").read_bytes().startswith(journal_before)
    added = entries(run)[len(journal_before.splitlines()) :]
    for entry, stream in zip(added, STREAMS, strict=True):
        path = run / f"data/{stream}.jsonl"
        lines = len(path.read_bytes().splitlines())
        assert entry == {
            "t": "canonical",
            "s": stream,
            "at": entry["at"],
            "version": __version__,
            "order": ["partition", "key", "line"],
            "sha256": sha256(path),
            "bytes": path.stat().st_size,
            "lines": lines,
            "records": lines,
            "previous_sha256": before[stream],
        }
    assert sorted(p.name for p in (run / "data").iterdir()) == sorted(f"{s}.jsonl" for s in STREAMS)


def test_canonical_again_changes_nothing(tmp_path: Path, mock: MockServer) -> None:
    """A second canonical step reports every file as already canonical and changes no byte."""
    run = export(tmp_path, mock)
    assert run_cli("canonical", str(run)).exit_code == 0
    journal = (run / "manifest.jsonl").read_bytes()
    record = (run / "run.json").read_bytes()

    outcome = run_cli("canonical", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[1:] == [
        *(
            f"  already canonical  data/{stream}.jsonl: "
            f"sha256 {sha256(run / f'data/{stream}.jsonl')}"
            for stream in STREAMS
        ),
        f"unchanged {run / 'run.json'}",
    ]
    assert (run / "manifest.jsonl").read_bytes() == journal
    assert (run / "run.json").read_bytes() == record


def test_external_sort_matches_memory_sort(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sorting in 512-byte chunks with several merge passes gives the in-memory result."""
    small = export(tmp_path / "small", mock)
    large = export(tmp_path / "large", mock)
    monkeypatch.setattr(canonical, "FAN_IN", 3)

    make_canonical(small, chunk_bytes=512)
    make_canonical(large)

    for stream in STREAMS:
        assert sha256(small / f"data/{stream}.jsonl") == sha256(large / f"data/{stream}.jsonl")
    leftovers = [p.name for p in (small / "data").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sorted_lines_chunks(tmp_path: Path) -> None:
    """The external sort orders numbers by value, text by code point, and ties by bytes."""
    lines = [
        orjson.dumps({"_partition": {"project_id": pid}, "username": name, "n": n}) + b"\n"
        for pid in (10, 2, 1)
        for name, n in (("b", 1), ("a", 2), ("a", 1))
    ]
    work = tmp_path / "work"
    work.mkdir()

    result = list(sorted_lines(lines, line_sort_key("username"), work, chunk_bytes=100))

    assert [orjson.loads(line)["_partition"]["project_id"] for line in result] == [1] * 3 + [
        2
    ] * 3 + [10] * 3
    assert [(orjson.loads(line)["username"], orjson.loads(line)["n"]) for line in result[:3]] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
    ]
    assert sorted(result) == sorted(lines)


def test_verify_canonical_change(tmp_path: Path, mock: MockServer) -> None:
    """One changed byte in a canonical file mismatches its entry's hash and the run record's."""
    run = export(tmp_path, mock)
    assert run_cli("canonical", str(run)).exit_code == 0
    path = run / "data/summaries.jsonl"
    entry = next(e for e in entries(run) if e["t"] == "canonical" and e["s"] == "summaries")
    data = bytearray(path.read_bytes())
    offset = data.index(b'"name":"') + len(b'"name":"')
    data[offset] = ord("B") if data[offset] != ord("B") else ord("C")
    path.write_bytes(bytes(data))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        f"  MISMATCH  data/summaries.jsonl: the SHA-256 of bytes 0..{len(data)} is "
        f"{sha256(path)}, but the canonical entry records {entry['sha256']}",
        f"  MISMATCH  data/summaries.jsonl: the SHA-256 is {sha256(path)}, "
        f"but run.json records {entry['sha256']}",
    ]


def test_canonical_interrupted_before_rename(tmp_path: Path, mock: MockServer) -> None:
    """A crash between the journal entry and the rename: verify reports it, canonical finishes."""
    run = export(tmp_path / "crashed", mock)
    reference = export(tmp_path / "reference", mock)
    assert run_cli("canonical", str(reference)).exit_code == 0
    original = (run / "data/activities.jsonl").read_bytes()
    assert run_cli("canonical", str(run)).exit_code == 0
    # Put the state back as a crash after step 2 leaves it: the sorted copy beside the
    # original, and the journal entry already committed.
    path = run / "data/activities.jsonl"
    path.rename(run / "data/.activities.jsonl.canonical")
    path.write_bytes(original)

    verified = run_cli("verify", str(run))
    finished = run_cli("canonical", str(run))

    assert verified.exit_code == 3
    assert (
        "  note      data/activities.jsonl: a canonical rewrite was interrupted "
        f"(data/.activities.jsonl.canonical is left); run 'tm-export canonical {run}' "
        "again to finish it"
    ) in verified.stdout.splitlines()
    assert finished.exit_code == 0, finished.stderr
    assert (
        f"  finished           data/activities.jsonl: sha256 {sha256(path)}"
        in finished.stdout.splitlines()
    )
    assert sha256(path) == sha256(reference / "data/activities.jsonl")
    assert run_cli("verify", str(run)).exit_code == 0


def test_canonical_killed_between_streams(tmp_path: Path, mock: MockServer) -> None:
    """A kill after the first stream's canonical entry, before its rename, leaves one
    file marked canonical and the others not: verify notes the copy left and the
    partial rewrite, whichever bytes the first file holds, and canonical finishes it."""
    run = export(tmp_path, mock)

    kill_canonical(run, after_streams=1)
    verified = run_cli("verify", str(run))
    finished = run_cli("canonical", str(run))

    assert (
        "  note      data/projects.jsonl: a canonical rewrite was interrupted "
        f"(data/.projects.jsonl.canonical is left); run 'tm-export canonical {run}' again to "
        "finish it"
    ) in verified.stdout.splitlines()
    assert (
        "  note      only 1 of 4 stream files are in canonical order, so a canonical rewrite "
        f"was interrupted; run 'tm-export canonical {run}' again to finish it"
    ) in verified.stdout.splitlines()
    assert finished.exit_code == 0, finished.stderr
    checked = run_cli("verify", str(run))
    assert checked.exit_code == 0
    assert "note" not in checked.stdout
    # A kill before the rename of a file that was in order already leaves a copy equal to it.
    left = run / "data/.summaries.jsonl.canonical"
    left.write_bytes((run / "data/summaries.jsonl").read_bytes())
    noted = run_cli("verify", str(run))
    assert noted.exit_code == 0
    assert (
        "  note      data/summaries.jsonl: a canonical rewrite was interrupted "
        f"(data/.summaries.jsonl.canonical is left); run 'tm-export canonical {run}' again to "
        "finish it"
    ) in noted.stdout.splitlines()


def test_bag_refuses_partly_canonical_run(tmp_path: Path, mock: MockServer) -> None:
    """A bag is final, so a run whose canonical rewrite was killed between two streams is
    not bagged: the bag would keep some files out of canonical order for good."""
    run = export(tmp_path, mock)
    kill_canonical(run, after_streams=2)

    bagged = run_cli("bag", str(run))

    assert bagged.exit_code == 2
    assert bagged.stderr == (
        f"tm-export: error: {run}: a canonical rewrite of the run was interrupted; run "
        f"'tm-export canonical {run}' to finish it, then make the bag\n"
    )
    assert not (run / "bagit.txt").exists()
    assert run_cli("canonical", str(run)).exit_code == 0
    assert run_cli("bag", str(run)).exit_code == 0


def test_canonical_updates_run_record(tmp_path: Path, mock: MockServer) -> None:
    """An existing run record is rewritten with the new hashes and canonical flags."""
    run = export(tmp_path, mock)
    assert run_cli("record", str(run)).exit_code == 0

    outcome = run_cli("canonical", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines()[-1] == f"updated {run / 'run.json'}"
    record = orjson.loads((run / "run.json").read_bytes())
    for stream in STREAMS:
        assert record["streams"][stream]["sha256"] == sha256(run / f"data/{stream}.jsonl")
        assert record["streams"][stream]["canonical"] is True
    assert record["manifest"]["bytes"] == (run / "manifest.jsonl").stat().st_size
    assert run_cli("verify", str(run)).exit_code == 0


def test_canonical_rejects_unfinished_and_bag(tmp_path: Path, mock: MockServer) -> None:
    """An unfinished run and a bag are rejected with exit 2; nothing changes."""
    bagged = export(tmp_path / "bagged", mock)
    assert run_cli("bag", str(bagged)).exit_code == 0
    folder = tmp_path / "stopped"
    folder.mkdir()
    recipe = write_recipe(folder, RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/5/queries/summary/$", status=401)
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    assert (
        run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet", env=env).exit_code == 1
    )
    stopped = folder / "out/runs/0001"
    journal = (stopped / "manifest.jsonl").read_bytes()

    unfinished = run_cli("canonical", str(stopped))
    bag = run_cli("canonical", str(bagged))

    assert unfinished.exit_code == 2
    assert unfinished.stderr == (
        f"tm-export: error: {stopped}: the run is unfinished; finish it (run the same "
        "'tm-export run' command again) before making its files canonical\n"
    )
    assert (stopped / "manifest.jsonl").read_bytes() == journal
    assert bag.exit_code == 2
    assert bag.stderr == (
        f"tm-export: error: {bagged}: the run is a bag, and rewriting its files would make the "
        "bag invalid; make files canonical before 'tm-export bag'\n"
    )


def test_canonical_retry_needs_work(tmp_path: Path, mock: MockServer) -> None:
    """On canonical files --retry-failed with nothing failed sends nothing (exit 0), while
    --retry-skipped, which would add pages for the skipped project 12, is rejected."""
    run = export(tmp_path, mock)
    assert run_cli("canonical", str(run)).exit_code == 0
    journal = (run / "manifest.jsonl").read_bytes()
    args = ["run", str(tmp_path / "recipe.yaml"), "--base-url", mock.api_url, "--quiet"]
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    mock.reset_log()

    failed = run_cli(*args, "--retry-failed", env=env)
    skipped = run_cli(*args, "--retry-skipped", env=env)

    assert failed.exit_code == 0, failed.stderr
    assert "result: complete (exit 0)" in failed.stderr
    assert skipped.exit_code == 1
    assert skipped.stderr == (
        f"tm-export: error: {run}: the run's files were rewritten in canonical order, so pages "
        "cannot be added to them; use --incremental or --start-over to fetch again in a new run\n"
    )
    assert mock.requests() == []
    assert (run / "manifest.jsonl").read_bytes() == journal
