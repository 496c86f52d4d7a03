"""The command line: help, the catalog listing, the output lock and a recipe that changed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tm_export import __version__
from tm_export.catalog import CATALOG
from tm_export.cli import main
from tm_export.layout import OutputLock
from tm_export.mock import MockServer

from .conftest import PROJECTS, data_file, run_cli, run_process, write_recipe

RECIPE = """\
version: 1
instance: {rate_limit: 10000/s}
output: OUT
streams:
  stats:
    endpoint: project_statistics
    params: {project_id: {range: [1, 3]}}
"""

#: The recipe's instance with a loopback base URL where nothing listens (port 9).
LOOPBACK_RECIPE = RECIPE.replace(
    "{rate_limit", "{base_url: 'http://127.0.0.1:9/api/v2', rate_limit"
)


def test_help_lists_exit_codes() -> None:
    outcome = run_cli("run", "--help")

    assert outcome.exit_code == 0
    for line in (
        "0    complete",
        "1    stopped by a fatal error",
        "2    invalid recipe or usage",
        "3    finished, but some partitions failed",
        "130  interrupted by SIGINT, SIGTERM or SIGHUP",
    ):
        assert line in outcome.stdout
    assert "Request budget in requests per second" in outcome.stdout


def test_every_option_has_help() -> None:
    for name, command in main.commands.items():
        assert command.help, f"{name} has no help"
        for option in command.params:
            if option.param_type_name == "option":
                assert option.help, f"{name} {option.name} has no help"  # type: ignore[attr-defined]


def test_version_and_module_entry() -> None:
    process = run_process("--version")

    assert process.returncode == 0
    assert process.stdout == f"tm-export, version {__version__}\n"


def test_endpoints_lists_catalog() -> None:
    outcome = run_cli("endpoints")

    assert outcome.exit_code == 0
    names = [line.split()[0] for line in outcome.stdout.splitlines() if not line.startswith(" ")]
    assert names == list(CATALOG)
    assert outcome.stdout.splitlines()[0].split() == [
        "projects",
        "/projects/",
        "[optional",
        "auth,",
        "paged]",
    ]


def test_endpoints_json_required_params() -> None:
    outcome = run_cli("endpoints", "--json")

    assert outcome.exit_code == 0
    rows = {row["name"]: row for row in orjson.loads(outcome.stdout)}
    assert rows["tasks_statistics"]["required_params"] == ["startDate"]
    assert rows["projects"]["required_params"] == []


def test_changed_recipe_refused(tmp_path: Path, mock: MockServer) -> None:
    """A run started by another recipe is refused; --start-over begins a new run beside it."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    write_recipe(tmp_path, RECIPE.replace("[1, 3]", "[1, 4]"))
    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    before = manifest.read_bytes()

    refused = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert refused.exit_code == 1
    assert refused.stderr.startswith(
        f"tm-export: error: {manifest}: this run was started by a recipe that "
        "exports something else (other streams, endpoints or parameters;"
    )
    assert refused.stderr.endswith(
        "Nothing was changed. Use --start-over to begin a new run beside it, or "
        "choose another output folder\n"
    )
    assert manifest.read_bytes() == before

    fresh = run_cli("run", str(recipe), "--base-url", mock.api_url, "--start-over")

    assert fresh.exit_code == 0, fresh.stderr
    assert (tmp_path / "out/runs/0002/data/stats.jsonl").read_bytes().count(b"\n") == 4 - sum(
        1 for pid in mock.dataset.deleted_project_ids() if pid <= 4
    )
    assert manifest.read_bytes() == before


def test_base_url_change_refused(tmp_path: Path, mock: MockServer) -> None:
    """A session against another server than the run's stops before any request."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"),
    )
    mock.add_fault(path=r"^/api/v2/projects/2/statistics/$", status=500)
    first = run_cli("run", str(recipe), "--base-url", mock.api_url)
    assert first.exit_code == 3, first.stderr

    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    before = manifest.read_bytes()

    with MockServer(projects=PROJECTS) as other:
        outcome = run_cli(
            "run", str(recipe), "--base-url", other.api_url, "--retry-failed", "--quiet"
        )
        sent_to_other = other.requests()
    after_rejection = manifest.read_bytes()
    same_with_slash = run_cli(
        "run", str(recipe), "--base-url", mock.api_url + "/", "--retry-failed", "--quiet"
    )

    assert outcome.exit_code == 1
    assert outcome.stderr == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: this run reads from {mock.api_url}, "
        f"but this command reads from {other.api_url}. Nothing was changed. Give --base-url "
        f"{mock.api_url} for this run, or use --start-over to begin a new run from "
        "the other server\n"
    )
    assert sent_to_other == []
    assert after_rejection == before
    assert same_with_slash.exit_code == 3, same_with_slash.stderr


def test_settings_change_recorded(tmp_path: Path, mock: MockServer) -> None:
    """Concurrency may change between sessions; each session entry records the settings."""
    recipe = write_recipe(
        tmp_path,
        RECIPE.replace("{rate_limit: 10000/s}", "{rate_limit: 10000/s, retries: {attempts: 1}}"),
    )
    mock.add_fault(path=r"^/api/v2/projects/2/statistics/$", status=500)
    first = run_cli("run", str(recipe), "--base-url", mock.api_url, "--concurrency", "2")
    assert first.exit_code == 3, first.stderr
    mock.clear_faults()

    # A finished run gets a new session only when it has something to retry.
    outcome = run_cli(
        "run", str(recipe), "--base-url", mock.api_url, "--concurrency", "5", "--retry-failed"
    )

    assert outcome.exit_code == 0
    assert (
        "tm-export: INFO: setting concurrency changed since the last session: 2 -> 5"
        in outcome.stderr
    )
    sessions = [
        line
        for line in (tmp_path / "out/runs/0001/manifest.jsonl").read_text().splitlines()
        if '"t":"session"' in line
    ]
    assert len(sessions) == 2
    assert '"concurrency":2' in sessions[0]
    assert '"concurrency":5' in sessions[1]


def test_locked_output_refused(tmp_path: Path, mock: MockServer) -> None:
    """A second process writing the same output folder exits 1 and sends nothing."""
    recipe = write_recipe(tmp_path, RECIPE)

    with OutputLock(tmp_path / "out"):
        outcome = run_process("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.returncode == 1
    assert outcome.stderr == (
        f"tm-export: error: {tmp_path / 'out'}: another tm-export process is writing this output folder; "
        "wait for it to finish, or choose another output folder\n"
    )
    assert mock.requests() == []


def test_incremental_and_start_over_refused(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--incremental", "--start-over")

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        "tm-export: error: --incremental and --start-over exclude each other: --start-over "
        "begins a full run, --incremental one that fetches what changed since the last; give one\n"
    )
    assert not (tmp_path / "out").exists()


def test_quiet_verbose_rejected(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "-q", "-v")

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        "tm-export: error: --quiet and --verbose exclude each other: --quiet logs only warnings "
        "and errors, --verbose every request; give one\n"
    )
    assert not (tmp_path / "out").exists()


def test_mock_server_port_taken(mock: MockServer) -> None:
    """A port in use is exit 1 with what to do, not a traceback."""
    port = mock.base_url.rsplit(":", 1)[1]

    outcome = run_cli("mock-server", "--port", port)

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: cannot listen on 127.0.0.1:{port}: Address already in use; choose "
        "another --port, or 0 for a free one"
    )


def test_mock_server_ready_file_unwritable(tmp_path: Path) -> None:
    ready = tmp_path / "missing/ready.json"

    outcome = run_cli("mock-server", "--ready-file", str(ready))

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: --ready-file {ready}: cannot write it: No such file or directory; "
        "give a file in a folder that exists and is writable"
    )


@pytest.mark.parametrize("target", ["missing", "loop"])
def test_output_broken_link_refused(tmp_path: Path, target: str) -> None:
    """An output folder that is a link to nothing, or one of two links to each other, is a
    usage error that names the link."""
    recipe = write_recipe(tmp_path, RECIPE)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / target)
    if target == "loop":
        (tmp_path / "loop").symlink_to(link)

    outcome = run_cli(
        "run", str(recipe), "-o", str(link), "--base-url", "http://127.0.0.1:9/api/v2"
    )

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: '{link}' is a symbolic link to '{tmp_path / target}', "
        "which leads to no folder (its target is missing, or the links form a loop); fix the "
        "link or choose another folder path\n"
    )


@pytest.mark.parametrize("command", ["merge", "snapshot"])
def test_broken_link_destination_refused(tmp_path: Path, command: str) -> None:
    """merge's output and snapshot's destination get the same check of links as run's."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    (tmp_path / "shard").mkdir()
    args = (
        [str(link), str(tmp_path / "shard")]
        if command == "merge"
        else [str(tmp_path / "shard"), str(link)]
    )

    outcome = run_cli(command, *args)

    assert outcome.exit_code == 2
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: '{link}' is a symbolic link to '{tmp_path / 'missing'}', "
        "which leads to no folder (its target is missing, or the links form a loop); fix the "
        "link or choose another folder path"
    )


def test_output_name_outside_file_system_encoding(tmp_path: Path) -> None:
    """Under an ASCII locale without UTF-8 mode, a recipe's non-ASCII output is a usage
    error that names what to change, unless --output replaces it, and a report whose path
    the terminal cannot show is printed with escapes."""
    text = RECIPE.replace("output: OUT", "output: \u00e4rchive")
    recipe = write_recipe(tmp_path, text.replace("10000/s}", "10000/s, retries: {attempts: 1}}"))
    ascii_only = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}

    rejected = run_process(
        "run", str(recipe), "--base-url", "http://127.0.0.1:9/api/v2", env=ascii_only
    )
    overridden = run_process(
        "run",
        str(recipe),
        "-o",
        str(tmp_path / "plain"),
        "--base-url",
        "http://127.0.0.1:9/api/v2",
        env=ascii_only,
    )
    escaped = run_process("status", str(tmp_path / "\u65e5"), env={"PYTHONIOENCODING": "latin-1"})

    assert rejected.returncode == 2
    assert rejected.stderr == (
        "tm-export: error: '\u00e4rchive' cannot be written as a file name in this system's "
        "encoding (ascii); set a UTF-8 locale, such as LC_ALL=C.UTF-8, or choose a name of "
        "ASCII characters\n"
    )
    assert overridden.returncode == 1
    assert "cannot be written as a file name" not in overridden.stderr
    assert escaped.returncode == 2
    assert escaped.stderr == (
        f"tm-export: error: {tmp_path}/\\u65e5: folder not found; give an output folder "
        "(with runs/) or a run folder such as OUTPUT/runs/0001\n"
    )


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_unwritable_stderr_keeps_exit_code(tmp_path: Path, mock: MockServer, encoding: str) -> None:
    """Logs that cannot be written to a full stderr leave the run's own exit code, also when
    click writes them through a wrapper of its own (an ASCII stderr)."""
    recipe = write_recipe(tmp_path, RECIPE)
    command = [sys.executable, "-m", "tm_export", "run", str(recipe), "--base-url", mock.api_url]

    with open("/dev/full", "w") as full:
        finished = subprocess.run(
            [*command, "--json"],
            stdout=subprocess.PIPE,
            stderr=full,
            check=False,
            timeout=120,
            env={**os.environ, "PYTHONIOENCODING": encoding},
        )

    assert finished.returncode == 0
    assert orjson.loads(finished.stdout)["exit_code"] == 0


def test_shard_canonical_refused(tmp_path: Path) -> None:
    """merge refuses canonical shards, so a shard run refuses --canonical before it starts."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--shard", "1/2", "--canonical")

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        "tm-export: error: --shard and --canonical exclude each other: 'tm-export merge' "
        "refuses shards whose files were made canonical; run the shards without --canonical, "
        "merge them, then run 'tm-export canonical' on the merged run\n"
    )
    assert not (tmp_path / "out").exists()


def test_incremental_warns_retry_ignored(tmp_path: Path, mock: MockServer) -> None:
    """On a finished run, --incremental begins a new run, so --retry-failed does nothing."""
    recipe = write_recipe(tmp_path, RECIPE)
    args = ["run", str(recipe), "--base-url", mock.api_url, "--quiet"]
    assert run_cli(*args).exit_code == 0

    outcome = run_cli(*args, "--incremental", "--retry-failed")

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stderr.startswith(
        "tm-export: WARNING: --retry-failed ignored: the last run is finished, so --incremental "
        "begins a new run, which fetches what changed since; to fetch again what the finished "
        "run could not, run the command without --incremental\n"
    )


@pytest.mark.parametrize(
    ("args", "env", "source", "url", "reason"),
    [
        (
            ["--base-url", "http://127.0.0.1:9/api/v2?x=1"],
            {},
            "--base-url",
            "http://127.0.0.1:9/api/v2?x=1",
            "it has a query or a fragment; put query parameters under a stream's params",
        ),
        (
            [],
            {"TM_EXPORT_BASE_URL": "http://127.0.0.1:99999/api/v2"},
            "TM_EXPORT_BASE_URL",
            "http://127.0.0.1:99999/api/v2",
            "the port is not a number from 0 to 65535",
        ),
        (["--base-url", ""], {}, "--base-url", "", "it is empty"),
        (
            ["--base-url", "ftp://127.0.0.1:9/api/v2"],
            {},
            "--base-url",
            "ftp://127.0.0.1:9/api/v2",
            "it must start with http:// or https://",
        ),
        (
            ["--base-url", "file:///etc/hosts"],
            {},
            "--base-url",
            "file:///etc/hosts",
            "it must start with http:// or https://",
        ),
    ],
)
def test_invalid_base_url_refused(
    tmp_path: Path, args: list[str], env: dict[str, str], source: str, url: str, reason: str
) -> None:
    """A base URL from the command line or the environment is checked as the recipe's is."""
    # Were a URL taken as unset, the run would go to the recipe's loopback URL, not production.
    recipe = write_recipe(tmp_path, LOOPBACK_RECIPE)

    outcome = run_cli("run", str(recipe), *args, env=env)

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {source}: invalid URL {url!r}: {reason}; expected the API root, "
        "such as https://tasking-manager-production-api.hotosm.org/api/v2\n"
    )
    assert not (tmp_path / "out").exists()


def test_empty_base_url_variable_rejected(tmp_path: Path) -> None:
    """An empty TM_EXPORT_BASE_URL is an error, never a fallback to the production server."""
    recipe = write_recipe(tmp_path, LOOPBACK_RECIPE)

    outcome = run_cli("run", str(recipe), env={"TM_EXPORT_BASE_URL": ""})

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        "tm-export: error: TM_EXPORT_BASE_URL: invalid URL '': it is empty; expected the API "
        "root, such as https://tasking-manager-production-api.hotosm.org/api/v2; or unset it to "
        "use the recipe's base URL\n"
    )
    assert not (tmp_path / "out").exists()


def test_invalid_probe_url_refused(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("plan", str(recipe), "--probe", "--base-url", "http://127.0.0.1:9/api/v2#top")

    assert outcome.exit_code == 2
    assert outcome.stderr.startswith(
        "tm-export: error: --base-url: invalid URL 'http://127.0.0.1:9/api/v2#top': it has a "
        "query or a fragment"
    )


@pytest.mark.parametrize("rate", ["5000", "5000/s", " 5000 / s ", "5e3", "5e3/s", "5000.0"])
def test_rate_limit_forms(tmp_path: Path, mock: MockServer, rate: str) -> None:
    """--rate-limit takes a number with or without /s, as instance.rate_limit does."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--rate-limit", rate, "-q")

    assert outcome.exit_code == 0, outcome.stderr
    manifest = (tmp_path / "out/runs/0001/manifest.jsonl").read_text()
    assert '"rate_limit":5000.0' in manifest


@pytest.mark.parametrize(
    "rate", ["0/s", "abc", "10/min", "-1", "inf", "nan", "1e999", "0.009", "1e-10/s", "+5"]
)
def test_rate_limit_invalid(tmp_path: Path, rate: str) -> None:
    """A --rate-limit that is not a rate of at least 0.01 is a usage error that names the forms."""
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli(
        "run", str(recipe), "--base-url", "http://127.0.0.1:9/api/v2", "--rate-limit", rate
    )

    assert outcome.exit_code == 2
    assert outcome.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--rate-limit': {rate!r} is not a rate of at least 0.01 "
        "requests per second, such as 10 or 2.5/s"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "the folder name is empty; choose a folder path, such as exports/demo"),
        (
            "notes.txt/out",
            "'notes.txt' is an existing file, so 'notes.txt/out' cannot be a folder below it; "
            "choose another folder path",
        ),
    ],
)
def test_invalid_output_option_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """--output is checked as the recipe's output is: exit 2, nothing written."""
    recipe = write_recipe(tmp_path, LOOPBACK_RECIPE)
    (tmp_path / "notes.txt").write_text("notes\n")
    monkeypatch.chdir(tmp_path)

    outcome = run_cli("run", str(recipe), "--output", value)

    assert outcome.exit_code == 2
    assert outcome.stderr == f"tm-export: error: --output: {problem}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "recipe.yaml"]


def test_unstarted_run_takes_fixed_recipe(tmp_path: Path, mock: MockServer) -> None:
    """A run that never got past the server check is started again with a changed recipe."""
    recipe = write_recipe(
        tmp_path, LOOPBACK_RECIPE.replace("10000/s", "10000/s, retries: {attempts: 1}")
    )
    unreachable = run_cli("run", str(recipe))
    assert unreachable.exit_code == 1
    write_recipe(tmp_path, RECIPE.replace("range: [1, 3]", "range: [1, 2]"))

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 0, outcome.stderr
    out = tmp_path / "out"
    assert (
        f"starting the run in {out / 'runs/0001'} again with this command's recipe and options: "
        "no earlier session got past the server and token check, so it has nothing to keep"
    ) in outcome.stderr
    assert sorted(path.name for path in (out / "runs").iterdir()) == ["0001"]
    assert len(data_file(out, "stats").read_bytes().splitlines()) == 2


def test_started_run_rejects_changed_recipe(tmp_path: Path, mock: MockServer) -> None:
    """Once a session got past the server check, a changed recipe is rejected (exit 1)."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    write_recipe(tmp_path, RECIPE.replace("range: [1, 3]", "range: [1, 2]"))

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 1
    assert "this run was started by a recipe that exports something else" in outcome.stderr


def test_keyboard_interrupt_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt in the run command (a second Ctrl-C) exits 130 with one line."""
    from tm_export import engine

    def interrupted(self: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._Session, "_open_run", interrupted)
    recipe = write_recipe(tmp_path, LOOPBACK_RECIPE)

    outcome = run_cli("run", str(recipe))

    assert outcome.exit_code == 130
    assert outcome.stderr == (
        "tm-export: error: interrupted; run the same command again to resume\n"
    )


def test_unstarted_run_takes_command_compression(tmp_path: Path, mock: MockServer) -> None:
    """A run started again after a failed server check takes this command's compression."""
    recipe = write_recipe(tmp_path, RECIPE)
    first = run_cli(
        "run", str(recipe), "--base-url", mock.base_url, "--compression", "gzip", "--shard", "1/2"
    )
    assert first.exit_code == 1

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url, "--shard", "2/2")

    assert outcome.exit_code == 0, outcome.stderr
    manifest = tmp_path / "out/runs/0001/manifest.jsonl"
    header = orjson.loads(manifest.read_bytes().splitlines()[0])
    assert (header["compression"], header["shard"]) == ("none", [2, 2])


def test_signal_while_reading_recipe(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT before the run starts is kept, and the run then stops before sending anything."""
    from tm_export import cli

    real_load = cli.load_recipe

    def load_then_interrupt(path: Path) -> object:
        os.kill(os.getpid(), signal.SIGINT)
        return real_load(path)

    monkeypatch.setattr(cli, "load_recipe", load_then_interrupt)
    recipe = write_recipe(tmp_path, RECIPE)
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 130
    assert outcome.stderr == (
        "tm-export: error: received SIGINT before the run started; nothing was sent or written\n"
    )
    assert mock.requests() == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_while_opening_run(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A signal while the run folder opens stops the run before its first request."""
    from tm_export import engine

    real_open = engine._Session._open_run

    def open_then_signal(self: engine._Session) -> object:
        os.kill(os.getpid(), getattr(signal, name))
        return real_open(self)

    monkeypatch.setattr(engine._Session, "_open_run", open_then_signal)
    recipe = write_recipe(tmp_path, RECIPE)
    mock.reset_log()

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 130
    lines = outcome.stderr.splitlines()
    assert f"tm-export: WARNING: received {name}: stopping; committed pages are kept" in lines
    assert lines[-1] == "result: interrupted; run the same command again to resume (exit 130)"
    assert mock.requests() == []
    monkeypatch.undo()
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0


def test_signal_as_streams_end(
    tmp_path: Path, mock: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGINT the loop reads only after the streams ended stops the steps that follow."""
    from tm_export import engine

    real_run_streams = engine._Session._run_streams

    async def run_then_signal(self: engine._Session, *args: object) -> None:
        await real_run_streams(self, *args)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(engine._Session, "_run_streams", run_then_signal)
    recipe = write_recipe(tmp_path, RECIPE)

    outcome = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert outcome.exit_code == 130
    lines = outcome.stderr.splitlines()
    assert "tm-export: WARNING: received SIGINT: stopping; committed pages are kept" in lines
    assert lines[-1] == "result: interrupted; run the same command again to resume (exit 130)"
    assert not (tmp_path / "out/runs/0001/run.json").exists()
    monkeypatch.undo()
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    assert (tmp_path / "out/runs/0001/run.json").exists()


def test_keyboard_interrupt_in_other_commands_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C in a command other than run exits 130 with one line, not click's "Aborted!"."""
    from tm_export import cli_archive

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_archive, "find_run_folders", interrupted)
    monkeypatch.setattr(cli_archive, "write_run_record", interrupted)
    (tmp_path / "runs/0001").mkdir(parents=True)
    (tmp_path / "runs/0001/manifest.jsonl").write_bytes(b"")

    verify = run_cli("verify", str(tmp_path))
    record = run_cli("record", str(tmp_path))

    assert (verify.exit_code, verify.stdout, verify.stderr) == (
        130,
        "",
        "tm-export: error: interrupted\n",
    )
    assert (record.exit_code, record.stdout, record.stderr) == (
        130,
        "",
        "tm-export: error: interrupted; run the same command again to finish\n",
    )


def test_start_over_stop_advises_without_option(tmp_path: Path, mock: MockServer) -> None:
    """A run begun with --start-over that stops advises resuming without --start-over, which
    would begin yet another run. The command without it resumes the run."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0
    mock.add_fault(
        path=r"^/api/v2/projects/2/statistics/$",
        times=1,
        status=429,
        headers={"Retry-After": "3600"},
    )

    stopped = run_cli("run", str(recipe), "--base-url", mock.api_url, "--start-over")
    resumed = run_cli("run", str(recipe), "--base-url", mock.api_url)

    assert stopped.exit_code == 1
    lines = stopped.stderr.splitlines()
    assert lines[-2] == (
        "result: stopped by a fatal error; once its cause is fixed, run the same command "
        "without --start-over to resume (exit 1)"
    )
    assert lines[-1].startswith("tm-export: error: the server asked to wait 3600 s ")
    assert lines[-1].endswith(
        "the run stopped. Wait, then run the same command without --start-over to resume, or "
        "raise max_retry_after"
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert f"run folder: {tmp_path / 'out/runs/0002'} (resumed)" in resumed.stderr
    assert sorted(path.name for path in (tmp_path / "out/runs").iterdir()) == ["0001", "0002"]


def test_finished_run_other_server_refused(tmp_path: Path, mock: MockServer) -> None:
    """A command with another base URL than a finished run's gets that error, not the note
    that the run is already finished."""
    recipe = write_recipe(tmp_path, RECIPE)
    assert run_cli("run", str(recipe), "--base-url", mock.api_url).exit_code == 0

    with MockServer(projects=PROJECTS) as other:
        outcome = run_cli("run", str(recipe), "--base-url", other.api_url)
        sent_to_other = other.requests()

    assert outcome.exit_code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"tm-export: error: {tmp_path / 'out/runs/0001'}: this run finished reading from "
        f"{mock.api_url}, and this command reads from {other.api_url}. Nothing was changed. "
        f"Use --start-over to begin a new run from {other.api_url} beside it; only with "
        f"--base-url {mock.api_url} can --retry-failed, --retry-skipped or --incremental "
        "build on this run"
    )
    assert "already finished" not in outcome.stderr
    assert sent_to_other == []


@pytest.mark.parametrize("option", ["--retry-failed", "--retry-skipped"])
def test_start_over_with_retry_refused(tmp_path: Path, option: str) -> None:
    """--start-over with a retry option is a usage error: the retry would fetch everything."""
    recipe = write_recipe(tmp_path, LOOPBACK_RECIPE)

    outcome = run_cli("run", str(recipe), "--start-over", option)

    assert outcome.exit_code == 2
    assert outcome.stderr == (
        f"tm-export: error: {option} and --start-over exclude each other: {option} fetches "
        "again in the last run what it could not fetch, --start-over begins a new run that "
        "fetches everything; give one\n"
    )
    assert not (tmp_path / "out").exists()


def test_run_needs_an_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock: MockServer
) -> None:
    """Without output: in the recipe, run requires --output, and writes with it."""
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text(
        "version: 1\nstreams:\n  projects:\n    endpoint: projects\n"
        "    params: {projectStatuses: [PUBLISHED, ARCHIVED]}\n",
        encoding="utf-8",
    )

    outcome = run_cli("run", "recipe.yaml", "--base-url", mock.api_url)

    assert outcome.stderr == (
        "tm-export: error: recipe.yaml: the recipe names no output folder; add "
        "'output: FOLDER' to it, or give --output FOLDER\n"
    )
    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recipe.yaml"]
    assert mock.requests() == []

    outcome = run_cli("run", "recipe.yaml", "--base-url", mock.api_url, "-o", "out", "--quiet")

    assert outcome.exit_code == 0, outcome.stderr
    lines = (tmp_path / "out/runs/0001/data/projects.jsonl").read_bytes().splitlines()
    assert len(lines) == len(mock.dataset.public_project_ids())
