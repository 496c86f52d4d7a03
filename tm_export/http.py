"""The HTTP session: one aiohttp client per run, and the only module that imports aiohttp.

Every aiohttp and timeout exception is translated here into ``TransportError``, so the
rest of tm-export handles one exception tree and never catches aiohttp's.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import aiohttp

from .errors import ConnectError, StorageError, TransportError
from .redact import Redactor

logger = logging.getLogger("tm_export.http")

#: Bytes of a successful response kept in memory; a larger body goes to a spool file.
SPOOL_OVER = 8 << 20


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response. Header names are lower case."""

    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    """The body, or its first bytes when it was spooled to ``spool``."""
    spool: Path | None = None
    """A file holding the whole body when it was larger than the spool threshold."""
    attempts: int = 1
    """The attempts the request took, this one included (set by the fetcher)."""

    @property
    def size(self) -> int:
        return self.spool.stat().st_size if self.spool else len(self.body)

    @property
    def content_type(self) -> str:
        """The media type without parameters, e.g. ``application/json``."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


def _connect_failure(error: aiohttp.ClientConnectorError) -> str:
    """Return the address and the system's reason for a failed connection.

    aiohttp's own text names the TLS setting even for plain HTTP ("ssl:default"), and its
    reason for a refused connection repeats the address.
    """
    cause = error.os_error
    if isinstance(cause, ConnectionError) and cause.errno:
        reason = os.strerror(cause.errno)
    else:
        reason = cause.strerror or str(cause) or type(cause).__name__
    return f"cannot connect to {error.host}:{error.port} ({reason})"


class HttpSession:
    """An aiohttp client session with explicit timeouts and the run's fixed headers."""

    def __init__(
        self,
        *,
        user_agent: str,
        token: str | None,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        max_connections: int,
        redactor: Redactor,
        spool_dir: Path | None = None,
        spool_over: int = SPOOL_OVER,
    ) -> None:
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if token:
            # The TM settings page shows the key already base64-encoded, and the header scheme
            # is "Token". A value pasted with its scheme is sent as it is. An empty header is
            # never sent, because the server returns 400 to every request that has one.
            self._headers["Authorization"] = (
                token if token.startswith("Token ") else f"Token {token}"
            )
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._max_connections = max_connections
        self._redactor = redactor
        self._spool_dir = spool_dir
        self._spool_over = spool_over
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=self._max_connections
        )
        self._session = aiohttp.ClientSession(
            headers=self._headers,
            timeout=self._timeout,
            connector=connector,
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, params: Mapping[str, str], *, spool: bool = True) -> Response:
        """Send one GET and read the whole body; with ``spool=False`` always into memory.

        Raises:
            TransportError: no complete response arrived (connection, timeout, cut body).
        """
        assert self._session is not None, "use HttpSession as an async context manager"
        started = time.perf_counter()
        shown = _with_query(url, params)
        try:
            async with self._session.get(url, params=params, allow_redirects=False) as reply:
                status = reply.status
                headers = {name.lower(): value for name, value in reply.headers.items()}
                body, spooled = await self._read_body(reply, spool and 200 <= status < 300)
        except aiohttp.ConnectionTimeoutError as error:
            raise ConnectError(f"GET {shown}: the connection timed out", url=shown) from error
        except aiohttp.ServerTimeoutError as error:
            # aiohttp raises this when no data came for the read timeout, and a plain
            # TimeoutError when the whole exchange took longer than the total one.
            raise TransportError(
                f"GET {shown} timed out: no data for {self._read_timeout:g} s "
                "(instance.timeouts.read)",
                url=shown,
            ) from error
        except TimeoutError as error:
            raise TransportError(
                f"GET {shown} timed out: no whole response within {self._total_timeout:g} s "
                "(instance.timeouts.total)",
                url=shown,
            ) from error
        except aiohttp.ClientPayloadError as error:
            raise TransportError(
                f"GET {shown}: the response body was cut short", url=shown
            ) from error
        except aiohttp.ClientConnectorError as error:
            reason = self._redactor.redact(_connect_failure(error))
            raise ConnectError(f"GET {shown} failed: {reason}", url=shown) from error
        except aiohttp.ClientResponseError as error:
            # aiohttp's parser rejected the response. Its status (400) is aiohttp's own, not
            # the server's, and its message quotes the bad line on the lines after the first.
            lines = str(error.message).strip().splitlines() or ["no reason given"]
            reason = self._redactor.redact(lines[0].rstrip(":"))
            raise TransportError(
                f"GET {shown}: the response is not valid HTTP ({reason})", url=shown
            ) from error
        except aiohttp.ClientError as error:
            reason = self._redactor.redact(str(error) or type(error).__name__)
            raise TransportError(f"GET {shown} failed: {reason}", url=shown) from error
        except OSError as error:
            raise StorageError(
                f"{self._spool_dir}: cannot spool a large response: {error.strerror}"
            ) from error

        if logger.isEnabledFor(logging.DEBUG):
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.debug(
                "GET %s -> %d (%.0f ms, %d bytes) headers: %s",
                shown,
                status,
                elapsed_ms,
                spooled.stat().st_size if spooled else len(body),
                self.shown_headers(),
            )
        return Response(url=shown, status=status, headers=headers, body=body, spool=spooled)

    async def _read_body(
        self, reply: aiohttp.ClientResponse, spoolable: bool
    ) -> tuple[bytes, Path | None]:
        """Read a body into memory, or into a spool file once it passes the threshold.

        Memory then stays flat however large a response is (the task geometry of a big
        project can be hundreds of megabytes). Error bodies are always kept in memory: they
        are small, and only an excerpt of them is used.
        """
        length = reply.content_length
        if length is not None and (length <= self._spool_over or not spoolable):
            # The usual case: a body of known, small size is read in one call.
            return await reply.read(), None

        chunks: list[bytes] = []
        size = 0
        spool_file: BinaryIO | None = None
        spool: Path | None = None
        try:
            async for chunk in reply.content.iter_chunked(1 << 16):
                if spool_file is not None:
                    spool_file.write(chunk)
                    continue
                chunks.append(chunk)
                size += len(chunk)
                if spoolable and self._spool_dir is not None and size > self._spool_over:
                    self._spool_dir.mkdir(parents=True, exist_ok=True)
                    descriptor, name = tempfile.mkstemp(dir=self._spool_dir, suffix=".json")
                    spool, spool_file = Path(name), os.fdopen(descriptor, "wb")
                    spool_file.write(b"".join(chunks))
                    chunks = [chunks[0][:64]]
        except BaseException:
            if spool_file is not None:
                spool_file.close()
            if spool is not None:
                spool.unlink(missing_ok=True)
            raise
        if spool_file is not None:
            spool_file.close()
        return b"".join(chunks), spool

    @property
    def sends_token(self) -> bool:
        """Whether each request carries an Authorization header."""
        return "Authorization" in self._headers

    def shown_headers(self) -> str:
        """Return the request headers as text, with the Authorization value hidden."""
        return ", ".join(
            f"{name}: {'***' if name == 'Authorization' else value}"
            for name, value in self._headers.items()
        )


def _with_query(url: str, params: Mapping[str, str]) -> str:
    if not params:
        return url
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{url}?{query}"
