"""Incremental runs: what earlier runs already hold, so a new run fetches only what changed.

``run --incremental`` starts a new run folder beside the last finished run (which is never
modified). Compared with a full run it:

- requests from the project search only the projects updated since ``since``, the start
  of the previous run (``lastUpdatedFrom`` on the server, then an exact ``lastUpdated``
  check on each record), so streams that take their project ids from the search run for
  those projects only;
- stops walking newest-first task history (``project_activities``) at the newest record
  the earlier runs archived for that project, and writes only newer records;
- skips date windows whose newest copy in the earlier runs is done and was read an hour
  or more after the window ended (the server caches statistics for an hour);
- records projects that earlier runs archived and that are gone now (404 on the project
  detail) as ``deleted`` entries in the manifest;
- fetches again the partitions of ``from:`` streams that failed in the newest run that
  fetched them, whose projects may not have changed since.

A run whose project search did not finish done may have missed changed projects, so
``since`` is the time up to which the earlier runs' searches, one after another, listed
every project: the previous run's start unless a search failed. When the full run's own
search failed, the new run's search requests every project.

Streams with fixed id ranges or lists are exported again in full: nothing tells which of
their partitions changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .codec import Codec, open_lines
from .errors import ManifestError
from .layout import MANIFEST_NAME, is_bag, run_codec, run_home, stream_path
from .manifest import ManifestState, latest_finals, latest_session, load_state, sent_token
from .params import partition_id
from .recipe import Recipe
from .records import PARTITION_KEY, record_key, strip_partition
from .timestamps import utc_text

logger = logging.getLogger("tm_export.incremental")

#: Partition parameters that name a project, for leaving out deleted projects.
PROJECT_PARAMETERS = ("project_id", "projectId")

#: Endpoints whose records come newest first, so a walk can stop at the first known one.
NEWEST_FIRST = frozenset({"project_activities"})

#: How long the server may keep serving a statistics response it computed earlier: TM caches
#: /tasks/statistics/ for an hour in each worker, keyed by its dates and filters, and a
#: project's statistics for 10 minutes. A date window read within that time after its last
#: day, or a project read within it after a change, may miss the last changes.
SERVER_CACHE = dt.timedelta(hours=1)


@dataclass(slots=True)
class Baseline:
    """The contents of the finished runs that an incremental run builds on."""

    since: dt.datetime
    """Time (UTC) up to which the earlier runs' project searches listed every project:
    anything updated after it may be missing from them. The full run's start when they
    did not (see ``search_since``)."""
    previous: list[str]
    base_url: str | None = None
    """The API URL that the previous run's last session read from."""
    search_since: dt.datetime | None = None
    """``since`` for the project search, or None when the earlier runs' searches never
    listed every project (the full run's search failed): the search then requests all."""
    project_ids: set[int] = field(default_factory=set)
    """Projects that earlier runs archived and did not find deleted since."""
    newest: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stream and partition id, the largest record key archived (newest-first endpoints)."""
    finished_windows: dict[str, set[str]] = field(default_factory=dict)
    """Per stream, partition ids of date windows whose newest copy is done and whole."""
    refetch: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per stream with a ``from:`` parameter, the partitions (as parameter values) whose
    newest final state in the earlier runs is failed."""
    authenticated: bool = False
    """Whether a session of the earlier runs sent an API token."""
    users: set[int] = field(default_factory=set)
    """The TM users whose keys the earlier runs' sessions sent (see ``tokenuser``)."""

    @property
    def search_from(self) -> dt.datetime | None:
        """The time from which the project search takes projects: ``search_since``, less
        ``SERVER_CACHE``. A project changed shortly before an earlier run may have been read
        from a statistics cache filled before the change, so it is read once more."""
        return None if self.search_since is None else self.search_since - SERVER_CACHE

    def header(self) -> dict[str, Any]:
        """Return what the new run's manifest header records about its baseline."""
        searched = utc_text(self.search_since) if self.search_since else None
        return {
            "since": utc_text(self.since),
            "search_since": searched,
            "previous": self.previous,
        }

    def drop_deleted(self, project_ids: list[int]) -> None:
        """Take the partitions of deleted projects out of ``refetch``: they would return 404."""
        deleted = set(project_ids)
        for stream, partitions in self.refetch.items():
            self.refetch[stream] = [
                partition for partition in partitions if not names_project(partition, deleted)
            ]


def names_project(partition: dict[str, Any], project_ids: set[int]) -> bool:
    """Tell whether a partition's parameters name one of ``project_ids``."""
    return any(partition.get(parameter) in project_ids for parameter in PROJECT_PARAMETERS)


def read_baseline(recipe: Recipe, runs: list[Path]) -> Baseline:
    """Read the finished runs ``runs`` (oldest first) of the same recipe, from the last full
    (not incremental) run on.

    Raises:
        ManifestError: none of ``runs`` is a finished run of this recipe.
    """
    # Read newest first, and no further back than the last full run of each runs/ folder.
    # A full run contains everything the runs before it had, so runs before a --start-over
    # (perhaps from another server, or with a damaged manifest) are not built on. A merged
    # run names the runs of every shard's folder, so each folder is cut on its own.
    states = []
    cut: set[Path] = set()
    for folder in reversed(runs):
        if folder.parent in cut:
            continue
        # A run made a BagIt bag keeps its manifest and data under the bag's data/ folder.
        run = folder / "data" if is_bag(folder) else folder
        manifest = run / MANIFEST_NAME
        if not manifest.is_file():
            continue
        state = load_state(manifest)[0]
        if state.header.get("recipe_hash") == recipe.export_hash() and state.finished:
            states.append((run, state))
            if not state.header.get("incremental"):
                cut.add(folder.parent)
    if not states:
        raise ManifestError(
            f"{runs[-1].parent}: no finished run of this recipe to build on; run without "
            "--incremental first"
        )
    states.reverse()
    last = states[-1][1]
    previous = [run_home(run).name for run, _ in states]
    base_url = latest_session(last.sessions).get("settings", {}).get("base_url")
    covered = _covered_until(recipe, states)
    since = covered or parse_time(states[0][1].header["started"])
    baseline = Baseline(since=since, previous=previous, base_url=base_url, search_since=covered)
    baseline.authenticated = any(
        sent_token(session) for _, state in states for session in state.sessions
    )
    baseline.users = {
        session["user"] for _, state in states for session in state.sessions if session.get("user")
    }
    baseline.refetch = _failed_partitions(recipe, [state for _, state in states])
    # A project that an earlier run found deleted would return 404 to its failed partitions.
    baseline.drop_deleted(
        [int(entry["project_id"]) for _, state in states for entry in state.deleted]
    )

    for run, state in states:
        codec = run_codec(state.header)
        for name, spec in recipe.streams.items():
            path = stream_path(run, name, codec)
            if spec.endpoint.name == "projects" and path.exists():
                baseline.project_ids |= _project_ids(path, codec)
                # A project that a run found deleted is reported once, by that run.
                baseline.project_ids -= {int(entry["project_id"]) for entry in state.deleted}
            if spec.endpoint.name in NEWEST_FIRST and path.exists():
                done = {
                    partition
                    for partition, outcome in latest_finals([state], name).items()
                    if outcome == "done"
                }
                _newest_keys(
                    path, codec, spec.endpoint.key, done, baseline.newest.setdefault(name, {})
                )
    for name, spec in recipe.streams.items():
        if any(hasattr(v, "start_param") for v in spec.varying):
            baseline.finished_windows[name] = _finished_windows(
                [state for _, state in states], name
            )
    return baseline


def updated_since(record: Any, since: dt.datetime) -> bool:
    """Tell whether a project search record was updated at or after ``since``.

    ``since`` is cut to whole seconds, so a project updated in that second may have changed
    after the previous run read it, and is fetched again.
    """
    value = record.get("lastUpdated") if isinstance(record, dict) else None
    if not isinstance(value, str):
        return True
    try:
        return parse_time(value) >= since
    except ValueError:
        return True


def _day_end(day: str) -> dt.datetime:
    """Return the moment the UTC day ``day`` (YYYY-MM-DD) ends."""
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC) + dt.timedelta(days=1)


def parse_time(text: str) -> dt.datetime:
    """Return a TM timestamp (with or without a zone, which is then UTC) as an aware datetime."""
    parsed = dt.datetime.fromisoformat(
        text.replace("Z", "+00:00").replace("+00:00+00:00", "+00:00")
    )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _project_ids(path: Path, codec: Codec) -> set[int]:
    ids: set[int] = set()
    with open_lines(path, codec) as file:
        for line in file:
            record = orjson.loads(line)
            if isinstance(record.get("projectId"), int):
                ids.add(record["projectId"])
    return ids


def _newest_keys(
    path: Path, codec: Codec, key: str | None, done: set[str], newest: dict[str, Any]
) -> None:
    """Keep in ``newest`` the largest key per partition, of the partitions in ``done``.

    A partition that failed part way may lack records below its newest one, so a walk
    that stopped at its newest key would never fetch them.
    """
    with open_lines(path, codec) as file:
        for line in file:
            record = orjson.loads(line)
            partition = partition_id(record.get(PARTITION_KEY, {}))
            if partition not in done:
                continue
            value = record_key(key, strip_partition(record))
            if isinstance(value, int) and value > newest.get(partition, -1):
                newest[partition] = value


def _covered_until(recipe: Recipe, states: list[tuple[Path, ManifestState]]) -> dt.datetime | None:
    """Return the time up to which the runs' project searches listed every project, or
    None when they never did.

    A full run whose search ended done covers up to its start. An incremental run whose
    search ended done extends that to its own start, if its search began at or before
    the time covered so far, so only a search from before a gap closes it. Each runs/
    folder (one per shard, for a merged run) is followed on its own, and the earliest
    counts.
    """
    groups: dict[Path, list[ManifestState]] = {}
    for run, state in states:
        groups.setdefault(run_home(run).parent, []).append(state)

    covered: list[dt.datetime | None] = []
    for group in groups.values():
        until: dt.datetime | None = None
        for state in group:
            if not _search_done(recipe, state):
                continue
            started = parse_time(state.header["started"])
            baseline = state.header.get("incremental")
            if not baseline:
                until = started
                continue
            # Manifests written before search_since existed searched from since.
            searched = baseline.get("search_since", baseline["since"])
            if searched is None or (until is not None and parse_time(searched) <= until):
                until = started
        covered.append(until)

    if any(until is None for until in covered):
        return None
    return min(until for until in covered if until is not None)


def _search_done(recipe: Recipe, state: ManifestState) -> bool:
    """Tell whether every partition of the run's project search streams ended done, and
    neither the streams nor their partitions have a problem (such as a token that expired
    during the run, or a search stopped by max_pages), which may mean missed projects."""
    for name, spec in recipe.streams.items():
        if spec.endpoint.name != "projects" or name not in state.streams:
            continue
        stream = state.streams[name]
        if stream.problems or any(final.get("problems") for _, final in stream.finals()):
            return False
        # A shard that does not own the search has no final entry for it, and a shard
        # that failed to read a page of it stops with a fatal error.
        finals = [final["state"] for _, final in state.streams[name].finals()]
        if any(final != "done" for final in finals):
            return False
    return True


def _failed_partitions(
    recipe: Recipe, states: list[ManifestState]
) -> dict[str, list[dict[str, Any]]]:
    """Return, per stream with a ``from:`` parameter, the partitions whose final state in
    the newest of ``states`` that finished them is failed."""
    failed: dict[str, list[dict[str, Any]]] = {}
    for name, spec in recipe.streams.items():
        if spec.parent is None:
            continue
        latest = latest_finals(states, name)
        partitions = [orjson.loads(pid) for pid, final in latest.items() if final == "failed"]
        if partitions:
            failed[name] = partitions
    return failed


def _finished_windows(states: list[ManifestState], stream: str) -> set[str]:
    """Return the ids of the date windows of ``stream`` that need no new fetch.

    A window counts when its final state in the newest run that finished it is done, and
    that run started at least ``SERVER_CACHE`` after the window's last day (UTC), so it
    contains the whole window. A window that failed since, or that a run read before then,
    is fetched again.
    """
    newest: dict[str, tuple[str, dt.datetime]] = {}
    for state in states:
        started = parse_time(state.header["started"])
        if stream in state.streams:
            for partition_id, final in state.streams[stream].finals():
                newest[partition_id] = (final["state"], started)

    finished: set[str] = set()
    for partition_id, (outcome, started) in newest.items():
        if outcome != "done":
            continue
        values = orjson.loads(partition_id)
        ends = [v for k, v in values.items() if k.lower().startswith("end") and isinstance(v, str)]
        if ends and all(_day_end(end) + SERVER_CACHE <= started for end in ends):
            finished.add(partition_id)
    return finished
