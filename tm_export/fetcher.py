"""One request, done well: concurrency slot, rate budget, host pause, retries, classification.

``Fetcher.get_json`` returns a parsed 2xx body or raises:

- ``TokenRejectedError`` on 401, at once and for every later call too;
- ``WaitTooLongError`` when ``Retry-After`` requests a longer wait than the recipe allows;
- ``HTTPStatusError`` for a status that is not retried (403, 404, other 4xx), or for a
  retried status (429, 5xx) once the attempts are used up;
- ``FatalError`` when the attempts are used up on ``ConnectError``: the server cannot be
  reached at all, so the run stops, to be resumed;
- ``TransportError`` when the attempts are used up on other connection errors, timeouts,
  cut bodies or a 2xx body that is not JSON.
"""

from __future__ import annotations

import html
import logging
import random
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import orjson

from .clock import Clock
from .errors import (
    ConnectError,
    FatalError,
    HTTPStatusError,
    RequestError,
    TokenRejectedError,
    TransportError,
    WaitTooLongError,
    unreachable,
)
from .http import HttpSession, Response
from .pacing import HostGate, RateLimiter
from .recipe import Retries
from .redact import Redactor
from .retry import Backoff, is_retried, retry_after_seconds

logger = logging.getLogger("tm_export.fetch")

EXCERPT_CHARS = 200


class Fetcher:
    """Sends GET requests for the engine, within the run's limits."""

    def __init__(
        self,
        session: HttpSession,
        *,
        base_url: str,
        retries: Retries,
        concurrency: int,
        rate_limit: float,
        clock: Clock,
        redactor: Redactor,
        token_env: str | None,
        rng: random.Random | None = None,
        rerun: str = "run the same command again to resume",
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._retries = retries
        self._slots = anyio.Semaphore(concurrency, fast_acquire=True)
        self._rate = RateLimiter(rate_limit, clock)
        self._gate = HostGate(clock)
        self._clock = clock
        self._backoff = Backoff(retries, rng)
        self._redactor = redactor
        self._token_env = token_env
        self._rerun = rerun
        """The advice that ends a message about the token, after the fix."""
        self._fatal: FatalError | None = None
        self.requests_sent = 0
        self.retries_done = 0

    async def get_json(
        self, path: str, params: Mapping[str, str], *, spool: bool = True
    ) -> tuple[Response, Any]:
        """Return the response and its parsed JSON body; see the module docstring for errors.

        A successful body larger than the session's spool threshold is not parsed: the body
        is then None and ``response.spool`` names the file that contains it, which the caller
        reads as a stream and deletes. With ``spool=False`` every body is read into memory
        and parsed, for callers that need the whole body at once.
        """
        url = self._base_url + path
        attempts = self._retries.attempts

        for attempt in range(1, attempts + 1):
            response, failure = await self._attempt(url, params, spool)
            if response is not None:
                try:
                    body, failure = self._classify(response)
                except RequestError as error:
                    # Not worth another attempt (a 400), yet those before it count.
                    error.attempts = attempt
                    raise
                if failure is None:
                    if attempt > 1:
                        response = replace(response, attempts=attempt)
                    return response, body

            assert failure is not None
            failure.attempts = attempt
            if attempt == attempts and isinstance(failure, ConnectError):
                # No partition is to blame for a server that cannot be reached at all. As
                # failures, the rest of the run would fail partition after partition, each
                # after every retry, and the same command would not fetch them again.
                self._fatal = unreachable(self._base_url, failure, self._rerun)
                raise self._fatal
            # Checked on the last attempt too: a long Retry-After means the server wants no
            # more requests, whether or not this one would be retried.
            self._raise_if_wait_too_long(failure)
            if attempt == attempts:
                retry_after = failure.retry_after if isinstance(failure, HTTPStatusError) else None
                if retry_after is not None:
                    # No retry is left for this request, but the others owe the pause too.
                    self._gate.pause(retry_after)
                raise failure
            await self._wait_before_retry(failure, attempt, attempts)

        raise AssertionError("unreachable: the loop returns or raises")

    async def _attempt(
        self, url: str, params: Mapping[str, str], spool: bool
    ) -> tuple[Response | None, RequestError | None]:
        await self._gate.wait_open()
        async with self._slots:
            # Turns are taken for after a pause, so the requests it held start spaced rather
            # than all at once. A pause that began during the wait means a new turn.
            while True:
                await self._rate.wait_turn(not_before=self._gate.opens_at)
                if self._gate.is_open():
                    break
            if self._fatal is not None:
                # Another request got a fatal response while this one waited, so send nothing more.
                raise self._fatal
            self.requests_sent += 1
            try:
                return await self._session.get(url, params, spool=spool), None
            except TransportError as error:
                return None, error

    def _classify(self, response: Response) -> tuple[Any, RequestError | None]:
        status = response.status
        if 200 <= status < 300:
            if response.spool is not None:
                # Parsed as a stream by the caller, which fails the page on malformed JSON.
                # A body that does not even start like JSON (a proxy's HTML page) is retried
                # here, as a small one is.
                head = response.body.lstrip()[:1]
                if head in (b"", b"{", b"["):
                    return None, None
                response.spool.unlink(missing_ok=True)
                return None, self._not_json(response)
            try:
                return orjson.loads(response.body), None
            except orjson.JSONDecodeError:
                return None, self._not_json(response)

        error = self._status_error(response)
        if self._session.sends_token and _lacks_rights(response):
            # The token is valid, and only this request needs more: the partition fails, and
            # the rest of the run goes on.
            raise error
        if status == 401 or _malformed_token(response):
            self._fatal = TokenRejectedError(self._token_message(response, error))
            self._fatal.expired = status == 401 and error.sub_code == EXPIRED_SUB_CODE
            raise self._fatal
        if not is_retried(status):
            raise error
        return None, error

    def _not_json(self, response: Response) -> TransportError:
        error = TransportError(
            f"GET {response.url}: {response.status} with a body that is not JSON "
            f"({response.content_type or 'no content type'}): {self.excerpt(response)}",
            url=response.url,
        )
        error.status = response.status
        return error

    def _status_error(self, response: Response) -> HTTPStatusError:
        excerpt = self.excerpt(response)
        sub_code = _sub_code(response)
        if sub_code is not None:
            # A `detail` is free text that may echo the request, token included, and it is
            # written to the manifest and the run record.
            sub_code = self._shorten(self._redactor.redact(" ".join(sub_code.split())))
        code = f" {sub_code}" if sub_code else ""
        return HTTPStatusError(
            f"GET {response.url}: {response.status}{code} ({response.content_type or 'no content type'}): "
            f"{excerpt}",
            url=response.url,
            status=response.status,
            content_type=response.content_type,
            excerpt=excerpt,
            sub_code=sub_code,
            retry_after=retry_after_seconds(response.headers, response.url),
            location=self._shorten(self._redactor.redact(response.headers.get("location", "")))
            or None,
        )

    def _token_message(self, response: Response, error: HTTPStatusError) -> str:
        reason = error.sub_code or error.excerpt if response.status != 401 else error.sub_code
        status = f"{response.status} {reason}" if reason else str(response.status)
        detail = f"({status} at {response.url})"

        if not self._session.sends_token:
            # Only streams not marked as needing a token get here (by the catalog or by
            # `auth: required`), because the others stop before the run without a token.
            if self._token_env is None:
                return (
                    f"the server requires an API token {detail}, and none was sent because the "
                    "recipe sets no instance.token_env. Set it to the name of the environment "
                    f"variable that holds your TM API key, export that variable, and {self._rerun}"
                )
            return (
                f"the server requires an API token {detail}, and none was sent because "
                f"{self._token_env} is not set or empty. Copy an API key from your Tasking Manager "
                f"settings, export {self._token_env}, and {self._rerun}"
            )

        variable = self._token_env or "the token variable"
        return (
            f"the server rejected the API token {detail}: the token in {variable} is invalid or "
            f"expired (TM tokens last 7 days). Copy a new API key from your Tasking Manager "
            f"settings, export {variable}, and {self._rerun}"
        )

    def _raise_if_wait_too_long(self, failure: RequestError) -> None:
        """Raise WaitTooLongError for a Retry-After longer than ``max_retry_after``."""
        retry_after = failure.retry_after if isinstance(failure, HTTPStatusError) else None
        limit = self._retries.max_retry_after
        if retry_after is not None and retry_after > limit:
            self._fatal = WaitTooLongError(
                f"the server asked to wait {retry_after:.0f} s (Retry-After at {failure.url}), more than "
                f"instance.retries.max_retry_after ({limit:.0f} s); the run stopped. Wait, then "
                f"{self._rerun}, or raise max_retry_after"
            )
            raise self._fatal

    @property
    def attempts(self) -> int:
        """The attempts each request may take, the first included."""
        return self._retries.attempts

    async def wait_to_fetch_again(self, failure: Exception) -> None:
        """Count a retry and wait the first backoff before a request is sent again because
        its 200 response had another shape than the endpoint's."""
        self.retries_done += 1
        wait = self._backoff.wait(1)
        logger.warning("fetching again in %.1f s: %s", wait, failure)
        await self._clock.sleep(wait)

    async def _wait_before_retry(self, failure: RequestError, attempt: int, attempts: int) -> None:
        retry_after = failure.retry_after if isinstance(failure, HTTPStatusError) else None
        self.retries_done += 1
        if retry_after is not None:
            self._gate.pause(retry_after)
            logger.warning(
                "retrying after Retry-After %.1f s (attempt %d of %d): %s",
                retry_after,
                attempt + 1,
                attempts,
                failure,
            )
            return

        wait = self._backoff.wait(attempt)
        logger.warning(
            "retrying in %.1f s (attempt %d of %d): %s", wait, attempt + 1, attempts, failure
        )
        await self._clock.sleep(wait)

    def excerpt(self, response: Response) -> str:
        """Return a short, single-line, secret-free excerpt of a response body."""
        text = response.body[: EXCERPT_CHARS * 20].decode("utf-8", errors="replace")
        if "html" in response.content_type or text.lstrip().startswith("<"):
            text = re.sub(r"(?is)<(script|style).*?</\1>", " ", text)
            text = html.unescape(re.sub(r"<[^>]+>", " ", text))
        text = self._redactor.redact(" ".join(text.split()))
        if not text:
            return "(empty body)"
        return self._shorten(text)

    @staticmethod
    def _shorten(text: str) -> str:
        return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


#: The sub-code of the server's 401 for a token it cannot verify: expired or revoked.
EXPIRED_SUB_CODE = "InvalidToken"


def _malformed_token(response: Response) -> bool:
    """Tell whether the server rejected the Authorization header itself.

    TM's authentication middleware returns 400 ``text/plain`` ``Invalid auth credentials`` to
    every request whose header it cannot decode (a token cut short, bad base64), public
    endpoints included, so no request can succeed until the token is fixed.
    """
    return (
        response.status == 400
        and response.content_type == "text/plain"
        and response.body.strip() == b"Invalid auth credentials"
    )


def _lacks_rights(response: Response) -> bool:
    """Tell whether a 401 refuses the request rather than the token.

    TM returns 401 with a legacy ``{"Error": ...}`` body without a ``SubCode`` to a valid
    token that lacks a right, such as a mapper's key searching by ``partnerId``. A token it
    cannot verify gets ``SubCode: InvalidToken``, and a wrong scheme a structured error.
    """
    if response.status != 401 or response.content_type != "application/json":
        return False
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("Error"), str) and "SubCode" not in body


def _sub_code(response: Response) -> str | None:
    if response.content_type != "application/json":
        return None
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("SubCode"), str):
        return str(body["SubCode"])
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("sub_code"), str):
        return str(error["sub_code"])
    if isinstance(body.get("detail"), str):
        return str(body["detail"])
    return None
