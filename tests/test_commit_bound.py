"""The bound on pages written but not committed (``manifest.MAX_UNCOMMITTED``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

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
