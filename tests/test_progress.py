"""Progress and logs: plain status lines off a terminal, a live table on one, JSON lines on request."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import orjson

from tm_export.mock import MockServer
from tm_export.progress import Progress, StreamProgress
from tm_export.reporting import status_line

from .conftest import run_cli, run_process, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
  stats:
    endpoint: project_statistics
    params: {project_id: {range: [1, 5]}}
"""

STATUS = re.compile(
    r"^tm-export: INFO: progress: \d+m\d\ds elapsed, \d+ requests? \(\d+\.\d/s\), "
    r"\d+ retr(y|ies); projects \d+/1 partitions \d+ records?; "
    r"activities \d+/(\d+|\?) partitions \d+ records?; stats \d+/5 partitions \d+ records?$"
)


def test_plain_status_lines(tmp_path: Path, mock: MockServer) -> None:
    """Off a terminal, progress comes as plain status lines, then the summary table."""
    recipe = write_recipe(tmp_path, RECIPE)

    process = run_process("run", str(recipe), "--base-url", mock.api_url)

    assert process.returncode == 0, process.stderr
    lines = process.stderr.splitlines()
    status = [line for line in lines if "progress:" in line]
    assert status
    assert all(STATUS.match(line) for line in status), status
    published = len((tmp_path / "out/runs/0001/data/projects.jsonl").read_bytes().splitlines())
    assert status[-1].endswith("stats 5/5 partitions 5 records")
    assert f"activities {published}/{published} partitions" in status[-1]
    assert lines[-7].startswith("run folder: ")
    assert lines[-6].split() == ["stream", "done", "skipped", "failed", "records", "duplicates"]
    assert lines[-1] == "result: complete (exit 0)"
    assert "\x1b[" not in process.stderr


def test_status_line_singular_and_plural() -> None:
    projects = StreamProgress("projects", 1, 0, 0, 1, 1, 1, 0)
    tasks = StreamProgress("tasks", 2, 0, 1, None, 4, 30, 2)

    first = status_line(Progress(2.0, 1, 1, (projects,)))
    later = status_line(Progress(75.0, 12, 3, (projects, tasks)))

    assert first == "0m02s elapsed, 1 request (0.5/s), 1 retry; projects 1/1 partitions 1 record"
    assert later == (
        "1m15s elapsed, 12 requests (0.2/s), 3 retries; projects 1/1 partitions 1 record; "
        "tasks 3/? partitions 30 records"
    )


def test_quiet_shows_no_progress(tmp_path: Path, mock: MockServer) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    process = run_process("run", str(recipe), "--base-url", mock.api_url, "--quiet")

    assert process.returncode == 0
    assert "progress:" not in process.stderr
    assert "INFO" not in process.stderr
    assert process.stderr.splitlines()[-1] == "result: complete (exit 0)"


def test_live_display_on_terminal(tmp_path: Path, mock: MockServer) -> None:
    """Under a pseudo-terminal the live table appears on stderr."""
    recipe = write_recipe(tmp_path, RECIPE)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tm_export", "run", str(recipe), "--base-url", mock.api_url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    process.wait(timeout=120)
    os.close(controller)
    text = screen.decode("utf-8", "replace")

    assert process.returncode == 0, text
    assert "tm-export: " in text
    for column in ("stream", "partitions", "pages", "records", "duplicates", "ETA"):
        assert column in text
    assert "progress:" not in text
    assert "result: complete (exit 0)" in text


def test_json_log_lines(tmp_path: Path, mock: MockServer) -> None:
    """--log-format json: every stderr line is one JSON object with the documented fields."""
    recipe = write_recipe(tmp_path, RECIPE)

    process = run_process("run", str(recipe), "--base-url", mock.api_url, "--log-format", "json")

    assert process.returncode == 0, process.stderr
    lines = [orjson.loads(line) for line in process.stderr.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", line["time"])
        assert line["level"] in ("debug", "info", "warning", "error")
    progress = [line for line in lines if line.get("event") == "progress"]
    assert progress
    assert set(progress[-1]["streams"]) == {"projects", "activities", "stats"}
    assert progress[-1]["streams"]["stats"] == {
        "partitions": 5,
        "known": 5,
        "records": 5,
        "pages": 5,
    }
    summary = lines[-1]
    assert summary["event"] == "summary"
    assert summary["summary"]["exit_code"] == 0
    assert summary["summary"]["streams"]["stats"]["records"] == 5


def test_json_log_recipe_error(tmp_path: Path) -> None:
    """--log-format json: an invalid recipe is one JSON error line with its exit code."""
    recipe = write_recipe(tmp_path, RECIPE.replace("endpoint: projects", "endpoint: projets"))
    url = "http://127.0.0.1:9/api/v2"

    plain = run_cli("run", str(recipe), "--base-url", url)
    outcome = run_cli("run", str(recipe), "--base-url", url, "--log-format", "json")

    assert plain.exit_code == 2
    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert set(line) == {"time", "level", "logger", "message", "event", "exit_code"}
    assert line["level"] == "error"
    assert line["logger"] == "tm_export"
    assert line["event"] == "error"
    assert line["exit_code"] == 2
    assert line["message"] == plain.stderr.removeprefix("tm-export: error: ").removesuffix("\n")


def test_json_log_fatal_error(tmp_path: Path, mock: MockServer) -> None:
    """--log-format json: the error that stops a run follows the summary as a JSON line."""
    recipe = write_recipe(tmp_path, RECIPE)
    mock.add_fault(path=r"^/api/v2/projects/3/statistics/$", status=401)

    process = run_process(
        "run", str(recipe), "--base-url", mock.api_url, "--log-format", "json", "--quiet"
    )

    assert process.returncode == 1
    lines = [orjson.loads(line) for line in process.stderr.splitlines()]
    assert [line.get("event") for line in lines[-2:]] == ["summary", "error"]
    assert lines[-2]["summary"]["exit_code"] == 1
    assert lines[-1]["level"] == "error"
    assert lines[-1]["exit_code"] == 1
    assert lines[-1]["message"] == (
        "the server requires an API token (401 Unauthorized at "
        f"{mock.api_url}/projects/3/statistics/), and none was sent because the recipe sets "
        "no instance.token_env. Set it to the name of the environment variable that holds "
        "your TM API key, export that variable, and run the same command again to resume"
    )


def test_json_log_usage_error(tmp_path: Path) -> None:
    """--log-format json: a usage error that click finds is one JSON error line too."""
    recipe = write_recipe(tmp_path, RECIPE)

    shard = run_cli("run", str(recipe), "--log-format", "json", "--shard", "4/3")
    missing = run_cli("run", "--log-format=json")

    for outcome in (shard, missing):
        assert outcome.exit_code == 2
        assert outcome.stdout == ""
        assert len(outcome.stderr.splitlines()) == 1
    shard_line = orjson.loads(shard.stderr)
    assert shard_line["event"] == "error"
    assert shard_line["exit_code"] == 2
    assert shard_line["message"] == (
        "Invalid value for '--shard': '4/3' is not K/N with 1 <= K <= N, e.g. 2/4"
    )
    assert orjson.loads(missing.stderr)["message"] == "Missing argument 'RECIPE'."


def test_json_log_usage_error_last_choice(tmp_path: Path) -> None:
    """The last --log-format counts, as click takes it: text after json gives plain text."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli(
        "run", str(recipe), "--log-format", "json", "--log-format", "text", "--shard", "4/3"
    )

    assert outcome.exit_code == 2
    assert outcome.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--shard': '4/3' is not K/N with 1 <= K <= N, e.g. 2/4"
    )
