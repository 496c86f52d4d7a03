"""Shared fixtures: a mock Tasking Manager per test and helpers to run the CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import orjson
import pytest
from click.testing import CliRunner

from tm_export.cli import main
from tm_export.clock import FakeClock
from tm_export.engine import RunOptions, RunResult, export
from tm_export.mock import MockServer
from tm_export.recipe import load_recipe

#: Small enough to keep the suite fast, large enough for several search pages.
PROJECTS = 40


@pytest.fixture
def mock() -> Iterator[MockServer]:
    with MockServer(projects=PROJECTS) as server:
        yield server


@dataclass
class Outcome:
    """What one CLI invocation printed and returned."""

    exit_code: int
    stdout: str
    stderr: str


def write_recipe(folder: Path, body: str, name: str = "recipe.yaml") -> Path:
    """Write a recipe whose output is ``folder/out``; ``body`` holds the streams and instance."""
    path = folder / name
    text = textwrap.dedent(body).replace("OUT", str(folder / "out"))
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> Outcome:
    """Run the CLI in this process, as a user would from a shell."""
    runner = CliRunner()
    result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def run_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process, for tests that kill or signal it."""
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tm_export", *args],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=120,
    )


def append_stopped_retry(run_folder: Path, option: str = "failed") -> None:
    """Append a session with ``--retry-OPTION`` that stopped before its end, as a kill would
    leave it."""
    manifest = run_folder / "manifest.jsonl"
    session = next(
        orjson.loads(line) for line in manifest.read_bytes().splitlines() if b'"session"' in line
    )
    with manifest.open("ab") as file:
        file.write(orjson.dumps({**session, f"retry_{option}": True}) + b"\n")


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def data_file(output: Path, stream: str, run: str = "0001") -> Path:
    return output / "runs" / run / "data" / f"{stream}.jsonl"


def export_here(
    recipe_path: Path,
    mock: MockServer,
    *,
    token: str | None = None,
    clock: object | None = None,
    **options: object,
) -> RunResult:
    """Run an export in this process with a test clock, so retry waits take no real time."""
    recipe = load_recipe(recipe_path)
    run_options = RunOptions(
        base_url=mock.api_url,
        output=Path(recipe.output),
        token=token,
        handle_signals=False,
        clock=clock or FakeClock(),  # type: ignore[arg-type]
        rng=random.Random(0),
        **options,  # type: ignore[arg-type]
    )
    return anyio.run(export, recipe, run_options, backend="asyncio")


def admin_run(tmp_path: Path, mock: MockServer, body: str) -> tuple[list[str], dict[str, str]]:
    """Write a recipe from ``body`` and return the command that runs it against ``mock``,
    with the environment that gives it the admin token."""
    recipe = write_recipe(tmp_path, body)
    return ["run", str(recipe), "--base-url", mock.api_url], {"TM_API_TOKEN": mock.tokens["admin"]}
