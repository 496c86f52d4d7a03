"""Make a finished run folder a BagIt bag (RFC 8493) in place: ``tm-export bag``.

bagit moves everything in the folder into the payload folder ``data/`` and writes the tag
files beside it, so a bagged run reads::

    OUTPUT/runs/0001/
      bagit.txt                 BagIt version and encoding
      bag-info.txt              bagging date, Payload-Oxum, and tm-export's labels
      manifest-sha256.txt       SHA-256 of every payload file
      tagmanifest-sha256.txt    SHA-256 of the tag files above
      data/                     the payload: the run folder as it was
        manifest.jsonl
        run.json
        data/
          STREAM.jsonl

The payload folder is a complete run folder, so every tm-export command that takes a
run folder reads ``data/`` of a bag (``verify.locate_run``), and copying ``data/`` out
gives back the run as it was before bagging. A bag is never modified again: ``canonical``
and ``record`` reject it, so make files canonical before bagging. Bagging writes the run
record first, because the record belongs in the payload.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import bagit  # type: ignore[import-untyped]
import orjson

from . import __version__
from .canonical import remove_leftovers, rewrite_interrupted
from .errors import StorageError
from .layout import DATA_FOLDER, MANIFEST_NAME, bagging_marker, partial_marker, run_codec
from .manifest import latest_session
from .runrecord import RunDamagedError, write_run_record
from .verify import (
    BAG_DECLARATION,
    BAG_TAG_MANIFEST,
    PAYLOAD_ASIDE,
    RunPaths,
    RunStateError,
    bag_complete,
    bagging_entries,
    file_sha256,
    fsync_path,
    interrupted_bag_folder,
    locate_run,
    scan_manifest,
)

logger = logging.getLogger("tm_export.bag")
# bagit logs each error it raises with a traceback, which would break a JSON log; the
# StorageError that make_run_bag raises reports it once.
logging.getLogger("bagit").setLevel(logging.CRITICAL)

#: The checksum algorithm of the bag's manifests; ``verify`` reuses its stream file hashes.
CHECKSUMS = ["sha256"]

#: The tag files that bagit writes, in the order it writes them.
TAG_FILES = (BAG_DECLARATION, "bag-info.txt", "manifest-sha256.txt", BAG_TAG_MANIFEST)


def make_run_bag(run_folder: Path) -> RunPaths:
    """Write the run record of a finished run, then make its folder a bag; return its paths.

    A folder whose bagging was interrupted is first put back as it was and then bagged
    again. The caller must keep other writers away (the engine holds the output lock;
    ``tm-export bag`` takes it). bagit changes the process's working folder while it
    works, so call this when no other thread depends on it.

    Raises:
        RunFolderError: ``run_folder`` is not a run folder.
        RunStateError: the run is already a bag, or is not finished.
        ManifestError: the manifest is damaged.
        RunDamagedError: a stream file does not match the manifest.
        StorageError: a file cannot be written or moved.
    """
    restore_interrupted_bag(run_folder)
    paths = locate_run(run_folder)
    if paths.bagged:
        raise RunStateError(
            f"{run_folder}: the run is already a bag; 'tm-export verify {run_folder}' checks it"
        )
    scan = scan_manifest(paths)
    state = scan.state
    if not scan.finished:
        raise RunStateError(
            f"{run_folder}: the run is unfinished; finish it (run the same 'tm-export run' "
            "command again) before making it a bag"
        )

    if rewrite_interrupted(paths, state, run_codec(state.header)):
        # A bag is final, so its files could never be made canonical after it.
        raise RunStateError(
            f"{run_folder}: a canonical rewrite of the run was interrupted; run 'tm-export "
            f"canonical {run_folder}' to finish it, then make the bag"
        )
    remove_leftovers(paths)
    write_run_record(paths.folder)
    sessions = state.sessions
    last = latest_session(sessions)
    info = {
        "External-Description": (
            f"tm-export run {paths.folder.name}: Tasking Manager API records as JSON Lines, "
            "with the manifest that proves them (manifest.jsonl) and the run record (run.json)"
            + _incremental_note(state.header.get("incremental"))
        ),
        "External-Identifier": f"tm-export recipe hash {state.header.get('recipe_hash')}",
        "TM-Export-Version": __version__,
        "TM-Export-Base-URL": str(last.get("settings", {}).get("base_url") or "unknown"),
        "TM-Release": str(last.get("tm_release") or "unknown"),
    }
    marked = _write_marker(paths.folder)
    try:
        bagit.make_bag(str(paths.folder), bag_info=info, checksums=CHECKSUMS)
    except (OSError, RuntimeError, bagit.BagError) as error:
        # bagit may reject the folder before it moves anything (a file it cannot read), or
        # fail halfway. Either way the folder is put back now, so the run is as it was.
        try:
            restore_interrupted_bag(paths.folder)
        except (StorageError, RunDamagedError):
            logger.warning("the run folder %s stays half made a bag", paths.folder)
        raise StorageError(
            f"{paths.folder}: cannot make the bag: {error}; fix the cause, then run "
            f"'tm-export bag {paths.folder}' again"
        ) from error
    _fsync_bag(paths.folder)
    if marked:
        _remove_marker(paths.folder)
    logger.info("made %s a bag", paths.folder)
    return locate_run(paths.folder)


def _write_marker(folder: Path) -> bool:
    """Record the run folder's entries beside it before bagit moves them, so that a kill
    at any point of the bag step is found and undone (see ``verify.bagging_entries``).

    Returns False when the folder's parent cannot be written: the bag is then made as
    before the marker existed, and a kill during the step may go unnoticed.
    """
    marker = bagging_marker(folder)
    entries = sorted(entry.name for entry in folder.iterdir())
    partial = partial_marker(marker)
    try:
        partial.write_bytes(orjson.dumps({"entries": entries}))
        fsync_path(partial)
        os.replace(partial, marker)
        fsync_path(marker.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        logger.warning(
            "cannot record the run folder's entries in %s (%s), so a kill while the bag is "
            "made may go unnoticed; making it anyway",
            marker,
            error.strerror,
        )
        return False
    return True


def _remove_marker(folder: Path) -> None:
    marker = bagging_marker(folder)
    try:
        marker.unlink(missing_ok=True)
        partial_marker(marker).unlink(missing_ok=True)
        fsync_path(marker.parent)
    except OSError as error:
        raise StorageError(
            f"{marker}: cannot remove the bag step's marker: {error.strerror}"
        ) from error


def _fsync_bag(folder: Path) -> None:
    """Make the bag's tag files and the moved folders durable."""
    try:
        for name in TAG_FILES:
            fsync_path(folder / name)
        fsync_path(folder / DATA_FOLDER)
        fsync_path(folder)
    except OSError as error:
        raise StorageError(f"{folder}: cannot sync the bag to disk: {error.strerror}") from error


def restore_interrupted_bag(folder: Path) -> bool:
    """Put back a run folder whose bagging was interrupted; return True when one was.

    bagit 1.9 moves the folder's entries into a temporary ``tmp*`` folder, renames it to
    ``data`` and then writes the tag files, ``tagmanifest-sha256.txt`` last. A crash leaves
    either the temporary folder, or ``data/manifest.jsonl`` without that last tag file.
    The bag step's marker (see ``verify.bagging_entries``) names the entries the folder had,
    so the temporary folder is distinguished from a user's own. A step of an older version left no
    marker: its temporary folder is then put back only once the manifest has left the top.

    Raises:
        StorageError: a file cannot be moved back.
        RunDamagedError: the half-made bag's files changed since their checksums were written.
    """
    entries = bagging_entries(folder)
    try:
        if entries is not None and bag_complete(folder):
            # Killed after bagit had finished, before the marker was removed.
            _remove_marker(folder)
            return False

        restored = False
        # A put-back killed after it moved the payload aside (see _put_back_payload). Only
        # the marker distinguishes that folder from a user's of the same name.
        # NOTE: without a marker (a parent folder that could not be written), a kill in
        # that put-back leaves the payload aside, for the user to move back.
        for aside in sorted(folder.glob(f"{PAYLOAD_ASIDE}*")):
            if entries is not None and aside.name not in entries and aside.is_dir():
                _move_contents_up(aside, folder)
                restored = True
        temporary = interrupted_bag_folder(folder)
        payload = folder / DATA_FOLDER
        # A plain run has its manifest at the top; data/manifest.jsonl there is a stream file.
        moved = not (folder / MANIFEST_NAME).exists()
        if temporary is not None and (entries is not None or moved):
            _move_contents_up(temporary, folder)
            restored = True
        elif moved and (payload / MANIFEST_NAME).is_file() and not bag_complete(folder):
            _put_back_payload(folder, entries or set())
            restored = True
        if entries is not None:
            # Also a step killed before bagit moved anything: only its marker is left. The
            # marker stays until every entry it lists is back, for the next attempt.
            restored = True
            # lexists: a link of the run counts as back, even when its target is gone.
            missing = sorted(name for name in entries if not os.path.lexists(folder / name))
            if missing:
                raise StorageError(
                    f"{folder}: cannot put back {', '.join(missing[:5])} after an interrupted "
                    f"bagging; restore the run folder from a copy, or delete "
                    f"{bagging_marker(folder)} to go on without them"
                )
            _remove_marker(folder)
    except OSError as error:
        raise StorageError(
            f"{folder}: cannot put back the run folder after an interrupted bagging: "
            f"{error.strerror}"
        ) from error
    if restored:
        logger.warning("put back the run folder %s, whose bagging was interrupted", folder)
    return restored


def _put_back_payload(folder: Path, entries: set[str]) -> None:
    """Move the payload of a bag whose tag files bagit had not all written back up."""
    # Putting the folder back drops the bag's checksums, the evidence of a change.
    changed = changed_payload(folder)
    if changed:
        raise RunDamagedError(
            f"{folder}: the bag's tag manifest is missing or incomplete, and "
            f"manifest-sha256.txt does not match {', '.join(changed[:5])}"
            f"{' and more' if len(changed) > 5 else ''}, so the bag was changed after "
            "it was made. Nothing was changed; restore the bag from a copy"
        )
    # bagit moved every entry into the payload before it wrote a tag file, so the tag files
    # at the top are all its own, even one that has the name of a user's file.
    for name in TAG_FILES:
        (folder / name).unlink(missing_ok=True)

    # The payload folder is also called data; move it aside before its contents go up,
    # under a name that no entry of the run has.
    aside = folder / PAYLOAD_ASIDE
    number = 1
    while aside.exists() or aside.name in entries or (folder / DATA_FOLDER / aside.name).exists():
        number += 1
        aside = folder / f"{PAYLOAD_ASIDE}-{number}"
    os.rename(folder / DATA_FOLDER, aside)
    _move_contents_up(aside, folder)


def changed_payload(folder: Path) -> list[str]:
    """Return the payload files that the bag's payload manifest lists and that are missing
    or hash otherwise, as written there (``data/...``).

    Files that the manifest does not list are not counted: bagit writes the manifest before
    the tag manifest, so a bagging interrupted while writing it leaves it short.
    """
    try:
        text = (folder / "manifest-sha256.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # cut short by the interruption

    changed = []
    for line in lines:
        digest, _, name = line.strip().partition(" ")
        name = name.strip()
        if not name:
            continue
        path = folder / name
        try:
            actual = file_sha256(path)
        except OSError:
            changed.append(name)
            continue
        if actual != digest:
            changed.append(name)
    return changed


def _move_contents_up(source: Path, folder: Path) -> None:
    """Move the entries of ``source`` up into ``folder``, and remove ``source`` once empty.

    An entry whose name ``folder`` has already stays where it is, so nothing at the top is
    replaced.
    """
    clashing = []
    for child in sorted(source.iterdir()):
        if (folder / child.name).exists():
            clashing.append(child.name)
            continue
        os.rename(child, folder / child.name)
    if clashing:
        logger.warning(
            "left %s in %s, since %s has entries of the same names",
            ", ".join(clashing),
            source,
            folder,
        )
    else:
        source.rmdir()
    fsync_path(folder)


def _incremental_note(baseline: dict[str, Any] | None) -> str:
    """Return the description's note that an incremental run holds only what changed."""
    if not baseline:
        return ""
    previous = ", ".join(baseline.get("previous", []))
    return (
        f"; an incremental run: only what changed since {baseline.get('since')}, on top of the "
        f"earlier runs {previous}"
    )
