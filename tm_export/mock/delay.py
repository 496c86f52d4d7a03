"""Response delays kept in a thread of their own, so that they end close to their deadline.

On a loop that serves several requests at once, ``asyncio.sleep`` ends later than on an
idle one. Measured with ``bench/probe.py`` (3,089 requests, 2 cores), the mock's 20 ms
responses took a median 21.9 ms with ``asyncio.sleep`` and 21.3 ms with ``Delays`` at 8
requests at a time. At 32 at a time they took 21.5 and 20.7 ms. A benchmark that compares
wall time with ``requests × latency ÷ concurrency`` should measure the client, not the
mock's timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time

logger = logging.getLogger("tm_export.mock")


class Delays:
    """One thread that wakes coroutines of any event loop at their deadlines.

    The thread starts with the first ``sleep`` and ends with ``close``. Deadlines are in
    ``time.monotonic()`` seconds.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._deadlines: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._deadlines = []
        self._order = itertools.count()  # breaks ties between equal deadlines
        self._thread: threading.Thread | None = None
        self._closed = False

    async def sleep(self, seconds: float) -> None:
        """Return ``seconds`` after the call, give or take the thread's wake-up time."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        deadline = time.monotonic() + seconds

        with self._condition:
            if self._closed:
                raise RuntimeError("the delays were closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mock-delays", daemon=True)
                self._thread.start()
            heapq.heappush(self._deadlines, (deadline, next(self._order), loop, woken))
            self._condition.notify()

        await woken

    def close(self) -> None:
        """Stop the thread. Coroutines still asleep are not woken."""
        with self._condition:
            self._closed = True
            self._condition.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        with self._condition:
            while not self._closed:
                if not self._deadlines:
                    self._condition.wait()
                    continue

                wait = self._deadlines[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue

                _, _, loop, woken = heapq.heappop(self._deadlines)
                try:
                    loop.call_soon_threadsafe(_wake, woken)
                except RuntimeError as error:
                    # The loop closed while its request slept, so no one waits for it.
                    logger.debug("delay ended after its event loop closed: %s", error)


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():  # a cancelled request leaves a cancelled future behind
        woken.set_result(None)
