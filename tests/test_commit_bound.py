"""Grouped commits (``Committer.run``) and the bound on pages written but not committed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from tm_export import manifest
from tm_export.journal import Journal
from tm_export.manifest import Committer
from tm_export.sink import StreamFile

ENTRY = {"p": "{}", "n": 1, "records": 1, "dups": 0, "pages": 1, "total": 1, "next": False}


@contextmanager
def committer(tmp_path: Path) -> Iterator[Committer]:
    journal = Journal.create(tmp_path / "manifest.jsonl", {"recipe": "test"})
    file = StreamFile.open(tmp_path / "projects.jsonl", 0)
    try:
        yield Committer(journal, {"projects": file})
    finally:
        file.close()
        journal.close()


@pytest.fixture
def inline_fsyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each commit's fsyncs in the event loop's thread, so that a test sees when one ends.

    With a worker thread, ``anyio.wait_all_tasks_blocked`` may return while a commit still
    waits for its fsyncs.
    """

    async def run_sync(function: Callable[..., object], *args: object) -> object:
        return function(*args)

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", run_sync)


def write_pages(commits: Committer, *numbers: int) -> None:
    for number in numbers:
        commits.write_page("projects", b'{"a":%d}\n' % number, {**ENTRY, "n": number})


def committed_by_run(tmp_path: Path, interval: float, steps: list[tuple[int, ...]]) -> list[int]:
    """Write each step's pages while ``Committer.run`` runs; return the pages committed after each."""
    seen: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, interval)
            for numbers in steps:
                write_pages(commits, *numbers)
                await anyio.wait_all_tasks_blocked()
                seen.append(commits.pages_committed)
            group.cancel_scope.cancel()

    with committer(tmp_path) as commits:
        anyio.run(main)
    return seen


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_groups_pages_within_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    # The first page is committed at once, and the next three wait for the interval to pass.
    assert committed_by_run(tmp_path, 3600, [(1,), (2,), (3,), (4,)]) == [1, 1, 1, 1]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_commits_at_half_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    # Four uncommitted pages are half the bound of eight: they are committed at once.
    steps = [(1,), (2, 3, 4), (5,), (6, 7, 8, 9), (10,)]
    assert committed_by_run(tmp_path, 3600, steps) == [1, 1, 5, 9, 9]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_without_interval_commits_each_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    assert committed_by_run(tmp_path, 0, [(1,), (2, 3), (4,)]) == [1, 3, 4]


def test_fetch_waits_for_commit_at_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "2")
    events: list[str] = []

    async def fetch_third_page() -> None:
        await commits.wait_for_room()
        events.append("third page may be fetched")

    async def main() -> None:
        commits.write_page("projects", b'{"a":1}\n', ENTRY)
        await commits.wait_for_room()
        commits.write_page("projects", b'{"a":2}\n', {**ENTRY, "n": 2})
        async with anyio.create_task_group() as group:
            group.start_soon(fetch_third_page)
            await anyio.wait_all_tasks_blocked()
            events.append("committing")
            await commits.commit()

    with committer(tmp_path) as commits:
        anyio.run(main)

    assert events == ["committing", "third page may be fetched"]
    assert commits.pages_committed == 2


def test_bound_is_not_reached_below(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "3")

    async def main() -> None:
        for number in (1, 2):
            await commits.wait_for_room()
            commits.write_page("projects", b'{"a":1}\n', {**ENTRY, "n": number})
        # Two pages are below the bound of three: this returns at once (pytest-timeout
        # ends the test if it waits).
        await commits.wait_for_room()

    with committer(tmp_path) as commits:
        anyio.run(main)

    assert commits.pages_committed == 0
