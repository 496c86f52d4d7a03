"""The export engine: one run of a recipe, from the output lock to the last commit.

The engine never imports click; the command line is a thin layer over ``export()``.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from . import __version__, interrupts
from .clock import Clock, RealClock
from .codec import Codec, describe_codec
from .crashpoints import crash_point
from .errors import (
    ExitCode,
    FatalError,
    HTTPStatusError,
    ManifestError,
    RecipeError,
    RequestError,
    StorageError,
    TmExportError,
    TokenRejectedError,
    TransportError,
    resume_hint,
    retry_command,
    unreachable,
    wrong_base_url,
)
from .fetcher import Fetcher
from .http import SPOOL_OVER, HttpSession
from .incremental import Baseline, read_baseline
from .journal import Journal, scan_journal
from .layout import (
    DATA_FOLDER,
    MANIFEST_NAME,
    SPOOL_FOLDER,
    STARTING_SUFFIX,
    OutputLock,
    build_run_folder,
    check_output,
    is_bag,
    list_runs,
    next_run_folder,
    remove_unfinished_runs,
    run_codec,
    stream_path,
)
from .manifest import (
    Committer,
    ManifestState,
    StreamState,
    latest_session,
    load_state,
    sent_token,
)
from .params import FromStream, partition_label
from .progress import Progress
from .recipe import BASE_URL_ENV, DEFAULT_BASE_URL, Recipe
from .recipe_check import base_url_problem
from .redact import Redactor
from .runrecord import check_manifest_against_record, write_run_record
from .sink import StreamFile
from .stream import StreamRunner
from .timestamps import utc_now_text
from .tokencheck import TokenCheck
from .tokenuser import token_user
from .verify import (
    RECORD_NAME,
    bag_complete,
    bagging_entries,
    interrupted_bag_folder,
)
from .walk import StreamStats
from .words import counted

logger = logging.getLogger("tm_export.engine")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to run a recipe: where, against which server, and what to retry."""

    base_url: str
    output: Path
    token: str | None = None
    concurrency: int | None = None
    rate_limit: float | None = None
    retry_failed: bool = False
    retry_skipped: bool = False
    start_over: bool = False
    shard: tuple[int, int] | None = None
    """(K, N): write only the K-th of N stable shares of each stream's partitions."""
    incremental: bool = False
    """Start a new run beside a finished one that fetches only what changed since it."""
    spool_over: int = SPOOL_OVER
    """Bytes of a response held in memory; a larger one is spooled to disk and streamed."""
    compression: Codec | None = None
    """Codec of a new run's stream files; None keeps a resumed run's own (``none`` for new)."""
    canonical: bool = False
    """Once the run finishes, rewrite its files in canonical order (identical data, identical bytes)."""
    bag: bool = False
    """Once the run finishes, make its folder a BagIt bag (which seals it)."""
    handle_signals: bool = True
    on_progress: Callable[[Progress], None] | None = None
    """Called with a snapshot every ``progress_interval`` seconds while streams run."""
    progress_interval: float = 1.0
    clock: Clock = field(default_factory=RealClock)
    rng: random.Random | None = None


@dataclass(slots=True)
class RunResult:
    """The outcome of one session of a run."""

    run_folder: Path
    streams: dict[str, StreamStats]
    authenticated: bool | None = None
    """Whether the server accepted the token. None when a token was given but the run
    stopped before the server could check it."""
    tm_release: str | None = None
    requests: int = 0
    retries: int = 0
    resumed: bool = False
    finished_before: bool = False
    """True when the run had already finished and this session had nothing to retry."""
    fatal: FatalError | None = None
    interrupted: bool = False
    deleted: list[int] = field(default_factory=list)
    """Project ids an incremental run found deleted since the earlier runs."""
    started_over: bool = False
    """True when the command gave --start-over, which the command that resumes must not."""
    incremental: bool = False
    """True when the command had --incremental, which with --retry-failed begins a new run."""

    @property
    def failed_partitions(self) -> int:
        return sum(stats.partitions["failed"] for stats in self.streams.values())

    @property
    def skipped_partitions(self) -> int:
        return sum(stats.partitions["skipped"] for stats in self.streams.values())

    @property
    def problems(self) -> int:
        return sum(len(stats.problems) for stats in self.streams.values())

    def exit_code(self, *, strict: bool = False) -> ExitCode:
        """Map the outcome to the documented exit code."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.fatal is not None:
            return ExitCode.FATAL
        if self.failed_partitions or self.problems or (strict and self.skipped_partitions):
            return ExitCode.FAILURES
        return ExitCode.COMPLETE


def resolve_base_url(
    recipe: Recipe, override: str | None, environ: dict[str, str] | None = None
) -> str:
    """Pick the base URL: the command line, then TM_EXPORT_BASE_URL, the recipe, the default.

    Raises:
        RecipeError: the URL from the command line or the environment is not an API root
            (the recipe's own was checked when it was loaded).
    """
    environ = dict(os.environ) if environ is None else environ
    for source, url in (("--base-url", override), (BASE_URL_ENV, environ.get(BASE_URL_ENV))):
        # An empty value is an error, not "unset": in CI it is usually a variable that was
        # never filled in, and falling back would export from the production server.
        if url is not None:
            problem = base_url_problem(url)
            if problem is not None and source == BASE_URL_ENV and not url.strip():
                problem += "; or unset it to use the recipe's base URL"
            if problem is not None:
                raise RecipeError(f"{source}: {problem}")
            return url.rstrip("/")
    return (recipe.instance.base_url or DEFAULT_BASE_URL).rstrip("/")


async def export(recipe: Recipe, options: RunOptions) -> RunResult:
    """Run (or resume) the export of ``recipe`` and return its outcome.

    Fatal errors are returned in ``RunResult.fatal`` after committed work is made durable;
    errors found before anything was written (a locked folder, a foreign manifest) raise.

    Raises:
        OutputLockedError: another process writes the output folder.
        ManifestError: the manifest is damaged or belongs to another recipe.
        StorageError: the output folder cannot be created.
        RecipeError: the output folder is, or lies inside, a run or a snapshot.
    """
    check_output(options.output)
    with OutputLock(options.output):
        _put_back_interrupted_bag(options.output)
        session = _Session(recipe, options)
        result = await session.run()
        # A bag contains its own description, and nothing more is written to it.
        if result.fatal is None and not result.interrupted and not is_bag(result.run_folder):
            await _describe_run(recipe, options, result)
        return result


def _put_back_interrupted_bag(output: Path) -> None:
    """Put back the last run folder when making it a bag was interrupted.

    The command then finds the finished run as it was before the bag step, and with
    --bag makes the bag again, as running the same command does for any step at the end.

    Raises:
        StorageError: a file cannot be moved back.
        RunDamagedError: the half-made bag's files changed since their checksums were written.
    """
    runs = list_runs(output)
    if not runs:
        return
    folder = runs[-1]
    marked = bagging_entries(folder) is not None
    moving = interrupted_bag_folder(folder) is not None
    tagging = (
        not (folder / MANIFEST_NAME).exists()
        and (folder / DATA_FOLDER / MANIFEST_NAME).is_file()
        and not bag_complete(folder)
    )
    if marked or moving or tagging:
        # Imported here, as in _finish_archive: bagit is slow to import.
        from .bag import restore_interrupted_bag

        restore_interrupted_bag(folder)


class _ArchiveSteps:
    """The steps that describe a finished run, and a stop that a signal requests between two."""

    def __init__(self) -> None:
        # The steps run in a worker thread and the signal arrives in the event loop's.
        self._lock = threading.Lock()
        self._stopped = False
        self.current: str | None = None

    def begin(self, step: str) -> bool:
        """Mark ``step`` as in progress; return False when a stop was requested before it."""
        with self._lock:
            if self._stopped:
                return False
            self.current = step
            return True

    def end(self) -> None:
        with self._lock:
            self.current = None

    def stop(self) -> str | None:
        """Request a stop before the next step; return the step in progress, if any."""
        with self._lock:
            self._stopped = True
            return self.current


async def _describe_run(recipe: Recipe, options: RunOptions, result: RunResult) -> None:
    """Run ``_finish_archive`` in a worker thread, stopping between two steps on a signal.

    A step stopped halfway would leave work that only another command finishes (an
    interrupted bag is put back by 'tm-export bag'), so the step in progress completes.
    The steps after it are left to the next run of the same command, which finds the run
    finished and does them without sending a request.
    """
    steps = _ArchiveSteps()

    def on_signal(name: str) -> None:
        step = steps.stop()
        if step is None:
            logger.warning("received %s: stopping; committed pages are kept", name)
        else:
            logger.warning(
                "received %s: stopping once the %s in progress is done; committed pages are kept",
                name,
                step,
            )

    with _watch_signals(options, on_signal):
        await anyio.to_thread.run_sync(_finish_archive, recipe, options, result, steps)


def _watch_signals(
    options: RunOptions, on_signal: Callable[[str], None]
) -> AbstractContextManager[None]:
    """Return the watch of the stop signals for a block, or no watch without
    ``handle_signals`` (the engine used in-process, as the tests do)."""
    return interrupts.watch(on_signal) if options.handle_signals else nullcontext()


def _create_run_folder(folder: Path, header: dict[str, Any]) -> Journal:
    """Create the run folder ``folder`` with its data folder and a manifest of ``header``,
    whole or not at all (see ``build_run_folder``).

    ``folder`` exists only for a run that recorded nothing but its header: that run is
    started again in place, and its new header replaces the manifest atomically.
    """
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        return Journal.create(manifest, header)

    def write_manifest(building: Path) -> None:
        Journal.create(building / MANIFEST_NAME, header).close()
        crash_point("run-folder-built")

    build_run_folder(folder, STARTING_SUFFIX, write_manifest)
    return Journal.open(manifest, valid_bytes=manifest.stat().st_size)


def _count_committed(run_folder: Path, result: RunResult) -> None:
    """Count each stream as the manifest on disk proves it, for the summary of a session that
    a failed write stopped. The pages and partitions it could not commit are gone, since
    the stream files were cut back to the committed ends."""
    try:
        state, _ = load_state(run_folder / MANIFEST_NAME, keep_done_pages=False)
    except (ManifestError, OSError) as error:
        logger.warning("cannot read %s back to count what it proves: %s", run_folder, error)
        return
    for name in result.streams:
        result.streams[name] = StreamStats.of(state.streams.get(name, StreamState()))


def _warn_not_archived(options: RunOptions, result: RunResult) -> None:
    """Warn that --canonical and --bag were left out for failed partitions, with the commands
    that do them later. The steps are options of this command only, so the advice repeats them."""
    steps = [
        (step, f"--{step}")
        for step, on in (("canonical", options.canonical), ("bag", options.bag))
        if on
    ]
    not_done = " nor ".join(
        "made canonical" if step == "canonical" else "bagged" for step, _ in steps
    )
    commands = " and ".join(f"'tm-export {step} {result.run_folder}'" for step, _ in steps)

    retry = retry_command(incremental=options.incremental, started_over=options.start_over)
    logger.warning(
        "%s failed, so the run was not %s, which would take no more pages; once the cause "
        "is fixed, %s %s, or keep the failures and run %s",
        counted(result.failed_partitions, "partition"),
        not_done,
        retry,
        " ".join(option for _, option in steps),
        commands,
    )


def _finish_archive(
    recipe: Recipe, options: RunOptions, result: RunResult, steps: _ArchiveSteps
) -> None:
    """Describe a finished run: canonical order, run record and bag, as the options request.

    Runs in a worker thread while the output lock is held. Every step first verifies the
    files against the manifest, so a mismatch stops it before anything is rewritten. A
    step that ``steps`` stops before it starts marks the result interrupted.
    """
    canonical, bag = options.canonical, options.bag
    if result.failed_partitions and (canonical or bag):
        # Canonical files and bags take no more pages, and --retry-failed still has work.
        _warn_not_archived(options, result)
        canonical = bag = False
    # Imported here: these steps run once at the end, and their imports (bagit, the
    # external sort) would add to the start-up time of every run, resumes included.
    from .bag import make_run_bag
    from .canonical import make_canonical

    folder = result.run_folder
    planned: list[tuple[str, Callable[[], object]]] = []
    if canonical:
        planned.append(("canonical rewrite", lambda: make_canonical(folder)))
    if bag:
        planned.append(("bag", lambda: make_run_bag(folder)))
    else:
        # NOTE: the record verifies every file against the manifest, read again a chunk
        # at a time. It keeps a segment per committed page, so its memory still grows
        # with the run: a 100,000-partition resume peaked at 158 MB in all.
        planned.append(("run record", lambda: write_run_record(folder, recipe, result)))

    try:
        for step, run_step in planned:
            if not steps.begin(step):
                result.interrupted = True
                return
            run_step()
            steps.end()
    except TmExportError as error:
        result.fatal = error if isinstance(error, FatalError) else FatalError(str(error))


class _Session:
    """One process's work on a run: open, preflight, export, commit, close."""

    def __init__(self, recipe: Recipe, options: RunOptions) -> None:
        self.recipe = recipe
        self.options = options
        self.redactor = Redactor([options.token] if options.token else [])
        self.concurrency = options.concurrency or recipe.instance.concurrency
        self.rate_limit = options.rate_limit or recipe.instance.rate_limit
        self.baseline: Baseline | None = None
        self.codec: Codec = options.compression or "none"
        self.finished_before = False
        """True when the run had finished and this session has nothing to retry."""
        self.rerun = resume_hint(started_over=options.start_over)
        """The start of every piece of advice to resume this run."""

    async def run(self) -> RunResult:
        bagged = self._bagged_run()
        if bagged is not None:
            return bagged

        run_folder, state, journal = self._open_run()
        # Spool files are only ever in use while a page is processed; any left over are
        # from a killed session.
        shutil.rmtree(run_folder / SPOOL_FOLDER, ignore_errors=True)
        earlier = (
            sum(stream.pages for stream in state.streams.values()),
            sum(stream.records for stream in state.streams.values()),
        )
        files: dict[str, StreamFile] = {}
        result = RunResult(
            run_folder=run_folder,
            streams={},
            resumed=len(state.sessions) > 0,
            finished_before=self.finished_before,
            started_over=self.options.start_over,
            incremental=self.options.incremental,
        )
        try:
            try:
                for name in self.recipe.streams:
                    if self.finished_before:
                        # No page is added, so no file is opened, and none is cut back: bytes
                        # past a finished run's pages are not tm-export's, and verify reports
                        # them. A file rewritten in canonical order, or being rewritten, no
                        # longer ends where its pages did once it is compressed.
                        state.streams.setdefault(name, StreamState())
                        continue
                    end = state.streams.setdefault(name, StreamState()).committed_end
                    path = stream_path(run_folder, name, self.codec)
                    last = state.streams[name].last_page_start
                    files[name] = StreamFile.open(path, end, codec=self.codec, last_page_start=last)
            except StorageError as error:
                # The session ends before its first request, with a summary of what the
                # manifest proves, as one that a failed write stopped.
                result.fatal = StorageError(
                    f"{error}. Nothing was sent; make the run folder writable (or free some "
                    f"space), then {self.rerun} to resume"
                )
                result.streams = {
                    name: StreamStats.of(state.streams[name]) for name in self.recipe.streams
                }
                return result
            committer = Committer(journal, files, codec=self.codec)
            await self._export(state, committer, run_folder, result)
            if isinstance(result.fatal, StorageError):
                self._cut_back(files, committer.committed_ends)
                result.fatal = self._storage_message(result.fatal, earlier, committer)
        finally:
            for file in files.values():
                file.close()
            journal.close()
        if isinstance(result.fatal, StorageError):
            _count_committed(run_folder, result)
        return result

    # --- opening the run ------------------------------------------------------------

    def _check_server(self, run_folder: Path, state: ManifestState) -> None:
        """Raise ManifestError when the run's earlier sessions read from another server.

        Records of two servers in one run would be indistinguishable, and its record cites
        one. A finished run is checked too: a user who meant to export from another server
        would otherwise only read that the run is already finished.
        """
        server = latest_session(state.sessions).get("settings", {}).get("base_url")
        requested = self.options.base_url
        retrying = self.options.retry_failed or self.options.retry_skipped
        if (
            server
            and server.rstrip("/") != requested.rstrip("/")
            and state.finished
            and not retrying
        ):
            # The run is done, so naming its server again is rarely what the user wants.
            raise ManifestError(
                f"{run_folder}: this run finished reading from {server}, and this command "
                f"reads from {requested}. Nothing was changed. Use --start-over to begin a new "
                f"run from {requested} beside it; only with --base-url {server} can "
                "--retry-failed, --retry-skipped or --incremental build on this run"
            )
        if server and server.rstrip("/") != requested.rstrip("/"):
            raise ManifestError(
                f"{run_folder}: this run reads from {server}, but this command reads from "
                f"{requested}. Nothing was changed. Give --base-url {server} for this run, "
                "or use --start-over to begin a new run from the other server"
            )

    def _check_token(self, run_folder: Path, state: ManifestState) -> None:
        """Raise RecipeError when the earlier sessions sent a token and this one has none,
        or one of another user.

        Such a session would skip the private projects they read (403), and end complete
        with less.
        """
        if self.finished_before:
            return
        if self.options.token:
            # NOTE: a key after anonymous sessions is accepted, since --retry-skipped with
            # a key fetches the private partitions that they skipped. A list they read
            # still lacks the private projects. status and run.json count the sessions
            # without a key, and merge rejects such a shard beside others.
            users = {session["user"] for session in state.sessions if session.get("user")}
            self._check_same_user(users, f"{run_folder}: earlier sessions of this run")
            return
        with_token = sum(1 for session in state.sessions if sent_token(session))
        if not with_token:
            return
        variable = self.recipe.instance.token_env
        if variable is None:
            raise RecipeError(
                f"{run_folder}: {counted(with_token, 'earlier session')} of "
                f"this run sent an API token, but {self.recipe.path} names no instance.token_env "
                "now, so this session would skip the private projects that the token could read; put "
                "token_env back in the recipe and run the same command again"
            )
        raise RecipeError(
            f"{run_folder}: {counted(with_token, 'earlier session')} of this "
            f"run sent an API token, and {variable} is not set or empty now, so this session "
            "would skip the private projects that the token could read; export "
            f"{variable} and run the same command again, or give --start-over for an "
            "anonymous run in a new folder"
        )

    def _open_run(self) -> tuple[Path, ManifestState, Journal]:
        output = self.options.output
        remove_unfinished_runs(output, STARTING_SUFFIX, "a run start")
        runs = list_runs(output)
        if runs and not self.options.start_over:
            folder = runs[-1]
            manifest = folder / MANIFEST_NAME
            if is_bag(folder):
                # Only --incremental gets here: run() returned early for the other commands.
                # The bag's payload contains the run's manifest; only its header is read here.
                sealed = folder / DATA_FOLDER / MANIFEST_NAME
                self._check_recipe(sealed, next(scan_journal(sealed)[1]))
                self._note_retry_ignored()
                self.baseline = read_baseline(self.recipe, runs)
                folder = next_run_folder(output)
            elif manifest.exists():
                state, extent = load_state(manifest, keep_done_pages=False)
                check_manifest_against_record(folder, extent.valid_bytes)
                if not self._check_or_restart(folder, state):
                    if state.canonical and self._retried_states(state):
                        raise ManifestError(
                            f"{folder}: the run's files were rewritten in canonical order, so pages cannot "
                            "be added to them; use --incremental or --start-over to fetch again in a new run"
                        )
                    if not (self.options.incremental and state.finished):
                        self._check_server(folder, state)
                        if state.finished:
                            # Decides whether this session sends anything, which the token
                            # checks below need to know.
                            self._note_finished(folder, state)
                        self._check_token(folder, state)
                        self._load_baseline(state, output)
                        # An incremental run that stopped before its first session has no
                        # session for _check_server to compare with.
                        self._check_previous_server()
                        self._check_previous_token()

                        if self.options.incremental:
                            logger.info(
                                "the last run is unfinished: resuming it; --incremental starts a "
                                "new run once it has finished"
                            )
                        if not state.sessions:
                            # A session records its entry once the preflight passes, so the
                            # sessions before this one stopped at the preflight.
                            logger.info(
                                "continuing the run in %s: no earlier session got past the server "
                                "and token check",
                                folder,
                            )
                        elif not state.finished:
                            logger.info("resuming the run in %s", folder)
                        return folder, state, Journal.open(manifest, valid_bytes=extent.valid_bytes)
                    self._note_retry_ignored()
                    self.baseline = read_baseline(self.recipe, runs)
                    folder = next_run_folder(output)
            elif any(folder.iterdir()):
                raise ManifestError(
                    f"{folder}: the run folder has files but no {MANIFEST_NAME}, so what it committed "
                    "cannot be proven; nothing was changed. Run with --start-over to begin a new run "
                    "beside it"
                )
        else:
            folder = next_run_folder(output)

        self._check_previous_server()
        self._check_previous_token()
        header = {
            "tool": "tm-export",
            "version": __version__,
            "recipe_path": str(self.recipe.path),
            "recipe_text": self.recipe.text,
            "recipe_hash": self.recipe.export_hash(),
            "streams": {name: spec.describe() for name, spec in self.recipe.streams.items()},
            "started": utc_now_text(),
            "shard": list(self.options.shard) if self.options.shard else None,
            "compression": self.codec,
            "incremental": self.baseline.header() if self.baseline else None,
        }
        journal = _create_run_folder(folder, header)
        logger.info("starting a new run in %s", folder)
        return folder, ManifestState.replay([{"t": "run", **header}]), journal

    def _bagged_run(self) -> RunResult | None:
        """Return the result of a command that finds the last run made a bag and has nothing
        to add to it, or None when the command does not resume a bag.

        A bag is sealed, yet the same command run again (a CI job run once more after a
        later step failed) reports the run as finished, as for any finished run.

        Raises:
            ManifestError: the command does not fit the bag's run, or requests what a
                sealed run cannot take: partitions to fetch again or a canonical rewrite.
        """
        if self.options.incremental or self.options.start_over:
            return None
        runs = list_runs(self.options.output)
        if not runs or not is_bag(runs[-1]):
            return None

        folder = runs[-1]
        manifest = folder / DATA_FOLDER / MANIFEST_NAME
        state, _ = load_state(manifest, keep_done_pages=False)
        self._check_recipe(manifest, state.header)
        self._check_server(folder, state)
        retried = self._retried_states(state)
        if retried:
            options = " and ".join(f"--retry-{name}" for name in sorted(retried))
            raise ManifestError(
                f"{folder}: the last run is a BagIt bag, so it is sealed, and {options} would "
                "write to it. Nothing was changed. Use --start-over to fetch everything again in "
                "a new run, or --incremental to fetch what changed since"
            )
        with_pages = {name for name, stream in state.streams.items() if stream.pages}
        if self.options.canonical and not with_pages <= {entry["s"] for entry in state.canonical}:
            raise ManifestError(
                f"{folder}: the last run is a BagIt bag, so it is sealed, and --canonical would "
                "rewrite its files. Nothing was changed. Leave out --canonical, or use "
                "--start-over for a new run made canonical"
            )

        logger.info(
            "the run in %s is already finished and made a BagIt bag, which is sealed: no "
            "request is sent and nothing is written. For newer data, use --incremental, or "
            "--start-over for a new full run",
            folder,
        )
        last = latest_session(state.sessions)
        return RunResult(
            run_folder=folder,
            streams={
                name: StreamStats.of(state.streams.get(name, StreamState()))
                for name in self.recipe.streams
            },
            authenticated=last.get("authenticated"),
            tm_release=last.get("tm_release"),
            resumed=True,
            finished_before=True,
        )

    def _check_or_restart(self, folder: Path, state: ManifestState) -> bool:
        """Check that this command fits the run in ``folder``, or start that run again.

        Returns True when the run is started again, which happens only when it has recorded
        nothing but its header.

        A first attempt that stopped at the server and token check (a wrong URL, a server
        that was down) committed nothing. So a fixed recipe may replace it, and the user need
        not pass --start-over and leave an empty run folder behind. The empty data files are
        removed first and the new header then replaces the manifest atomically, so a crash in
        between leaves the old manifest, which this check finds again.

        Raises:
            ManifestError: the command does not fit a run that recorded more than its header.
        """
        try:
            self._check_recipe(folder / MANIFEST_NAME, state.header)
        except ManifestError:
            nothing_recorded = (
                not state.sessions
                and not state.header.get("merged_from")
                and not state.header.get("incremental")
                and all(stream.pages == 0 for stream in state.streams.values())
            )
            if not nothing_recorded:
                raise
        else:
            return False

        logger.info(
            "starting the run in %s again with this command's recipe and options: no earlier "
            "session got past the server and token check, so it has nothing to keep",
            folder,
        )

        # A failed check may have set the run's compression already, so it is reset: the new
        # run takes the command's, as any new run does.
        self.codec = self.options.compression or "none"
        data = folder / DATA_FOLDER
        try:
            if data.is_dir():
                for path in data.iterdir():
                    path.unlink()
            # A record of the attempt ('tm-export record' takes any run) describes the
            # header that the new one replaces.
            (folder / RECORD_NAME).unlink(missing_ok=True)
        except OSError as error:
            raise StorageError(
                f"{error.filename}: cannot remove a file of the earlier attempt: {error.strerror}"
            ) from error
        return True

    def _check_previous_server(self) -> None:
        """Raise ManifestError when an incremental run would read from another API URL than
        the run before it.

        Only what changed since the previous run is fetched, so a night against the wrong
        server would lose that night's changes on the right one for good: the next
        incremental run starts after it. A server reached by another URL is given the
        previous URL instead.
        """
        previous = self.baseline.base_url if self.baseline else None
        if previous is None or previous.rstrip("/") == self.options.base_url.rstrip("/"):
            return
        raise ManifestError(
            f"{self.options.output}: the previous run read from {previous}, and this "
            f"incremental run would read from {self.options.base_url}; it fetches only what "
            "changed since the previous run, so it needs the same server. Nothing was "
            f"changed. Give --base-url {previous}, or use --start-over for a full run from "
            "the other server"
        )

    def _check_same_user(self, users: set[int], earlier: str) -> None:
        """Raise RecipeError when ``users``, the TM users whose keys ``earlier`` sessions
        sent, do not include the user of this session's key.

        Users see different private projects. A key of another user would skip what only
        the earlier user could read, or miss changes to it in an incremental run, with exit
        0. A renewed key of the same user names the same user.
        """
        user = token_user(self.options.token or "")
        if user is None or not users or user in users:
            return
        named = " and ".join(str(number) for number in sorted(users))
        variable = self.recipe.instance.token_env or "the token variable"
        raise RecipeError(
            f"{earlier} sent the API key of TM user {named}, and {variable} contains a key of "
            f"user {user}. Users see different private projects, so this run would lack "
            "what only the other user could read, with no sign. Nothing was sent. Export a "
            f"key of user {named} (a renewed key is fine), or use --start-over for a full run "
            "with this key"
        )

    def _check_previous_token(self) -> None:
        """Raise RecipeError when an incremental run has no token and the runs it builds on
        sent one, or one of another user.

        The search without a token lists no private project, so their changes would be
        missing from this run, and for good: the next incremental run starts after it.
        """
        if self.finished_before:
            return
        if self.options.token:
            if self.baseline is not None:
                self._check_same_user(
                    self.baseline.users, f"{self.options.output}: the runs that this run builds on"
                )
            return
        if self.baseline is None or not self.baseline.authenticated:
            return
        variable = self.recipe.instance.token_env
        fix = (
            f"Export {variable}"
            if variable
            else f"Put instance.token_env back in {self.recipe.path}"
        )
        raise RecipeError(
            f"{self.options.output}: the runs that this incremental run builds on sent an API "
            "token, and this one has none, so it would miss what changed in the private "
            "projects, for good, since the next incremental run starts after it. Nothing was "
            f"changed. {fix} and run the same command again, or use "
            "--start-over for an anonymous full run"
        )

    def _note_retry_ignored(self) -> None:
        """Warn that --retry-failed or --retry-skipped does nothing in the new incremental run
        that --incremental begins on a finished run."""
        requested = self._requested_states()
        if not requested:
            return
        options = " and ".join(f"--retry-{state}" for state in sorted(requested))
        logger.warning(
            "%s ignored: the last run is finished, so --incremental begins a new run, which "
            "fetches what changed since; to fetch again what the finished run could not, run "
            "the command without --incremental",
            options,
        )

    def _requested_states(self) -> set[str]:
        """Return the final states that --retry-failed and --retry-skipped fetch again."""
        requested = {"failed"} if self.options.retry_failed else set()
        if self.options.retry_skipped:
            requested.add("skipped")
        return requested

    def _retried_states(self, state: ManifestState) -> set[str]:
        """Return the requested states (see ``_requested_states``) that some partition of
        the run has."""
        present = {
            partition.final["state"]
            for stream in state.streams.values()
            for partition in stream.partitions.values()
            if partition.final is not None
        }
        return self._requested_states() & present

    def _note_finished(self, folder: Path, state: ManifestState) -> None:
        """Decide whether this session on a finished run has anything to retry, and log it."""
        if self._retried_states(state):
            return
        requested = self._requested_states()

        self.finished_before = True
        if requested:
            logger.info(
                "the run in %s is already finished and has no %s partitions: no request is sent",
                folder,
                " or ".join(sorted(requested)),
            )
        else:
            logger.info(
                "the run in %s is already finished: no request is sent unless --retry-failed "
                "or --retry-skipped is given; only the steps that describe it (run record, "
                "--canonical, --bag) are done if they are missing. For newer data, use "
                "--incremental, or --start-over for a new full run",
                folder,
            )

    def _load_baseline(self, state: ManifestState, output: Path) -> None:
        """Rebuild the baseline of an incremental run being resumed."""
        described = state.header.get("incremental")
        if described:
            # A merged run names its shards' earlier runs by absolute path, which the join keeps.
            runs = [output / "runs" / name for name in described["previous"]]
            self.baseline = read_baseline(self.recipe, runs)

    def _check_recipe(self, manifest: Path, header: dict[str, Any]) -> None:
        """Raise ManifestError for a run of another recipe, compression or shard.

        The next session or incremental run takes the run's compression when the command
        gives none.
        """
        recorded = header.get("recipe_hash")
        if recorded != self.recipe.export_hash():
            raise ManifestError(
                f"{manifest}: this run was started by a recipe that exports something else "
                f"(other streams, endpoints or parameters; recipe hash {str(recorded)[:12]}, now "
                f"{self.recipe.export_hash()[:12]}). Nothing was changed. Use --start-over to begin a "
                "new run beside it, or choose another output folder"
            )
        recorded_codec = run_codec(header)
        if self.options.compression not in (None, recorded_codec):
            recorded_files = f"are {describe_codec(recorded_codec)}"
            requested_files = (
                "no compression" if self.options.compression == "none" else self.options.compression
            )
            raise ManifestError(
                f"{manifest}: this run's files {recorded_files}, but this command asks for "
                f"{requested_files}. Nothing was changed. Leave out --compression to go on with the "
                "run's own, or use --start-over"
            )
        self.codec = recorded_codec
        recorded_shard = header.get("shard")
        wanted = list(self.options.shard) if self.options.shard else None
        if recorded_shard != wanted:

            def describe(shard: list[int] | None) -> str:
                return f"shard {shard[0]}/{shard[1]}" if shard else "all partitions (no --shard)"

            raise ManifestError(
                f"{manifest}: this run exports {describe(recorded_shard)}, but this command asks for "
                f"{describe(wanted)}. Nothing was changed. Use the same --shard as the run, or "
                "another output folder"
            )

    # --- exporting ----------------------------------------------------------------------

    async def _export(
        self, state: ManifestState, committer: Committer, run_folder: Path, result: RunResult
    ) -> None:
        instance = self.recipe.instance
        user_agent = (
            f"tm-export/{__version__} (+{instance.contact or 'no contact given in the recipe'})"
        )
        async with HttpSession(
            user_agent=user_agent,
            token=self.options.token,
            connect_timeout=instance.timeouts.connect,
            read_timeout=instance.timeouts.read,
            total_timeout=instance.timeouts.total,
            max_connections=self.concurrency,
            redactor=self.redactor,
            spool_dir=run_folder / SPOOL_FOLDER,
            spool_over=self.options.spool_over,
        ) as http:
            fetcher = Fetcher(
                http,
                base_url=self.options.base_url,
                retries=instance.retries,
                concurrency=self.concurrency,
                rate_limit=self.rate_limit,
                clock=self.options.clock,
                redactor=self.redactor,
                token_env=instance.token_env,
                rng=self.options.rng,
                rerun=f"{self.rerun} to resume",
            )
            token_check = TokenCheck(fetcher) if http.sends_token else None
            runners = self._runners(state, committer, fetcher, run_folder, token_check)
            result.streams = {name: runner.stats for name, runner in runners.items()}
            try:
                if result.finished_before:
                    # Nothing is walked, since a shard would read its parents' pages again.
                    # Recording no session keeps the manifest, and so the run record and its
                    # end time, as they are.
                    last = latest_session(state.sessions)
                    result.authenticated = last.get("authenticated")
                    result.tm_release = last.get("tm_release")
                    for runner in runners.values():
                        runner.count_finished()
                else:
                    await self._fetch(state, committer, fetcher, runners, result, token_check)
                    self._check_parents_read(runners)
            except* FatalError as group:
                result.fatal = _first(group)
            finally:
                result.requests = fetcher.requests_sent
                result.retries = fetcher.retries_done
                stopped = result.fatal is not None or result.interrupted
                for runner in runners.values():
                    if stopped:
                        runner.count_stopped()
                    runner.list_problems()
                    runner.close_channels()

        await self._close(committer, result)

    async def _fetch(
        self,
        state: ManifestState,
        committer: Committer,
        fetcher: Fetcher,
        runners: dict[str, StreamRunner],
        result: RunResult,
        token_check: TokenCheck | None,
    ) -> None:
        """Preflight, deletion check, streams and the last token check: every request of
        the session.

        One watcher covers them all, since the preflight and the deletion check can wait
        through retries and backoff as long as a stream can. A signal cancels the whole
        phase; what was recorded so far is committed by ``_close``.
        """

        def on_signal(name: str) -> None:
            logger.warning("received %s: stopping; committed pages are kept", name)
            result.interrupted = True
            scope.cancel()

        with anyio.CancelScope() as scope, _watch_signals(self.options, on_signal):
            try:
                await self._preflight(fetcher, result, token_check)
            except TokenRejectedError as error:
                if error.expired:
                    self._flag_unchecked_session(state, runners)
                raise
            committer.record(self._session_entry(state, result))
            # The check at the end gives its own problems and message when it fails.
            at_end = False
            try:
                if self.baseline is not None:
                    await self._find_deleted(fetcher, state, committer, result)
                    self.baseline.drop_deleted(result.deleted)
                await self._run_streams(runners, committer, fetcher)
                if token_check is not None:
                    at_end = True
                    if await self._confirm_token_at_end(token_check, runners, committer):
                        # It decides when the check at the start could not complete.
                        result.authenticated = True
            except* TokenRejectedError as group:
                # The session entry records that the preflight accepted the token. This entry
                # corrects it, so the run record does not call the session authenticated.
                result.authenticated = False
                committer.record({"t": "token", "at": utc_now_text(), "authenticated": False})
                # As when the check at the end fails: the token expired at some point after
                # the preflight, and the partitions finished since may hold only public data.
                # A run without a token has none to expire.
                expired = any(
                    isinstance(leaf, TokenRejectedError) and leaf.expired for leaf in _leaves(group)
                )
                if token_check is not None and expired and not at_end:
                    _flag_expired(
                        [
                            runner
                            for runner in runners.values()
                            if runner.spec.endpoint.auth == "optional"
                            and runner.finished_this_session()
                        ],
                        "the token expired after the check at the start",
                        "in this session",
                    )
                raise

    def _flag_unchecked_session(
        self, state: ManifestState, runners: dict[str, StreamRunner]
    ) -> None:
        """Give the problem of an expired token to the streams of endpoints where login is
        optional that finished partitions since the token was last seen accepted.

        The sessions since then stopped before a check at the end passed (a signal, a long
        Retry-After, a lost server).

        The server now rejects the token, most likely the one those sessions sent: it may
        have expired before they stopped, and nothing else would show it.

        NOTE: a stopped session resumed at once with a fresh key is not flagged, since no
        entry shows whether the old key expired before the stop. Nor does anything tell
        the rejected key from the one the stopped session sent: a wrong key of the right
        form, given in between, flags the streams all the same.
        """
        if not state.sessions or state.last_session_ended:
            return
        last = state.sessions[-1]
        if not last.get("token") or last.get("authenticated") is False:
            # Without a token nothing expired, and a rejection in it was reported then.
            return
        _flag_expired(
            [
                runner
                for name, runner in runners.items()
                if runner.spec.endpoint.auth == "optional"
                and name in state.streams
                and state.streams[name].finished_unconfirmed > 0
            ],
            "the last session stopped before its token check at the end, and the server now "
            "rejects the token",
            "since the token was last accepted",
        )

    async def _confirm_token_at_end(
        self, token_check: TokenCheck, runners: dict[str, StreamRunner], committer: Committer
    ) -> bool:
        """Check the token once more before the session records its end, and return whether
        the check passed (False when it could not complete).

        A 403 or a list that changed during its walk already sends a check, but a whole
        partition of an endpoint where login is optional, walked after the token expired,
        contains what an anonymous user sees with no such sign. Since a token never comes
        back to life, a check that passes now covers the whole session. When it fails, the
        streams of such endpoints get a problem, which the next session keeps: it ends with
        exit 3, and an incremental run does not count this run's search as complete.

        Raises:
            TokenRejectedError: the token expired during the session; its end is not recorded.
        """
        try:
            accepted = await token_check.confirm()
        except TokenRejectedError as error:
            for runner in runners.values():
                if runner.spec.endpoint.auth == "optional":
                    runner.add_stream_problem(TOKEN_EXPIRED_PROBLEM)
            variable = self.recipe.instance.token_env or "the token variable"
            raise TokenRejectedError(
                "the server rejected the API token in the check at the end of the run, so it "
                "expired during the run, and the partitions finished after that may hold only "
                "what an anonymous user sees. Copy a new API key from your Tasking Manager "
                f"settings, export {variable}, and run again with --start-over for a complete "
                "export; the same command finishes this run as it is, with that problem "
                "(exit 3)"
            ) from error
        if accepted:
            # It covers the session, even should the session stop before its end entry (a
            # shard that could not read a parent page).
            committer.record({"t": "token", "at": utc_now_text(), "authenticated": True})
        return accepted

    def _runners(
        self,
        state: ManifestState,
        committer: Committer,
        fetcher: Fetcher,
        run_folder: Path,
        token_check: TokenCheck | None,
    ) -> dict[str, StreamRunner]:
        runners = {
            name: StreamRunner(
                spec,
                state=state.streams[name],
                committer=committer,
                fetcher=fetcher,
                data_path=stream_path(run_folder, name, self.codec),
                codec=self.codec,
                concurrency=self.concurrency,
                retry_failed=self.options.retry_failed,
                retry_skipped=self.options.retry_skipped,
                shard=self.options.shard,
                baseline=self.baseline,
                token_check=token_check,
            )
            for name, spec in self.recipe.streams.items()
        }
        for runner in runners.values():
            sources = [spec for spec in runner.spec.varying if isinstance(spec, FromStream)]
            if sources:
                fields = {spec.name: spec.field for spec in sources}
                runners[sources[0].stream].feed(runner, fields)
        return runners

    async def _preflight(
        self, fetcher: Fetcher, result: RunResult, token_check: TokenCheck | None
    ) -> None:
        """Read the TM release, and check the token once before any export request.

        An expired token is served anonymously on endpoints where login is optional, so
        without this check an archive could silently shrink to the public part.
        """
        variable = self.recipe.instance.token_env
        if not self.options.token:
            result.authenticated = False
            if variable:
                # The recipe names a token, so an unset variable is more likely a slip (a
                # cron job without it) than a choice to export only what is public.
                logger.warning(
                    "%s is not set or empty, so this run is anonymous: private and draft projects, "
                    "and data only logged-in users see, are left out",
                    variable,
                )

        try:
            _, body = await fetcher.get_json("/system/heartbeat/", {}, spool=False)
            release = body.get("release") if isinstance(body, dict) else None
            result.tm_release = release.get("version") if isinstance(release, dict) else None
        except TokenRejectedError:
            # A token the server cannot decode is rejected on any path, the heartbeat too.
            result.authenticated = False
            raise
        except TransportError as error:
            raise unreachable(self.options.base_url, error, f"{self.rerun} to resume") from error
        except HTTPStatusError as error:
            # Every TM API has this path, so a 404 means the URL is not an API root, and
            # each export request would be a 404 too, recorded as a skipped partition.
            wrong = wrong_base_url(self.options.base_url, error, "run again")
            if wrong is not None:
                raise wrong from error
            logger.warning("could not read the server's release: %s", error)
        except RequestError as error:
            logger.warning("could not read the server's release: %s", error)

        if token_check is not None:
            try:
                accepted = await token_check.confirm()
            except TokenRejectedError:
                result.authenticated = False
                raise
            # A check that did not complete leaves the token neither accepted nor rejected.
            result.authenticated = True if accepted else None
            if accepted:
                logger.info("the API token was accepted")

    def _check_parents_read(self, runners: dict[str, StreamRunner]) -> None:
        """Stop a shard that could not read a partition another shard writes.

        The child partitions named by that partition's records are unknown, so the run is
        left unfinished. The next session reads every such partition again.

        Raises:
            FatalError: a partition could not be read after every retry.
        """
        unread = [
            (name, partition, error)
            for name, runner in runners.items()
            for partition, error in runner.unread_parents
        ]
        if not unread:
            return

        # Only a shard reads partitions that it does not write.
        assert self.options.shard is not None
        index, count = self.options.shard
        name, partition, error = unread[0]
        total = len(unread)
        raise FatalError(
            f"shard {index}/{count} could not read {counted(total, 'partition')} "
            f"that another shard writes (first: {partition_label(name, partition)}: {error}), so the child "
            f"partitions named by their records are unknown; the run is left unfinished: "
            f"{self.rerun} to resume"
        )

    async def _find_deleted(
        self, fetcher: Fetcher, state: ManifestState, committer: Committer, result: RunResult
    ) -> None:
        """Record the projects that earlier runs archived and that the server no longer has.

        One search with ``omitMapResults=false`` lists every matching project id. Each archived
        id missing from that list is checked on its detail page, and only a 404 counts as
        deleted, because a 403 means the project became private or a draft.
        """
        assert self.baseline is not None
        search = next(
            (s for s in self.recipe.streams.values() if s.endpoint.name == "projects"), None
        )
        if search is None or not self.baseline.project_ids:
            return
        known = {int(entry["project_id"]) for entry in state.deleted}
        result.deleted.extend(sorted(known))

        params = {**search.endpoint.defaults, **{c.name: c.value for c in search.constants}}
        params.update(omitMapResults="false", page="1")
        try:
            # Read whole: a list of every project on the map can pass the spool threshold.
            _, body = await fetcher.get_json(search.endpoint.path, params, spool=False)
        except RequestError as error:
            raise _deletion_check_failed(error, self.rerun) from error
        features = body.get("mapResults", {}).get("features", []) if isinstance(body, dict) else []
        current = {f["properties"]["projectId"] for f in features if isinstance(f, dict)}

        for project_id in sorted(self.baseline.project_ids - current - known):
            try:
                await fetcher.get_json(
                    f"/projects/{project_id}/", {"abbreviated": "true"}, spool=False
                )
            except HTTPStatusError as error:
                # Any other status leaves the project counted as present, which loses nothing.
                if error.status == 404:
                    committer.record(
                        {"t": "deleted", "project_id": project_id, "at": utc_now_text()}
                    )
                    result.deleted.append(project_id)
                    logger.info(
                        "project %d, which the earlier runs hold, is deleted now (404)", project_id
                    )
            except RequestError as error:
                raise _deletion_check_failed(error, self.rerun) from error

    def _session_entry(self, state: ManifestState, result: RunResult) -> dict[str, Any]:
        instance = self.recipe.instance
        settings = {
            "base_url": self.options.base_url,
            "concurrency": self.concurrency,
            "rate_limit": self.rate_limit,
            "timeouts": {
                "connect": instance.timeouts.connect,
                "read": instance.timeouts.read,
                "total": instance.timeouts.total,
            },
            "retries": {
                "attempts": instance.retries.attempts,
                "wait_max": instance.retries.wait_max,
                "max_retry_after": instance.retries.max_retry_after,
            },
        }
        if state.sessions:
            previous = latest_session(state.sessions).get("settings", {})
            # The base URL cannot change: _check_server stops such a session first.
            for key, value in settings.items():
                if previous.get(key) != value:
                    logger.info(
                        "setting %s changed since the last session: %s -> %s",
                        key,
                        previous.get(key),
                        value,
                    )
        return {
            "t": "session",
            "at": utc_now_text(),
            "version": __version__,
            "settings": settings,
            # True when the token check passed, null when it could not complete: the token
            # was sent either way, which is what the checks of later sessions look at.
            "authenticated": result.authenticated if self.options.token else False,
            "token": bool(self.options.token),
            # The key's TM user id, which anyone with the key can read (see tokenuser).
            "user": token_user(self.options.token) if self.options.token else None,
            "tm_release": result.tm_release,
            "retry_failed": self.options.retry_failed,
            "retry_skipped": self.options.retry_skipped,
        }

    async def _run_streams(
        self,
        runners: dict[str, StreamRunner],
        committer: Committer,
        fetcher: Fetcher,
    ) -> None:
        started = time.monotonic()

        def snapshot() -> Progress:
            return Progress(
                elapsed=time.monotonic() - started,
                requests=fetcher.requests_sent,
                retries=fetcher.retries_done,
                streams=tuple(runner.progress() for runner in runners.values()),
            )

        async def report_progress() -> None:
            assert self.options.on_progress is not None
            while True:
                await anyio.sleep(self.options.progress_interval)
                self.options.on_progress(snapshot())

        async with anyio.create_task_group() as outer:
            outer.start_soon(committer.run)
            if self.options.on_progress is not None:
                outer.start_soon(report_progress)
            async with anyio.create_task_group() as streams:
                for runner in runners.values():
                    streams.start_soon(runner.run)
            if self.options.on_progress is not None:
                # One last snapshot, so even a run shorter than the interval reports its end.
                self.options.on_progress(snapshot())
            outer.cancel_scope.cancel()

    async def _close(self, committer: Committer, result: RunResult) -> None:
        if isinstance(result.fatal, StorageError):
            return
        finished = result.fatal is None and not result.interrupted
        if finished and not result.finished_before:
            outcome = (
                "complete" if not (result.failed_partitions or result.problems) else "failures"
            )
            committer.record({"t": "end", "at": utc_now_text(), "outcome": outcome})
        with anyio.CancelScope(shield=True):
            await committer.commit()

    def _storage_message(
        self, error: StorageError, earlier: tuple[int, int], committer: Committer
    ) -> StorageError:
        pages = earlier[0] + committer.pages_committed
        records = earlier[1] + committer.records_committed
        return StorageError(
            f"{error}. The manifest still proves {pages} committed pages ({records} records), and the "
            f"stream files were cut back to them; free some space and {self.rerun} to resume"
        )

    def _cut_back(self, files: dict[str, StreamFile], committed_ends: dict[str, int]) -> None:
        """After a failed write, cut every stream file back to what the manifest proves."""
        for name, file in files.items():
            committed = committed_ends[name]
            file.close()
            try:
                os.truncate(file.path, committed)
            except OSError as error:
                logger.error(
                    "cannot cut %s back to byte %d: %s; the next run will",
                    file.path,
                    committed,
                    error.strerror,
                )


#: The problem of each stream whose endpoint logs in optionally, when the token was rejected
#: after the preflight. After the check at the end of a session, every such stream gets it.
#: After a rejection on the way, or at the start of a later session, those that finished
#: partitions since the token was last accepted get it. Nothing shows which partitions were
#: walked after it expired.
TOKEN_EXPIRED_PROBLEM = (
    "the API token expired during this run, so the partitions finished after that may hold "
    "only what an anonymous user sees; run again with --start-over and a fresh key for a "
    "complete export"
)


def _flag_expired(suspect: list[StreamRunner], cause: str, since: str) -> None:
    """Give each stream of ``suspect`` the problem of an expired token, and log one warning
    that names them, with the ``cause`` and the time ``since`` which they are suspect."""
    for runner in suspect:
        runner.add_stream_problem(TOKEN_EXPIRED_PROBLEM)
    if suspect:
        logger.warning(
            "%s, so the partitions of %s finished %s may hold only what an anonymous user "
            "sees; with a fresh key the same command finishes the run with that problem "
            "(exit 3), and --start-over gives a complete export",
            cause,
            ", ".join(runner.spec.name for runner in suspect),
            since,
        )


def _first(group: BaseExceptionGroup[FatalError]) -> FatalError:
    for leaf in _leaves(group):
        return leaf
    raise AssertionError("an exception group is never empty")


def _leaves(group: BaseExceptionGroup[FatalError]) -> Iterator[FatalError]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _deletion_check_failed(error: RequestError, rerun: str) -> FatalError:
    """Return the fatal error for a check of deleted projects that got no usable response."""
    return FatalError(
        f"the check for projects deleted since the last run failed: {error}; {rerun} to resume"
    )


__all__ = ["RunOptions", "RunResult", "TmExportError", "export", "resolve_base_url"]
