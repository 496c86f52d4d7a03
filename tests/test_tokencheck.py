"""The token check that walks share before a 403 skips a partition."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from tm_export.errors import TokenRejectedError, TransportError
from tm_export.fetcher import Fetcher
from tm_export.tokencheck import TokenCheck


class ScriptedFetcher:
    """Return the next scripted outcome for each token check, once ``release`` is set."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = outcomes
        self.sent = 0
        self.release = anyio.Event()

    async def get_json(self, path: str, params: Any, *, spool: bool = True) -> tuple[Any, Any]:
        self.sent += 1
        outcome = self.outcomes.pop(0)
        await self.release.wait()
        if outcome is not None:
            raise outcome
        return None, []


def check_with(fetcher: ScriptedFetcher) -> TokenCheck:
    return TokenCheck(cast(Fetcher, fetcher))


def test_403s_during_check_share_next() -> None:
    """A check covers only the 403s that arrived before it began, since a token may expire
    meanwhile. The 403s that arrive while it runs share one check after it."""

    async def scenario() -> None:
        fetcher = ScriptedFetcher([None, None])
        check = check_with(fetcher)
        answers: list[bool] = []

        async def confirm() -> None:
            answers.append(await check.confirm())

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(confirm)
            await anyio.wait_all_tasks_blocked()
            fetcher.release.set()

        assert answers == [True, True, True]
        assert fetcher.sent == 2

    anyio.run(scenario)


def test_failed_check_is_false() -> None:
    """A check that fails before the server judges the token confirms nothing."""

    async def scenario() -> None:
        fetcher = ScriptedFetcher([TransportError("GET x failed", url="x")])
        fetcher.release.set()

        assert await check_with(fetcher).confirm() is False

    anyio.run(scenario)


def test_rejected_token_raises() -> None:
    async def scenario() -> None:
        fetcher = ScriptedFetcher([TokenRejectedError("the server rejected the API token")])
        fetcher.release.set()

        with pytest.raises(TokenRejectedError):
            await check_with(fetcher).confirm()

    anyio.run(scenario)
