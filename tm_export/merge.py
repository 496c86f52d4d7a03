"""Merging the shards of a CI job matrix into one run with one manifest.

A shard is given as the output folder of a ``run --shard K/N`` job (its last run is
merged) or as a run folder, also one made a bag. The merge checks that the shards belong
to one recipe, that shards 1..N are all there exactly once, finished and of one kind (full
or incremental), that their files match their manifests (and run records and bags), that
no partition was committed by two shards, and that no shard file was made canonical
(sorting moves lines across the page ranges that the merge copies). The output folder must
not overlap a shard, and its last run, if any, must be a finished run of the recipe. It
then writes a new run folder whose stream files are the shards' files one after another,
and whose manifest contains every shard's sessions, deleted projects, stream problems and
page entries, with the byte ranges moved to the new offsets.

The merged run is built in a hidden folder beside the runs (``runs/.NNNN.merging``) and
renamed to its number once its files, manifest and run record are complete. So an
interrupted merge never leaves a half-written run that would block the next merge or run;
the next merge deletes what it left.

The merged run starts when the earliest shard started, so that an incremental run after it
requests everything updated since then, and ends when the last shard ended.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .codec import describe_codec
from .errors import RecipeError
from .journal import Journal, fsync_folder, read_journal
from .layout import (
    MANIFEST_NAME,
    MERGING_SUFFIX,
    OutputLock,
    build_run_folder,
    check_output,
    in_use_error,
    list_runs,
    next_run_folder,
    output_in_use,
    remove_unfinished_runs,
    run_codec,
    stream_path,
)
from .manifest import latest_session, load_state, sent_token
from .params import partition_order
from .runrecord import require_verified, write_run_record
from .timestamps import utc_now_text
from .verify import RunPaths, check_run, find_runs, scan_manifest
from .walk import needs_new_run
from .words import counted

logger = logging.getLogger("tm_export.merge")

#: The end of the name of a merged run's folder while it is being written.


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard's finished run, read from its manifest."""

    paths: RunPaths
    index: int
    count: int
    entries: list[dict[str, Any]]

    @property
    def folder(self) -> Path:
        """The run folder, as messages name it."""
        return self.paths.folder

    @property
    def header(self) -> dict[str, Any]:
        return self.entries[0]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged run's folder, its record counts and its failed partitions."""

    run_folder: Path
    records: dict[str, int]
    failed: dict[str, list[str]]
    """Per stream, the ids of the partitions whose final state in their shard is failed."""
    problems: dict[str, int] = field(default_factory=dict)
    """Per stream with any, the problems of the merged run, as ``status`` lists them."""
    already_merged: bool = False
    """True when ``run_folder`` is an earlier merge of these shards, whose manifests have not
    changed since."""


def merge(output: Path, sources: list[Path]) -> MergeResult:
    """Merge the shard output folders ``sources`` into a new run under ``output``.

    Raises:
        RecipeError: a shard is missing, repeated, unfinished, of another recipe or kind,
            made canonical, overlaps ``output``, or two shards committed the same partition;
            or the last run in ``output`` is unfinished or of another recipe; or ``output``
            is, or lies inside, a run or a snapshot. Nothing is written then.
        RunDamagedError: a shard's files do not match its manifest, run record or bag;
            nothing is written then.
        OutputLockedError: another process is writing ``output``.
    """
    check_output(output)
    shards = sorted((_read_shard(source) for source in sources), key=lambda shard: shard.index)
    _check(shards)
    if output_in_use(output):
        # Its last run is being written, which _check_output would call unfinished.
        raise in_use_error(output)
    # Checked before the lock too, so that a rejected merge creates nothing in ``output``.
    _check_output(output, shards)
    _warn_other_servers(shards)
    for shard in shards:
        # Copying a damaged shard would give it a new, matching SHA-256 in the merged run.
        require_verified(check_run(shard.paths), "so no shard was merged")
    fingerprints = [_fingerprint(shard) for shard in shards]

    with OutputLock(output):
        remove_unfinished_runs(output, MERGING_SUFFIX, "a merge")
        # Another merge or run may have written to ``output`` since the first check.
        last = _check_output(output, shards)
        if last is not None and last[1].get("merged_manifests") == fingerprints:
            # A retried CI job merges again: a second copy of the same run would only hide
            # the first from the next run, and the first may have changed since. The hashes
            # name the shards whatever paths they are given by.
            return _earlier_merge(last[0], shards, output)
        run_folder = _build(output, shards, fingerprints)

    failed, stuck = _failed_partitions([shard.entries for shard in shards])
    _warn_of_failed(failed, stuck, "the shards left", shards, output)
    return MergeResult(
        run_folder=run_folder,
        records=_record_counts(shards),
        failed=failed,
        problems=_problem_counts(run_folder),
    )


def _problem_counts(run_folder: Path) -> dict[str, int]:
    """Return the count of problems of each stream of the merged run that has any."""
    state, _ = load_state(run_folder / MANIFEST_NAME, keep_done_pages=False)
    counts = {name: sum(1 for _ in stream.all_problems()) for name, stream in state.streams.items()}
    return {name: count for name, count in counts.items() if count}


def _build(output: Path, shards: list[Shard], fingerprints: list[str]) -> Path:
    """Write the merged run as the next run folder, whole or not at all; return its folder."""
    run_folder = next_run_folder(output)

    def write(building: Path) -> None:
        _write(building, shards, fingerprints)
        # The merged run is finished, so it describes itself as a finished run does.
        write_run_record(building, run_name=run_folder.name)

    build_run_folder(run_folder, MERGING_SUFFIX, write)
    return run_folder


def _earlier_merge(earlier: RunPaths, shards: list[Shard], output: Path) -> MergeResult:
    """Report the run that an earlier merge of these shards wrote, and what it has failed."""
    entries = read_journal(earlier.manifest).entries
    failed, stuck = _failed_partitions([entries])
    if earlier.bagged or any(entry["t"] == "canonical" for entry in entries):
        # run --retry-failed refuses such a run, so its command is not offered.
        sealed = "it is a bag" if earlier.bagged else "its files were made canonical"
        _warn_of_failed(failed, stuck, "the merged run still has", shards, output, sealed)
    else:
        _warn_of_failed(failed, stuck, "the merged run still has", shards, output)
    return MergeResult(earlier.folder, records={}, failed=failed, already_merged=True)


def _warn_of_failed(
    failed: dict[str, list[str]],
    stuck: int,
    lead: str,
    shards: list[Shard],
    output: Path,
    sealed: str | None = None,
) -> None:
    """Log the failed partitions, if any, and the command that fetches them again.

    ``sealed`` is the reason why no page can be added to the merged run, which then has no
    such command. ``stuck`` counts the failed partitions that the command would fail again.
    """
    if not failed:
        return
    if sealed is not None:
        logger.warning(
            "%s %s; %s, so 'run --retry-failed' cannot add pages to it",
            lead,
            _failed_text(failed),
            sealed,
        )
        return
    total = sum(len(ids) for ids in failed.values())
    if stuck == total:
        logger.warning(
            "%s %s; %s a changed recipe or the key of another user, which only new runs "
            "take: fix it, and make the shards again with --start-over",
            lead,
            _failed_text(failed),
            "it needs" if total == 1 else "they need",
        )
        return
    logger.warning(
        "%s %s; to fetch %s again, run%s%s",
        lead,
        _failed_text(failed),
        "it" if total == 1 else "them",
        _retry_command(shards, output),
        f" ({stuck} of them {'needs' if stuck == 1 else 'need'} a changed recipe or the key of "
        "another user instead, which only --start-over takes)"
        if stuck
        else "",
    )


def _fingerprint(shard: Shard) -> str:
    """Return the SHA-256 of a shard's manifest, which changes whenever its run does."""
    with shard.paths.manifest.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _record_counts(shards: list[Shard]) -> dict[str, int]:
    """Return the records of each stream, in the recipe's order, summed over the shards."""
    records = dict.fromkeys(shards[0].header["streams"], 0)
    for shard in shards:
        for entry in shard.entries:
            if entry["t"] == "page":
                records[entry["s"]] += entry["records"]
    return records


def _failed_partitions(runs: list[list[dict[str, Any]]]) -> tuple[dict[str, list[str]], int]:
    """Return, per stream, the partitions whose last final entry in ``runs`` (the entries of
    one or more manifests) is failed, and how many of them --retry-failed would fail again
    (see ``walk.needs_new_run``)."""
    final: dict[tuple[str, str], dict[str, Any]] = {}
    for entries in runs:
        for entry in entries:
            if entry["t"] == "part":
                final[(entry["s"], entry["p"])] = entry
    failed: dict[str, list[str]] = {}
    stuck = 0
    for (stream, partition_id), entry in sorted(
        final.items(), key=lambda item: (item[0][0], partition_order(item[0][1]))
    ):
        if entry["state"] == "failed":
            failed.setdefault(stream, []).append(partition_id)
            stuck += needs_new_run(entry)
    return failed, stuck


def _failed_text(failed: dict[str, list[str]], limit: int = 5) -> str:
    """Name failed partitions, at most ``limit`` a stream, such as ``stats {"project_id":7}``."""
    total = sum(len(ids) for ids in failed.values())
    parts = []
    for stream, ids in failed.items():
        more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
        parts.append(f"{stream} {', '.join(ids[:limit])}{more}")
    return f"{counted(total, 'failed partition')}: {'; '.join(parts)}"


def _retry_command(shards: list[Shard], output: Path) -> str:
    """Return the command that fetches the shards' failed partitions on the merged run."""
    options = ["--retry-failed", "--output", os.path.abspath(output)]
    # The merged run's newest session gives the base URL that a session on it must use.
    sessions = [entry for shard in shards for entry in shard.entries if entry["t"] == "session"]
    return _run_command([shards[-1].header, *sessions], options, "the shards ran in")


def _run_command(
    entries: list[dict[str, Any]], options: list[str], where: str, *, incremental: bool = False
) -> str:
    """Return ``: COMMAND``, a ``tm-export run`` of the recipe and base URL of a run's
    manifest, preceded by where to run it when the recipe path is not found from here.

    Output folders in ``options`` should be absolute, so that the command also works from
    the folder that ``where`` names, where a relative recipe path is valid.
    """
    sessions = [entry for entry in entries if entry["t"] == "session"]
    base_url = latest_session(sessions).get("settings", {}).get("base_url")
    recipe = str(entries[0].get("recipe_path", "RECIPE"))
    # Without --base-url the command would go to the production API. A run stopped before
    # its first session recorded no URL, so the user fills it in.
    words = ["tm-export", "run", recipe, "--base-url", str(base_url or "API_URL")]
    if incremental:
        words.append("--incremental")
    command = shlex.join(words + options)
    if not base_url:
        command += " (API_URL: the base URL that the other shards read from)"
    if not Path(recipe).is_absolute() and not Path(recipe).exists():
        return (
            f" in the folder {where}, since the recipe path {recipe} is relative to it: {command}"
        )
    return f": {command}"


def _read_shard(source: Path) -> Shard:
    paths = find_runs(source)[-1]
    folder = paths.folder
    entries = read_journal(paths.manifest).entries
    shard = entries[0].get("shard")
    if not shard:
        raise RecipeError(
            f"{folder}: this run was not made with --shard, so there is nothing to merge"
        )
    if _last_end(entries) is None:
        options = ["--shard", f"{shard[0]}/{shard[1]}", "--output", os.path.abspath(source)]
        sessions = [entry for entry in entries if entry["t"] == "session"]
        # A stopped --retry-failed session is resumed by the same command, which retries what
        # is still failed. Without the option, the run would end without retrying it.
        retrying = False
        for option in ("retry_failed", "retry_skipped"):
            if sessions and sessions[-1].get(option):
                options.append("--" + option.replace("_", "-"))
                retrying = True
        # --incremental as the command that made it had, but not beside a retry option, with
        # which it would begin a new run once this one has ended.
        incremental = bool(entries[0].get("incremental")) and not retrying
        command = _run_command(entries, options, "the shard ran in", incremental=incremental)
        raise RecipeError(
            f"{folder}: shard {shard[0]}/{shard[1]} has not finished; run it to the end "
            f"first, with the command that made it{command}"
        )
    canonical = sorted({entry["s"] for entry in entries if entry["t"] == "canonical"})
    if canonical:
        raise RecipeError(
            f"{folder}: the files of shard {shard[0]}/{shard[1]} were made canonical "
            f"({', '.join(canonical)}), which moves lines out of the pages that the merge "
            "copies; merge shards as their runs wrote them (run this shard again with "
            "--start-over), then run 'tm-export canonical' on the merged run"
        )
    return Shard(paths=paths, index=shard[0], count=shard[1], entries=entries)


def _last_end(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Return the end entry of a run's last session, or None when that session has not ended.

    A run that ended and was then resumed (``--retry-failed``) and killed has an end entry
    only before its last session.
    """
    for entry in reversed(entries):
        if entry["t"] == "end":
            end: dict[str, Any] = entry
            return end
        if entry["t"] == "session":
            return None
    return None


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
                f"{shard.folder}: this shard's files are {describe_codec(run_codec(shard.header))}, "
                f"but those of {first.folder} are {describe_codec(run_codec(first.header))}; make "
                "every shard with the same --compression"
            )
        if bool(shard.header.get("incremental")) != bool(first.header.get("incremental")):
            kinds = {True: "an incremental run", False: "a full run"}
            raise RecipeError(
                f"{shard.folder}: this shard is {kinds[bool(shard.header.get('incremental'))]}, "
                f"but {first.folder} is {kinds[bool(first.header.get('incremental'))]}; give the "
                "runs of one night, whose shards are all full or all incremental"
            )
        if _earlier_runs(shard) != _earlier_runs(first):
            raise RecipeError(
                f"{shard.folder}: this shard builds on {_earlier_runs(shard)} earlier runs, but "
                f"{first.folder} on {_earlier_runs(first)}; give the runs of one night"
            )
        if shard.count != first.count:
            raise RecipeError(
                f"{shard.folder}: shard of {shard.count}, but {first.folder} is a shard of {first.count}"
            )
        if _reader(shard) != _reader(first):
            raise RecipeError(
                f"{shard.folder}: shard {shard.index}/{shard.count} read {_reader(shard)}, but "
                f"shard {first.index}/{first.count} {_reader(first)}. Users see different private "
                "projects, so the merged run would lack what only one of them could read, with no "
                "sign. Run the shard again with --start-over and the key the others sent, then "
                "merge again"
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


def _reader(shard: Shard) -> str:
    """Describe whose view of the data a shard read: the TM users of its keys, or whether
    it sent a key at all (sessions recorded before the user id was)."""
    sessions = [entry for entry in shard.entries if entry["t"] == "session"]
    users = sorted({session["user"] for session in sessions if session.get("user")})
    views = [f"as TM user {user}" for user in users]
    if not users and any(sent_token(session) for session in sessions):
        views.append("with an API token")
    if not all(sent_token(session) for session in sessions):
        views.append("without an API token")
    return " and ".join(views)


def _warn_other_servers(shards: list[Shard]) -> None:
    """Warn when the shards read from different API URLs, which one server may have."""
    urls: dict[str, list[int]] = {}
    for shard in shards:
        for entry in shard.entries:
            if entry["t"] == "session":
                url = str(entry.get("settings", {}).get("base_url", "")).rstrip("/")
                urls.setdefault(url, []).append(shard.index)
    if len(urls) > 1:
        listing = "; ".join(
            f"{url} (shard {', '.join(map(str, sorted(set(indexes))))})"
            for url, indexes in sorted(urls.items())
        )
        logger.warning(
            "the shards read from different API URLs: %s; merge them only if these are one "
            "Tasking Manager",
            listing,
        )


def _earlier_runs(shard: Shard) -> int:
    baseline = shard.header.get("incremental")
    return len(baseline["previous"]) if baseline else 0


def _check_output(output: Path, shards: list[Shard]) -> tuple[RunPaths, dict[str, Any]] | None:
    """Refuse an output folder that overlaps a shard, or whose last run the merge would hide.

    Returns the last run's paths and manifest header, or None when there is no run yet.
    """
    target = output.resolve()
    for shard in shards:
        home = (shard.paths.output or shard.folder).resolve()
        if target == home or target in home.parents or home in target.parents:
            raise RecipeError(
                f"{output}: this output folder overlaps shard {shard.folder}, and a merge never "
                "writes into a shard; give another output folder"
            )

    runs = find_runs(output) if list_runs(output) else []
    if not runs:
        return None
    last = scan_manifest(runs[-1])
    if last.state.header.get("recipe_hash") != shards[0].header["recipe_hash"]:
        raise RecipeError(
            f"{output}: the runs in this output folder were made by another recipe than the "
            "shards, so an incremental run could not build on the merged run; give another "
            "output folder"
        )
    if not last.finished:
        raise RecipeError(
            f"{runs[-1].folder}: this run is unfinished, and a merged run beside it would hide "
            "it from the next run of its command; finish it first, or give another output folder"
        )
    return runs[-1], last.state.header


def _write(run_folder: Path, shards: list[Shard], fingerprints: list[str]) -> None:
    header = {
        key: value for key, value in shards[0].header.items() if key not in ("t", "format", "shard")
    }
    # Start times are ISO 8601 UTC text of one layout, so the least string is the earliest.
    header.update(
        started=min(shard.header["started"] for shard in shards),
        merged_at=utc_now_text(),
        merged_from=[str(shard.folder.resolve()) for shard in shards],
        merged_manifests=fingerprints,
        version=__version__,
    )
    incremental = _merged_baseline(shards)
    if incremental is not None:
        header["incremental"] = incremental
    journal = Journal.create(run_folder / MANIFEST_NAME, header)

    streams = list(header["streams"])
    offsets = dict.fromkeys(streams, 0)
    outcome = "complete"
    ended = ""
    deleted: set[int] = set()
    feed_problems: set[tuple[str, str]] = set()
    with_entries: list[dict[str, Any]] = []
    codec = run_codec(shards[0].header)
    targets = {name: stream_path(run_folder, name, codec).open("wb") for name in streams}
    try:
        for shard in shards:
            for name in streams:
                # Members and frames may follow one another, so compressed files concatenate.
                source = shard.paths.stream_file(name, codec)
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
                elif entry["t"] in ("part", "session", "token"):
                    # A token entry follows its session, as in the shard.
                    with_entries.append(entry)
                elif entry["t"] == "deleted" and entry["project_id"] not in deleted:
                    # Every shard of an incremental run checks the same archived projects.
                    deleted.add(entry["project_id"])
                    with_entries.append(entry)
                elif entry["t"] == "feed" and (entry["s"], entry["problem"]) not in feed_problems:
                    # Every shard reads every record of the parent stream, so each one finds
                    # the same from: field without a value.
                    feed_problems.add((entry["s"], entry["problem"]))
                    with_entries.append(entry)
                elif entry["t"] == "end":
                    ended = max(ended, str(entry.get("at", "")))
            # A shard run again with --retry-failed ends its last session complete, even
            # though an earlier session ended with failures.
            if (_last_end(shard.entries) or {}).get("outcome") != "complete":
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

    end = {"t": "end", "at": ended or utc_now_text(), "outcome": outcome, "merged": len(shards)}
    with_entries.append(end)
    journal.append(with_entries)
    journal.close()


def _merged_baseline(shards: list[Shard]) -> dict[str, Any] | None:
    """Return the incremental baseline of merged incremental shards, or None.

    Each shard built on earlier runs in its own output folder, so the merged header names
    those runs by absolute path (a resume of the merged run finds them there), and takes
    the earliest ``since``.
    """
    baselines = [(shard, shard.header.get("incremental")) for shard in shards]
    if not any(baseline for _, baseline in baselines):
        return None
    searched = [
        baseline.get("search_since", baseline["since"]) for _, baseline in baselines if baseline
    ]
    return {
        "since": min(baseline["since"] for _, baseline in baselines if baseline),
        # A shard whose search requested every project makes the merged search one too.
        "search_since": None if None in searched else min(searched),
        "previous": [
            str((shard.folder.parent / name).resolve())
            for shard, baseline in baselines
            if baseline
            for name in baseline["previous"]
        ],
    }


def describe(result: MergeResult) -> str:
    """Return a short text report of a merge."""
    if result.already_merged:
        return (
            f"already merged: {result.run_folder} is a merge of these shards as they are now, "
            f"so nothing was written; 'tm-export status {result.run_folder}' shows what it holds"
        )
    lines = [f"merged run: {result.run_folder}"]
    lines += [f"  {name}: {counted(count, 'record')}" for name, count in result.records.items()]
    if result.failed:
        lines.append(f"  {_failed_text(result.failed)}")
    if result.problems:
        counts = ", ".join(f"{count} of {name}" for name, count in result.problems.items())
        streams = "this stream" if len(result.problems) == 1 else "these streams"
        lines.append(
            f"  problems: {counts}, so {streams} may lack records; "
            f"'tm-export status {result.run_folder}' lists them"
        )
    return "\n".join(lines)


__all__ = ["MergeResult", "describe", "merge"]
