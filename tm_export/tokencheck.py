"""A check, shared by the walks, that the server still accepts the run's API token.

The server serves an expired token anonymously where login is optional, so a private
project then returns 403, as it does to a user without rights on it. Before a run that
sends a token records a partition as skipped for a 403, it runs this check. A token that
expired during the run then stops it (exit 1), and the partition stays pending for the
next session, where it would otherwise be skipped for good. A walk whose list changed
while it was read runs it too, since an expired token gets a shorter project search with no
403, and so does the session before it records its end (see ``engine``).

Walks share the checks. A check covers the 403s that arrived before it began, since the
token may expire while it runs, so the 403s that arrive during a check share the next one.

NOTE: partitions finished between the expiry and a check that catches it during the run
keep no problem. Only the project search differs for an anonymous caller without a 403,
so the risk is a search partition read whole in that time.
"""

from __future__ import annotations

import logging

import anyio

from .catalog import TOKEN_CHECK_PATH
from .errors import RequestError
from .fetcher import Fetcher

logger = logging.getLogger("tm_export.token")


class TokenCheck:
    """A check, run on demand, that the server still accepts the run's token."""

    def __init__(self, fetcher: Fetcher) -> None:
        self._fetcher = fetcher
        self._begun = 0
        """Checks begun so far; the number of a check is its place in this count."""
        self._passed = 0
        """The number of the last check that the server passed."""
        self._failed = 0
        """The number of the last check that failed before the server judged the token."""
        self._running: anyio.Event | None = None
        """Set when the check under way ends."""

    async def confirm(self) -> bool:
        """Return True once a check that began after this call passes, or False when that
        check failed before the server judged the token (the server was unreachable, say).

        Raises:
            TokenRejectedError: the server rejected the token; the run stops.
        """
        needed = self._begun + 1
        while True:
            if self._passed >= needed:
                return True
            if self._failed >= needed:
                return False

            if self._running is None:
                await self._check()
            else:
                await self._running.wait()

    async def _check(self) -> None:
        self._begun += 1
        number = self._begun
        self._running = ended = anyio.Event()
        try:
            await self._fetcher.get_json(TOKEN_CHECK_PATH, {}, spool=False)
        except RequestError as error:
            # TokenRejectedError is not a RequestError, so it goes on up and ends the run.
            logger.warning("the token check did not complete (%s); going on", error)
            self._failed = max(self._failed, number)
        else:
            self._passed = max(self._passed, number)
        finally:
            self._running = None
            ended.set()
