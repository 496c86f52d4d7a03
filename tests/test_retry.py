"""Retry-After parsing and backoff bounds."""

from __future__ import annotations

import random

import pytest

from tm_export.recipe import Retries
from tm_export.retry import Backoff, retry_after_seconds

DATE = "Fri, 04 Dec 2026 19:43:41 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "Fri, 04 Dec 2026 19:43:43 GMT", "date": DATE}, 2.0),
        ({"retry-after": "Fri, 04 Dec 2026 19:40:00 GMT", "date": DATE}, 0.0),
        ({"retry-after": "Fri Dec  4 19:43:46 2026", "date": DATE}, 5.0),
        ({"retry-after": "Fri, 04 Dec 2026 19:43:44 -0000", "date": DATE}, 3.0),
        ({"retry-after": "Fri, 04 Dec 2026 19:43:45 GMT", "date": "Fri Dec  4 19:43:41 2026"}, 4.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "9" * 400}, 1e9),
        ({}, None),
    ],
    ids=[
        "seconds",
        "fraction",
        "http-date",
        "date-in-past",
        "asctime",
        "zone-0000",
        "asctime-date-header",
        "negative",
        "hundreds-of-digits",
        "absent",
    ],
)
def test_retry_after_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers) == expected


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0x10"])
def test_retry_after_not_a_number_of_seconds(value: str, caplog: pytest.LogCaptureFixture) -> None:
    """float() takes these, but none is a wait: the caller falls back to backoff."""
    assert retry_after_seconds({"retry-after": value}, "http://127.0.0.1:8/api/v2/x/") is None
    assert caplog.messages == [
        f"ignored unparseable Retry-After value {value!r} at http://127.0.0.1:8/api/v2/x/; "
        "using backoff instead"
    ]


def test_retry_after_unparseable_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert retry_after_seconds({"retry-after": "soon, maybe"}) is None
    assert caplog.messages == [
        "ignored unparseable Retry-After value 'soon, maybe'; using backoff instead"
    ]


def test_backoff_grows_and_caps() -> None:
    backoff = Backoff(Retries(wait_initial=0.5, wait_max=4.0, wait_jitter=0.0), random.Random(1))

    assert [backoff.wait(attempt) for attempt in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_bounded() -> None:
    backoff = Backoff(Retries(wait_initial=1.0, wait_max=10.0, wait_jitter=0.5), random.Random(7))

    waits = [backoff.wait(1) for _ in range(200)]

    assert min(waits) >= 1.0
    assert max(waits) <= 1.5
    assert len(set(waits)) > 100
