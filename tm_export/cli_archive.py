"""Commands for planning and archiving runs: plan, status, verify, record, canonical, bag.

``register(main)`` adds them to the ``tm-export`` command group; ``cli.py`` calls it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from . import loop
from .canonical import CHUNK_BYTES, make_canonical
from .cli_options import CONTEXT_SETTINGS, ShardParam, fail, missing_token_note
from .engine import resolve_base_url
from .errors import ExitCode, RecipeError, StorageError, TmExportError
from .layout import SNAPSHOT_RECORD, OutputLock, list_runs, runs_folder
from .plan import (
    DEFAULT_MAX_PROBES,
    describe_probe,
    format_plan,
    plan_json,
    plan_recipe,
    probe_plan,
    probe_requests,
)
from .recipe import load_recipe, resolve_token
from .runrecord import write_run_record
from .status import format_status, status_json, status_of
from .verify import (
    RunFolderError,
    check_run,
    checks_json,
    find_run_folders,
    format_checks,
    locate_run,
)
from .words import counted

PLAN_EXIT_CODES = """\b
Exit codes:
  0    the plan was printed
  1    standard output could not be written; with --probe also: the server
       rejected the token, asked for too long a wait, could not be reached,
       or the base URL is not an API root (no /api/v2) or redirects
  2    invalid recipe or usage; nothing was sent
  130  interrupted by Ctrl-C"""

READ_EXIT_CODES = """\b
Exit codes:
  0    the report was printed
  1    a manifest is damaged, or missing beside stream files; making a bag of
       the run was interrupted ('tm-export bag' finishes it); or standard
       output could not be written
  2    invalid usage, or DIR is not an output or a run folder
  130  interrupted by Ctrl-C"""

VERIFY_EXIT_CODES = """\b
Exit codes:
  0    every file matches what the manifest proves
  1    a manifest is damaged, or missing beside stream files; making a bag of
       the run was interrupted ('tm-export bag' finishes it); or standard
       output could not be written; the other runs of an output folder are still reported
  2    invalid usage, or DIR is not an output or a run folder
  3    a mismatch: the report names each file
  130  interrupted by Ctrl-C"""

CHANGE_EXIT_CODES = """\b
Exit codes:
  0    done
  1    a manifest is damaged, the output folder is in use, or a write failed
  2    invalid usage: DIR is not a run folder, or the run is unfinished or a bag
  3    a file does not match the manifest, so nothing was changed
  130  interrupted by Ctrl-C; the same command finishes the change"""

RECORD_EXIT_CODES = """\b
Exit codes:
  0    done; an unfinished run gets a record too, with no outcome
  1    a manifest is damaged, the output folder is in use, or a write failed
  2    invalid usage: DIR is not a run folder, or the run is a bag
  3    a file does not match the manifest, so nothing was changed
  130  interrupted by Ctrl-C; the same command finishes the change"""

SNAPSHOT_EXIT_CODES = """\b
Exit codes:
  0    the snapshot was written
  1    a manifest is damaged, the output folder is in use, or a write failed
  2    invalid usage: DIR is not an output or run folder, a run it needs is
       unfinished, missing or one shard's, or DEST exists or lies among the runs
  3    a file does not match its manifest, so nothing was written
  130  interrupted by Ctrl-C; nothing was written"""

DIR_ARGUMENT = click.argument(
    "folder", metavar="DIR", type=click.Path(path_type=Path, file_okay=False)
)


def _setup_logging() -> None:
    """Send warnings of tm-export's loggers to stderr, as ``tm-export run`` does."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tm-export: %(levelname)s: %(message)s"))
    root = logging.getLogger("tm_export")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


def _run_folder(folder: Path) -> Path:
    """Return ``folder`` itself, or the newest run folder when it is an output folder."""
    if runs_folder(folder).is_dir():
        runs = list_runs(folder)
        if not runs:
            raise RunFolderError(f"{folder}: the output folder has no runs yet")
        return runs[-1]
    if not folder.is_dir():
        raise RunFolderError(
            f"{folder}: folder not found; give an output folder (with runs/) or a run folder "
            "such as OUTPUT/runs/0001"
        )
    return folder


@contextlib.contextmanager
def _locked(run_folder: Path) -> Iterator[None]:
    """Hold the output folder's lock, so no export writes the run meanwhile."""
    if run_folder.parent.name != "runs":
        yield
        return
    with OutputLock(run_folder.parent.parent):
        yield


@click.command(context_settings=CONTEXT_SETTINGS, epilog=PLAN_EXIT_CODES)
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--probe",
    is_flag=True,
    help="Fetch page 1 of each paginated partition to learn its page count, from the "
    "server a run would use.",
)
@click.option(
    "--base-url",
    metavar="URL",
    help="API root to probe, e.g. http://127.0.0.1:8080/api/v2. Overrides "
    "TM_EXPORT_BASE_URL and the recipe's instance.base_url; requires --probe.",
)
@click.option(
    "--max-probes",
    type=click.IntRange(1),
    default=DEFAULT_MAX_PROBES,
    show_default=True,
    help="Partitions probed per stream at most; the rest count one request each.",
)
@click.option(
    "--shard",
    type=ShardParam(),
    metavar="K/N",
    help="Count what 'run --shard K/N' sends: the partitions shard K writes, and those it reads.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    recipe: Path,
    probe: bool,
    base_url: str | None,
    max_probes: int,
    shard: tuple[int, int] | None,
    as_json: bool,
) -> None:
    """Count the partitions and requests of RECIPE without running it.

    Nothing is written. Without --probe nothing is sent either: paginated streams then
    count one request per partition, as a lower bound. --probe sends its requests to the
    server that 'tm-export run' would use: --base-url, else TM_EXPORT_BASE_URL, else the
    recipe's instance.base_url, else the production API.

    \b
    Example:
      tm-export plan recipes/demo.yaml
      tm-export plan recipes/demo.yaml --probe --base-url http://127.0.0.1:8080/api/v2
      tm-export plan recipes/demo.yaml --shard 2/3
    """
    try:
        loaded = load_recipe(recipe)
        if base_url and not probe:
            raise RecipeError("--base-url is used only with --probe; add --probe or remove it")
        # Probe the server that `tm-export run` would use with the same options and environment.
        chosen_url = resolve_base_url(loaded, base_url) if probe else None
        variable = loaded.instance.token_env
        token_set = bool(variable and os.environ.get(variable, "").strip())
        result = plan_recipe(loaded, token_set=token_set, shard=shard)
        # A probe with nothing to probe sends nothing, so it needs no token.
        sends = chosen_url is not None and probe_requests(result, max_probes) > 0
        token = resolve_token(loaded) if sends else None
    except RecipeError as error:
        fail(error, ExitCode.USAGE)

    if chosen_url is not None:
        _setup_logging()
        # A probe of many partitions at a polite rate takes minutes, and prints nothing else.
        click.echo(f"tm-export: {describe_probe(result, chosen_url, max_probes)}", err=True)
        try:
            loop.run(
                lambda: probe_plan(result, base_url=chosen_url, token=token, max_probes=max_probes)
            )
        except TmExportError as error:
            fail(error, error.exit_code)
    note = missing_token_note(loaded)
    if note is not None and chosen_url is None:
        # Without the token, 'run' stops before its first request.
        click.echo(note, err=True)
    if as_json:
        click.echo(json.dumps(plan_json(result), indent=2))
    else:
        click.echo(format_plan(result))


@click.command(context_settings=CONTEXT_SETTINGS, epilog=READ_EXIT_CODES)
@DIR_ARGUMENT
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(folder: Path, as_json: bool) -> None:
    """Show how far the run in DIR has come, from its manifest alone.

    DIR is an output folder (its newest run is shown) or one run folder. Nothing is
    written and no lock is taken, so this works while a run is going on.

    \b
    Example:
      tm-export status exports/demo
    """
    try:
        chosen, history = status_of(folder)
    except TmExportError as error:
        fail(error, error.exit_code)
    if as_json:
        click.echo(json.dumps(status_json(chosen, history), indent=2))
    else:
        click.echo(format_status(chosen, history))


@click.command(context_settings=CONTEXT_SETTINGS, epilog=VERIFY_EXIT_CODES)
@DIR_ARGUMENT
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(folder: Path, as_json: bool) -> None:
    """Check every stream file in DIR against what the manifest proves.

    DIR is an output folder (every run is checked) or one run folder. Each file's SHA-256,
    committed size, line and record counts, and each committed page's line count and
    CRC-32 are checked. The run record (run.json) and the bag's checksums are compared
    too, where present.

    DIR may also be a snapshot ('tm-export snapshot'): its files are then compared with
    the SHA-256 and record counts in its snapshot.json.

    \b
    Example:
      tm-export verify exports/demo
    """
    if (folder / SNAPSHOT_RECORD).is_file() and not runs_folder(folder).is_dir():
        # Imported here, as the snapshot command does, to keep the other commands' start-up short.
        from .snapshot import check_snapshot, format_snapshot_check, snapshot_check_json

        try:
            files, others = check_snapshot(folder)
        except TmExportError as error:
            fail(error, error.exit_code)
        if as_json:
            click.echo(json.dumps(snapshot_check_json(folder, files, others), indent=2))
        else:
            click.echo(format_snapshot_check(folder, files, others))
        sys.exit(0 if all(file.ok for file in files) else int(ExitCode.FAILURES))

    try:
        runs = find_run_folders(folder)
    except TmExportError as error:
        fail(error, error.exit_code)

    checks = []
    unreadable: list[tuple[Path, TmExportError]] = []
    for run_folder in runs:
        try:
            checks.append(check_run(locate_run(run_folder), expect_record=True))
        except TmExportError as error:
            if len(runs) == 1:
                fail(error, error.exit_code)
            # One damaged run does not hide the report of the others.
            unreadable.append((run_folder, error))

    if as_json:
        report = checks_json(checks)
        report["unreadable"] = [
            {"folder": str(run), "error": str(problem)} for run, problem in unreadable
        ]
        report["ok"] = report["ok"] and not unreadable
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_checks(checks, len(unreadable)))
    for _, problem in unreadable:
        click.echo(f"tm-export: error: {problem}", err=True)
    if unreadable:
        sys.exit(max(int(problem.exit_code) for _, problem in unreadable))
    sys.exit(0 if all(check.ok for check in checks) else int(ExitCode.FAILURES))


@click.command(context_settings=CONTEXT_SETTINGS, epilog=RECORD_EXIT_CODES)
@DIR_ARGUMENT
def record(folder: Path) -> None:
    """Verify a run and write its run record, run.json, beside its manifest.

    DIR is a run folder, or an output folder for its newest run.

    \b
    Example:
      tm-export record exports/demo
    """
    _setup_logging()
    try:
        run_folder = _run_folder(folder)
        with _locked(run_folder):
            written = write_run_record(run_folder)
    except TmExportError as error:
        fail(error, error.exit_code)
    click.echo(f"wrote {written}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=CHANGE_EXIT_CODES)
@DIR_ARGUMENT
@click.option(
    "--sort-memory",
    type=click.IntRange(1),
    default=CHUNK_BYTES >> 20,
    show_default=True,
    metavar="MIB",
    help="Mebibytes of lines sorted in memory at once; larger files are sorted in chunks.",
)
def canonical(folder: Path, sort_memory: int) -> None:
    """Rewrite each stream file of a finished run in the canonical order.

    Lines are sorted by partition, record key and bytes, so two exports of the same data
    give files with the same SHA-256. The manifest gets one "canonical" entry per file,
    and run.json is rewritten when the run has one. DIR is a run folder, or an output
    folder for its newest run.

    \b
    Example:
      tm-export canonical exports/demo
    """
    _setup_logging()
    try:
        run_folder = _run_folder(folder)
        with _locked(run_folder):
            paths = locate_run(run_folder)
            record_before = paths.record.read_bytes() if paths.record.exists() else None
            results = make_canonical(run_folder, chunk_bytes=sort_memory << 20)
            record_after = paths.record.read_bytes() if paths.record.exists() else None
    except TmExportError as error:
        fail(error, error.exit_code)
    except OSError as error:
        unreadable = StorageError(f"{paths.record}: cannot read the run record: {error.strerror}")
        fail(unreadable, unreadable.exit_code)

    click.echo(f"{paths.folder}:")
    width = max((len(result.action) for result in results), default=0)
    for result in results:
        click.echo(f"  {result.action:<{width}}  {result.file}: sha256 {result.sha256}")
    if record_after is not None:
        click.echo(f"{'unchanged' if record_after == record_before else 'updated'} {paths.record}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=CHANGE_EXIT_CODES)
@DIR_ARGUMENT
def bag(folder: Path) -> None:
    """Make a finished run folder a BagIt bag, in place, after writing its run record.

    The run folder's contents move into the bag's payload folder data/, which stays a
    complete run folder; tm-export's commands read it there. DIR is a run folder, or an
    output folder for its newest run. See docs/archive.md for the layout.

    \b
    Example:
      tm-export bag exports/demo
    """
    # Imported here: bagit is needed by this command only, and every command loads this module.
    from .bag import make_run_bag

    _setup_logging()
    try:
        run_folder = _run_folder(folder)
        with _locked(run_folder):
            bagged = make_run_bag(run_folder)
    except TmExportError as error:
        fail(error, error.exit_code)
    click.echo(f"{bagged.folder}: a BagIt bag; the run is now in {bagged.root}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=SNAPSHOT_EXIT_CODES)
@DIR_ARGUMENT
@click.argument("destination", metavar="DEST", type=click.Path(path_type=Path, file_okay=False))
def snapshot(folder: Path, destination: Path) -> None:
    """Combine a full run and the incremental runs after it into DEST, one file per stream.

    DEST then contains what a full run would have written at the time of the newest run:
    each project's newest search record, every task history record once, and each other
    partition from the newest run that finished it. Projects found deleted are left out.
    DEST/snapshot.json names the runs, the rule of each stream and each file's SHA-256.

    DIR is an output folder (its newest run ends the chain) or one run folder. The runs
    are verified first and are not changed; DEST must not exist yet.

    \b
    Example:
      tm-export snapshot exports/nightly exports/nightly-2026-12-05
    """
    # Imported here, as the module is needed by this command only.
    from .snapshot import make_snapshot

    _setup_logging()
    try:
        run_folder = _run_folder(folder)
        with _locked(run_folder):
            written = make_snapshot(run_folder, destination)
    except TmExportError as error:
        fail(error, error.exit_code)
    # A merged run builds on runs in the shards' folders, which a name alone would not tell apart.
    home = written.runs[-1].parent
    runs = ", ".join(path.name if path.parent == home else str(path) for path in written.runs)
    click.echo(f"{written.folder}: a snapshot of runs {runs}")
    width = max(len(name) for name in written.records)
    for name, count in written.records.items():
        click.echo(f"  {name:<{width}}  {counted(count, 'record')}")
    if written.deleted:
        click.echo(f"  left out: deleted projects {', '.join(map(str, written.deleted))}")
    if written.failed:
        counts = ", ".join(f"{count} of {name}" for name, count in written.failed.items())
        click.echo(
            f"tm-export: warning: partitions failed in the newest run that fetched them "
            f"({counts}): their records are an earlier run's, or incomplete; snapshot.json "
            "lists them, and the next incremental run fetches them again",
            err=True,
        )
    if written.problems:
        counts = ", ".join(f"{count} of {name}" for name, count in written.problems.items())
        click.echo(
            f"tm-export: warning: the runs recorded problems ({counts}), so these streams may "
            "lack records; snapshot.json lists each problem with its run, and 'tm-export "
            "status RUN' explains it",
            err=True,
        )


def register(main: click.Group) -> None:
    """Add the archive commands to the ``tm-export`` command group."""
    for command in (plan, status, verify, record, canonical, bag, snapshot):
        main.add_command(command)
