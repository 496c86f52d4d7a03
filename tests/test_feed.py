"""The values a stream sends a child stream for a TM id parameter."""

from __future__ import annotations

from typing import Any, cast

from tm_export.params import Scalar
from tm_export.stream import _ChildFeed


def feed_of(values: list[Scalar]) -> tuple[_ChildFeed, list[dict[str, Scalar] | None]]:
    """Offer each value for project_id; return the feed and what each offer sends."""
    feed = _ChildFeed(cast(Any, None), {"project_id": "dueDate"}, cast(Any, None), ("project_id",))
    sent: list[dict[str, Scalar] | None] = []
    for value in values:
        offered: dict[str, Scalar] = {"project_id": value}
        sent.append(offered if feed.take_ids(offered) else None)
    return feed, sent


def test_ids_sent_as_integers() -> None:
    feed, sent = feed_of(["b", 3, "a", "7"])

    assert sent == [None, {"project_id": 3}, None, {"project_id": 7}]
    assert feed.not_ids == 2


def test_example_same_in_any_order() -> None:
    """The value that a problem shows is the smallest as text, whatever order pages came in,
    so that every session and shard records the same problem."""
    forward, _ = feed_of(["b", 3, "a", "7"])
    backward, _ = feed_of(["7", "a", 3, "b"])

    assert forward.not_id == backward.not_id == ("project_id", "a")
