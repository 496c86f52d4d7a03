"""Counts and lists in messages, with the noun agreeing with the number: "1 record",
"2 records", "streams 'a' and 'b'"."""

from __future__ import annotations

from collections.abc import Sequence


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """Return ``number`` and the noun for it; ``plural`` defaults to ``singular`` + "s"."""
    if number == 1:
        return f"{number} {singular}"
    return f"{number} {plural if plural is not None else singular + 's'}"


def joined(items: Sequence[str]) -> str:
    """Return ``items`` as an English list: "a", "a and b", "a, b and c"."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def named(singular: str, names: Sequence[str]) -> str:
    """Return the noun and the quoted ``names``: "stream 'a'", "streams 'a' and 'b'"."""
    noun = singular if len(names) == 1 else singular + "s"
    quoted = [f"'{name}'" for name in names]
    return f"{noun} {joined(quoted)}"
