"""The run record, ``run.json``: a run's citable summary, beside ``manifest.jsonl``.

It names the tool version, the recipe (text and hashes), the server and its release, the
time span, and for each stream file its records, bytes and SHA-256, its skipped and failed
partitions, and whether it is canonical. Everything in it comes from the manifest and the
files, never from the process that writes it, so the record written at the end of a run
and the one ``tm-export record`` writes later are the same bytes.

Format (``"format": 1``)::

    {
      "format": 1,
      "run": "0001",
      "tool": {"name": "tm-export", "version": "0.1.0", "session_versions": ["0.1.0"]},
      "recipe": {"path": "...", "sha256": "<SHA-256 of the recipe text>",
                 "export_hash": "<the manifest's recipe hash>", "text": "..."},
      "base_url": "...", "tm_release": "v5.5.2", "authenticated": true,
      "started": "2026-...Z", "ended": "2026-...Z" or null, "outcome": "complete",
      "sessions": [{"at", "version", "base_url", "authenticated", "tm_release"}, ...],
      "manifest": {"file": "manifest.jsonl", "bytes": N, "sha256": "..."},
      "incremental": null or {"since": "...", "search_since": "..." or null, "previous": ["0001"]},
      "deleted_projects": [ids an incremental run found deleted],
      "streams": {
        "NAME": {"file": "data/NAME.jsonl", "records": N, "bytes": N, "sha256": "...",
                 "canonical": false, "duplicates": N,
                 "partitions": {"done": N, "skipped": N, "failed": N, "pending": N},
                 "skipped": [{"partition": {...}, "status": 404, "sub_code": "..."}],
                 "failed": [{"partition": {...}, "status": 500, "error": "...",
                             "missing_pages": [2]}],
                 "problems": [{"partition": {...} or null, "problem": "..."}]}
      }
    }

``authenticated`` is true only when every session's token was accepted. ``outcome`` is
``complete``, ``failures`` or null while the run is unfinished. In a compressed run,
``file`` ends in ``.gz`` or ``.zst``, ``bytes`` and ``sha256`` are those of the compressed
file, and ``records`` counts its decompressed lines. A problem with ``"partition": null``
belongs to the stream as a whole, such as a ``from:`` field that names no value in any
record of the parent stream.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ExitCode, ManifestError, StorageError, TmExportError
from .layout import MANIFEST_NAME
from .manifest import latest_session
from .params import partition_order
from .status import FINAL_STATES, run_status
from .verify import (
    RECORD_NAME,
    RunCheck,
    RunStateError,
    check_run,
    fsync_path,
    locate_run,
    prefix_sha256,
)
from .words import counted

if TYPE_CHECKING:
    from .engine import RunResult
    from .recipe import Recipe

FORMAT = 1


class RunDamagedError(TmExportError):
    """A run's files do not match its manifest, so no record or rewrite is made."""

    exit_code = ExitCode.FAILURES


def write_run_record(
    run_folder: Path,
    recipe: Recipe | None = None,
    result: RunResult | None = None,
    *,
    run_name: str | None = None,
) -> Path:
    """Verify a run and write its run record atomically; return the record's path.

    ``recipe`` and ``result``, when the engine passes them, are checked to belong to this
    run. ``run_name`` is the name the record gives the run, for a run built under another
    name and renamed once complete (a merge); by default the folder's own name. The record itself is built from the manifest and the files alone. The caller must
    keep other writers away: the engine holds the output lock, and ``tm-export record``
    takes it.

    Raises:
        RunFolderError: ``run_folder`` is not a run folder.
        ManifestError: the manifest is damaged, or belongs to another recipe than ``recipe``.
        RunStateError: the run is a bag.
        RunDamagedError: a stream file does not match the manifest.
        StorageError: the record cannot be written.
    """
    paths = locate_run(run_folder)
    if paths.bagged:
        raise RunStateError(
            f"{run_folder}: the run is a bag, and its run record is part of the bag's payload; "
            "a new record would make the bag invalid, so none was written"
        )
    check = check_run(paths, check_bag=False)
    if recipe is not None and recipe.export_hash() != check.state.header.get("recipe_hash"):
        raise ManifestError(
            f"{paths.manifest}: the run was made by a recipe that exports something else than "
            f"{recipe.path}; no run record was written"
        )
    if result is not None and result.run_folder.resolve() != paths.folder.resolve():
        raise ValueError(f"the result belongs to {result.run_folder}, not to {paths.folder}")
    require_verified(check, "no run record was written")

    record = build_run_record(check)
    if run_name is not None:
        record["run"] = run_name
    data = orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n"
    # A record with the same bytes stays as it is, file times included.
    if not (paths.record.is_file() and paths.record.read_bytes() == data):
        write_atomically(paths.record, data)
    return paths.record


def check_manifest_against_record(run_folder: Path, valid_bytes: int) -> None:
    """Raise ManifestError when the run record of ``run_folder`` describes manifest bytes
    that are gone or changed.

    A manifest only grows, so one shorter than its record describes, or whose first bytes
    hash otherwise, was cut or edited. Resuming from it would cut the stream files back to what
    it still proves and fetch archived data again.
    """
    record_path = run_folder / RECORD_NAME
    manifest_path = run_folder / MANIFEST_NAME
    try:
        described = orjson.loads(record_path.read_bytes()).get("manifest", {})
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return  # no record, or one that verify reports
    if not isinstance(described, dict) or not isinstance(described.get("bytes"), int):
        return  # a damaged record, which verify reports
    recorded_bytes, recorded_sha256 = described["bytes"], described.get("sha256")

    if (
        recorded_bytes <= valid_bytes
        and prefix_sha256(manifest_path, recorded_bytes) == recorded_sha256
    ):
        return
    raise ManifestError(
        f"{manifest_path}: its first {recorded_bytes} bytes do not match what {record_path} "
        f"records (the manifest has {valid_bytes}), so it was cut or changed after the record "
        "was written. Nothing was changed. Restore the manifest from a copy and run again, or "
        "use --start-over to begin a new run beside this one"
    )


def require_verified(check: RunCheck, consequence: str) -> None:
    """Raise RunDamagedError naming each file that does not match the manifest."""
    if check.ok:
        return
    problems = [f"{s.file}: {p}" for s in check.streams for p in s.problems] + check.problems
    raise RunDamagedError(
        f"{check.paths.folder}: {counted(len(problems), 'mismatch', 'mismatches')} "
        f"in its files, {consequence}: {'; '.join(problems[:5])}"
        + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        + ". Restore the files from a copy, or make a new run with 'tm-export run RECIPE "
        f"--start-over'; 'tm-export verify {check.paths.folder}' gives the full report"
    )


def build_run_record(check: RunCheck) -> dict[str, Any]:
    """Return the run record of a verified run, as JSON-ready data."""
    paths = check.paths
    header = check.state.header
    status = run_status(paths, check.scan)
    sessions = check.state.sessions
    last = latest_session(sessions)
    text = str(header.get("recipe_text", ""))
    manifest_bytes = check.scan.extent.valid_bytes
    manifest_sha256 = prefix_sha256(paths.manifest, manifest_bytes)

    streams: dict[str, Any] = {}
    by_name = {stream.name: stream for stream in status.streams}
    for stream in check.streams:
        stream_file = paths.stream_file(stream.stream, check.codec)
        counts = by_name[stream.stream].partitions
        streams[stream.stream] = {
            "file": stream_file.relative_to(paths.root).as_posix(),
            "records": stream.records,
            "bytes": stream.committed_end,
            "sha256": stream.sha256,
            "canonical": stream.canonical,
            "duplicates": by_name[stream.stream].duplicates,
            "partitions": {key: counts[key] for key in (*FINAL_STATES, "pending")},
            **_partition_lists(check, stream.stream),
        }

    return {
        "format": FORMAT,
        "run": paths.folder.name,
        "tool": {
            "name": header.get("tool", "tm-export"),
            "version": header.get("version"),
            "session_versions": _distinct(session.get("version") for session in sessions),
        },
        "recipe": {
            "path": header.get("recipe_path"),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "export_hash": header.get("recipe_hash"),
            "text": text,
        },
        "base_url": last.get("settings", {}).get("base_url"),
        "tm_release": last.get("tm_release"),
        "authenticated": bool(sessions) and all(s.get("authenticated") for s in sessions),
        "started": header.get("started"),
        "ended": status.ended,
        "outcome": check.state.ends[-1].get("outcome") if check.finished else None,
        "sessions": [
            {
                "at": session.get("at"),
                "version": session.get("version"),
                "base_url": session.get("settings", {}).get("base_url"),
                "authenticated": session.get("authenticated"),
                "tm_release": session.get("tm_release"),
            }
            for session in sessions
        ],
        "manifest": {"file": MANIFEST_NAME, "bytes": manifest_bytes, "sha256": manifest_sha256},
        "incremental": header.get("incremental"),
        "deleted_projects": sorted({int(entry["project_id"]) for entry in check.state.deleted}),
        "merged_from": header.get("merged_from"),
        "streams": streams,
    }


def _partition_lists(check: RunCheck, stream: str) -> dict[str, list[dict[str, Any]]]:
    """Return the skipped and failed partitions of a stream, and the problems of any.

    Problems of the stream as a whole come first, with ``"partition": null``.
    """
    skipped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    stream_state = check.state.streams[stream]
    problems: list[dict[str, Any]] = [
        {"partition": None, "problem": problem} for problem in stream_state.problems
    ]
    # A partition done without problems is in no list, and most are, so they are left out
    # before the sort, which parses each partition id.
    listed = [
        (partition_id, final)
        for partition_id, final in stream_state.finals()
        if final["state"] != "done" or final.get("problems")
    ]
    for partition_id, final in sorted(listed, key=lambda item: partition_order(item[0])):
        values = orjson.loads(partition_id)
        if final["state"] == "skipped":
            skipped.append(
                {
                    "partition": values,
                    "status": final.get("status"),
                    "sub_code": final.get("sub_code"),
                }
            )
        elif final["state"] == "failed":
            failed.append(
                {
                    "partition": values,
                    "status": final.get("status"),
                    "error": final.get("error"),
                    "missing_pages": final.get("missing_pages", []),
                }
            )
        for problem in final.get("problems", []):
            problems.append({"partition": values, "problem": problem})
    return {"skipped": skipped, "failed": failed, "problems": problems}


def _distinct(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a temporary file, fsync, rename, then fsync the folder.

    Raises:
        StorageError: a write, fsync or rename failed; ``path`` is unchanged then.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        fsync_path(path.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise StorageError(f"{path}: cannot write: {error.strerror}") from error
