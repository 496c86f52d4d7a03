"""SIGINT and SIGTERM outside the streams: start-up, preflight, deletion check, the run's end."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tm_export import entry, interrupts
from tm_export.catalog import TOKEN_CHECK_PATH
from tm_export.errors import ExitCode
from tm_export.mock import MockServer

from .conftest import run_cli, write_recipe
from .test_crash import start_held

RECIPE = """\
version: 1
instance: {token_env: TM_API_TOKEN, concurrency: 4, rate_limit: 10000/s}
output: OUT
streams:
  projects:
    endpoint: projects
    params: {projectStatuses: [PUBLISHED, ARCHIVED]}
  activities:
    endpoint: project_activities
    params: {project_id: {from: projects.projectId}}
"""

STREAMS = ("projects", "activities")

STOPPING = "received {}: stopping; committed pages are kept"
INTERRUPTED = "result: interrupted; run the same command again to resume (exit 130)"


def records(output: Path, run: str) -> dict[str, Counter[bytes]]:
    data = output / "runs" / run / "data"
    return {name: Counter((data / f"{name}.jsonl").read_bytes().splitlines()) for name in STREAMS}


def signal_and_hold(pid: int, name: str, released: threading.Event) -> Callable[[], None]:
    """Return a fault action that signals ``pid`` and responds only once ``released`` is set.

    The request stays unanswered until the exporter has exited, so the signal reaches it
    while it waits for that response, on a machine of any speed.
    """

    def act() -> None:
        os.kill(pid, getattr(signal, name))
        released.wait(timeout=120)

    return act


def run_signalled(
    mock: MockServer,
    args: list[str],
    env: dict[str, str],
    name: str,
    path: str,
    query: dict[str, str],
) -> tuple[int, str]:
    """Run the CLI; send it signal ``name`` at the first request matching ``path`` and ``query``."""
    released = threading.Event()
    process = start_held(args, env)
    try:
        mock.add_fault(
            path=path, query=query, times=1, call=signal_and_hold(process.pid, name, released)
        )
        _, stderr = process.communicate(b"go\n", timeout=120)
    finally:
        released.set()
        mock.clear_faults()
    return process.returncode, stderr.decode()


SIGNALS = pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])


@pytest.mark.parametrize(
    ("path", "sent"),
    [(r"^/api/v2/system/heartbeat/$", 1), (f"^/api/v2{TOKEN_CHECK_PATH}$", 2)],
    ids=["heartbeat", "token-check"],
)
@SIGNALS
def test_signal_in_preflight_stops_cleanly(
    tmp_path: Path, mock: MockServer, signal_name: str, path: str, sent: int
) -> None:
    """A signal during the server and token check exits 130 and sends nothing more.

    A rerun then completes the run.
    """
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    reference = tmp_path / "reference"
    reference.mkdir()
    expected_run = run_cli(
        "run", str(write_recipe(reference, RECIPE)), "--base-url", mock.api_url, env=env
    )
    assert expected_run.exit_code == 0, expected_run.stderr
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url]
    before = mock.request_count

    code, stderr = run_signalled(mock, args, env, signal_name, path, {})

    assert code == ExitCode.INTERRUPTED, stderr
    lines = stderr.splitlines()
    assert f"tm-export: WARNING: {STOPPING.format(signal_name)}" in lines
    assert lines[-1] == INTERRUPTED
    assert "Traceback" not in stderr
    assert "Aborted!" not in stderr
    # Requests are counted on arrival, and the held one is logged only once its response
    # is sent, so the count and not the log is compared.
    assert mock.request_count - before == sent
    manifest = (tmp_path / "out/runs/0001/manifest.jsonl").read_text()
    assert '"t":"session"' not in manifest.replace(" ", "")

    rerun = run_cli(*args, env=env)

    assert rerun.exit_code == 0, rerun.stderr
    assert "no earlier session got past the server and token check" in rerun.stderr
    assert records(tmp_path / "out", "0001") == records(reference / "out", "0001")


@SIGNALS
def test_signal_in_deletion_check_stops_cleanly(
    tmp_path: Path, mock: MockServer, signal_name: str
) -> None:
    """A signal during an incremental run's deletion check exits 130, and a rerun completes it."""
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    reference = tmp_path / "reference"
    reference.mkdir()
    reference_args = [
        "run",
        str(write_recipe(reference, RECIPE)),
        "--base-url",
        mock.api_url,
    ]
    args = ["run", str(write_recipe(tmp_path, RECIPE)), "--base-url", mock.api_url]
    assert run_cli(*reference_args, env=env).exit_code == 0
    assert run_cli(*args, env=env).exit_code == 0
    archived = (tmp_path / "out/runs/0001/data/projects.jsonl").read_bytes().splitlines()
    deleted = orjson.loads(archived[0])["projectId"]
    mock.dataset.delete_project(deleted)
    expected_run = run_cli(*reference_args, "--incremental", env=env)
    assert expected_run.exit_code == 0, expected_run.stderr
    assert f"deleted since the earlier runs: projects {deleted}" in expected_run.stderr

    code, stderr = run_signalled(
        mock,
        [*args, "--incremental"],
        env,
        signal_name,
        r"^/api/v2/projects/$",
        {"omitMapResults": "false"},
    )

    assert code == ExitCode.INTERRUPTED, stderr
    assert f"tm-export: WARNING: {STOPPING.format(signal_name)}" in stderr.splitlines()
    assert stderr.splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in stderr

    rerun = run_cli(*args, "--incremental", env=env)

    assert rerun.exit_code == 0, rerun.stderr
    assert f"deleted since the earlier runs: projects {deleted}" in rerun.stderr
    assert records(tmp_path / "out", "0002") == records(reference / "out", "0002")


#: Runs the CLI with a canonical rewrite that first sends the process a signal and waits
#: until the engine has logged it, so the signal arrives during the rewrite on any machine.
SIGNALLED_REWRITE = """\
import logging, os, signal, threading
import tm_export.canonical
from tm_export.entry import console_main

seen = threading.Event()

class Seen(logging.Handler):
    def emit(self, record):
        if "stopping once the canonical rewrite in progress is done" in record.getMessage():
            seen.set()

logging.getLogger("tm_export.engine").addHandler(Seen())
rewrite = tm_export.canonical.make_canonical

def signalled_rewrite(run_folder):
    os.kill(os.getpid(), signal.{name})
    if not seen.wait(timeout=60):
        raise SystemExit("the engine did not log the signal")
    return rewrite(run_folder)

tm_export.canonical.make_canonical = signalled_rewrite
console_main()
"""


@SIGNALS
def test_signal_during_canonical_skips_bag(
    tmp_path: Path, mock: MockServer, signal_name: str
) -> None:
    """A signal during the canonical rewrite lets it finish, leaves the bag and exits 130."""
    env = {"TM_API_TOKEN": mock.tokens["admin"]}
    args = ["run", str(write_recipe(tmp_path, RECIPE)), "--base-url", mock.api_url]
    program = SIGNALLED_REWRITE.format(name=signal_name)

    finished = subprocess.run(
        [sys.executable, "-c", program, *args, "--canonical", "--bag"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, **env},
    )

    assert finished.returncode == ExitCode.INTERRUPTED, finished.stderr
    lines = finished.stderr.splitlines()
    assert (
        f"tm-export: WARNING: received {signal_name}: stopping once the canonical rewrite in "
        "progress is done; committed pages are kept"
    ) in lines
    assert lines[-1] == INTERRUPTED
    assert "Traceback" not in finished.stderr
    run_folder = tmp_path / "out/runs/0001"
    assert '"t":"canonical"' in (run_folder / "manifest.jsonl").read_text().replace(" ", "")
    assert not (run_folder / "bagit.txt").exists()

    rerun = run_cli(*args, "--canonical", "--bag", env=env)

    assert rerun.exit_code == 0, rerun.stderr
    assert "is already finished" in rerun.stderr
    assert (run_folder / "bagit.txt").is_file()
    verified = run_cli("verify", str(tmp_path / "out"))
    assert verified.exit_code == 0, verified.stdout + verified.stderr


def test_repeated_signal_logged_then_exits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While a run stops, a second signal is only logged (GNU timeout sends one to the
    process and one to its group), and a third ends the process at once with 130."""
    exits: list[int] = []
    monkeypatch.setattr(interrupts, "_exit_now", lambda: exits.append(ExitCode.INTERRUPTED))
    monkeypatch.setattr(interrupts, "_repeats", 0)

    interrupts._repeat(signal.SIGINT)
    logged_once = [record.getMessage() for record in caplog.records]
    interrupts._repeat(signal.SIGTERM)

    assert logged_once == ["received SIGINT again: still stopping; a third signal stops at once"]
    assert [record.getMessage() for record in caplog.records][1:] == [
        "received SIGTERM a third time: stopping at once; committed pages are kept"
    ]
    assert exits == [ExitCode.INTERRUPTED]


def test_ignored_sigint_stays_ignored(tmp_path: Path, mock: MockServer) -> None:
    """A run started with SIGINT ignored, as a shell starts a script's background job, goes
    on through a SIGINT and completes."""
    recipe = write_recipe(tmp_path, RECIPE)
    command = [sys.executable, "-m", "tm_export", "run", str(recipe), "--base-url", mock.api_url]
    process = subprocess.Popen(
        ["sh", "-c", "read go; exec " + shlex.join(command)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TM_API_TOKEN": mock.tokens["admin"]},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        mock.add_fault(
            path=r"^/api/v2/projects/\d+/activities/$",
            times=1,
            call=lambda: os.kill(process.pid, signal.SIGINT),
        )
        _, stderr = process.communicate(b"go\n", timeout=120)
    finally:
        mock.clear_faults()

    assert process.returncode == 0, stderr.decode()
    assert "received SIGINT" not in stderr.decode()
    assert "result: complete" in stderr.decode()


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_while_importing(tmp_path: Path, name: str) -> None:
    """A signal while the command line is imported exits 130 with one line and no traceback."""
    # A finder that sends the signal where the import of the command line starts, as a
    # Ctrl-C or a job's timeout in the first part of a second would.
    program = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tm_export.cli':\n"
        f"            os.kill(os.getpid(), signal.{name})\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from tm_export.entry import console_main\n"
        "console_main()\n"
    )

    finished = subprocess.run(
        [sys.executable, "-c", program, "validate", "recipe.yaml"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )

    assert finished.returncode == ExitCode.INTERRUPTED
    assert finished.stderr == "tm-export: interrupted while starting; nothing was done\n"
    assert finished.stdout == ""
    assert entry.INTERRUPTED == ExitCode.INTERRUPTED


def test_signal_while_importing_json_logs(tmp_path: Path) -> None:
    """Under --log-format json, the line for a signal while importing is a JSON log line."""
    program = (
        "import os, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tm_export.cli':\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from tm_export.entry import console_main\n"
        "console_main()\n"
    )

    finished = subprocess.run(
        [sys.executable, "-c", program, "run", "recipe.yaml", "--log-format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )

    assert finished.returncode == ExitCode.INTERRUPTED
    line = json.loads(finished.stderr)
    assert {key: line[key] for key in ("level", "logger", "message", "event", "exit_code")} == {
        "level": "error",
        "logger": "tm_export",
        "message": "interrupted while starting; nothing was done",
        "event": "error",
        "exit_code": 130,
    }
    assert finished.stdout == ""
