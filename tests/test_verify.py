"""tm-export verify and tm-export bag: files against the manifest, the run record and the bag."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import bagit
import orjson
import pytest

from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe

RECIPE = """\
version: 1
instance: {concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  contributions:
    endpoint: project_contributions
    params: {project_id: {each: [1, 4, 5, 9]}}
  summaries:
    endpoint: project_summary
    params: {project_id: {from: projects.projectId}}
"""

STREAMS = ("projects", "contributions", "summaries")


def export(tmp_path: Path, mock: MockServer) -> Path:
    """Export RECIPE anonymously; return the run folder."""
    recipe = write_recipe(tmp_path, RECIPE)
    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert outcome.exit_code == 0, outcome.stderr
    return tmp_path / "out/runs/0001"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def line_count(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def ok_line(run: Path, stream: str, prefix: str = "data", canonical: bool = False) -> str:
    path = run / prefix / f"{stream}.jsonl"
    flag = ", canonical" if canonical else ""
    return (
        f"  ok        {prefix}/{stream}.jsonl: {line_count(path)} records, "
        f"{path.stat().st_size} bytes{flag}, sha256 {sha256(path)}"
    )


@pytest.fixture(params=[None, 16], ids=["default-blocks", "16-byte-blocks"])
def read_block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read stream files in the default blocks, or in blocks far shorter than a line."""
    if request.param is not None:
        monkeypatch.setattr("tm_export.verify.HASH_BLOCK", request.param)


def flip_byte(path: Path, offset: int) -> None:
    """Change the byte at ``offset`` to another letter, keeping the file's size."""
    data = bytearray(path.read_bytes())
    data[offset] = ord("B") if data[offset] != ord("B") else ord("C")
    path.write_bytes(bytes(data))


def test_verify_complete_run(tmp_path: Path, mock: MockServer, read_block: None) -> None:
    """Every file of a complete run matches; the report names each with its hash."""
    run = export(tmp_path, mock)

    outcome = run_cli("verify", str(tmp_path / "out"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"{run}: complete; 3 stream files",
        *(ok_line(run, stream) for stream in STREAMS),
        "verified 1 run: 3 stream files match the manifest",
    ]
    assert line_count(run / "data/projects.jsonl") == mock.dataset.count("projects") - len(
        mock.dataset.private_project_ids()
    )


ONE_RECORD_RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  project:
    endpoint: project
    params: {project_id: 1}
"""


def test_one_record_takes_singular(tmp_path: Path, mock: MockServer) -> None:
    """A count of one takes the singular noun, and its verb agrees."""
    recipe = write_recipe(tmp_path, ONE_RECORD_RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 0
    run = tmp_path / "out/runs/0001"
    path = run / "data/project.jsonl"

    verified = run_cli("verify", str(tmp_path / "out"))
    status = run_cli("status", str(tmp_path / "out"))

    assert verified.exit_code == 0, verified.stderr
    assert verified.stdout.splitlines() == [
        f"{run}: complete; 1 stream file",
        f"  ok        data/project.jsonl: 1 record, {path.stat().st_size} bytes, "
        f"sha256 {sha256(path)}",
        "verified 1 run: 1 stream file matches the manifest",
    ]
    assert status.exit_code == 0, status.stderr
    assert status.stdout.splitlines()[-1].endswith("  1 session  1 record")


def test_verify_json(tmp_path: Path, mock: MockServer) -> None:
    """--json reports the same facts per file."""
    run = export(tmp_path, mock)
    path = run / "data/contributions.jsonl"
    records = sum(mock.dataset.count("project_contributions", project_id=p) for p in (1, 4, 5))

    outcome = run_cli("verify", str(run), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["ok"] is True
    assert report["mismatches"] == 0
    (only,) = report["runs"]
    assert only["folder"] == str(run)
    assert only["state"] == "complete"
    assert only["streams"]["contributions"] == {
        "file": "data/contributions.jsonl",
        "ok": True,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "size": path.stat().st_size,
        "uncommitted_bytes": 0,
        "lines": records,
        "records": records,
        "expected_records": records,
        "canonical": False,
        "problems": [],
        "notes": [],
    }


def test_verify_notes_missing_run_record(tmp_path: Path, mock: MockServer) -> None:
    """Without run.json verify notes that no SHA-256 was compared, and a byte changed inside
    a line is still found, by the CRC-32 of its page."""
    run = export(tmp_path, mock)
    (run / "run.json").unlink()

    intact = run_cli("verify", str(run))
    expected = [
        f"{run}: complete; 3 stream files",
        *(ok_line(run, stream) for stream in STREAMS),
        "  note      run.json is missing, so no SHA-256 was compared with a record; "
        f"'tm-export record {run}' writes one that trusts the files as they are now",
        "verified 1 run: 3 stream files match the manifest",
    ]
    flip_byte(run / "data/projects.jsonl", 40)
    changed = run_cli("verify", str(run))

    assert intact.exit_code == 0, intact.stderr
    assert intact.stdout.splitlines() == expected
    assert changed.exit_code == 3
    assert changed.stdout.splitlines()[1] == (
        "  MISMATCH  data/projects.jsonl: page 1 of partition {} (bytes 0..8568): its lines do "
        "not match the CRC-32 that the manifest records, so a byte or their order was changed"
    )


def test_missing_record_note_on_damage(tmp_path: Path, mock: MockServer) -> None:
    """With a mismatch found, the note does not offer record, which would refuse the run."""
    run = export(tmp_path, mock)
    (run / "run.json").unlink()
    path = run / "data/projects.jsonl"
    path.write_bytes(path.read_bytes()[:-1])

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert "  note      run.json is missing, so no SHA-256 was compared with a record" in (
        outcome.stdout.splitlines()
    )


def test_verify_invalid_json_line(tmp_path: Path, mock: MockServer, read_block: None) -> None:
    """A byte that breaks a line's JSON mismatches the page's CRC-32, the JSON check and the
    run record's hash."""
    run = export(tmp_path, mock)
    path = run / "data/contributions.jsonl"
    recorded = sha256(path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"{", b"[", 1)
    path.write_bytes(b"".join(lines))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        '  MISMATCH  data/contributions.jsonl: page 1 of partition {"project_id":1} (bytes '
        "0..3605): its lines do not match the CRC-32 that the manifest records, so a byte or "
        "their order was changed",
        "  MISMATCH  data/contributions.jsonl: 1 committed line is not valid JSON (line 3)",
        f"  MISMATCH  data/contributions.jsonl: the SHA-256 is {sha256(path)}, "
        f"but run.json records {recorded}",
    ]
    assert outcome.stdout.splitlines()[-1] == (
        "verified 1 run: 3 mismatches (1 of 3 stream files); exit 3"
    )


def test_verify_truncated_and_extended(tmp_path: Path, mock: MockServer, read_block: None) -> None:
    """A cut file and bytes after a finished run's committed end are mismatches."""
    run = export(tmp_path, mock)
    summaries = run / "data/summaries.jsonl"
    projects = run / "data/projects.jsonl"
    committed = summaries.stat().st_size
    os.truncate(summaries, committed - 10)
    with projects.open("ab") as file:
        file.write(b'{"extra":1}\n')

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    lines = outcome.stdout.splitlines()
    assert (
        f"  MISMATCH  data/summaries.jsonl: the file has {committed - 10} bytes, but the "
        f"manifest proves {committed} committed"
    ) in lines
    assert (
        f"  MISMATCH  data/projects.jsonl: 12 bytes follow the committed end at byte "
        f"{projects.stat().st_size - 12}; a finished run's file must end there"
    ) in lines


def test_verify_lines_moved_between_pages(
    tmp_path: Path, mock: MockServer, read_block: None
) -> None:
    """Swapping lines of two pages keeps every count but breaks the page ranges and the hash."""
    run = export(tmp_path, mock)
    path = run / "data/projects.jsonl"
    recorded = sha256(path)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines[0]) != len(lines[-1])
    lines[0], lines[-1] = lines[-1], lines[0]
    path.write_bytes(b"".join(lines))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    manifest = [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]
    page_end = next(e["end"] for e in manifest if e["t"] == "page" and e["s"] == "projects")
    start = 0
    for line in lines:
        if start + len(line) > page_end:
            break
        start += len(line)
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        f"  MISMATCH  data/projects.jsonl: the line at bytes {start}..{start + len(line)} "
        f"crosses the end of page 1 of partition {{}} at byte {page_end}",
        f"  MISMATCH  data/projects.jsonl: the SHA-256 is {sha256(path)}, "
        f"but run.json records {recorded}",
    ]


def test_verify_unfinished_run_tail(tmp_path: Path, mock: MockServer) -> None:
    """Bytes after the committed end of an unfinished run are a note, not a mismatch."""
    recipe = write_recipe(tmp_path, RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/5/contributions/$", status=401)
    stopped = run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet")
    assert stopped.exit_code == 1, stopped.stderr
    run = tmp_path / "out/runs/0001"
    path = run / "data/contributions.jsonl"
    committed = path.stat().st_size
    with path.open("ab") as file:
        file.write(b'{"half a li')

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 0, outcome.stdout
    lines = outcome.stdout.splitlines()
    assert lines[0] == f"{run}: unfinished; 3 stream files"
    assert (
        f"  note      data/contributions.jsonl: 11 uncommitted bytes after the committed end at "
        f"byte {committed} (a session may be writing them; the next session cuts them off)"
    ) in lines


def test_verify_against_run_record(tmp_path: Path, mock: MockServer) -> None:
    """A changed byte inside a text value keeps the JSON valid; the page's CRC-32 and the run
    record's hash find it."""
    run = export(tmp_path, mock)
    assert run_cli("record", str(run)).exit_code == 0
    path = run / "data/summaries.jsonl"
    recorded = sha256(path)
    offset = path.read_bytes().index(b'"name":"') + len(b'"name":"')
    flip_byte(path, offset)

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        '  MISMATCH  data/summaries.jsonl: page 1 of partition {"project_id":1} (bytes 0..1457): '
        "its lines do not match the CRC-32 that the manifest records, so a byte or their order "
        "was changed",
        f"  MISMATCH  data/summaries.jsonl: the SHA-256 is {sha256(path)}, but run.json "
        f"records {recorded}",
    ]


def test_missing_file_reported_once(tmp_path: Path, mock: MockServer) -> None:
    """A stream file that is gone is one mismatch, not also a SHA-256 of None."""
    run = export(tmp_path, mock)
    path = run / "data/summaries.jsonl"
    committed = path.stat().st_size
    path.rename(run / "data/summaries.old")

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        "  MISMATCH  data/summaries.jsonl: the file is missing, but the manifest proves "
        f"{committed} bytes committed"
    ]


def test_record_without_manifest_object(tmp_path: Path, mock: MockServer) -> None:
    """A run record whose manifest entry is not an object is reported, not a traceback."""
    run = export(tmp_path, mock)
    record = orjson.loads((run / "run.json").read_bytes())
    (run / "run.json").write_bytes(orjson.dumps({**record, "manifest": []}))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert "  MISMATCH  run.json: not a valid run record (manifest is not an object)" in (
        outcome.stdout.splitlines()
    )


def test_grown_manifest_prefix_compared(tmp_path: Path, mock: MockServer) -> None:
    """A manifest that grew since the run record is still compared over the bytes the
    record describes, so a changed server URL among them is found."""
    run = export(tmp_path, mock)
    manifest = run / "manifest.jsonl"
    changed = manifest.read_bytes().replace(b"127.0.0.1", b"127.0.0.2", 1)
    manifest.write_bytes(changed + b'{"t":"known","s":"summaries","partitions":3}\n')

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    record = orjson.loads((run / "run.json").read_bytes())["manifest"]
    problems = [line for line in outcome.stdout.splitlines() if "manifest.jsonl:" in line]
    assert problems == [
        f"  MISMATCH  manifest.jsonl: the SHA-256 of the first {record['bytes']} bytes of the "
        f"manifest is {hashlib.sha256(changed[: record['bytes']]).hexdigest()}, but run.json "
        f"records {record['sha256']}; restore the manifest from a copy"
    ]


def test_edited_record_field_found(tmp_path: Path, mock: MockServer) -> None:
    """A field of run.json that the hashes do not cover, such as the server's URL, is
    compared with the record that the manifest gives."""
    run = export(tmp_path, mock)
    path = run / "run.json"
    path.write_bytes(path.read_bytes().replace(b"127.0.0.1", b"example.org"))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "run.json:" in line] == [
        "  MISMATCH  run.json: base_url, sessions differ from what the manifest and the files "
        f"give; restore the record from a copy, or delete it and run 'tm-export record {run}' "
        "to write it anew from them"
    ]
    # The advice works: record refuses the edited record, and writes the original anew.
    original = path.read_bytes().replace(b"example.org", b"127.0.0.1")
    assert run_cli("record", str(run)).exit_code == 3
    path.unlink()
    assert run_cli("record", str(run)).exit_code == 0
    assert path.read_bytes() == original


def test_record_lists_compared_in_any_order(tmp_path: Path, mock: MockServer) -> None:
    """The skipped partitions of run.json may come in another order, as earlier versions
    sorted them, but one left out is found."""
    recipe = write_recipe(tmp_path, RECIPE.replace("[1, 4, 5, 9]", "[1, 4, 5, 9, 12]"))
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 0
    run = tmp_path / "out/runs/0001"
    path = run / "run.json"
    record = orjson.loads(path.read_bytes())
    skipped = record["streams"]["contributions"]["skipped"]
    assert [entry["partition"] for entry in skipped] == [{"project_id": 9}, {"project_id": 12}]

    skipped.reverse()
    path.write_bytes(orjson.dumps(record))
    reordered = run_cli("verify", str(run))
    del skipped[0]
    path.write_bytes(orjson.dumps(record))
    shortened = run_cli("verify", str(run))

    assert reordered.exit_code == 0, reordered.stdout
    assert shortened.exit_code == 3
    assert [line for line in shortened.stdout.splitlines() if "run.json:" in line] == [
        "  MISMATCH  run.json: streams.contributions.skipped differs from what the manifest "
        f"and the files give; restore the record from a copy, or delete it and run 'tm-export "
        f"record {run}' to write it anew from them"
    ]


def test_bag_validates_and_detects_change(tmp_path: Path, mock: MockServer) -> None:
    """A bag passes bagit's validation and verify; one changed byte fails both, naming the file."""
    run = export(tmp_path, mock)

    made = run_cli("bag", str(tmp_path / "out"))

    assert made.exit_code == 0, made.stderr
    assert made.stdout == f"{run}: a BagIt bag; the run is now in {run / 'data'}\n"
    assert sorted(path.name for path in run.iterdir()) == [
        "bag-info.txt",
        "bagit.txt",
        "data",
        "manifest-sha256.txt",
        "tagmanifest-sha256.txt",
    ]
    assert sorted(path.name for path in (run / "data").iterdir()) == [
        "data",
        "manifest.jsonl",
        "run.json",
    ]
    assert bagit.Bag(str(run)).validate() is True
    verified = run_cli("verify", str(run))
    assert verified.exit_code == 0, verified.stdout
    assert verified.stdout.splitlines() == [
        f"{run}: complete, a bag; 3 stream files",
        *(ok_line(run, stream, prefix="data/data") for stream in STREAMS),
        "verified 1 run: 3 stream files match the manifest",
    ]

    path = run / "data/data/summaries.jsonl"
    recorded = sha256(path)
    flip_byte(path, path.read_bytes().index(b'"name":"') + len(b'"name":"'))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        '  MISMATCH  data/data/summaries.jsonl: page 1 of partition {"project_id":1} (bytes '
        "0..1457): its lines do not match the CRC-32 that the manifest records, so a byte or "
        "their order was changed",
        f"  MISMATCH  data/data/summaries.jsonl: the SHA-256 is {sha256(path)}, but data/run.json "
        f"records {recorded}",
        f"  MISMATCH  data/data/summaries.jsonl: bag: the SHA-256 is {sha256(path)}, but the "
        f"bag's manifest records {recorded}",
    ]
    with pytest.raises(bagit.BagValidationError) as failure:
        bagit.Bag(str(run)).validate()
    assert "data/data/summaries.jsonl sha256 validation failed" in str(failure.value)


def test_bag_info_and_status(tmp_path: Path, mock: MockServer) -> None:
    """bag-info.txt carries tm-export's labels; status reads the run inside the bag."""
    run = export(tmp_path, mock)
    recipe_hash = orjson.loads((run / "manifest.jsonl").read_bytes().splitlines()[0])["recipe_hash"]
    assert run_cli("bag", str(run)).exit_code == 0

    info = bagit.Bag(str(run)).info
    status = run_cli("status", str(tmp_path / "out"))

    assert info["External-Identifier"] == f"tm-export recipe hash {recipe_hash}"
    assert info["TM-Export-Base-URL"] == mock.api_url
    assert info["TM-Release"] == "v5.5.2"
    assert status.exit_code == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"run: {run} (a bag)"
    assert status.stdout.splitlines()[-1].startswith("  0001  complete, a bag  started ")


def test_bag_rejects_bag_and_unfinished(tmp_path: Path, mock: MockServer) -> None:
    """Bagging a bag or an unfinished run exits 2 and changes nothing."""
    run = export(tmp_path, mock)
    assert run_cli("bag", str(run)).exit_code == 0
    again = run_cli("bag", str(run))
    stopped_folder = tmp_path / "stopped"
    stopped_folder.mkdir()
    recipe = write_recipe(stopped_folder, RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/5/contributions/$", status=401)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url, "--quiet").exit_code == 1
    stopped = stopped_folder / "out/runs/0001"
    before = sorted(path.name for path in stopped.iterdir())

    unfinished = run_cli("bag", str(stopped))

    assert again.exit_code == 2
    assert again.stderr == (
        f"tm-export: error: {run}: the run is already a bag; 'tm-export verify {run}' checks it\n"
    )
    assert unfinished.exit_code == 2
    assert unfinished.stderr == (
        f"tm-export: error: {stopped}: the run is unfinished; finish it (run the same "
        "'tm-export run' command again) before making it a bag\n"
    )
    assert sorted(path.name for path in stopped.iterdir()) == before


def test_bag_interrupted_while_moving(tmp_path: Path, mock: MockServer) -> None:
    """A crash while bagit moved the files: verify reports it (exit 1), bag puts them back and bags."""
    run = export(tmp_path, mock)
    moving = run / "tmpab12cd"
    moving.mkdir()
    (run / "manifest.jsonl").rename(moving / "manifest.jsonl")

    verified = run_cli("verify", str(run))
    bagged = run_cli("bag", str(run))

    assert verified.exit_code == 1
    assert verified.stderr == (
        f"tm-export: error: {run}: the run folder was being made a bag when that was "
        f"interrupted; run 'tm-export bag {run}' again to finish it\n"
    )
    assert bagged.exit_code == 0, bagged.stderr
    assert "put back the run folder" in bagged.stderr
    assert not moving.exists()
    assert bagit.Bag(str(run)).validate() is True
    assert run_cli("verify", str(run)).exit_code == 0


@pytest.mark.parametrize("cut", [0, 40], ids=["missing", "cut_short"])
def test_bag_interrupted_before_tag_manifest(tmp_path: Path, mock: MockServer, cut: int) -> None:
    """A crash before bagit's last tag file, or a full disk while it was written: the
    half-made bag is undone and made again."""
    run = export(tmp_path, mock)
    assert run_cli("bag", str(run)).exit_code == 0
    tag_manifest = run / "tagmanifest-sha256.txt"
    if cut:
        tag_manifest.write_bytes(tag_manifest.read_bytes()[:cut])
    else:
        tag_manifest.unlink()

    status = run_cli("status", str(run))
    bagged = run_cli("bag", str(run))

    assert status.exit_code == 1
    assert status.stderr == (
        f"tm-export: error: {run}: the run folder is a bag whose making was interrupted "
        f"(tagmanifest-sha256.txt is missing or incomplete); run 'tm-export bag {run}' again "
        "to finish it\n"
    )
    assert bagged.exit_code == 0, bagged.stderr
    assert bagit.Bag(str(run)).validate() is True
    assert run_cli("verify", str(run)).exit_code == 0


def test_damaged_manifest_others_reported(tmp_path: Path, mock: MockServer) -> None:
    """A damaged manifest in one run of an output folder does not hide the other runs'
    report: the damage is an error (exit 1), and the other run's mismatch is listed."""
    first = export(tmp_path, mock)
    recipe = tmp_path / "recipe.yaml"
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet", "--start-over"]
    assert run_cli(*args).exit_code == 0
    second = tmp_path / "out/runs/0002"
    lines = (first / "manifest.jsonl").read_bytes().splitlines(keepends=True)
    (first / "manifest.jsonl").write_bytes(b"".join([lines[0], b"{not json\n", *lines[1:]]))
    path = second / "data/summaries.jsonl"
    flip_byte(path, path.read_bytes().index(b'"name":"') + len(b'"name":"'))

    text = run_cli("verify", str(tmp_path / "out"))
    as_json = run_cli("verify", str(tmp_path / "out"), "--json")

    assert text.exit_code == 1
    assert text.stderr.startswith(f"tm-export: error: {first / 'manifest.jsonl'}:2: ")
    assert text.stdout.splitlines()[0] == f"{second}: complete; 3 stream files"
    assert "  MISMATCH  data/summaries.jsonl: page 1 of partition" in text.stdout
    assert text.stdout.splitlines()[-1] == (
        "verified 1 run: 2 mismatches (1 of 3 stream files); 1 run not read (see the errors "
        "below); exit 1"
    )
    assert as_json.exit_code == 1
    report = orjson.loads(as_json.stdout)
    assert report["ok"] is False
    assert [run["folder"] for run in report["runs"]] == [str(second)]
    assert [entry["folder"] for entry in report["unreadable"]] == [str(first)]


def test_other_files_noted(tmp_path: Path, mock: MockServer) -> None:
    """A file that no run writes is noted, beside the manifest and among the stream files,
    with exit 0: verify checks what the run wrote, and names what it did not check."""
    run = export(tmp_path, mock)
    (run / "notes.txt").write_text("mine\n")
    (run / "extra").mkdir()
    (run / "data/readme.txt").write_text("mine\n")

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 0, outcome.stdout
    notes = [line for line in outcome.stdout.splitlines() if line.startswith("  note")]
    assert notes == [
        "  note      extra: not a file of this run; not verified",
        "  note      notes.txt: not a file of this run; not verified",
        "  note      data/readme.txt: not a stream of this run; not verified",
    ]


def test_missing_manifest_others_reported(tmp_path: Path, mock: MockServer) -> None:
    """A run folder of an output folder that has stream files but no manifest is an error
    of that run (exit 1), not "not a run folder" (exit 2): the other runs are reported, by
    verify and by status."""
    first = export(tmp_path, mock)
    recipe = tmp_path / "recipe.yaml"
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet", "--start-over"]
    assert run_cli(*args).exit_code == 0
    second = tmp_path / "out/runs/0002"
    (first / "manifest.jsonl").unlink()

    verified = run_cli("verify", str(tmp_path / "out"))
    status = run_cli("status", str(tmp_path / "out"))

    error = (
        f"{first}: the run folder has stream files but no manifest.jsonl, so what it committed "
        "cannot be proven; restore the manifest from a copy, or run the export with "
        "--start-over to begin a new run beside it"
    )
    assert verified.exit_code == 1
    assert verified.stderr == f"tm-export: error: {error}\n"
    assert verified.stdout.splitlines()[0] == f"{second}: complete; 3 stream files"
    assert status.exit_code == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"run: {second}"
    assert f"  0001  unreadable: {error}" in status.stdout.splitlines()
    runs = orjson.loads(run_cli("status", str(tmp_path / "out"), "--json").stdout)["runs"]
    assert runs[0] == {"run": str(first), "state": "unreadable", "error": error}


def test_bag_size_change_names_file(tmp_path: Path, mock: MockServer) -> None:
    """A payload file whose size changed fails bagit's byte count, which names no file, so
    the report also gives the file whose SHA-256 differs."""
    run = export(tmp_path, mock)
    assert run_cli("bag", str(run)).exit_code == 0
    record = run / "data/run.json"
    recorded = hashlib.sha256(record.read_bytes()).hexdigest()
    record.write_bytes(record.read_bytes() + b" ")

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    problems = [line for line in outcome.stdout.splitlines() if "MISMATCH  bag:" in line]
    assert problems[0].startswith("  MISMATCH  bag: Payload-Oxum validation failed.")
    assert problems[1:] == [
        f"  MISMATCH  bag: data/run.json: the SHA-256 is {sha256(record)}, but the bag's "
        f"manifest records {recorded}"
    ]


def test_changed_bag_not_undone(tmp_path: Path, mock: MockServer) -> None:
    """A bag without its tag manifest whose payload no longer matches its checksums is left
    as it is: undoing it would drop the evidence of the change."""
    run = export(tmp_path, mock)
    assert run_cli("bag", str(run)).exit_code == 0
    (run / "tagmanifest-sha256.txt").unlink()
    path = run / "data/data/summaries.jsonl"
    flip_byte(path, path.read_bytes().index(b'"name":"') + len(b'"name":"'))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}

    bagged = run_cli("bag", str(run))

    assert bagged.exit_code == 3
    assert bagged.stderr == (
        f"tm-export: error: {run}: the bag's tag manifest is missing or incomplete, and "
        "manifest-sha256.txt does not match data/data/summaries.jsonl, so the bag was "
        "changed after it was made. Nothing was changed; restore the bag from a copy\n"
    )
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_verify_not_a_run_folder(tmp_path: Path) -> None:
    """A folder that is neither an output nor a run folder exits 2."""
    outcome = run_cli("verify", str(tmp_path))

    assert outcome.exit_code == 2
    assert outcome.stderr.startswith(f"tm-export: error: {tmp_path}: not a run folder")
