"""Snapshots: the records of a full run and the incremental runs after it, as of the newest.

An incremental run holds only what changed since the run before it. ``make_snapshot``
combines the last full run and the incremental runs built on it into one file per stream,
holding what a full run would have written at the time of the newest run. Each stream
takes one of three rules, from its endpoint:

- ``key``: the project search, which an incremental run filters by ``lastUpdated``. Each
  project keeps its newest record in each partition of the search (a search split by
  ``each:`` can list a project twice). An older record goes where a newer run finished
  the partition done without the project, although its search reached the project's last
  known update: the project left that partition (see ``_SearchLines``).
- ``added``: task history (newest first), to which an incremental run adds newer records.
  Each partition keeps every record once, the newest copy of each. A partition is left
  empty, as in a full run, when the last of its final states that is done or skipped is
  skipped (403 or 404).
- ``partition``: every other stream. Each partition's records come from the newest run
  that finished it: ``done``, or ``skipped`` for a 403 or 404, which leaves it empty as
  in a full run. So a partition that a later run failed keeps the records of the run
  before it. A partition that no run finished comes from the newest run with records
  for it.

A partition whose newest final state is failed is listed under ``failed`` in
``snapshot.json``: its records are an earlier run's, or incomplete, until the next
incremental run fetches it again.

Projects that a run of the chain found deleted are dropped from every stream: their
search records, and the partitions whose ``project_id`` or ``projectId`` is theirs.

The runs are verified first (as ``tm-export verify`` does), and the snapshot is built in a
hidden folder beside the destination and renamed into place once complete, so a
destination either contains a whole snapshot or does not exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from . import __version__
from .codec import open_lines
from .errors import ExitCode, StorageError, TmExportError
from .incremental import NEWEST_FIRST, SERVER_CACHE, names_project, parse_time
from .layout import SNAPSHOT_RECORD, path_problem, run_home
from .manifest import ManifestState, latest_finals, latest_session
from .params import partition_id, partition_order
from .recipe import StreamSpec, parse_recipe
from .records import PARTITION_KEY, record_key, strip_partition
from .runrecord import require_verified
from .timestamps import utc_now_text
from .verify import RunCheck, RunFolderError, check_run, file_sha256, fsync_path, locate_run
from .words import counted

FORMAT = 1

Rule = Literal["key", "added", "partition"]

#: The description of each rule in ``snapshot.json``.
RULES: dict[Rule, str] = {
    "key": "the newest record of each key in each partition",
    "added": "every record once per partition, its newest copy; none of a skipped partition",
    "partition": "each partition's records from the newest run that finished it or skipped it",
}


class SnapshotStateError(TmExportError):
    """A run of the chain is unfinished, or the destination exists or lies inside a run;
    nothing was written."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A written snapshot: its folder, the runs it combines (oldest first) and its counts."""

    folder: Path
    runs: list[Path]
    records: dict[str, int]
    deleted: list[int]
    failed: dict[str, int]
    """Per stream, the partitions whose newest final state in the chain is failed."""
    problems: dict[str, int]
    """Per stream, the problems that the runs of the chain recorded (see ``_problems``)."""


def make_snapshot(run_folder: Path, destination: Path) -> Snapshot:
    """Combine ``run_folder`` and the runs it builds on into ``destination``.

    Raises:
        RunFolderError: ``run_folder`` is not a run folder, or a run of the chain is missing.
        SnapshotStateError: a run of the chain is unfinished, or ``destination`` exists or
            lies inside a run folder or a ``runs/`` folder.
        ManifestError: a manifest is damaged.
        RunDamagedError: a file does not match its manifest.
        StorageError: a write failed; ``destination`` was not created.
    """
    if destination.exists():
        raise SnapshotStateError(
            f"{destination} exists already; give a new folder for the snapshot, or delete this one"
        )
    if (problem := path_problem(destination)) is not None:
        raise SnapshotStateError(problem)
    chain = _chain(run_folder)
    shard = chain[-1].state.header.get("shard")
    if shard:
        # A merged run's chain contains the shards' own runs, which it combines. A shard's run
        # given alone contains only its own partitions.
        raise SnapshotStateError(
            f"{run_folder}: the run exports shard {shard[0]}/{shard[1]} only, so a snapshot of "
            "it would miss the partitions of the other shards; merge the shards with "
            "'tm-export merge' and snapshot the merged run"
        )
    _check_destination(destination, chain)
    newest = chain[-1].state.header
    recipe = parse_recipe(
        Path(str(newest.get("recipe_path", "recipe.yaml"))), newest["recipe_text"]
    )
    deleted = sorted({int(entry["project_id"]) for check in chain for entry in check.state.deleted})

    building = destination.parent / f".{destination.name}.building"
    shutil.rmtree(building, ignore_errors=True)
    try:
        building.mkdir(parents=True)
        streams = {
            name: _write_stream(building / f"{name}.jsonl", name, spec, chain, set(deleted))
            for name, spec in recipe.streams.items()
        }
        record = _snapshot_record(chain, streams, deleted)
        (building / SNAPSHOT_RECORD).write_bytes(
            orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n"
        )
        for path in building.iterdir():
            fsync_path(path)
        fsync_path(building)
        building.rename(destination)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise StorageError(
            f"{destination}: cannot write the snapshot: {error.strerror or error}; nothing was "
            "written"
        ) from None
    except BaseException:
        # An interruption leaves no half-built snapshot for a later command to trip on.
        shutil.rmtree(building, ignore_errors=True)
        raise
    try:
        fsync_path(destination.parent)
    except OSError as error:
        raise StorageError(
            f"{destination}: the snapshot is complete, but its folder's entry may not be on "
            f"disk yet ({error.strerror or error}); check the disk, then keep or delete it"
        ) from None
    return Snapshot(
        folder=destination,
        runs=[run_home(check.paths.folder) for check in chain],
        records={name: stream["records"] for name, stream in streams.items()},
        deleted=deleted,
        failed={
            name: len(stream["failed"]) for name, stream in streams.items() if stream["failed"]
        },
        problems={
            name: len(stream["problems"]) for name, stream in streams.items() if stream["problems"]
        },
    )


def _chain(run_folder: Path) -> list[RunCheck]:
    """Return the verified runs that ``run_folder`` builds on, oldest first, and itself."""
    newest = _checked(run_folder)
    baseline = newest.state.header.get("incremental")
    if not baseline:
        return [newest]

    # An incremental run names the runs before it by folder name, or, for a merge of
    # shards, by absolute path, which the join keeps. DIR may be a bag's payload folder,
    # whose run folder is the bag.
    home = run_home(newest.paths.folder)
    earlier = []
    for name in baseline["previous"]:
        folder = home.parent / name
        if not folder.is_dir():
            raise RunFolderError(
                f"{folder}: run {home.name} builds on this run, which is missing; a "
                "snapshot needs every run from the last full run on"
            )
        earlier.append(_checked(folder))
    return [*earlier, newest]


def _checked(run_folder: Path) -> RunCheck:
    """Verify a run of the chain, and require it finished and undamaged."""
    check = check_run(locate_run(run_folder))
    if not check.finished:
        recipe = check.state.header.get("recipe_path", "RECIPE")
        raise SnapshotStateError(
            f"{run_folder}: the run is unfinished, so a snapshot would miss what it has still "
            f"to fetch; finish it with 'tm-export run {recipe}' and the options that started "
            "it, or give an earlier run folder"
        )
    require_verified(check, "no snapshot was written")
    return check


def _check_destination(destination: Path, chain: list[RunCheck]) -> None:
    """Raise SnapshotStateError for a destination inside a run, or among the runs.

    A folder there would look like a damaged run to every command, or change a bag's
    payload.
    """
    target = destination.resolve()
    for check in chain:
        folder = run_home(check.paths.folder).resolve()
        for inside in (folder, folder.parent):
            if target.is_relative_to(inside):
                raise SnapshotStateError(
                    f"{destination} is inside {inside}, where the runs are kept; give a "
                    "folder outside it, such as one beside the output folder"
                )


def _rule(spec: StreamSpec) -> Rule:
    """Return how a stream's records are combined, from what incremental runs fetch of it."""
    endpoint = spec.endpoint
    if endpoint.key is not None and endpoint.name == "projects":
        return "key"
    if endpoint.key is not None and endpoint.name in NEWEST_FIRST:
        return "added"
    return "partition"


def _write_stream(
    path: Path, name: str, spec: StreamSpec, chain: list[RunCheck], deleted: set[int]
) -> dict[str, Any]:
    """Write one stream's combined records to ``path``; return its entry in snapshot.json."""
    rule = _rule(spec)
    states = [check.state for check in chain]
    winners = _partition_winners(name, states)
    # The added rule: partitions whose last word, in the newest run that finished them
    # done or skipped, was a 403 or 404.
    skipped = _skipped_partitions(states, name) if rule == "added" else set()
    seen: set[Any] = set()
    search = _SearchLines(chain, name)
    records = 0
    digest = hashlib.sha256()

    with path.open("wb") as out:
        # Newest run first: the first copy of a key or partition met is the one kept.
        for age, check in enumerate(reversed(chain)):
            oldest = age == len(chain) - 1
            for line, record in _lines(check, name):
                partition = record.get(PARTITION_KEY, {}) if isinstance(record, dict) else {}
                if names_project(partition, deleted):
                    continue
                if rule == "partition":
                    if winners.get(partition_id(partition)) != age:
                        continue
                elif rule == "key":
                    key = record_key(spec.endpoint.key, strip_partition(record))
                    if key in deleted or not search.keep(age, partition_id(partition), key, record):
                        continue
                else:
                    identity = (
                        partition_id(partition),
                        record_key(spec.endpoint.key, strip_partition(record)),
                    )
                    if identity in seen or identity[0] in skipped:
                        continue
                    # Nothing older follows the oldest run, so its keys need not be kept.
                    if not oldest:
                        seen.add(identity)
                out.write(line)
                digest.update(line)
                records += 1
            search.end_run(age)
    return {
        "file": path.name,
        "rule": rule,
        "kept": RULES[rule],
        "records": records,
        "sha256": digest.hexdigest(),
        "failed": _failed(name, states, deleted),
        "problems": _problems(name, chain, deleted),
    }


class _SearchLines:
    """The key rule's choice of project search lines, run by run from the newest.

    A project keeps its newest line in each partition of the search. An older line goes
    when a newer run finished that partition done without listing the project, although
    that run's search reached the project. The project then left the partition.

    A run lists every project updated since its ``search_from``, and a full run lists them
    all. Its search reached the project when the newest ``lastUpdated`` known of it up to
    that run is no earlier, and came before the run started: an edit made while the run
    searched may follow its walk of the partition. A partition the newer run failed, or
    whose search began after that update, shows nothing about the project, so the older
    line stays.
    """

    def __init__(self, chain: list[RunCheck], stream: str) -> None:
        newest_first = [check.state for check in reversed(chain)]
        self._reach = [_search_from(state) for state in newest_first]
        self._done = [_done_partitions(state, stream) for state in newest_first]
        self._started = [parse_time(state.header["started"]) for state in newest_first]
        self._pairs: set[tuple[str, Any]] = set()
        """The (partition, key) pairs written from newer runs."""
        self._updated: dict[Any, list[tuple[int, dt.datetime | None]]] = {}
        """Per key, the age of each newer run that lists it and its lastUpdated there, from
        every line of the key, kept or not."""
        self._run_pairs: list[tuple[str, Any]] = []
        self._run_updates: list[tuple[Any, dt.datetime | None]] = []

    def keep(self, age: int, partition: str, key: Any, record: Any) -> bool:
        """Tell whether the line of ``key`` in ``partition`` of the run ``age`` runs before
        the newest is kept."""
        updated = _last_updated(record)
        self._run_updates.append((key, updated))
        pair = (partition, key)
        if pair in self._pairs:
            return False
        listings = self._updated.get(key, [])
        for newer in range(age):
            if partition not in self._done[newer]:
                continue
            since = self._reach[newer]
            # An update made while that run searched may follow its walk of the partition,
            # so only those made before it started show where the project was.
            started = self._started[newer]
            known = [updated, *(at for listed, at in listings if newer <= listed < age)]
            if since is None or any(at is None or since <= at < started for at in known):
                return False
        self._run_pairs.append(pair)
        return True

    def end_run(self, age: int) -> None:
        """Take the lines of the run ``age`` as those of a newer run."""
        self._pairs.update(self._run_pairs)
        for key, updated in self._run_updates:
            self._updated.setdefault(key, []).append((age, updated))
        self._run_pairs = []
        self._run_updates = []


def _search_from(state: ManifestState) -> dt.datetime | None:
    """Return the earliest lastUpdated that a run's project search listed, or None when it
    listed every project (a full run, or an incremental one that searched them all)."""
    baseline = state.header.get("incremental")
    if not baseline:
        return None
    # Manifests written before search_since existed searched from since.
    searched = baseline.get("search_since", baseline.get("since"))
    if searched is None:
        return None
    return parse_time(searched) - SERVER_CACHE


def _last_updated(record: Any) -> dt.datetime | None:
    """Return a search record's lastUpdated, or None when it has none that parses."""
    value = record.get("lastUpdated") if isinstance(record, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def _done_partitions(state: ManifestState, stream: str) -> set[str]:
    """Return the partitions of ``stream`` that a run finished done."""
    if stream not in state.streams:
        return set()
    return {
        partition for partition, final in state.streams[stream].finals() if final["state"] == "done"
    }


def _skipped_partitions(states: list[ManifestState], stream: str) -> set[str]:
    """Return the partitions of ``stream`` whose last final state that is done or skipped
    (the server's last word, as in ``_partition_winners``) is skipped."""
    last: dict[str, str] = {}
    for state in states:
        if stream in state.streams:
            for partition, final in state.streams[stream].finals():
                if final["state"] in ("done", "skipped"):
                    last[partition] = final["state"]
    return {partition for partition, final in last.items() if final == "skipped"}


def _partition_winners(stream: str, states: list[ManifestState]) -> dict[str, int]:
    """Return, per partition id, the age (0 for the newest run) of the run whose records count.

    That is the newest run that finished the partition done or skipped it (the server's
    last word on it, which a full run would get too), else the newest run that committed
    pages for it.
    """
    newest_first = list(reversed(states))
    winners: dict[str, int] = {}
    for age, state in enumerate(newest_first):
        for partition, final in state.streams[stream].finals() if stream in state.streams else ():
            if final["state"] in ("done", "skipped"):
                winners.setdefault(partition, age)
    for age, state in enumerate(newest_first):
        partitions = state.streams[stream].partitions if stream in state.streams else {}
        for partition, part in partitions.items():
            if part.pages:
                winners.setdefault(partition, age)
    return winners


def _failed(stream: str, states: list[ManifestState], deleted: set[int]) -> list[dict[str, Any]]:
    """Return the parameters of the partitions whose final state in the newest run that
    finished them is failed: their records are an earlier run's, or incomplete. Those of
    deleted projects are left out, as their records are, and no run fetches them again."""
    latest = latest_finals(states, stream)
    failed = sorted(
        (partition for partition, final in latest.items() if final == "failed"),
        key=partition_order,
    )
    values = [orjson.loads(partition) for partition in failed]
    return [partition for partition in values if not names_project(partition, deleted)]


def _problems(stream: str, chain: list[RunCheck], deleted: set[int]) -> list[dict[str, Any]]:
    """Return the problems that each run of the chain recorded for ``stream``, oldest run
    first, each with its run folder and its partition (null for the stream as a whole).

    A problem means the records may be incomplete: a ``from:`` field that gave a dependent
    stream nothing, or a partition whose pages did not add up. All of them are kept, since a
    later run that fetched the partition again need not have fixed what the problem names.
    Those of deleted projects' partitions are left out, as their records are.
    """
    problems = []
    for check in chain:
        state = check.state.streams.get(stream)
        if state is None:
            continue
        folder = str(run_home(check.paths.folder).resolve())
        for partition, problem in state.all_problems():
            values = None if partition is None else orjson.loads(partition)
            if values is not None and names_project(values, deleted):
                continue
            problems.append({"run": folder, "partition": values, "problem": problem})
    return problems


def _lines(check: RunCheck, stream: str) -> Iterator[tuple[bytes, Any]]:
    """Yield each line of a run's stream file, with its record parsed."""
    path = check.paths.stream_file(stream, check.codec)
    if not path.exists():
        return
    with open_lines(path, check.codec) as file:
        for line in file:
            yield line, orjson.loads(line)


def _snapshot_record(
    chain: list[RunCheck], streams: dict[str, dict[str, Any]], deleted: list[int]
) -> dict[str, Any]:
    """Return the contents of snapshot.json: where the records come from, and their hashes."""
    newest = chain[-1].state
    return {
        "format": FORMAT,
        "tool": {"name": "tm-export", "version": __version__},
        "created": utc_now_text(),
        "recipe": {
            "path": newest.header.get("recipe_path"),
            "export_hash": newest.header.get("recipe_hash"),
        },
        "base_url": latest_session(newest.sessions).get("settings", {}).get("base_url"),
        "as_of": newest.header.get("started"),
        "runs": [
            {
                "folder": str(run_home(check.paths.folder).resolve()),
                "incremental": bool(check.state.header.get("incremental")),
                "started": check.state.header.get("started"),
                "ended": check.state.ends[-1].get("at") if check.state.ends else None,
                "run_record_sha256": (
                    file_sha256(check.paths.record) if check.paths.record.is_file() else None
                ),
            }
            for check in chain
        ],
        "deleted_projects": deleted,
        "streams": streams,
    }


# --- checking a snapshot -----------------------------------------------------------------


class SnapshotRecordError(TmExportError):
    """A snapshot's ``snapshot.json`` is missing or damaged, so nothing can be compared."""

    exit_code = ExitCode.FATAL


@dataclass(frozen=True, slots=True)
class SnapshotFileCheck:
    """The comparison of one file of a snapshot with its entry in ``snapshot.json``."""

    file: str
    records: int | None
    """Lines in the file, or None when it is missing."""
    sha256: str | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_snapshot(folder: Path) -> tuple[list[SnapshotFileCheck], list[str]]:
    """Compare each file that ``snapshot.json`` names with its recorded SHA-256 and
    record count.

    Returns those checks and the other entries of ``folder``, which are not verified.
    Hidden entries (``.DS_Store``) are left out, as in a run's data folder.

    Raises:
        SnapshotRecordError: ``snapshot.json`` cannot be read.
    """
    try:
        streams = orjson.loads((folder / SNAPSHOT_RECORD).read_bytes())["streams"]
        listed = {str(entry["file"]): entry for entry in streams.values()}
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise SnapshotRecordError(
            f"{folder / SNAPSHOT_RECORD}: not a readable snapshot record ({error}); restore it "
            "from a copy, or make the snapshot again"
        ) from None

    checks = []
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            checks.append(SnapshotFileCheck(name, None, None, ["the file is missing"]))
            continue
        digest = hashlib.sha256()
        lines = 0
        with path.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
                lines += block.count(b"\n")
        sha256, problems = digest.hexdigest(), []
        if sha256 != entry.get("sha256"):
            problems.append(
                f"the SHA-256 is {sha256}, but {SNAPSHOT_RECORD} records {entry.get('sha256')}"
            )
        if lines != entry.get("records"):
            problems.append(
                f"{lines} records, but {SNAPSHOT_RECORD} records {entry.get('records')}"
            )
        checks.append(SnapshotFileCheck(name, lines, sha256, problems))
    others = [
        path.name
        for path in sorted(folder.iterdir())
        if path.name not in listed
        and path.name != SNAPSHOT_RECORD
        and not path.name.startswith(".")
    ]
    return checks, others


def format_snapshot_check(folder: Path, checks: list[SnapshotFileCheck], others: list[str]) -> str:
    """Return the report of ``tm-export verify`` on a snapshot as text."""
    lines = [f"{folder}: a snapshot; {counted(len(checks), 'file')}"]
    for check in checks:
        if check.ok:
            lines.append(
                f"  ok        {check.file}: {counted(check.records or 0, 'record')}, "
                f"sha256 {check.sha256}"
            )
        lines += [f"  MISMATCH  {check.file}: {problem}" for problem in check.problems]
    lines += [
        f"  note      {name}: not named in {SNAPSHOT_RECORD}; not verified" for name in others
    ]
    bad = sum(1 for check in checks if not check.ok)
    files = counted(len(checks), "file")
    if bad:
        lines.append(f"verified the snapshot: {bad} of {files} differ; exit 3")
    else:
        agree = "matches" if len(checks) == 1 else "match"
        lines.append(f"verified the snapshot: {files} {agree} {SNAPSHOT_RECORD}")
    return "\n".join(lines)


def snapshot_check_json(
    folder: Path, checks: list[SnapshotFileCheck], others: list[str]
) -> dict[str, Any]:
    """Return the report of ``tm-export verify --json`` on a snapshot as JSON-ready data."""
    return {
        "ok": all(check.ok for check in checks),
        "snapshot": str(folder),
        "not_verified": others,
        "files": {
            check.file: {
                "ok": check.ok,
                "records": check.records,
                "sha256": check.sha256,
                "problems": check.problems,
            }
            for check in checks
        },
    }
