"""The request pipeline: retries, Retry-After in every form, fatal statuses, host-wide pauses."""

from __future__ import annotations

import random
from collections.abc import Mapping

import anyio
import pytest

from tm_export.clock import FakeClock
from tm_export.errors import HTTPStatusError, TokenRejectedError, TransportError, WaitTooLongError
from tm_export.fetcher import Fetcher
from tm_export.http import Response
from tm_export.pacing import HostGate, RateLimiter
from tm_export.recipe import Retries
from tm_export.redact import Redactor

BASE = "http://127.0.0.1:9/api/v2"
DATE = "Fri, 04 Dec 2026 19:43:41 GMT"
OK = (200, {"content-type": "application/json"}, b'{"ok":true}')


class ScriptedSession:
    """A session that returns the next scripted reply for each path and records the clock."""

    sends_token = True

    def __init__(self, clock: FakeClock, script: dict[str, list[object]]) -> None:
        self.clock = clock
        self.script = {path: list(replies) for path, replies in script.items()}
        self.sent: list[tuple[str, float]] = []

    async def get(self, url: str, params: Mapping[str, str], *, spool: bool = True) -> Response:
        path = url.removeprefix(BASE)
        self.sent.append((path, self.clock.now))
        reply = self.script[path].pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, headers, body = reply  # type: ignore[misc]
        return Response(url=url, status=status, headers=headers, body=body)


def make_fetcher(session: ScriptedSession, clock: FakeClock, **retries: float) -> Fetcher:
    policy = Retries(**{"attempts": 4, "wait_initial": 0.5, "wait_jitter": 0.0, **retries})  # type: ignore[arg-type]
    return Fetcher(
        session,  # type: ignore[arg-type]
        base_url=BASE,
        retries=policy,
        concurrency=4,
        rate_limit=1_000_000,
        clock=clock,
        redactor=Redactor(["secret-token"]),
        token_env="TM_API_TOKEN",
        rng=random.Random(0),
    )


def fetch(fetcher: Fetcher, path: str) -> object:
    async def call() -> object:
        return (await fetcher.get_json(path, {}))[1]

    return anyio.run(call)


def retry(status: int, value: str, date: str | None = DATE) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "retry-after": value}
    if date:
        headers["date"] = date
    return status, headers, b'{"detail":"slow down"}'


@pytest.mark.parametrize(
    ("reply", "wait"),
    [
        (retry(429, "Fri, 04 Dec 2026 19:43:43 GMT"), 2.0),
        (retry(503, "3"), 3.0),
        (retry(429, "Fri, 04 Dec 2026 19:40:00 GMT"), 0.0),
    ],
    ids=["http-date-after-date-header", "seconds", "date-in-past"],
)
def test_retry_after_honoured(reply: object, wait: float) -> None:
    clock = FakeClock(start=100.0)
    session = ScriptedSession(clock, {"/x/": [reply, OK]})

    assert fetch(make_fetcher(session, clock), "/x/") == {"ok": True}
    assert [path for path, _ in session.sent] == ["/x/", "/x/"]
    assert session.sent[1][1] - session.sent[0][1] == pytest.approx(wait, abs=1e-3)


def test_retry_after_unparseable_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    session = ScriptedSession(clock, {"/x/": [retry(429, "in a while"), OK]})

    fetch(make_fetcher(session, clock), "/x/")

    assert [time for _, time in session.sent] == pytest.approx([0.0, 0.5], abs=1e-3)
    assert (
        f"ignored unparseable Retry-After value 'in a while' at {BASE}/x/; using backoff instead"
        in caplog.messages
    )


def test_retry_after_too_long_stops() -> None:
    clock = FakeClock()
    session = ScriptedSession(clock, {"/x/": [retry(429, "86400"), OK]})

    with pytest.raises(WaitTooLongError) as caught:
        fetch(make_fetcher(session, clock, max_retry_after=300), "/x/")

    assert str(caught.value) == (
        f"the server asked to wait 86400 s (Retry-After at {BASE}/x/), more than "
        "instance.retries.max_retry_after (300 s); the run stopped. Wait, then run the same "
        "command again to resume, or raise max_retry_after"
    )
    assert clock.now < 1.0
    assert len(session.sent) == 1


def test_long_retry_after_last_attempt() -> None:
    """With no attempt left, a long Retry-After still stops the run: the server asked for a
    pause, and the next partitions would be sent into it."""
    clock = FakeClock()
    session = ScriptedSession(clock, {"/x/": [retry(429, "86400")]})

    with pytest.raises(WaitTooLongError):
        fetch(make_fetcher(session, clock, attempts=1, max_retry_after=300), "/x/")

    assert len(session.sent) == 1


def test_retry_after_pauses_whole_host() -> None:
    """A Retry-After on one request holds back a request to another path sent after it."""
    clock = FakeClock()
    session = ScriptedSession(clock, {"/a/": [retry(429, "5"), OK], "/b/": [OK]})
    fetcher = make_fetcher(session, clock)
    first_answered = anyio.Event()

    async def scenario() -> None:
        async def a() -> None:
            await fetcher.get_json("/a/", {})

        async def b() -> None:
            await first_answered.wait()
            await fetcher.get_json("/b/", {})

        async with anyio.create_task_group() as group:
            group.start_soon(a)
            group.start_soon(b)
            while not session.sent:
                await anyio.lowlevel.checkpoint()
            first_answered.set()

    anyio.run(scenario)

    (b_time,) = [time for path, time in session.sent if path == "/b/"]
    assert b_time >= 5.0


def test_last_attempt_pauses_host() -> None:
    """A Retry-After on a request with no attempt left still holds back the next request."""
    clock = FakeClock()
    session = ScriptedSession(clock, {"/a/": [retry(429, "5")], "/b/": [OK]})
    fetcher = make_fetcher(session, clock, attempts=1)

    with pytest.raises(HTTPStatusError):
        fetch(fetcher, "/a/")
    fetch(fetcher, "/b/")

    assert session.sent == [("/a/", 0.0), ("/b/", 5.0)]


def test_turns_after_a_pause_are_spaced() -> None:
    """Turns taken for after a pause start one interval apart from its end, not together."""
    clock = FakeClock()
    rate = RateLimiter(2, clock)
    gate = HostGate(clock)
    gate.pause(3)
    starts = []

    async def turns() -> None:
        for _ in range(4):
            await rate.wait_turn(not_before=gate.opens_at)
            starts.append(clock.now)

    anyio.run(turns)

    assert starts == [3.0, 3.5, 4.0, 4.5]


def test_token_rejected_stops_everything() -> None:
    clock = FakeClock()
    unauthorized = (
        401,
        {"content-type": "application/json", "www-authenticate": "Bearer"},
        b'{"Error":"Token is expired or invalid","SubCode":"InvalidToken"}',
    )
    session = ScriptedSession(clock, {"/x/": [unauthorized], "/y/": [OK]})
    fetcher = make_fetcher(session, clock)

    with pytest.raises(TokenRejectedError):
        fetch(fetcher, "/x/")
    with pytest.raises(TokenRejectedError):
        fetch(fetcher, "/y/")

    assert session.sent == [("/x/", 0.0)]


def test_not_found_not_retried() -> None:
    clock = FakeClock()
    missing = (
        404,
        {"content-type": "application/json"},
        b'{"error":{"code":404,"sub_code":"PROJECT_NOT_FOUND","message":"x","details":{}}}',
    )
    session = ScriptedSession(clock, {"/x/": [missing]})

    with pytest.raises(HTTPStatusError) as caught:
        fetch(make_fetcher(session, clock), "/x/")

    assert caught.value.status == 404
    assert caught.value.sub_code == "PROJECT_NOT_FOUND"
    assert caught.value.attempts == 1
    assert len(session.sent) == 1


def test_transport_errors_retried() -> None:
    clock = FakeClock()
    cut = TransportError("GET x: the response body was cut short", url="x")
    not_json = (200, {"content-type": "application/json"}, b'{"results":[{"a"')
    session = ScriptedSession(clock, {"/x/": [cut, not_json, OK]})

    assert fetch(make_fetcher(session, clock), "/x/") == {"ok": True}
    assert [time for _, time in session.sent] == pytest.approx([0.0, 0.5, 1.5], abs=1e-3)


def test_retries_exhausted_keeps_attempts() -> None:
    clock = FakeClock()
    failing = (500, {"content-type": "text/plain"}, b"Internal Server Error")
    session = ScriptedSession(clock, {"/x/": [failing] * 4})

    with pytest.raises(HTTPStatusError) as caught:
        fetch(make_fetcher(session, clock), "/x/")

    assert caught.value.attempts == 4
    assert str(caught.value) == f"GET {BASE}/x/: 500 (text/plain): Internal Server Error"
