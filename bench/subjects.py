"""The programs the W1 and W2 export is measured with: tm-export, the limit script, and peers.

The W1/W2 job is the project list, then each project's abbreviated detail, its
contributions and every page of its activities. A subject runs it once against a mock
server in a fresh folder and returns the measurement and the records delivered per stream.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness import BENCH, PYTHON, SOURCE, Measurement, ServerProcess, count_lines, run_measured

#: Stream of the W1/W2 job and the mock's count (``/__mock__/counts``) it must match.
W1_STREAMS = {
    "projects": "projects",
    "details": "project",
    "contributions": "project_contributions",
    "activities": "project_activities",
}

W1_RECIPE = BENCH / "recipes" / "w1.yaml"


@dataclass(slots=True)
class Delivery:
    """One measured export: the measurement and the records each stream delivered."""

    measurement: Measurement
    records: dict[str, int]
    command: list[str]


class Subject(Protocol):
    name: str
    """Label in the results table."""
    max_runs: int | None
    """Runs per workload at most (None: as many as the workload does)."""
    sequential: bool
    """True when the subject has no concurrency setting (it runs at one concurrency only)."""
    optional: bool
    """True when a failure of the subject is noted and the workload goes on without it."""

    def run(self, server: ServerProcess, concurrency: int, folder: Path) -> Delivery: ...


def fresh_folder(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def count_stream_files(data: Path, streams: dict[str, str] = W1_STREAMS) -> dict[str, int]:
    """Count the lines of ``data/STREAM.jsonl`` for each stream; a missing file counts 0."""
    counts = {}
    for stream in streams:
        path = data / f"{stream}.jsonl"
        counts[stream] = count_lines(path) if path.exists() else 0
    return counts


class TmExport:
    """tm-export itself, run through its CLI with the W1 recipe."""

    name = "tm-export"
    max_runs = None
    sequential = False
    optional = False

    def run(self, server: ServerProcess, concurrency: int, folder: Path) -> Delivery:
        fresh_folder(folder)
        command = [*SOURCE.command, "run", str(W1_RECIPE), "--base-url", server.api_url]
        command += ["--concurrency", str(concurrency), "--quiet", "--json"]
        measurement = run_measured(
            command,
            cwd=folder,
            log=folder / "stderr.log",
            stdout=folder / "summary.json",
            server_pid=server.pid,
        )
        records = count_stream_files(folder / "out" / "runs" / "0001" / "data")
        shutil.rmtree(folder / "out")
        return Delivery(measurement, records, command)


class LimitScript:
    """``bench/limit.py``: the least work the job can take."""

    name = "limit.py"
    max_runs = None
    sequential = False
    optional = False

    def run(self, server: ServerProcess, concurrency: int, folder: Path) -> Delivery:
        fresh_folder(folder)
        command = [str(PYTHON), str(BENCH / "limit.py"), "--api-url", server.api_url]
        command += ["--output", "data", "--concurrency", str(concurrency)]
        measurement = run_measured(
            command,
            cwd=folder,
            log=folder / "stderr.log",
            stdout=folder / "counts.json",
            server_pid=server.pid,
        )
        records = count_stream_files(folder / "data")
        shutil.rmtree(folder / "data")
        return Delivery(measurement, records, command)
