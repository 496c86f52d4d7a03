"""Report how far a run has come, from its manifest alone: ``tm-export status``.

Status only reads. It takes no lock and writes nothing, so it works while a session is
running. An unfinished last journal line (the one being written) is ignored and reported.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .codec import Codec
from .errors import TmExportError
from .layout import run_codec
from .manifest import latest_session
from .params import (
    DateWindows,
    Each,
    IntRange,
    StaticSpec,
    Step,
    count_written,
    feed_text,
)
from .verify import (
    ManifestScan,
    RunPaths,
    find_run_folders,
    locate_run,
    run_state_label,
    scan_manifest,
)
from .walk import listed_problems
from .words import counted

#: Characters of a partition's error message shown in the text report.
ERROR_CHARS = 160
#: Problems listed per stream in the text report; --json gives every one.
PROBLEMS_SHOWN = 5

FINAL_STATES = ("done", "skipped", "failed")

#: Added to the incremental line of a run whose project search requested every project,
#: because the searches of the runs before it never listed them all.
SEARCHED_ALL = "; its project search requested every project"


def static_specs(description: dict[str, Any]) -> tuple[StaticSpec, ...] | None:
    """Rebuild a stream's static parameter specs from its manifest description.

    Returns None for a stream with a ``from`` parameter, whose partitions come from its
    parent's records.
    """
    specs: list[StaticSpec] = []
    for spec in description.get("varying", []):
        if "from" in spec:
            return None
        if "each" in spec:
            specs.append(Each(spec["name"], tuple(spec["each"])))
        elif "range" in spec:
            start, stop, step = spec["range"]
            specs.append(IntRange(spec["name"], start, stop, step))
        else:
            specs.append(
                DateWindows(
                    spec["bind"][0],
                    spec["bind"][1],
                    dt.date.fromisoformat(spec["start"]),
                    dt.date.fromisoformat(spec["end"]),
                    _parse_step(spec["step"]) if spec.get("step") else None,
                    spec.get("max_days"),
                )
            )
    return tuple(specs)


def _parse_step(text: str) -> Step:
    """Parse a step as ``Step.__str__`` writes it, such as ``1 month`` or ``2 weeks``."""
    count, unit = text.split()
    return Step(int(count), unit.removesuffix("s"))


@dataclass(slots=True)
class StreamStatus:
    """Partition and record counts of one stream."""

    name: str
    sources: tuple[str, ...]
    """``STREAM.FIELD`` of each ``from`` parameter of a dependent stream, whose partitions
    come from its parent; empty for other streams."""
    partitions: Counter[str] = field(default_factory=Counter)
    """Counts by state: done, skipped, failed and pending (known so far)."""
    pending_final: bool = True
    """False while a dependent stream may still learn new partitions from its parent."""
    records: int = 0
    duplicates: int = 0
    committed_bytes: int = 0
    file_bytes: int | None = None
    last_error: str | None = None
    last_error_partition: str | None = None
    skip_reasons: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    """Problems of the stream as a whole (a ``from:`` field that gives no value), then those
    of its partitions as ``PARTITION: problem``."""
    read_again: int = 0
    """Partitions whose pages were read more than once because their list changed."""

    @property
    def parent(self) -> str | None:
        """``STREAM.FIELD`` of the first ``from`` parameter, for a dependent stream."""
        return self.sources[0] if self.sources else None


@dataclass(frozen=True, slots=True)
class UnreadableRun:
    """A run beside the chosen one whose folder or manifest cannot be read."""

    folder: Path
    error: str


@dataclass(slots=True)
class RunStatus:
    """Counts that the manifest of one run proves, stream by stream."""

    paths: RunPaths
    state: str
    """``complete``, ``unfinished`` or what made a finished run exit 3 (``verify.run_state_label``)."""
    header: dict[str, Any]
    sessions: list[dict[str, Any]]
    ended: str | None
    streams: list[StreamStatus]
    dropped_bytes: int
    canonical: list[str]
    """Streams whose last committed change is a canonical rewrite."""
    codec: Codec
    """The compression of the stream files; their bytes are compressed bytes."""
    deleted: list[int] = field(default_factory=list)
    """Projects that this incremental run found deleted since the earlier runs."""
    ended_before: bool = False
    """True for an unfinished run that had ended before its last session began."""

    @property
    def records(self) -> int:
        return sum(stream.records for stream in self.streams)


def run_status(paths: RunPaths, scan: ManifestScan | None = None) -> RunStatus:
    """Read a run's manifest and count its partitions and records, without writing anything.

    ``scan`` is the run's manifest as ``verify.scan_manifest`` returned it, when the caller
    has read it already.

    Raises:
        ManifestError: the manifest is damaged.
    """
    scan = scan or scan_manifest(paths)
    state, finished, layouts = scan.state, scan.finished, scan.layouts
    descriptions: dict[str, Any] = state.header.get("streams", {})
    codec = run_codec(state.header)

    streams = []
    for name, stream_state in state.streams.items():
        description = descriptions.get(name, {})
        sources = tuple(spec["from"] for spec in description.get("varying", []) if "from" in spec)
        status = StreamStatus(name, sources)
        status.records = stream_state.records
        status.duplicates = stream_state.duplicates
        status.problems = listed_problems(stream_state)
        status.read_again = len(stream_state.read_again)
        status.partitions["done"] += len(stream_state.done)
        for partition in stream_state.partitions.values():
            status.partitions[partition.state] += 1
            final = partition.final or {}
            if partition.state == "skipped":
                reason = f"{final.get('status')} {final.get('sub_code') or ''}".strip()
                status.skip_reasons[reason] += 1
        # An incremental run skips the date windows that earlier runs finished, so it counts
        # what the run has seen. A shard counts the static partitions it owns.
        shard = state.header.get("shard")
        specs = None if state.header.get("incremental") else static_specs(description)
        if specs is not None:
            owner = (int(shard[0]), int(shard[1])) if shard else None
            known = count_written(specs, name, owner)
            finals = sum(status.partitions[state_name] for state_name in FINAL_STATES)
            status.partitions["pending"] = known - finals
        elif stream_state.known is not None and not finished:
            # The run recorded how many partitions the parent's records gave. A later
            # session may retry parent partitions that add more, so the count is exact only
            # when the last session recorded it.
            count, sessions = stream_state.known
            finals = sum(status.partitions[state_name] for state_name in FINAL_STATES)
            status.partitions["pending"] = max(count - finals, 0)
            status.pending_final = sessions == len(state.sessions)
        else:
            status.pending_final = finished
        layout = layouts.get(name)
        status.committed_bytes = layout.committed_end if layout else 0
        path = paths.stream_file(name, codec)
        status.file_bytes = path.stat().st_size if path.exists() else None
        streams.append(status)

    for stream in streams:
        if stream.name in scan.last_errors:
            stream.last_error, stream.last_error_partition = scan.last_errors[stream.name]

    canonical = [name for name, layout in layouts.items() if layout.canonical is not None]
    return RunStatus(
        paths=paths,
        state=run_state_label(finished, state),
        header=state.header,
        sessions=state.sessions,
        ended=state.ends[-1].get("at") if finished else None,
        ended_before=bool(state.ends) and not finished,
        streams=streams,
        dropped_bytes=scan.extent.dropped_bytes,
        canonical=canonical,
        codec=codec,
        deleted=sorted({int(entry["project_id"]) for entry in state.deleted}),
    )


def status_of(folder: Path) -> tuple[RunStatus, list[RunStatus | UnreadableRun]]:
    """Return the status of the chosen run and of every run beside it, oldest first.

    ``folder`` is an output folder (the newest run is chosen) or one run folder.

    A run beside the chosen one that cannot be read is listed as such, so that a damaged
    old run does not hide the newest.

    Raises:
        RunFolderError: ``folder`` is neither an output folder nor a run folder.
        ManifestError: the chosen run's manifest is damaged.
    """
    chosen = locate_run(find_run_folders(folder)[-1])
    status = run_status(chosen)
    if chosen.output is None:
        return status, [status]

    history: list[RunStatus | UnreadableRun] = []
    for sibling in find_run_folders(chosen.output):
        if sibling == chosen.folder:
            history.append(status)
            continue
        try:
            history.append(run_status(locate_run(sibling)))
        except TmExportError as error:
            history.append(UnreadableRun(sibling, str(error)))
    return status, history


# --- output ---------------------------------------------------------------------------------


def _pending_text(stream: StreamStatus) -> str:
    pending = stream.partitions["pending"]
    return f"{pending}+" if not stream.pending_final else str(pending)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _sessions_line(status: RunStatus) -> str:
    sessions = status.sessions
    merged_from = status.header.get("merged_from")
    if not sessions and merged_from:
        return f"sessions: none; merged from {len(merged_from)} shards: {', '.join(merged_from)}"
    if not sessions:
        return "sessions: none yet (the first session stopped before its first export request)"
    last = latest_session(sessions)
    base_url = last.get("settings", {}).get("base_url", "unknown")
    authenticated = {True: "yes", None: "not checked"}.get(last.get("authenticated"), "no")
    with_token = sum(1 for session in sessions if session.get("authenticated"))
    if 0 < with_token < len(sessions):
        # The run record calls a run authenticated only when every session was.
        last_had_token = {True: "including", None: "not checked in"}.get(
            last.get("authenticated"), "not"
        )
        authenticated = f"in {with_token} of {len(sessions)} sessions, {last_had_token} the last"
    line = (
        f"sessions: {len(sessions)}, the last started {last.get('at')}; base URL {base_url}; "
        f"authenticated: {authenticated}; TM release: {last.get('tm_release') or 'unknown'}"
    )
    if merged_from:
        line += f"; merged from {len(merged_from)} shards: {', '.join(merged_from)}"
    return line


def _state_line(status: RunStatus) -> str:
    if status.state == "unfinished" and status.ended_before:
        last = latest_session(status.sessions)
        options = [f"--retry-{name}" for name in ("failed", "skipped") if last.get(f"retry_{name}")]
        # A later session has nothing to do unless it retries, so it had one of the two.
        named = " and ".join(options) or "--retry-failed or --retry-skipped"
        return (
            "state: unfinished (the run ended once, and a later session stopped before its end; "
            f"run that session's command again, with its {named}, to end it)"
        )
    if status.state == "unfinished":
        return (
            "state: unfinished (no session has recorded the run's end yet: a session is "
            "running, or it stopped; run the same command again to resume)"
        )
    return f"state: {status.state}, ended {status.ended}"


def format_status(status: RunStatus, history: list[RunStatus | UnreadableRun]) -> str:
    """Return the report of ``tm-export status`` as text."""
    shard = status.header.get("shard")
    lines = [
        f"run: {status.paths.folder}"
        + (f" (shard {shard[0]}/{shard[1]})" if shard else "")
        + (" (a bag)" if status.paths.bagged else ""),
        _state_line(status),
        f"started: {status.header.get('started')}",
    ]
    baseline = status.header.get("incremental")
    if baseline:
        # Its files contain only what changed, which a reader must know before using them.
        line = (
            f"incremental: holds what changed since {baseline.get('since')}, on top of runs "
            f"{', '.join(baseline.get('previous', []))}"
        )
        # Manifests written before search_since existed have no such key.
        if baseline.get("search_since", "") is None:
            line += SEARCHED_ALL
        lines.append(line)
    lines += [
        _sessions_line(status),
    ]
    if status.codec != "none":
        lines.append(f"compression: {status.codec}; bytes are those of the compressed files")
    lines.append("")

    header = ("stream", "done", "pending", "skipped", "failed", "records", "bytes")
    rows: list[tuple[str, ...]] = [header]
    for stream in status.streams:
        rows.append(
            (
                stream.name,
                str(stream.partitions["done"]),
                _pending_text(stream),
                str(stream.partitions["skipped"]),
                str(stream.partitions["failed"]),
                str(stream.records),
                str(stream.committed_bytes),
            )
        )
    lines.extend(_table(rows))

    if any(not stream.pending_final for stream in status.streams):
        lines.append(
            "pending: partitions started and not finished; N+ marks a lower bound: a dependent "
            "stream learns partitions from its parent's records until the parent has "
            "finished, and an incremental run counts only the partitions it has started"
        )
    for stream in status.streams:
        if stream.parent is not None:
            lines.append(f"{stream.name}: one partition per {feed_text(stream.sources)}")
    for stream in status.streams:
        if stream.skip_reasons:
            detail = ", ".join(
                f"{reason}: {n}" for reason, n in sorted(stream.skip_reasons.items())
            )
            lines.append(f"{stream.name}: skipped {detail}")
        if stream.last_error is not None:
            error = stream.last_error
            if len(error) > ERROR_CHARS:
                error = error[: ERROR_CHARS - 3] + "..."
            lines.append(
                f"{stream.name}: last error, partition {stream.last_error_partition}: {error}"
            )
        if stream.read_again:
            lines.append(read_again_line(stream.name, stream.read_again))
        for problem in stream.problems[:PROBLEMS_SHOWN]:
            lines.append(f"{stream.name}: {problem}")
        if len(stream.problems) > PROBLEMS_SHOWN:
            more = len(stream.problems) - PROBLEMS_SHOWN
            noun = "problem" if more == 1 else "problems"
            lines.append(f"{stream.name}: {more} more {noun}; --json lists them all")
        uncommitted = (stream.file_bytes or 0) - stream.committed_bytes
        if uncommitted > 0:
            lines.append(f"{stream.name}: {uncommitted} uncommitted bytes after the committed end")
    if status.canonical:
        lines.append(f"canonical files: {', '.join(status.canonical)}")
    if status.deleted:
        projects = ", ".join(map(str, status.deleted))
        lines.append(f"deleted since the earlier runs: projects {projects}")
    if status.dropped_bytes:
        lines.append(
            f"manifest: an unfinished last line of {status.dropped_bytes} bytes was ignored "
            "(a session may be writing it)"
        )

    lines.extend(["", "runs:"])
    history_rows: list[tuple[str, ...]] = []
    for run in history:
        if isinstance(run, UnreadableRun):
            history_rows.append((f"  {run.folder.name}", f"unreadable: {run.error}"))
            continue
        flags = [run.state]
        if run.paths.bagged:
            flags.append("a bag")
        history_rows.append(
            (
                f"  {run.paths.folder.name}",
                ", ".join(flags),
                f"started {run.header.get('started')}",
                f"ended {run.ended}" if run.ended else "not ended",
                counted(len(run.sessions), "session"),
                counted(run.records, "record"),
            )
        )
    # An unreadable run's row is its name and its error, which sets no column's width.
    full = [row for row in history_rows if len(row) > 2]
    widths = [max(len(row[i]) for row in full) for i in range(len(full[0]))] if full else []
    for row in history_rows:
        if len(row) == 2:
            lines.append("  ".join(row))
            continue
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _run_json(run: RunStatus | UnreadableRun) -> dict[str, Any]:
    if isinstance(run, UnreadableRun):
        return {"run": str(run.folder), "state": "unreadable", "error": run.error}
    return {
        "run": str(run.paths.folder),
        "state": run.state,
        "bagged": run.paths.bagged,
        "started": run.header.get("started"),
        "ended": run.ended,
        "sessions": len(run.sessions),
        "records": run.records,
    }


def read_again_line(stream: str, partitions: int) -> str:
    """Return the line that counts a stream's partitions whose pages were read again."""
    return (
        f"{stream}: {counted(partitions, 'partition')} read again, because the server's list "
        "changed while its pages were read"
    )


def _stream_json(stream: StreamStatus) -> dict[str, Any]:
    return {
        "partitions": {key: stream.partitions[key] for key in (*FINAL_STATES, "pending")},
        "pending_final": stream.pending_final,
        "parent": stream.parent,
        "records": stream.records,
        "duplicates": stream.duplicates,
        "committed_bytes": stream.committed_bytes,
        "file_bytes": stream.file_bytes,
        "skip_reasons": dict(sorted(stream.skip_reasons.items())),
        "last_error": stream.last_error,
        "last_error_partition": (
            orjson.loads(stream.last_error_partition) if stream.last_error_partition else None
        ),
        "problems": stream.problems,
        "read_again": stream.read_again,
    }


def status_json(status: RunStatus, history: list[RunStatus | UnreadableRun]) -> dict[str, Any]:
    """Return the report of ``tm-export status --json`` as JSON-ready data."""
    last = latest_session(status.sessions)
    return {
        "run": str(status.paths.folder),
        "bagged": status.paths.bagged,
        "shard": status.header.get("shard"),
        "state": status.state,
        "complete": status.state == "complete",
        "started": status.header.get("started"),
        "ended": status.ended,
        "sessions": len(status.sessions),
        "base_url": last.get("settings", {}).get("base_url"),
        "authenticated": last.get("authenticated"),
        "authenticated_sessions": sum(1 for s in status.sessions if s.get("authenticated")),
        "tm_release": last.get("tm_release"),
        "streams": {stream.name: _stream_json(stream) for stream in status.streams},
        "canonical": status.canonical,
        # For an incremental run: since, search_since (null when its search requested
        # every project) and the earlier runs it builds on; null for a full run.
        "incremental": status.header.get("incremental"),
        "deleted_projects": status.deleted,
        "manifest_dropped_bytes": status.dropped_bytes,
        "runs": [_run_json(run) for run in history],
    }
