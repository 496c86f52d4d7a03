"""Compressed stream files: resumable and exactly once, readable by zcat, zstdcat and Python."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
import zstandard

from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe
from .test_crash import RECIPE, STREAMS, reference, run_killed_at

SUFFIX = {"gzip": ".gz", "zstd": ".zst"}
TOOL = {"gzip": "zcat", "zstd": "zstdcat"}


def python_lines(path: Path, codec: str) -> Counter[bytes]:
    if codec == "gzip":
        with gzip.open(path, "rb") as file:
            return Counter(file.read().splitlines())
    with path.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return Counter(io.BufferedReader(reader).read().splitlines())


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_killed_compressed_run_resumes(tmp_path: Path, mock: MockServer, codec: str) -> None:
    """Kill a compressed run twice, resume it; every record is there exactly once."""
    expected = reference(tmp_path, mock)
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]

    assert run_killed_at(mock, [*args, "--compression", codec], 40) == -signal.SIGKILL
    assert run_killed_at(mock, args, 90) == -signal.SIGKILL
    outcome = run_cli(*args)

    assert outcome.exit_code == 0, outcome.stderr
    assert f"run folder: {tmp_path / 'out/runs/0001'} (resumed)\n" in outcome.stderr
    data = tmp_path / "out/runs/0001/data"
    assert sorted(p.name for p in data.iterdir()) == sorted(
        f"{name}.jsonl{SUFFIX[codec]}" for name in STREAMS
    )
    for name in STREAMS:
        path = data / f"{name}.jsonl{SUFFIX[codec]}"
        assert python_lines(path, codec) == expected[name]
        if shutil.which(TOOL[codec]):
            shown = subprocess.run([TOOL[codec], str(path)], capture_output=True, check=True).stdout
            assert Counter(shown.splitlines()) == expected[name]


def test_compression_must_match(tmp_path: Path, mock: MockServer) -> None:
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    assert run_killed_at(mock, [*args, "--compression", "gzip"], 30) == -signal.SIGKILL

    outcome = run_cli(*args, "--compression", "zstd")

    assert outcome.exit_code == 1
    assert (
        "this run's files are compressed with gzip, but this command asks for zstd. Nothing "
        "was changed. Leave out --compression to go on with the run's own, or use --start-over\n"
    ) in outcome.stderr
    plain = run_cli(*args, "--start-over")
    assert plain.exit_code == 0, plain.stderr

    again = run_cli(*args, "--compression", "gzip")

    assert again.exit_code == 1
    assert "this run's files are not compressed, but this command asks for gzip." in again.stderr


def test_damaged_compressed_tail_refused(tmp_path: Path, mock: MockServer) -> None:
    """A compressed file whose last committed page no longer decompresses is refused, untouched."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--compression", "gzip"]
    assert run_killed_at(mock, args, 60) == -signal.SIGKILL
    path = tmp_path / "out/runs/0001/data/activities.jsonl.gz"
    journal = (tmp_path / "out/runs/0001/manifest.jsonl").read_bytes()
    complete = journal[: journal.rfind(b"\n") + 1].splitlines()
    ends = [
        e["end"] for e in map(orjson.loads, complete) if e["t"] == "page" and e["s"] == "activities"
    ]
    data = bytearray(path.read_bytes())
    # The first byte of the member's CRC-32 trailer: a byte further in could fall in the
    # 10-byte header of a page with no records, whose XFL field gzip does not check.
    data[max(ends) - 8] ^= 0xFF
    path.write_bytes(bytes(data))

    process = subprocess.run(
        [sys.executable, "-m", "tm_export", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )

    assert process.returncode == 1
    assert "the last committed page (bytes " in process.stderr
    assert path.read_bytes() == bytes(data)


def test_damaged_earlier_page_reported(tmp_path: Path, mock: MockServer) -> None:
    """A damaged committed page stops the run with a message that names the file, no traceback."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--compression", "gzip"]
    assert run_killed_at(mock, args, 60) == -signal.SIGKILL
    path = tmp_path / "out/runs/0001/data/activities.jsonl.gz"
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF
    path.write_bytes(bytes(data))

    process = subprocess.run(
        [sys.executable, "-m", "tm_export", *args], capture_output=True, text=True, check=False
    )

    # Resume reads back only unfinished partitions; the check that ends every run finds the rest.
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert "activities.jsonl.gz" in process.stderr.splitlines()[-1]
