"""verify, status, the run record, canonical and bag on runs with gzip or zstd stream files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import signal
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import bagit
import orjson
import pytest
import zstandard

from tm_export import __version__
from tm_export.codec import Codec, DecompressionError, compress, range_lines
from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe
from .test_crash import RECIPE as CRASH_RECIPE
from .test_crash import run_killed_at
from .test_verify import RECIPE, STREAMS  # the streams of verify's plain-file tests

SUFFIX = {"gzip": ".gz", "zstd": ".zst"}
CODECS = ["gzip", "zstd"]


def export(folder: Path, mock: MockServer, codec: str, *options: str) -> Path:
    """Export RECIPE into ``folder/out`` with compressed stream files; return the run folder."""
    folder.mkdir(exist_ok=True)
    recipe = write_recipe(folder, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet", "--compression", codec]
    outcome = run_cli(*args, *options)
    assert outcome.exit_code == 0, outcome.stderr
    return folder / "out/runs/0001"


def stream_file(run: Path, stream: str, codec: str) -> Path:
    return run / f"data/{stream}.jsonl{SUFFIX[codec]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content(path: Path, codec: str) -> bytes:
    """Decompress a whole file with the codec's own Python reader, not with tm-export's code."""
    if codec == "gzip":
        with gzip.open(path, "rb") as file:
            return file.read()
    with path.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader).read()


def line_count(path: Path, codec: str) -> int:
    return len(content(path, codec).splitlines())


def is_one_member(data: bytes, codec: str) -> bool:
    """Tell whether ``data`` is exactly one gzip member or zstd frame, with nothing after it."""
    decompressor: Any = (
        zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        if codec == "gzip"
        else zstandard.ZstdDecompressor().decompressobj()
    )
    decompressor.decompress(data)
    return bool(decompressor.eof) and decompressor.unused_data == b""


def entries(run: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run / "manifest.jsonl").read_bytes().splitlines()]


def ok_line(run: Path, stream: str, codec: str, prefix: str = "data", flag: str = "") -> str:
    path = run / prefix / f"{stream}.jsonl{SUFFIX[codec]}"
    return (
        f"  ok        {prefix}/{stream}.jsonl{SUFFIX[codec]}: {line_count(path, codec)} "
        f"records, {path.stat().st_size} bytes{flag}, sha256 {sha256(path)}"
    )


@pytest.mark.parametrize("codec", CODECS)
def test_verify_compressed_run(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """Every compressed file matches; sizes and hashes are those of the compressed files."""
    run = export(tmp_path, mock, codec)

    outcome = run_cli("verify", str(tmp_path / "out"))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"{run}: complete; 3 stream files",
        *(ok_line(run, stream, codec) for stream in STREAMS),
        "verified 1 run: 3 stream files match the manifest",
    ]
    assert sorted(path.name for path in (run / "data").iterdir()) == sorted(
        f"{stream}.jsonl{SUFFIX[codec]}" for stream in STREAMS
    )
    private = len(mock.dataset.private_project_ids())
    expected = mock.dataset.count("projects") - private
    assert line_count(stream_file(run, "projects", codec), codec) == expected


@pytest.mark.parametrize("codec", CODECS)
def test_verify_compressed_json(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """--json counts the decompressed lines and gives the compressed file's bytes and hash."""
    run = export(tmp_path, mock, codec)
    path = stream_file(run, "contributions", codec)
    records = sum(mock.dataset.count("project_contributions", project_id=p) for p in (1, 4, 5))

    outcome = run_cli("verify", str(run), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    (only,) = json.loads(outcome.stdout)["runs"]
    assert only["streams"]["contributions"] == {
        "file": f"data/contributions.jsonl{SUFFIX[codec]}",
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


@pytest.mark.parametrize("codec", CODECS)
def test_verify_changed_compressed_byte(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """A changed first byte breaks the first page's member and the run record's hash."""
    run = export(tmp_path, mock, codec)
    path = stream_file(run, "projects", codec)
    recorded = orjson.loads((run / "run.json").read_bytes())["streams"]["projects"]["sha256"]
    (page,) = [
        e for e in entries(run) if e["t"] == "page" and e["s"] == "projects" and e["start"] == 0
    ]
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    file_name = f"data/projects.jsonl{SUFFIX[codec]}"

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    lines = outcome.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0] == f"{run}: complete; 3 stream files"
    # The rest of this line is the error text of zlib or libzstd, which differs by version.
    assert lines[1].startswith(
        f"  MISMATCH  {file_name}: page {page['n']} of partition {{}} (bytes 0..{page['end']}) "
        "does not decompress: "
    )
    assert lines[2] == (
        f"  MISMATCH  {file_name}: the SHA-256 is {sha256(path)}, but run.json records {recorded}"
    )
    assert lines[3:5] == [ok_line(run, stream, codec) for stream in STREAMS[1:]]
    assert lines[5] == "verified 1 run: 2 mismatches (1 of 3 stream files); exit 3"


@pytest.mark.parametrize("codec", CODECS)
def test_verify_changed_byte_without_record(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """Without a run record, decompressing the page ranges still finds the changed byte."""
    run = export(tmp_path, mock, codec)
    (run / "run.json").unlink()
    path = stream_file(run, "contributions", codec)
    pages = [e for e in entries(run) if e["t"] == "page" and e["s"] == "contributions"]
    last = max(pages, key=lambda entry: entry["end"])
    data = bytearray(path.read_bytes())
    data[last["start"]] ^= 0xFF
    path.write_bytes(bytes(data))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    problems = [line for line in outcome.stdout.splitlines() if "MISMATCH" in line]
    assert len(problems) == 1
    assert problems[0].startswith(
        f"  MISMATCH  data/contributions.jsonl{SUFFIX[codec]}: page {last['n']} of partition "
        f"{last['p']} (bytes {last['start']}..{last['end']}) does not decompress: "
    )
    assert outcome.stdout.splitlines()[-1] == (
        "verified 1 run: 1 mismatch (1 of 3 stream files); exit 3"
    )


@pytest.mark.parametrize("codec", CODECS)
def test_verify_unfinished_compressed_run(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """Bytes after the committed end of an unfinished run are a note, not a mismatch."""
    recipe = write_recipe(tmp_path, CRASH_RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--compression", codec]
    assert run_killed_at(mock, args, 40) == -signal.SIGKILL
    run = tmp_path / "out/runs/0001"
    path = stream_file(run, "activities", codec)
    committed = max(
        [e["end"] for e in entries(run) if e["t"] == "page" and e["s"] == "activities"],
        default=0,
    )
    path.write_bytes(path.read_bytes()[:committed])
    # A page in flight when the process died: half of a member.
    in_flight = compress(b'{"historyId":1}\n' * 20, codec)[:-5]
    with path.open("ab") as file:
        file.write(in_flight)

    verified = run_cli("verify", str(run))
    status = run_cli("status", str(run))

    assert verified.exit_code == 0, verified.stdout
    lines = verified.stdout.splitlines()
    assert lines[0] == f"{run}: unfinished; 3 stream files"
    assert (
        f"  note      data/activities.jsonl{SUFFIX[codec]}: {len(in_flight)} uncommitted bytes "
        f"after the committed end at byte {committed} (a session may be writing them; the "
        "next session cuts them off)"
    ) in lines
    assert not [line for line in lines if "MISMATCH" in line]
    assert status.exit_code == 0, status.stderr
    assert (
        f"activities: {len(in_flight)} uncommitted bytes after the committed end"
        in status.stdout.splitlines()
    )


@pytest.mark.parametrize("codec", CODECS)
def test_run_record_compressed(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """run.json names the compressed files, counts their lines and hashes their bytes."""
    run = export(tmp_path, mock, codec)

    record = orjson.loads((run / "run.json").read_bytes())

    for stream in STREAMS:
        path = stream_file(run, stream, codec)
        described = record["streams"][stream]
        assert described["file"] == f"data/{stream}.jsonl{SUFFIX[codec]}", stream
        assert described["records"] == line_count(path, codec), stream
        assert described["bytes"] == path.stat().st_size, stream
        assert described["sha256"] == sha256(path), stream
        assert described["canonical"] is False, stream
    outcome = run_cli("record", str(run))
    assert outcome.exit_code == 0, outcome.stderr
    assert orjson.loads((run / "run.json").read_bytes()) == record


@pytest.mark.parametrize("codec", CODECS)
def test_canonical_compressed_same_hashes(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """Two compressed exports made canonical, one by each command, have identical files."""
    first = export(tmp_path / "first", mock, codec)
    second = export(tmp_path / "second", mock, codec, "--canonical")
    lines_before = {
        stream: Counter(content(stream_file(first, stream, codec), codec).splitlines())
        for stream in STREAMS
    }

    outcome = run_cli("canonical", str(tmp_path / "first/out"))

    assert outcome.exit_code == 0, outcome.stderr
    for stream in STREAMS:
        first_file = stream_file(first, stream, codec)
        second_file = stream_file(second, stream, codec)
        assert sha256(first_file) == sha256(second_file), stream
        assert is_one_member(first_file.read_bytes(), codec), stream
        assert Counter(content(first_file, codec).splitlines()) == lines_before[stream], stream
    for folder in ("first", "second"):
        verified = run_cli("verify", str(tmp_path / folder / "out"))
        run = tmp_path / folder / "out/runs/0001"
        assert verified.exit_code == 0, verified.stdout
        assert verified.stdout.splitlines()[1:4] == [
            ok_line(run, stream, codec, flag=", canonical") for stream in STREAMS
        ]


@pytest.mark.parametrize("codec", CODECS)
def test_canonical_compressed_journal(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """The canonical entry gives the compressed file's hash and size and the content's lines."""
    run = export(tmp_path, mock, codec)
    before = {stream: sha256(stream_file(run, stream, codec)) for stream in STREAMS}
    count_before = len(entries(run))

    outcome = run_cli("canonical", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.splitlines() == [
        f"{run}:",
        *(
            f"  rewritten  data/{stream}.jsonl{SUFFIX[codec]}: "
            f"sha256 {sha256(stream_file(run, stream, codec))}"
            for stream in STREAMS
        ),
        f"updated {run / 'run.json'}",
    ]
    added = entries(run)[count_before:]
    for entry, stream in zip(added, STREAMS, strict=True):
        path = stream_file(run, stream, codec)
        lines = line_count(path, codec)
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
    record = orjson.loads((run / "run.json").read_bytes())
    assert record["streams"]["summaries"]["sha256"] == sha256(stream_file(run, "summaries", codec))
    assert record["streams"]["summaries"]["canonical"] is True


def test_canonical_compressed_interrupted(tmp_path: Path, mock: MockServer) -> None:
    """After a crash before the rename of a .gz copy, verify notes it and canonical finishes it."""
    run = export(tmp_path, mock, "gzip")
    path = stream_file(run, "summaries", "gzip")
    original = path.read_bytes()
    assert run_cli("canonical", str(run)).exit_code == 0
    sorted_copy = path.read_bytes()
    # Put the state back as a crash after the journal entry leaves it.
    path.rename(run / "data/.summaries.jsonl.gz.canonical")
    path.write_bytes(original)

    verified = run_cli("verify", str(run))
    finished = run_cli("canonical", str(run))

    assert verified.exit_code == 3
    assert (
        "  note      data/summaries.jsonl.gz: a canonical rewrite was interrupted "
        f"(data/.summaries.jsonl.gz.canonical is left); run 'tm-export canonical {run}' "
        "again to finish it"
    ) in verified.stdout.splitlines()
    assert finished.exit_code == 0, finished.stderr
    assert (
        f"  finished           data/summaries.jsonl.gz: sha256 {sha256(path)}"
        in finished.stdout.splitlines()
    )
    assert path.read_bytes() == sorted_copy
    assert not (run / "data/.summaries.jsonl.gz.canonical").exists()
    assert run_cli("verify", str(run)).exit_code == 0


@pytest.mark.parametrize("codec", CODECS)
def test_canonical_compressed_run_again(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """A compressed run made canonical no longer ends where its pages did, yet the same
    command finds it finished and sends nothing."""
    run = export(tmp_path, mock, codec, "--canonical")
    before = {path.name: path.read_bytes() for path in (run / "data").iterdir()}
    mock.reset_log()

    again = export(tmp_path, mock, codec, "--canonical")

    assert again == run
    assert mock.requests() == []
    assert {path.name: path.read_bytes() for path in (run / "data").iterdir()} == before


def test_run_finishes_interrupted_canonical(tmp_path: Path, mock: MockServer) -> None:
    """A run whose --canonical rewrite a crash interrupted after its journal entry is
    finished by the same command: the sorted copy takes the file's place, with no request."""
    run = export(tmp_path, mock, "gzip", "--canonical")
    path = stream_file(run, "summaries", "gzip")
    sorted_copy = path.read_bytes()
    (run / "run.json").unlink()
    path.rename(run / "data/.summaries.jsonl.gz.canonical")
    path.write_bytes(b"")
    mock.reset_log()

    export(tmp_path, mock, "gzip", "--canonical")

    assert mock.requests() == []
    assert path.read_bytes() == sorted_copy
    assert not (run / "data/.summaries.jsonl.gz.canonical").exists()
    assert (run / "run.json").exists()
    assert run_cli("verify", str(run)).exit_code == 0


def test_canonical_removes_compressed_leftover(tmp_path: Path, mock: MockServer) -> None:
    """A sorted .zst copy that no journal entry names is deleted before the rewrite."""
    run = export(tmp_path, mock, "zstd")
    leftover = run / "data/.projects.jsonl.zst.canonical"
    leftover.write_bytes(b"half a sorted copy")

    outcome = run_cli("canonical", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    assert not leftover.exists()
    assert sorted(path.name for path in (run / "data").iterdir()) == sorted(
        f"{stream}.jsonl.zst" for stream in STREAMS
    )


@pytest.mark.parametrize("codec", CODECS)
def test_status_compressed_json(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """status --json gives compressed sizes as bytes and decompressed lines as records."""
    run = export(tmp_path, mock, codec)
    path = stream_file(run, "contributions", codec)
    size = path.stat().st_size

    outcome = run_cli("status", str(tmp_path / "out"), "--json")

    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["state"] == "complete"
    assert report["streams"]["contributions"] == {
        "partitions": {"done": 3, "skipped": 1, "failed": 0, "pending": 0},
        "pending_final": True,
        "parent": None,
        "records": line_count(path, codec),
        "duplicates": 0,
        "committed_bytes": size,
        "file_bytes": size,
        "skip_reasons": {"403 PrivateProject": 1},
        "last_error": None,
        "last_error_partition": None,
        "problems": [],
        "read_again": 0,
    }
    for stream in STREAMS:
        described = report["streams"][stream]
        stream_size = stream_file(run, stream, codec).stat().st_size
        assert described["committed_bytes"] == stream_size, stream
        assert described["file_bytes"] == stream_size, stream


def test_status_compressed_text(tmp_path: Path, mock: MockServer) -> None:
    """The text report names the codec, and its bytes column gives compressed sizes."""
    run = export(tmp_path, mock, "zstd")
    size = stream_file(run, "projects", "zstd").stat().st_size
    records = line_count(stream_file(run, "projects", "zstd"), "zstd")

    outcome = run_cli("status", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert lines[4] == "compression: zstd; bytes are those of the compressed files"
    assert lines[5] == ""
    assert lines[6].split()[-2:] == ["records", "bytes"]
    assert lines[7].split() == ["projects", "1", "0", "0", "0", str(records), str(size)]


@pytest.mark.parametrize("codec", CODECS)
def test_bag_compressed_run(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """A compressed run becomes a valid bag, and verify checks its files there."""
    run = export(tmp_path, mock, codec, "--canonical")

    outcome = run_cli("bag", str(run))

    assert outcome.exit_code == 0, outcome.stderr
    bagit.Bag(str(run)).validate()
    verified = run_cli("verify", str(run))
    assert verified.exit_code == 0, verified.stdout
    assert verified.stdout.splitlines() == [
        f"{run}: complete, a bag; 3 stream files",
        *(ok_line(run, stream, codec, "data/data", ", canonical") for stream in STREAMS),
        "verified 1 run: 3 stream files match the manifest",
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_range_lines_rejects_cut_member(codec: Codec) -> None:
    """A range that ends inside a member or frame is rejected, not read as fewer lines."""
    data = compress(b'{"a":1}\n{"a":2}\n', codec) + compress(b'{"a":3}\n', codec)
    unit = "gzip member" if codec == "gzip" else "zstd frame"

    whole = list(range_lines(io.BytesIO(data), 0, len(data), codec))
    with pytest.raises(DecompressionError) as cut:
        list(range_lines(io.BytesIO(data), 0, len(data) - 1, codec))

    assert whole == [b'{"a":1}\n', b'{"a":2}\n', b'{"a":3}\n']
    assert str(cut.value) == f"the data ends inside a {unit}"


@pytest.mark.parametrize("codec", CODECS)
def test_verify_compressed_page_crc(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """The CRC-32 of a compressed page is that of its decompressed lines: a page whose entry
    records another CRC mismatches, and pages whose entries have none are not checked."""
    run = export(tmp_path, mock, codec)
    (run / "run.json").unlink()
    changed = entries(run)
    pages = [entry for entry in changed if entry["t"] == "page"]
    first = next(entry for entry in pages if entry["s"] == "contributions")
    first["crc"] = (first["crc"] + 1) % (1 << 32)
    for entry in pages:
        if entry is not first:
            del entry["crc"]
    (run / "manifest.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in changed))

    outcome = run_cli("verify", str(run))

    assert outcome.exit_code == 3
    assert [line for line in outcome.stdout.splitlines() if "MISMATCH" in line] == [
        f"  MISMATCH  data/contributions.jsonl{SUFFIX[codec]}: page {first['n']} of partition "
        f"{first['p']} (bytes {first['start']}..{first['end']}): its lines do not match the "
        "CRC-32 that the manifest records, so a byte or their order was changed"
    ]
