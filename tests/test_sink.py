"""Stream files: cut back to the committed end, and refuse an end that is not a line end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tm_export.errors import ManifestError
from tm_export.sink import StreamFile

COMMITTED = b'{"a":1}\n{"name":"S\xc3\xa3o Paulo"}\n'


@pytest.mark.parametrize(
    "tail",
    [b'{"a":', b'{"a":3}', b'{"name":"S' + "ã".encode()[:1]],
    ids=["half-record", "record-without-newline", "inside-multibyte-character"],
)
def test_torn_tail_cut_back(tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(COMMITTED + tail)

    file = StreamFile.open(path, len(COMMITTED))
    file.append(b'{"a":4}\n')
    file.flush()
    file.close()

    assert path.read_bytes() == COMMITTED + b'{"a":4}\n'
    assert caplog.messages == [
        f"cut s.jsonl back to its committed end at byte {len(COMMITTED)}: removed {len(tail)} uncommitted bytes"
    ]


def test_end_inside_line_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(COMMITTED)

    with pytest.raises(ManifestError) as caught:
        StreamFile.open(path, 5)

    assert str(caught.value) == (
        f"{path}: the manifest says 5 bytes are committed, but byte 4 is not the end of a line; the file "
        "was changed outside tm-export; restore it from a backup, or run with --start-over to begin a new "
        "run beside this one"
    )
    assert path.read_bytes() == COMMITTED


def test_short_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(COMMITTED[:8])

    with pytest.raises(ManifestError) as caught:
        StreamFile.open(path, len(COMMITTED))

    assert "but the file has only 8;" in str(caught.value)
    assert path.read_bytes() == COMMITTED[:8]


def test_last_line_not_json_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\nnot json\n')

    with pytest.raises(ManifestError) as caught:
        StreamFile.open(path, 17)

    assert "the last committed line (ending at byte 17) is not valid JSON" in str(caught.value)


def test_new_file_created(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"

    file = StreamFile.open(path, 0)
    assert file.append(b"{}\n") == (0, 3)
    file.close()

    assert path.read_bytes() == b"{}\n"


@pytest.mark.parametrize(
    "content",
    [b'{"a":1}\n{"name":"a line longer than the first window"}\n', b'{"only":"one long line"}\n'],
    ids=["after-another-line", "the-only-line"],
)
def test_last_line_longer_than_window_read_whole(
    tmp_path: Path, content: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committed record longer than the bytes first read back is found and parsed whole."""
    monkeypatch.setattr("tm_export.sink.TAIL_WINDOW", 4)
    path = tmp_path / "s.jsonl"
    path.write_bytes(content + b'{"a":')

    StreamFile.open(path, len(content)).close()

    assert path.read_bytes() == content


def test_long_last_line_not_json_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tm_export.sink.TAIL_WINDOW", 4)
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"a":1}\n{"name": not json, and longer than the window}\n')

    with pytest.raises(ManifestError) as caught:
        StreamFile.open(path, path.stat().st_size)

    assert "the last committed line (ending at byte 55) is not valid JSON" in str(caught.value)
