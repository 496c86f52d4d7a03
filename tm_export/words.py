"""Counts in messages, with the noun agreeing with the number: "1 record", "2 records"."""

from __future__ import annotations


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """Return ``number`` and the noun for it; ``plural`` defaults to ``singular`` + "s"."""
    if number == 1:
        return f"{number} {singular}"
    return f"{number} {plural if plural is not None else singular + 's'}"
