"""The console entry point: exit codes and complete output when the process ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, run_process, write_recipe
from tm_export.mock import MockServer


def test_process_output_matches_in_process() -> None:
    in_process = run_cli("endpoints")

    child = run_process("endpoints")

    assert child.returncode == 0
    assert child.stdout == in_process.stdout
    assert child.stderr == ""


def test_process_keeps_usage_exit_code(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text('{"a":\n', encoding="utf-8")

    child = run_process("validate", str(recipe))

    assert child.returncode == 2
    assert child.stdout == ""
    assert child.stderr == (
        f"tm-export: error: {recipe}:1: invalid YAML: the '{{' at column 1 is never closed; "
        "close it with '}'\n"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def run_into_full_disk(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``tm-export ARGUMENTS`` with a standard output whose every write fails (ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "tm_export", *arguments],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=120,
        )


@pytest.mark.parametrize("argument", ["endpoints", "--version"])
def test_full_standard_output_exits_1(argument: str) -> None:
    child = run_into_full_disk(argument)

    assert child.returncode == 1
    assert child.stderr == "tm-export: error: cannot write the output: No space left on device\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_run_summary_names_unwritten_json(tmp_path: Path, mock: MockServer) -> None:
    """When the JSON summary cannot be written, the summary on stderr gives the exit code
    that the process ends with, and the reason."""
    recipe = write_recipe(
        tmp_path, "version: 1\noutput: OUT\nstreams:\n  countries: {endpoint: countries}\n"
    )

    child = run_into_full_disk("run", str(recipe), "--base-url", mock.api_url, "--json", "--quiet")

    assert child.returncode == 1
    assert child.stderr.splitlines()[-2:] == [
        "result: complete, but the summary could not be written to standard output (exit 1)",
        "tm-export: error: cannot write the summary to standard output: No space left on device",
    ]


#: A recipe of five project summaries, for the runs started with a standard stream closed.
SUMMARIES_RECIPE = (
    "version: 1\ninstance: {rate_limit: 10000/s}\noutput: OUT\nstreams:\n"
    "  summaries:\n    endpoint: project_summary\n    params: {project_id: {range: [1, 5]}}\n"
)


def run_with_closed(redirect: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``tm-export ARGUMENTS`` from a shell whose ``redirect`` closes a standard stream."""
    command = " ".join(f'"{argument}"' for argument in arguments)
    return subprocess.run(
        f'exec "{sys.executable}" -m tm_export {command} {redirect}',
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_closed_stdout_reported_once() -> None:
    child = run_with_closed(">&-", "endpoints")

    assert child.returncode == 1
    assert child.stderr == "tm-export: error: cannot write the output: Bad file descriptor\n"


def test_run_stderr_closed(tmp_path: Path, mock: MockServer) -> None:
    """A closed stderr drops the logs, and the exit code stays the export's."""
    recipe = write_recipe(tmp_path, SUMMARIES_RECIPE)

    child = run_with_closed("2>&-", "run", str(recipe), "--base-url", mock.api_url, "--json")

    assert child.returncode == 0
    assert json.loads(child.stdout)["outcome"] == "complete"


def test_run_stdin_closed(tmp_path: Path, mock: MockServer) -> None:
    """A job started with stdin closed exports as any other: the event loop must not be
    given descriptor 0 for a socket, which uvloop aborts on (exit 134)."""
    recipe = write_recipe(tmp_path, SUMMARIES_RECIPE)

    child = run_with_closed(
        "<&-", "run", str(recipe), "--base-url", mock.api_url, "--json", "--quiet"
    )

    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout)["outcome"] == "complete"
    assert child.stderr.endswith("result: complete (exit 0)\n")
