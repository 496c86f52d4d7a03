"""Merging the shards of a CI job matrix into one run with one manifest.

Each shard is an output folder written by ``run --shard K/N``. The merge checks that the
shards belong to one recipe, that shards 1..N are all there exactly once and finished, and
that no partition was committed by two shards. It then writes a new run folder whose
stream files are the shards' files one after another, and whose manifest holds every
shard's page entries with their byte ranges moved to the new offsets.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .errors import RecipeError
from .journal import Journal, fsync_folder, read_journal
from .layout import MANIFEST_NAME, OutputLock, list_runs, next_run_folder, run_codec, stream_path
from .runrecord import write_run_record


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard's finished run, read from its manifest."""

    folder: Path
    index: int
    count: int
    entries: list[dict[str, Any]]

    @property
    def header(self) -> dict[str, Any]:
        return self.entries[0]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged run's folder and its record counts."""

    run_folder: Path
    records: dict[str, int]


def merge(output: Path, sources: list[Path]) -> MergeResult:
    """Merge the shard output folders ``sources`` into a new run under ``output``.

    Raises:
        RecipeError: a shard is missing, repeated, unfinished, of another recipe, or two
            shards committed the same partition; nothing is written then.
    """
    shards = [_read_shard(source) for source in sources]
    _check(shards)

    with OutputLock(output):
        run_folder = next_run_folder(output)
        (run_folder / "data").mkdir(parents=True)
        records = _write(run_folder, sorted(shards, key=lambda shard: shard.index))
        # The merged run is finished, so it describes itself as a finished run does.
        write_run_record(run_folder)
    return MergeResult(run_folder=run_folder, records=records)


def _read_shard(source: Path) -> Shard:
    runs = list_runs(source)
    folder = runs[-1] if runs else source
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        raise RecipeError(f"{source}: no tm-export run found (expected runs/NNNN/{MANIFEST_NAME})")

    entries = read_journal(manifest).entries
    shard = entries[0].get("shard")
    if not shard:
        raise RecipeError(
            f"{folder}: this run was not made with --shard, so there is nothing to merge"
        )
    ends = [entry for entry in entries if entry["t"] == "end"]
    if not ends:
        raise RecipeError(
            f"{folder}: shard {shard[0]}/{shard[1]} has not finished; run it to the end first"
        )
    return Shard(folder=folder, index=shard[0], count=shard[1], entries=entries)


def _check(shards: list[Shard]) -> None:
    if not shards:
        raise RecipeError("no shard folders given")
    first = shards[0]
    for shard in shards[1:]:
        if shard.header["recipe_hash"] != first.header["recipe_hash"]:
            raise RecipeError(
                f"{shard.folder}: this shard was made by another recipe than {first.folder} "
                f"(recipe hash {shard.header['recipe_hash'][:12]}, not {first.header['recipe_hash'][:12]})"
            )
        if run_codec(shard.header) != run_codec(first.header):
            raise RecipeError(
                f"{shard.folder}: this shard's files are compressed with {run_codec(shard.header)}, but "
                f"{first.folder} uses {run_codec(first.header)}; make every shard with the same --compression"
            )
        if shard.count != first.count:
            raise RecipeError(
                f"{shard.folder}: shard of {shard.count}, but {first.folder} is a shard of {first.count}"
            )

    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.index in seen:
            raise RecipeError(
                f"{shard.folder}: shard {shard.index}/{shard.count} is given twice (also {seen[shard.index]})"
            )
        seen[shard.index] = shard.folder
    missing = sorted(set(range(1, first.count + 1)) - set(seen))
    if missing:
        names = ", ".join(f"{index}/{first.count}" for index in missing)
        raise RecipeError(f"missing shard {names}; give all {first.count} shard folders")

    owner: dict[tuple[str, str], int] = {}
    for shard in shards:
        for entry in shard.entries:
            if entry["t"] != "part":
                continue
            key = (entry["s"], entry["p"])
            if owner.get(key, shard.index) != shard.index:
                raise RecipeError(
                    f"{shard.folder}: partition {entry['p']} of stream {entry['s']} was also exported by "
                    f"shard {owner[key]}/{shard.count}; shards overlap, so they cannot be merged"
                )
            owner[key] = shard.index


def _write(run_folder: Path, shards: list[Shard]) -> dict[str, int]:
    header = {
        key: value for key, value in shards[0].header.items() if key not in ("t", "format", "shard")
    }
    header.update(
        started=_now(), merged_from=[str(shard.folder) for shard in shards], version=__version__
    )
    journal = Journal.create(run_folder / MANIFEST_NAME, header)

    streams = list(header["streams"])
    offsets = dict.fromkeys(streams, 0)
    records = dict.fromkeys(streams, 0)
    outcome = "complete"
    with_entries: list[dict[str, Any]] = []
    codec = run_codec(shards[0].header)
    targets = {name: stream_path(run_folder, name, codec).open("wb") for name in streams}
    try:
        for shard in shards:
            for name in streams:
                # Members and frames may follow one another, so compressed files concatenate.
                source = stream_path(shard.folder, name, codec)
                if source.exists():
                    with source.open("rb") as file:
                        shutil.copyfileobj(file, targets[name], 1 << 20)
            for entry in shard.entries[1:]:
                if entry["t"] == "page":
                    moved = dict(
                        entry,
                        start=entry["start"] + offsets[entry["s"]],
                        end=entry["end"] + offsets[entry["s"]],
                    )
                    with_entries.append(moved)
                    records[entry["s"]] += entry["records"]
                elif entry["t"] == "part":
                    with_entries.append(entry)
                elif entry["t"] == "end" and entry.get("outcome") != "complete":
                    outcome = "failures"
            for name in streams:
                offsets[name] = targets[name].tell()
        for target in targets.values():
            target.flush()
            os.fsync(target.fileno())
    finally:
        for target in targets.values():
            target.close()
    fsync_folder(run_folder / "data")

    with_entries.append({"t": "end", "at": _now(), "outcome": outcome, "merged": len(shards)})
    journal.append(with_entries)
    journal.close()
    return records


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def describe(result: MergeResult) -> str:
    """Return a short text report of a merge."""
    lines = [f"merged run: {result.run_folder}"]
    lines += [f"  {name}: {count} records" for name, count in result.records.items()]
    return "\n".join(lines)


__all__ = ["MergeResult", "describe", "merge"]
