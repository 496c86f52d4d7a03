"""Grouped commits (``Committer.run``) and the bound on pages fetched or not yet committed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import orjson
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
    """Run each commit's fsyncs in the event loop's thread, so that a test can wait for one to end.

    With a worker thread, ``anyio.wait_all_tasks_blocked`` may return while a commit still
    waits for its fsyncs.
    """

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", inline_run_sync)


async def inline_run_sync(function: Callable[..., object], *args: object) -> object:
    return function(*args)


class ManualClock:
    """A clock that moves only when the test advances it, so that the test ends each pause."""

    def __init__(self) -> None:
        self.now = 0.0
        self._moved = anyio.Event()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be a non-negative number")  # as anyio.sleep does
        until = self.now + seconds
        while self.now < until:
            await self._moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._moved.set()
        self._moved = anyio.Event()


def write_pages(commits: Committer, *numbers: int) -> None:
    for number in numbers:
        commits.write_page("projects", b'{"a":%d}\n' % number, {**ENTRY, "n": number})


def committed_by_run(
    tmp_path: Path,
    interval: float | None,
    steps: list[tuple[int, ...] | float],
    clock: ManualClock | None = None,
) -> list[int]:
    """Run ``Committer.run`` through the steps; return the pages committed after each.

    A step is the numbers of pages to write, or seconds to advance the clock by. With
    ``interval`` None, the run keeps its default interval.
    """
    seen: list[int] = []
    clock = clock or ManualClock()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            if interval is None:
                group.start_soon(lambda: commits.run(clock=clock))
            else:
                group.start_soon(commits.run, interval, clock)
            for step in steps:
                if isinstance(step, tuple):
                    write_pages(commits, *step)
                else:
                    clock.advance(step)
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
def test_run_commits_when_interval_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    # Commits start at 0, 0.25 and 0.5 s: each waits for the interval after the one before.
    steps: list[tuple[int, ...] | float] = [(1,), (2,), 0.125, 0.125, (3,), 0.125, 0.125, 0.25]
    assert committed_by_run(tmp_path, 0.25, steps) == [1, 1, 1, 2, 2, 2, 3, 3]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_commits_at_half_the_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    # Four uncommitted pages are half the bound of eight: they are committed at once.
    steps: list[tuple[int, ...] | float] = [(1,), (2, 3, 4), (5,), (6, 7, 8, 9), (10,)]
    assert committed_by_run(tmp_path, 3600, steps) == [1, 1, 5, 9, 9]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_without_interval_commits_each_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    assert committed_by_run(tmp_path, 0, [(1,), (2, 3), (4,)]) == [1, 3, 4]


def test_run_after_slow_commit_starts_next_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")
    clock = ManualClock()

    async def run_sync(function: Callable[..., object], *args: object) -> object:
        clock.advance(0.5)  # fsyncs that take longer than the interval
        return function(*args)

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", run_sync)
    assert committed_by_run(tmp_path, 0.25, [(1,), (2,)], clock) == [1, 2]


def test_page_written_while_fetch_waits_starts_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "4")
    events: list[str] = []

    async def fetch_page() -> None:
        await commits.reserve_room()
        events.append(f"page fetched after {commits.pages_committed} committed")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, 3600, ManualClock())
            write_pages(commits, 1)
            await anyio.wait_all_tasks_blocked()
            # Page 1 is committed and the loop pauses. Four pages being fetched fill the
            # bound, with none written to commit yet.
            for _ in range(4):
                await commits.reserve_room()
            group.start_soon(fetch_page)
            await anyio.wait_all_tasks_blocked()
            write_pages(commits, 2)
            commits.release_room()
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", inline_run_sync)
    with committer(tmp_path) as commits:
        anyio.run(main)

    assert events == ["page fetched after 2 committed"]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_default_interval_is_tenth_of_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")

    assert committed_by_run(tmp_path, None, [(1,), (2,), 0.05, 0.05]) == [1, 1, 1, 2]


@pytest.mark.usefixtures("inline_fsyncs")
def test_run_commits_entry_without_pages(tmp_path: Path) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, 0, ManualClock())
            commits.record({"t": "end", "at": "2026-12-05T00:00:00Z", "outcome": "complete"})
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()

    with committer(tmp_path) as commits:
        anyio.run(main)

    lines = (tmp_path / "manifest.jsonl").read_bytes().splitlines()
    assert orjson.loads(lines[-1])["t"] == "end"


def test_run_skips_pause_when_pressed_during_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")
    fsyncs_may_run = anyio.Event()
    seen: list[int] = []

    async def run_sync(function: Callable[..., object], *args: object) -> object:
        await fsyncs_may_run.wait()
        return function(*args)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, 3600, ManualClock())
            write_pages(commits, 1)
            await anyio.wait_all_tasks_blocked()
            # Page 1 is being committed, and four more pages, half the bound, wait.
            write_pages(commits, 2, 3, 4, 5)
            fsyncs_may_run.set()
            await anyio.wait_all_tasks_blocked()
            seen.append(commits.pages_committed)
            group.cancel_scope.cancel()

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", run_sync)
    with committer(tmp_path) as commits:
        anyio.run(main)

    assert seen == [5]


def test_run_counts_pages_of_commit_under_way_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")
    fsyncs_may_run = anyio.Event()
    clock = ManualClock()
    seen: list[int] = []

    async def run_sync(function: Callable[..., object], *args: object) -> object:
        await fsyncs_may_run.wait()
        return function(*args)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, 0.25, clock)
            write_pages(commits, 1, 2, 3)
            await anyio.wait_all_tasks_blocked()
            # Pages 1 to 3 are being committed. Two more make five uncommitted, but only
            # two wait for the next commit, which is under half the bound.
            write_pages(commits, 4, 5)
            fsyncs_may_run.set()
            await anyio.wait_all_tasks_blocked()
            seen.append(commits.pages_committed)
            clock.advance(0.25)
            await anyio.wait_all_tasks_blocked()
            seen.append(commits.pages_committed)
            group.cancel_scope.cancel()

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", run_sync)
    with committer(tmp_path) as commits:
        anyio.run(main)

    assert seen == [3, 5]


def test_fetch_waits_for_commit_at_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "2")
    events: list[str] = []

    async def fetch_third_page() -> None:
        await commits.reserve_room()
        events.append("third page may be fetched")

    async def main() -> None:
        for number in (1, 2):
            await commits.reserve_room()
            write_pages(commits, number)
            commits.release_room()
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
            await commits.reserve_room()
            write_pages(commits, number)
            commits.release_room()
        # Two pages are below the bound of three: this returns at once (pytest-timeout
        # ends the test if it waits).
        await commits.reserve_room()

    with committer(tmp_path) as commits:
        anyio.run(main)

    assert commits.pages_committed == 0


def test_reserved_pages_count_toward_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "3")
    events: list[str] = []

    async def fetch_page(number: int) -> None:
        await commits.reserve_room()
        events.append(f"page {number} may be fetched")

    async def main() -> None:
        write_pages(commits, 1)
        async with anyio.create_task_group() as group:
            for number in (2, 3, 4):
                group.start_soon(fetch_page, number)
                await anyio.wait_all_tasks_blocked()
            # Page 1 is written and pages 2 and 3 are being fetched: page 4 waits.
            events.append("page 2 failed")
            commits.release_room()

    with committer(tmp_path) as commits:
        anyio.run(main)

    assert events == [
        "page 2 may be fetched",
        "page 3 may be fetched",
        "page 2 failed",
        "page 4 may be fetched",
    ]


def test_full_bound_starts_commit_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_EXPORT_MAX_UNCOMMITTED", "8")
    clock = ManualClock()
    events: list[str] = []

    async def fetch_page() -> None:
        await commits.reserve_room()
        events.append(f"page fetched after {commits.pages_committed} committed")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(commits.run, 3600, clock)
            write_pages(commits, 1)
            await anyio.wait_all_tasks_blocked()
            for _ in range(6):
                await commits.reserve_room()
            write_pages(commits, 2, 3)
            # Pages 2 and 3 written and six reserved fill the bound of eight. Under half of
            # it waits for a commit, so only a fetch that finds no room starts one.
            group.start_soon(fetch_page)
            await anyio.wait_all_tasks_blocked()
            group.cancel_scope.cancel()

    monkeypatch.setattr(manifest.anyio.to_thread, "run_sync", inline_run_sync)
    with committer(tmp_path) as commits:
        anyio.run(main)

    assert events == ["page fetched after 3 committed"]
