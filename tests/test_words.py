"""Counts and lists in messages: the noun agrees with the number."""

from __future__ import annotations

from tm_export.words import counted, joined, named


def test_counted_singular_plural_and_irregular() -> None:
    assert counted(1, "record") == "1 record"
    assert counted(0, "record") == "0 records"
    assert counted(2, "stream file") == "2 stream files"
    assert counted(1, "retry", "retries") == "1 retry"
    assert counted(3, "retry", "retries") == "3 retries"


def test_joined_lists() -> None:
    assert joined([]) == ""
    assert joined(["a"]) == "a"
    assert joined(["a", "b"]) == "a and b"
    assert joined(["a", "b", "c"]) == "a, b and c"


def test_named_quotes_names() -> None:
    assert named("stream", ["stats"]) == "stream 'stats'"
    assert named("stream", ["stats", "users"]) == "streams 'stats' and 'users'"
