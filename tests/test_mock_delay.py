"""The mock's response delays: deadline order, the thread's lifetime, a server with latency."""

from __future__ import annotations

import asyncio
import http.client
import threading
from urllib.parse import urlsplit

import pytest

from tm_export.mock import MockServer
from tm_export.mock.delay import Delays


def delay_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "mock-delays"]


def test_sleepers_wake_in_deadline_order() -> None:
    delays = Delays()
    woken: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await delays.sleep(seconds)
        woken.append(name)

    async def main() -> None:
        # 30 ms apart, so that a stall between the three calls cannot reorder the deadlines.
        await asyncio.gather(
            sleeper("third", 0.09), sleeper("first", 0.03), sleeper("second", 0.06)
        )

    try:
        asyncio.run(main())
    finally:
        delays.close()

    assert woken == ["first", "second", "third"]


def test_close_ends_thread_rejects_sleep() -> None:
    delays = Delays()
    asyncio.run(delays.sleep(0))
    assert len(delay_threads()) == 1

    delays.close()

    assert delay_threads() == []
    with pytest.raises(RuntimeError, match=r"^the delays were closed$"):
        asyncio.run(delays.sleep(0))


def test_cancelled_sleeper_spares_others() -> None:
    delays = Delays()
    woken: list[str] = []

    async def main() -> None:
        cancelled = asyncio.create_task(delays.sleep(0.01))
        await asyncio.sleep(0)
        cancelled.cancel()
        await delays.sleep(0.02)
        woken.append("after")
        assert cancelled.cancelled()

    try:
        asyncio.run(main())
    finally:
        delays.close()

    assert woken == ["after"]


def test_latency_server_closes_its_thread() -> None:
    with MockServer(projects=20, latency_ms=5) as server:
        address = urlsplit(server.base_url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            connection.request("GET", "/api/v2/system/heartbeat/")
            reply = connection.getresponse()
            assert reply.status == 200
            assert reply.read().startswith(b'{"status":"Fastapi healthy",')
        finally:
            connection.close()
        assert len(delay_threads()) == 1

    assert delay_threads() == []
