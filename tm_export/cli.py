"""The command line: a thin click layer over the recipe loader and the engine."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import click

from . import __version__, interrupts, loop
from .catalog import CATALOG
from .cli_options import CONTEXT_SETTINGS, RateParam, ShardParam, fail, missing_token_note
from .codec import CODECS, Codec
from .engine import RunOptions, RunResult, export, resolve_base_url
from .errors import ExitCode, RecipeError, TmExportError, resume_hint
from .logs import asks_json_logs, json_line, setup_logging
from .progress import Progress
from .recipe import load_recipe, resolve_token
from .recipe_check import output_problem
from .redact import Redactor
from .reporting import LiveReporter, PlainReporter
from .schema import RECIPE_SCHEMA
from .summary import format_summary, summary_json
from .words import counted, joined

EXIT_CODES = """\b
Exit codes:
  0    complete (partitions skipped for 403/404 are allowed and counted)
  1    stopped by a fatal error; run again to resume. The causes:
       token rejected, disk full, a wait longer than allowed, server
       unreachable, a base URL that is not an API root (no
       /api/v2) or that redirects, a parent page that a shard could
       not read, damaged manifest, output folder in use or not
       writable, a command that does not fit the run in the folder,
       standard output not writable (after a run that was otherwise
       complete)
  2    invalid recipe or usage, or a token variable unset where the
       recipe, the run's earlier sessions or the runs an incremental
       run builds on need a token; nothing was sent or written
  3    finished, but some partitions failed or an integrity check
       failed (or, with --strict, some were skipped)
  130  interrupted by SIGINT, SIGTERM or SIGHUP; run again to resume"""

CHECK_EXIT_CODES = """\b
Exit codes:
  0    the recipe is valid
  1    standard output could not be written (a full disk, a closed pipe)
  2    the recipe is invalid; the message names file, line and key"""

MERGE_EXIT_CODES = """\b
Exit codes:
  0    merged; a warning names partitions that failed in the shards, which
       'run --retry-failed' on OUTPUT fetches again. Also when the last
       run in OUTPUT is a merge of these shards already: nothing is written
  1    the output folder is in use, or a write failed
  2    a shard is missing, repeated, unfinished, of another recipe or kind,
       made canonical, overlaps OUTPUT or another shard, or the last run
       in OUTPUT is unfinished or of another recipe; nothing was written
  3    a shard's files do not match its manifest, run record or bag;
       nothing was written
  130  interrupted by Ctrl-C; nothing was written"""


#: Commands that change files. Each one leaves what it changes whole at every point, so an
#: interrupted one is finished by running it again.
CHANGING_COMMANDS = frozenset({"bag", "canonical", "merge", "record"})


class CommandGroup(click.Group):
    """The ``tm-export`` group, which gives every command the exit code of an interruption."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1, the code of a fatal error. The run
            # command handles a Ctrl-C itself, so this covers every other command.
            if ctx.invoked_subcommand in CHANGING_COMMANDS:
                fail("interrupted; run the same command again to finish", ExitCode.INTERRUPTED)
            fail("interrupted", ExitCode.INTERRUPTED)


@click.group(
    cls=CommandGroup,
    context_settings=CONTEXT_SETTINGS,
    epilog=EXIT_CODES.replace(
        "Exit codes:", "Exit codes of run (each command's --help lists its own):"
    ),
)
@click.version_option(__version__, prog_name="tm-export")
def main() -> None:
    """Export HOT Tasking Manager API data to JSON Lines, resumably and exactly once.

    A YAML recipe names the streams to pull; see docs/recipes.md.
    """


class RunCommand(click.Command):
    """The ``run`` command, whose usage errors are JSON lines too under --log-format json."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        arguments = list(args)  # the parser consumes ``args``
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            if not asks_json_logs(arguments):
                raise
            fail(error.format_message(), ExitCode.USAGE, json_logs=True)


@main.command(cls=RunCommand, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES)
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--base-url",
    metavar="URL",
    help="API root to export from, e.g. http://127.0.0.1:8080/api/v2. Overrides "
    "TM_EXPORT_BASE_URL and the recipe's instance.base_url.",
)
@click.option(
    "--output",
    "-o",
    # A string, not a Path: Path("") is the current folder, and an empty value is an error.
    metavar="DIRECTORY",
    help="Output folder. Overrides the recipe's output; needed when the recipe has none.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    help="Requests in flight at once. Overrides instance.concurrency.",
)
@click.option(
    "--rate-limit",
    type=RateParam(),
    metavar="PER_SECOND",
    help="Request budget in requests per second, at least 0.01, such as 10 or 2.5/s. "
    "Overrides instance.rate_limit.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Fetch again the partitions that failed in earlier sessions.",
)
@click.option(
    "--retry-skipped",
    is_flag=True,
    help="Fetch again the partitions skipped for 403/404 (e.g. after adding a token).",
)
@click.option(
    "--start-over",
    is_flag=True,
    help="Begin a new run in a new folder beside the existing runs; nothing is deleted.",
)
@click.option(
    "--shard",
    type=ShardParam(),
    metavar="K/N",
    help="Write only shard K of N: a stable 1/N of each stream's partitions, for a CI job matrix; "
    "merge the N output folders with 'tm-export merge'.",
)
@click.option(
    "--incremental",
    is_flag=True,
    help="Once the last run has finished, start a new run beside it that fetches what changed "
    "since that run started (since an earlier one when its project search failed), and "
    "what failed in it (see 'Incremental runs' in docs/design.md).",
)
@click.option(
    "--compression",
    type=click.Choice(CODECS),
    help="Compress a new run's stream files (STREAM.jsonl.gz or .zst), one gzip member or zstd "
    "frame per page [default: none; a resumed run keeps its own, and an incremental run takes "
    "the last run's].",
)
@click.option(
    "--canonical",
    is_flag=True,
    help="Once the run finishes, rewrite its files in canonical order, so identical data gives "
    "identical SHA-256 (see docs/archive.md).",
)
@click.option(
    "--bag",
    is_flag=True,
    help="Once the run finishes, make its folder a BagIt bag; a bag is sealed, so newer data "
    "needs --incremental or --start-over.",
)
@click.option("--strict", is_flag=True, help="Exit 3 when any partition was skipped for 403/404.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the run summary as JSON on stdout (keys in docs/ci.md); an error before the "
    "run opens its folder prints none.",
)
@click.option("-v", "--verbose", count=True, help="Log every request (debug level) on stderr.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Log only warnings and errors, then the summary; no progress display.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines and errors as text, or as one JSON object per line (fields: time, level, "
    "logger, message; event on progress, summary and error lines).",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Seconds between progress updates [default: 1 on a terminal, 10 otherwise].",
)
def run(
    recipe: Path,
    base_url: str | None,
    output: str | None,
    concurrency: int | None,
    rate_limit: float | None,
    retry_failed: bool,
    retry_skipped: bool,
    start_over: bool,
    shard: tuple[int, int] | None,
    incremental: bool,
    compression: Codec | None,
    canonical: bool,
    bag: bool,
    strict: bool,
    as_json: bool,
    verbose: int,
    quiet: bool,
    log_format: str,
    progress_interval: float | None,
) -> None:
    """Export the streams of RECIPE, or resume the unfinished run in its output folder.

    \b
    Example:
      tm-export run recipes/demo.yaml --base-url http://127.0.0.1:8080/api/v2

    Records go to OUTPUT/runs/NNNN/data/STREAM.jsonl; progress and the summary go to stderr.
    The API token is read from the environment variable that the recipe's instance.token_env
    names; it never appears in any output or file.
    """
    # A signal that comes before the engine watches for one is noted, and the engine stops
    # on it once it watches (see tm_export/interrupts.py). Click ends the block with the run.
    click.get_current_context().with_resource(interrupts.deferred())
    # With --log-format json, the errors found before the run starts are JSON lines too.
    json_logs = log_format == "json"
    if incremental and start_over:
        fail(
            "--incremental and --start-over exclude each other: --start-over begins a full "
            "run, --incremental one that fetches what changed since the last; give one",
            ExitCode.USAGE,
            json_logs=json_logs,
        )
    if quiet and verbose:
        fail(
            "--quiet and --verbose exclude each other: --quiet logs only warnings and errors, "
            "--verbose every request; give one",
            ExitCode.USAGE,
            json_logs=json_logs,
        )
    if shard is not None and canonical:
        fail(
            "--shard and --canonical exclude each other: 'tm-export merge' refuses shards whose "
            "files were made canonical; run the shards without --canonical, merge them, then "
            "run 'tm-export canonical' on the merged run",
            ExitCode.USAGE,
            json_logs=json_logs,
        )
    if start_over and (retry_failed or retry_skipped):
        option = "--retry-failed" if retry_failed else "--retry-skipped"
        fail(
            f"{option} and --start-over exclude each other: {option} fetches again in the last "
            "run what it could not fetch, --start-over begins a new run that fetches everything; "
            "give one",
            ExitCode.USAGE,
            json_logs=json_logs,
        )
    try:
        loaded = load_recipe(recipe)
        token = resolve_token(loaded)
        chosen_url = resolve_base_url(loaded, base_url)
    except RecipeError as error:
        fail(error, ExitCode.USAGE, json_logs=json_logs)
    if output is not None and (problem := output_problem(output)) is not None:
        fail(f"--output: {problem}", ExitCode.USAGE, json_logs=json_logs)
    if output is None and loaded.output is None:
        fail(
            f"{recipe}: the recipe names no output folder; add 'output: FOLDER' to it, "
            "or give --output FOLDER",
            ExitCode.USAGE,
            json_logs=json_logs,
        )
    folder = output if output is not None else loaded.output
    assert folder is not None

    redactor = Redactor([token] if token else [])
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    elif verbose:
        level = logging.DEBUG
    setup_logging(level=level, json_format=json_logs, redactor=redactor)
    live = not quiet and not json_logs and sys.stderr.isatty()
    reporter: Callable[[Progress], None] | None = None
    if not quiet:
        reporter = LiveReporter(sys.stderr) if live else PlainReporter()
    options = RunOptions(
        base_url=chosen_url,
        output=Path(folder),
        token=token,
        concurrency=concurrency,
        rate_limit=rate_limit,
        retry_failed=retry_failed,
        retry_skipped=retry_skipped,
        start_over=start_over,
        shard=shard,
        incremental=incremental,
        compression=compression,
        canonical=canonical,
        bag=bag,
        on_progress=reporter,
        progress_interval=progress_interval or (1.0 if live else 10.0),
    )

    if (name := interrupts.pending()) is not None:
        fail(
            f"received {name} before the run started; nothing was sent or written",
            ExitCode.INTERRUPTED,
            json_logs=json_logs,
        )
    try:
        if isinstance(reporter, LiveReporter):
            with reporter:
                result: RunResult = loop.run(export, loaded, options)
        else:
            result = loop.run(export, loaded, options)
        # Closing the loop put back Python's own handling; a signal during the summary is
        # noted and left, since the run has ended.
        interrupts.resume_deferring()
    except TmExportError as error:
        fail(redactor.redact(str(error)), error.exit_code, json_logs=json_logs)
    except KeyboardInterrupt:
        # A Ctrl-C in the moment the event loop closes, before the run command notes
        # signals again. Stopping at any point is as safe as a kill.
        fail(
            f"interrupted; {resume_hint(started_over=start_over)} to resume",
            ExitCode.INTERRUPTED,
            json_logs=json_logs,
        )

    code = result.exit_code(strict=strict)
    summary = summary_json(result, code)
    # Standard output is written first, so that the summary on stderr can give the exit code
    # of a failed write (a closed pipe, a full disk). It turns only a complete run's 0 into 1:
    # an interrupted or failed run keeps its own code.
    unwritten = _write_stdout(redactor.redact(json.dumps(summary, indent=2))) if as_json else None
    exit_code = ExitCode.FATAL if unwritten and code == ExitCode.COMPLETE else code
    shown_exit = exit_code if unwritten else None
    if unwritten:
        summary = summary_json(result, code, shown_exit)
    if json_logs:
        # Machine-read logs stay one JSON object per line, the summary included; it is
        # printed even with --quiet, as the text summary is.
        line = json_line(
            time.time(),
            "info",
            "tm_export.summary",
            f"summary: {summary['outcome']}",
            event="summary",
            summary=summary,
        )
        click.echo(redactor.redact(line), err=True)
        for failure in (result.fatal, unwritten):
            if failure is not None:
                logging.getLogger("tm_export").error(
                    "%s", failure, extra={"event": "error", "exit_code": int(exit_code)}
                )
    else:
        click.echo(redactor.redact(format_summary(loaded, result, code, shown_exit)), err=True)
        for failure in (result.fatal, unwritten):
            if failure is not None:
                click.echo(f"tm-export: error: {redactor.redact(str(failure))}", err=True)
    sys.exit(int(exit_code))


def _write_stdout(text: str) -> str | None:
    """Write ``text`` and a newline to standard output; return why that failed, or None.

    After a failure standard output is replaced by the null device, so that the flush at
    exit does not report the same failure again.
    """
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as error:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - it lasts until the process ends
        reason = getattr(error, "strerror", None) or str(error)
        return f"cannot write the summary to standard output: {reason}"
    return None


@main.command(context_settings=CONTEXT_SETTINGS, epilog=CHECK_EXIT_CODES)
@click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))
def validate(recipe: Path) -> None:
    """Check RECIPE and list the streams it defines; sends nothing and writes nothing.

    \b
    Example:
      tm-export validate recipes/demo.yaml
    """
    try:
        loaded = load_recipe(recipe)
        note = missing_token_note(loaded)
        if note is not None:
            # The recipe is valid; only this shell lacks the token, which 'run' will need.
            click.echo(note, err=True)
        else:
            resolve_token(loaded)
    except RecipeError as error:
        fail(error, ExitCode.USAGE)
    if loaded.output is None:
        click.echo("note: the recipe names no output folder; 'run' needs --output FOLDER", err=True)

    count = len(loaded.streams)
    click.echo(f"{recipe}: valid recipe with {counted(count, 'stream')}")
    for name, spec in loaded.streams.items():
        sources = spec.sources
        source = f" (values from {joined(sources)})" if sources else ""
        click.echo(f"  {name}: {spec.endpoint.name}{source}")


ENDPOINTS_EXIT_CODES = """\b
Exit codes:
  0    the catalog was printed
  1    standard output could not be written (a full disk, or a reader such as head
       that closed the pipe early)
  2    invalid usage, such as an unknown option"""


@main.command(context_settings=CONTEXT_SETTINGS, epilog=ENDPOINTS_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON.")
def endpoints(as_json: bool) -> None:
    """List the endpoint catalog: the names a recipe's 'endpoint' key accepts."""
    if as_json:
        rows = [
            {
                "name": e.name,
                "path": e.path,
                "records": e.records,
                "key": e.key,
                "auth": e.auth,
                "paginated": e.paginated,
                "params": sorted(e.accepted_params),
                "required_params": sorted(e.required_params),
                "defaults": dict(e.defaults),
                "summary": e.summary,
            }
            for e in CATALOG.values()
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(name) for name in CATALOG)
    for endpoint in CATALOG.values():
        flags = [
            endpoint.auth + " auth" if endpoint.auth != "none" else "",
            "paged" if endpoint.paginated else "",
        ]
        extra = ", ".join(flag for flag in flags if flag)
        click.echo(f"{endpoint.name:<{width}}  {endpoint.path}" + (f"  [{extra}]" if extra else ""))
        click.echo(f"{'':<{width}}  {endpoint.summary}")


SCHEMA_EXIT_CODES = """\b
Exit codes:
  0    the schema was printed
  1    standard output could not be written (a full disk, a closed pipe)
  2    invalid usage, such as an unknown option"""

MOCK_EXIT_CODES = """\b
Exit codes:
  0    stopped by Ctrl-C or SIGTERM
  1    the port is taken, or the ready file cannot be written
  2    invalid usage, such as a host that is not a loopback address"""


@main.command("mock-server", context_settings=CONTEXT_SETTINGS, epilog=MOCK_EXIT_CODES)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on."
)
@click.option(
    "--port",
    default=0,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port; 0 picks a free one.",
)
@click.option(
    "--projects",
    default=300,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Number of project ids in the seeded dataset.",
)
@click.option(
    "--seed", default=1, show_default=True, type=int, help="Seed of the dataset generator."
)
@click.option(
    "--latency-ms",
    default=0,
    show_default=True,
    type=click.IntRange(0, 60_000),
    help="Delay added to every response, in milliseconds.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the URLs and tokens as JSON to this file once listening.",
)
def mock_server(
    host: str, port: int, projects: int, seed: int, latency_ms: int, ready_file: Path | None
) -> None:
    """Serve a Tasking Manager look-alike with seeded data on a loopback address.

    It prints its API URL and three tokens (admin, a mapper on the private
    projects' allow-list, another mapper), and runs until Ctrl-C. It serves the
    endpoints that 'tm-export endpoints' lists and three more (the featured projects,
    the token user's own and their locked tasks); any other path gets the server's 404
    for a path it does not have.

    To try an incremental run, change the data between two runs with a POST to
    /__mock__/projects/ID/touch (an edit) or /__mock__/projects/ID/activities (new task
    history), or a DELETE of /__mock__/projects/ID, below the base URL. POST a JSON rule
    to /__mock__/faults to make requests fail, read /__mock__/requests for the requests
    served, and /__mock__/counts for the records per endpoint (?role=admin for the
    admin token's view; docs/ci.md).

    \b
    Example:
      curl -X POST http://127.0.0.1:8080/__mock__/projects/3/activities
    """
    from .mock import ServeError, serve

    try:
        serve(
            host=host,
            port=port,
            projects=projects,
            seed=seed,
            latency_ms=latency_ms,
            ready_file=ready_file,
        )
    except ServeError as error:
        fail(str(error), ExitCode.FATAL)
    except ValueError as error:
        fail(str(error), ExitCode.USAGE)


@main.command(context_settings=CONTEXT_SETTINGS, epilog=SCHEMA_EXIT_CODES)
def schema() -> None:
    """Print the JSON Schema of the recipe format, for editors that check YAML as you type.

    The schema checks the recipe's shape only. 'tm-export validate' checks the rest too:
    endpoint names, parameters, dates and the streams that take values from others.

    \b
    Example, with yaml-language-server (VS Code's YAML extension and others):
      tm-export schema > tm-export.schema.json
      # then put this line at the top of a recipe:
      # yaml-language-server: $schema=./tm-export.schema.json
    """
    click.echo(json.dumps(RECIPE_SCHEMA, indent=2))


@main.command("merge", context_settings=CONTEXT_SETTINGS, epilog=MERGE_EXIT_CODES)
@click.argument("output", type=click.Path(path_type=Path, file_okay=False))
@click.argument(
    "shards", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False)
)
def merge_command(output: Path, shards: tuple[Path, ...]) -> None:
    """Merge the output folders of 'run --shard K/N' jobs into one run under OUTPUT.

    Every shard 1..N must be given once, finished, and made by the same recipe; shards
    that overlap or whose files were made canonical are refused, and a shard made a bag
    is read from its payload. Nothing in the shard folders changes.

    \b
    Example:
      tm-export merge exports/all shard-1 shard-2 shard-3
    """
    from .merge import describe, merge

    setup_logging(level=logging.WARNING, json_format=False, redactor=Redactor([]))
    try:
        result = merge(output, list(shards))
    except RecipeError as error:
        fail(error, ExitCode.USAGE)
    except TmExportError as error:
        fail(error, error.exit_code)
    click.echo(describe(result))


from .cli_archive import register  # noqa: E402

register(main)


def console_main() -> NoReturn:
    """Run the command line, then end the process without the interpreter's teardown.

    By the time a command returns, it has closed every file it wrote, and fsynced those of
    a run. Freeing the several hundred imported modules one by one would still take about
    50 ms (measured on 2 cores), a visible share of a short command. So the logs and the
    standard streams are flushed, and the process ends with the exit code click chose.
    """
    # Python's collector looks for reference cycles among young objects every 700 net
    # allocations of container objects. An export allocates a few dicts and lists per
    # record, and reference counting frees nearly all of them, so most of those passes find
    # nothing: they took about 0.1 of W1's 3.5 CPU seconds. With passes every 50,000 (the
    # older generations keep their default), W1 took 0.09 CPU seconds less, and W3, W4 and
    # W5 peaked at the same memory (docs/benchmarks.md).
    gc.set_threshold(50_000)
    for stream in (sys.stdout, sys.stderr):
        # A path or a server's text that the terminal's encoding lacks is shown escaped,
        # rather than stopping a report halfway with a UnicodeEncodeError.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.stderr = cast(TextIO, _LossyStream(sys.stderr))
    reported = False
    try:
        main()
        code: int = 0
    except SystemExit as stop:
        code = _exit_status(stop.code)
    except OSError as error:
        # The commands turn failures of their own files into a TmExportError, so what
        # reaches here is a failed write to the standard streams, such as a full disk.
        _report_output_error(error)
        reported = True
        code = int(ExitCode.FATAL)

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError) as error:
            # A closed pipe, a full disk or a closed stream. Data on stdout is incomplete:
            # its failure is reported once (the text that failed above is still buffered).
            # Only logs are lost on stderr, so the exit code stays the command's.
            if stream is sys.stdout:
                if not reported:
                    _report_output_error(error)
                code = code or int(ExitCode.FATAL)
    os._exit(code)


class _LossyStream:
    """Standard error whose failed writes are dropped.

    Only logs, progress and the summary go there. When they cannot be written (a full
    disk), nothing can report it, and the command keeps its own exit code: a run that
    exported everything still exits 0. Its ``buffer`` drops them too, since click writes
    there through a wrapper of its own when the stream's encoding is ASCII.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def buffer(self) -> _LossyStream:
        return _LossyStream(self._stream.buffer)

    def write(self, data: Any) -> int:
        try:
            written: int = self._stream.write(data)
        except OSError:
            return len(data)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _report_output_error(error: OSError | ValueError) -> None:
    reason = getattr(error, "strerror", None) or str(error)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"tm-export: error: cannot write the output: {reason}\n")
        sys.stderr.flush()


def _exit_status(code: object) -> int:
    """Return the status that ``sys.exit(code)`` would give the process."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1
