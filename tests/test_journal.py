"""The manifest journal: durable appends, torn tails dropped, other damage refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tm_export.errors import ManifestError
from tm_export.journal import Journal, read_journal
from tm_export.manifest import ManifestState


def make_journal(tmp_path: Path, entries: int = 2) -> Path:
    path = tmp_path / "manifest.jsonl"
    journal = Journal.create(path, {"recipe_hash": "abc"})
    journal.append([{"t": "page", "n": n} for n in range(1, entries + 1)])
    journal.close()
    return path


def test_journal_round_trip(tmp_path: Path) -> None:
    path = make_journal(tmp_path)

    contents = read_journal(path)

    assert [e["t"] for e in contents.entries] == ["run", "page", "page"]
    assert contents.entries[0]["recipe_hash"] == "abc"
    assert contents.dropped_bytes == 0
    assert contents.valid_bytes == path.stat().st_size


@pytest.mark.parametrize(
    "tail",
    [b'{"t":"page","n":3', b'{"t":"pa', b"\x00" * 40, b'{"t":"page","n":3}'],
    ids=["half-entry", "few-bytes", "nul-padding", "entry-without-newline"],
)
def test_torn_tail_dropped(tmp_path: Path, tail: bytes) -> None:
    path = make_journal(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(tail)

    contents = read_journal(path)

    assert len(contents.entries) == 3
    assert contents.valid_bytes == size
    assert contents.dropped_bytes == len(tail)


def test_reopen_cuts_torn_tail(tmp_path: Path) -> None:
    path = make_journal(tmp_path)
    size = path.stat().st_size
    with path.open("ab") as file:
        file.write(b'{"t":"pa')

    journal = Journal.open(path, valid_bytes=read_journal(path).valid_bytes)
    journal.append([{"t": "page", "n": 9}])
    journal.close()

    entries = read_journal(path).entries
    assert path.stat().st_size == size + len(b'{"t":"page","n":9}\n')
    assert entries[-1] == {"t": "page", "n": 9}


def test_empty_manifest_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"")

    with pytest.raises(ManifestError) as caught:
        read_journal(path)

    assert str(caught.value).startswith(
        f"{path}: the manifest is empty, so what this run committed cannot be proven."
    )
    assert "--start-over" in str(caught.value)


def test_nul_overwrite_refused(tmp_path: Path) -> None:
    path = make_journal(tmp_path)
    path.write_bytes(b"\x00" * path.stat().st_size)

    with pytest.raises(ManifestError) as caught:
        read_journal(path)

    assert str(caught.value).startswith(f"{path}:1: the manifest has no valid header")


def test_damaged_middle_line_refused(tmp_path: Path) -> None:
    path = make_journal(tmp_path)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"\x00" * len(lines[1])
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()

    with pytest.raises(ManifestError) as caught:
        read_journal(path)

    assert str(caught.value).startswith(f"{path}:2: manifest line 2 is damaged (not JSON).")
    assert path.read_bytes() == before


def test_cut_short_keeps_whole_lines(tmp_path: Path) -> None:
    path = make_journal(tmp_path, entries=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])

    contents = read_journal(path)

    assert [e.get("n") for e in contents.entries[1:]] == [1, 2, 3, 4]


def test_chunked_read_keeps_every_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tm_export.journal.CHUNK_BYTES", 64)
    path = make_journal(tmp_path, entries=50)

    contents = read_journal(path)

    assert [e.get("n") for e in contents.entries] == [None, *range(1, 51)]
    assert contents.valid_bytes == path.stat().st_size


def test_chunked_read_names_damaged_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tm_export.journal.CHUNK_BYTES", 64)
    path = make_journal(tmp_path, entries=50)
    lines = path.read_bytes().split(b"\n")
    lines[39] = b"{" * len(lines[39])
    path.write_bytes(b"\n".join(lines))

    with pytest.raises(ManifestError) as caught:
        read_journal(path)

    assert str(caught.value).startswith(f"{path}:40: manifest line 40 is damaged (not JSON).")


def test_replay_drops_pages_of_done_partitions() -> None:
    header = {"t": "run", "format": 1, "streams": {"s": {}}}
    page = {"t": "page", "s": "s", "n": 1, "records": 2, "start": 0, "end": 10}
    entries = iter(
        [
            header,
            {**page, "p": "a"},
            {**page, "p": "b", "start": 10, "end": 20},
            {"t": "part", "s": "s", "p": "a", "state": "done"},
        ]
    )

    state = ManifestState.replay(entries, keep_done_pages=False)

    stream = state.streams["s"]
    assert list(stream.done) == ["a"]
    assert list(stream.partitions) == ["b"]
    assert stream.partitions["b"].pages[1].end == 20
    assert (stream.pages, stream.records, stream.committed_end) == (2, 4, 20)


def test_replay_keeps_largest_page_count() -> None:
    """A later page that reports fewer pages does not shrink the walk, as in a running session."""
    header = {"t": "run", "format": 1, "streams": {"s": {}}}
    page = {"t": "page", "s": "s", "p": "a", "records": 1, "start": 0, "end": 5}
    entries = iter(
        [
            header,
            {**page, "n": 1, "pages": 3, "total": 30},
            {**page, "n": 2, "start": 5, "end": 9, "pages": 2, "total": 20},
        ]
    )

    state = ManifestState.replay(entries, keep_done_pages=False)

    partition = state.streams["s"].partitions["a"]
    assert partition.reading.page_count == 3
    assert partition.total == 20


def test_replay_keeps_pages_of_failed_partitions() -> None:
    header = {"t": "run", "format": 1, "streams": {"s": {}}}
    page = {"t": "page", "s": "s", "p": "a", "records": 1, "start": 0, "end": 5, "pages": 3}
    failed = {"t": "part", "s": "s", "p": "a", "state": "failed", "missing_pages": [3]}
    entries = iter([header, {**page, "n": 1}, {**page, "n": 2, "start": 5, "end": 9}, failed])

    state = ManifestState.replay(entries, keep_done_pages=False)

    partition = state.streams["s"].partitions["a"]
    assert sorted(partition.pages) == [1, 2]
    assert partition.reading.page_count == 3
    assert partition.final == failed
    assert state.streams["s"].done == {}


def test_replay_follows_readings() -> None:
    """Pages of a second reading resume that reading, and the fall of the first is kept."""
    header = {"t": "run", "format": 1, "streams": {"s": {}}}
    page = {"t": "page", "s": "s", "p": "a", "records": 1, "pages": 2}
    entries = iter(
        [
            header,
            {**page, "n": 1, "start": 0, "end": 5, "total": 20},
            {**page, "n": 2, "start": 5, "end": 9, "total": 19},
            {**page, "n": 1, "start": 9, "end": 14, "total": 19, "reading": 2},
        ]
    )

    state = ManifestState.replay(entries, keep_done_pages=False)

    partition = state.streams["s"].partitions["a"]
    assert sorted(partition.pages) == [1, 2]
    assert sorted(partition.later_pages) == [(2, 1)]
    assert [page.start for page in partition.all_pages()] == [0, 5, 9]
    assert partition.has_page(1)
    assert not partition.has_page(2)
    assert partition.reading.number == 2
    assert not partition.reading.changed
    assert not partition.reading.fell
    assert partition.total_fell
    assert partition.total == 19


@pytest.mark.parametrize(
    ("between", "unconfirmed"),
    [
        ([], 2),
        ([{"t": "token", "authenticated": True}], 1),
        ([{"t": "session", "token": True, "authenticated": True}], 1),
        ([{"t": "session", "token": True, "authenticated": None}], 2),
    ],
    ids=["one-session", "end-check-passed", "start-check-passed", "start-check-incomplete"],
)
def test_replay_counts_partitions_since_token_accepted(
    between: list[dict[str, object]], unconfirmed: int
) -> None:
    """Partitions finished since the token was last seen accepted add up across sessions
    whose check could not complete. A check that passed, at a start or an end, resets them."""
    header = {"t": "run", "format": 1, "streams": {"s": {}}}
    session = {"t": "session", "token": True, "authenticated": True}
    part = {"t": "part", "s": "s", "state": "done"}
    entries = [header, session, {**part, "p": "a"}, *between, {**part, "p": "b"}]

    state = ManifestState.replay(iter(entries), keep_done_pages=False)

    assert state.streams["s"].finished_unconfirmed == unconfirmed
