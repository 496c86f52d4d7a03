"""The output folder layout and its lock.

::

    OUTPUT/
      .lock                     held by the process writing any run below
      runs/
        0001/                   one run: a first export, resumed until it finishes
          manifest.jsonl        the manifest journal (see journal.py)
          data/
            STREAM.jsonl        one JSON Lines file per stream
        0002/                   a later run (--start-over), beside the first
        .0003.starting/         a run folder being made (run), renamed to 0003 once its
                                manifest is written
        .0003.merging/          the same for a merged run (merge)

Room is left for what later versions add: compressed stream files
(``STREAM.jsonl.gz``, ``STREAM.jsonl.zst``) and shard folders within a run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .codec import SUFFIXES, Codec
from .errors import OutputLockedError, RecipeError, StorageError
from .journal import fsync_folder

logger = logging.getLogger("tm_export.layout")

MANIFEST_NAME = "manifest.jsonl"
#: The file of a snapshot folder (``tm-export snapshot``) that names where its records come from.
SNAPSHOT_RECORD = "snapshot.json"
#: Inside a run folder: response bodies too large for memory, while they are processed.
SPOOL_FOLDER = ".spool"
DATA_FOLDER = "data"
#: Ends the name of the hidden folder beside the runs (``runs/.0002.starting``) in which a
#: new run folder gets its data folder and manifest before it is renamed to its number.
STARTING_SUFFIX = ".starting"
#: The same for the run folder that ``tm-export merge`` writes.
MERGING_SUFFIX = ".merging"


def path_problem(path: Path) -> str | None:
    """Return why no folder can be made at ``path``, as a message, or None when one can.

    The reasons are a name that the system's file name encoding cannot hold (a C locale
    without UTF-8 mode), and a symbolic link on the path that leads nowhere.
    """
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        encoding = sys.getfilesystemencoding()
        advice = (
            "choose another name"
            if encoding.lower().replace("-", "") == "utf8"
            else "set a UTF-8 locale, such as LC_ALL=C.UTF-8, or choose a name of ASCII characters"
        )
        return f"'{path}' cannot be written as a file name in this system's encoding ({encoding}); {advice}"

    for candidate in (path, *path.parents):
        try:
            # exists() is false for a link whose target is missing or that loops.
            broken = candidate.is_symlink() and not candidate.exists()
        except OSError:
            return None  # not readable here: creating the folder reports the real error
        if broken:
            return (
                f"'{candidate}' is a symbolic link to '{os.readlink(candidate)}', which leads to "
                "no folder (its target is missing, or the links form a loop); fix the link or "
                "choose another folder path"
            )
    return None


def check_output(output: Path) -> None:
    """Raise RecipeError for an output folder that cannot be made (see ``path_problem``), or
    that is, or lies inside, a run or a snapshot.

    An export there would start a run of its own inside one that status, verify and
    snapshot read, and they would not see it. Only the folders that tm-export makes count,
    so that files of the same names elsewhere stop nothing. The path is walked up as given
    and with links resolved, so that a runs/ folder linked to another disk counts too.
    """
    problem = path_problem(output) or path_problem(runs_folder(output))
    if problem is not None:
        raise RecipeError(problem)
    absolute = Path(os.path.abspath(output))
    for start in dict.fromkeys((absolute, output.resolve())):
        for folder in (start, *start.parents):
            owner: Path | None = None
            if _is_run(folder):
                kind = "run folder"
                owner = folder.parent.parent
            elif _is_snapshot(folder):
                kind = "snapshot"
            elif folder.name == "runs" and any(_is_run(child) for child in _subfolders(folder)):
                kind = "runs/ folder of an output folder"
                owner = folder.parent
            else:
                continue
            where = "is" if folder == start else f"is inside {folder}, which is"
            advice = f"the output folder itself ({owner})" if owner else "an output folder"
            raise RecipeError(f"{output} {where} a {kind}; give {advice} or a new one")


def run_home(folder: Path) -> Path:
    """Return the run folder of ``folder``: the bag itself for a bag's payload folder."""
    if folder.name == DATA_FOLDER and is_bag(folder.parent):
        return folder.parent
    return folder


def _is_run(folder: Path) -> bool:
    """Tell whether ``folder`` is a run folder in an output folder's runs/ folder."""
    if folder.parent.name != "runs" or not folder.name.isdigit():
        return False
    return (folder / MANIFEST_NAME).is_file() or is_bag(folder)


def _is_snapshot(folder: Path) -> bool:
    """Tell whether ``folder`` contains a snapshot that ``tm-export snapshot`` wrote."""
    try:
        record = json.loads((folder / SNAPSHOT_RECORD).read_bytes())
    except (OSError, ValueError):
        return False
    tool = record.get("tool") if isinstance(record, dict) else None
    return isinstance(tool, dict) and tool.get("name") == "tm-export"


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir()]
    except OSError:
        return []


def runs_folder(output: Path) -> Path:
    return output / "runs"


def list_runs(output: Path) -> list[Path]:
    """Return the run folders of an output folder, oldest first, passing over those that a
    killed start left without anything (see ``never_started``)."""
    return [folder for folder in _numbered_folders(output) if not never_started(folder)]


def _numbered_folders(output: Path) -> list[Path]:
    folder = runs_folder(output)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_run_folder(output: Path) -> Path:
    runs = _numbered_folders(output)
    number = int(runs[-1].name) + 1 if runs else 1
    return runs_folder(output) / f"{number:04d}"


def never_started(run_folder: Path) -> bool:
    """Tell whether a run folder contains nothing that a run committed: no file at any
    depth but the temporary copy of a manifest that was never renamed into place.

    Versions that made the run folder before its manifest could leave such a folder when
    killed in between. It proves nothing, so it may be deleted or passed over.
    """
    if (run_folder / MANIFEST_NAME).exists():
        return False
    for path in run_folder.rglob("*"):
        if path.is_dir():
            continue
        if path.parent == run_folder and path.name == f"{MANIFEST_NAME}.tmp":
            continue
        return False
    return True


def bagging_marker(folder: Path) -> Path:
    """Return the file that lists a run folder's entries while the folder is made a bag.

    It sits beside the folder, since bagit moves every entry of the folder itself. The
    path is resolved first, so that ``.`` or a link names the folder's own place.
    """
    resolved = folder.resolve()
    return resolved.parent / f".{resolved.name}.bagging"


def partial_marker(marker: Path) -> Path:
    """Return where a bag step's marker is written before a rename makes it whole."""
    return marker.with_name(marker.name + ".partial")


def build_run_folder(run_folder: Path, suffix: str, fill: Callable[[Path], None]) -> None:
    """Make the run folder ``run_folder`` whole or not at all.

    A hidden folder beside it (``.NNNN`` and ``suffix``) gets a data folder and what
    ``fill`` writes there, and is then renamed to ``run_folder``. So a crash never leaves a
    run folder without its manifest, which would stop every later command on the output
    folder. Any exception, a Ctrl-C included, removes the hidden folder; a kill leaves it
    for ``remove_unfinished_runs``.

    Raises:
        StorageError: the folder cannot be made or renamed.
    """
    building = run_folder.with_name(f".{run_folder.name}{suffix}")
    try:
        (building / DATA_FOLDER).mkdir(parents=True)
        fill(building)
        fsync_folder(building)
        # A bag step killed in an earlier folder of this name, deleted since, left a marker
        # (or the start of one) that is not this folder's.
        marker = bagging_marker(run_folder)
        marker.unlink(missing_ok=True)
        partial_marker(marker).unlink(missing_ok=True)
        building.rename(run_folder)
        fsync_folder(run_folder.parent)
    except OSError as error:
        shutil.rmtree(building, ignore_errors=True)
        raise StorageError(
            f"{run_folder}: cannot create the run folder: {error.strerror}; make the output "
            "folder writable or free some space, then run the same command again"
        ) from error
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def remove_unfinished_runs(output: Path, suffix: str, left_by: str) -> None:
    """Delete what killed commands left while they made a run folder: the hidden folders
    (``runs/.NNNN`` and ``suffix``) of ``left_by`` (for the log), and numbered folders that
    contain nothing (see ``never_started``), which earlier versions could leave.

    Call it under the output lock, which no other process making a run folder holds.
    """
    folder = runs_folder(output)
    if not folder.is_dir():
        return
    for hidden in sorted(folder.glob(f".*{suffix}")):
        logger.warning("deleting %s, left by %s that was killed", hidden, left_by)
        shutil.rmtree(hidden)
    for numbered in _numbered_folders(output):
        if never_started(numbered):
            logger.warning(
                "deleting %s, a run folder without a manifest or any data, left by a command "
                "killed while it made the folder",
                numbered,
            )
            shutil.rmtree(numbered)


def is_bag(run_folder: Path) -> bool:
    """Tell whether a run folder was made a BagIt bag (its files then sit under ``data/``)."""
    return (run_folder / "bagit.txt").is_file()


def stream_path(run_folder: Path, stream: str, codec: Codec = "none") -> Path:
    return run_folder / DATA_FOLDER / f"{stream}.jsonl{SUFFIXES[codec]}"


def run_codec(header: dict[str, object]) -> Codec:
    """Return the compression a run's manifest header records (``none`` before it existed)."""
    codec = header.get("compression")
    if codec == "gzip":
        return "gzip"
    if codec == "zstd":
        return "zstd"
    return "none"


def in_use_error(output: Path) -> OutputLockedError:
    """Return the error for an output folder whose lock another process holds."""
    return OutputLockedError(
        f"{output}: another tm-export process is writing this output folder; wait for it to "
        "finish, or choose another output folder"
    )


def output_in_use(output: Path) -> bool:
    """Tell whether another process holds the lock of ``output``, without creating anything."""
    try:
        with (output / ".lock").open("rb") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    except OSError:
        # No lock file (or none that can be read): OutputLock reports any real problem.
        return False
    return False


class OutputLock:
    """An exclusive lock on an output folder, released when the process ends."""

    def __init__(self, output: Path) -> None:
        self._path = output / ".lock"
        self._file: BinaryIO | None = None

    def __enter__(self) -> OutputLock:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a+b")
        except OSError as error:
            raise StorageError(
                f"{self._path.parent}: cannot create or write the output folder: "
                f"{error.strerror}; choose a folder you can write to, with --output or the "
                "recipe's output"
            ) from error
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise in_use_error(self._path.parent) from None
        self._file.truncate(0)
        self._file.write(f"{os.getpid()}\n".encode())
        self._file.flush()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
