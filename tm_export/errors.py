"""The tm-export exception tree and the exit code each branch maps to.

::

    TmExportError
    ├── RecipeError              invalid recipe or usage; nothing was sent (exit 2)
    ├── FatalError               the run stopped before finishing; resumable (exit 1)
    │   ├── TokenRejectedError   the server rejected the API token (401)
    │   ├── WaitTooLongError     Retry-After asked for a longer wait than allowed
    │   ├── OutputLockedError    another process writes the same output folder
    │   ├── StorageError         a data or manifest write failed (disk full, I/O error)
    │   └── ManifestError        the manifest is damaged or belongs to another recipe
    └── RequestError             one request failed; the engine decides what it means
        ├── TransportError       no usable HTTP response: connection, timeout, torn body
        │   └── ConnectError     no connection to the server could be made
        └── HTTPStatusError      the server answered with an error status

The engine turns a ``RequestError`` into a skipped or failed partition, or into a
``FatalError``. Only ``tm_export.http`` raises ``TransportError``: it is the one module
that knows aiohttp's exceptions.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit status of the command line, one per outcome of a run."""

    COMPLETE = 0
    FATAL = 1
    USAGE = 2
    FAILURES = 3
    INTERRUPTED = 130


class TmExportError(Exception):
    """Base of every error tm-export raises on purpose."""

    exit_code = ExitCode.FATAL


class RecipeError(TmExportError):
    """The recipe or the command line is invalid; no request was sent."""

    exit_code = ExitCode.USAGE


class FatalError(TmExportError):
    """The run cannot go on; committed work is kept and a rerun resumes."""

    exit_code = ExitCode.FATAL


def resume_hint(*, started_over: bool) -> str:
    """Return the start of the advice to resume a stopped run.

    The same command with --start-over would begin yet another run folder, so a run that
    it began is resumed by the command without that option.
    """
    if started_over:
        return "run the same command without --start-over"
    return "run the same command again"


def retry_command(*, incremental: bool, started_over: bool) -> str:
    """Return the advice to fetch failed partitions again: the same command with
    --retry-failed, without --incremental or --start-over, which would begin another run."""
    began = [
        option
        for option, on in (("--incremental", incremental), ("--start-over", started_over))
        if on
    ]
    leave_out = f"without {' or '.join(began)} and " if began else ""
    return f"run the same command {leave_out}with --retry-failed"


def unreachable(base_url: str, error: Exception, again: str) -> FatalError:
    """Return the error for a server that sent no response after every retry, or no JSON."""
    if isinstance(error, TransportError) and error.status is not None:
        # Something responds, but not as an API: a web page (a TM site's own address serves
        # its HTML app on every path) or a proxy's error page.
        return FatalError(
            f"{error.url} returned {error.status} with a body that is not JSON, so {base_url} "
            "is not the root of a Tasking Manager API, or a proxy responded in its place; give "
            f"the URL that ends in /api/v2, then {again}"
        )
    return FatalError(
        f"cannot reach the Tasking Manager at {base_url}: {error}; check the base URL and the "
        f"network, then {again}"
    )


def wrong_base_url(base_url: str, error: HTTPStatusError, again: str) -> FatalError | None:
    """Return the error for a heartbeat status that every export request would get too, or
    None for a status that leaves the base URL in doubt.

    A 404 means the URL is not a TM API root. A redirect (http to https, a moved host) is
    not followed by any request, since it could carry the token to another address.
    """
    heartbeat = f"{base_url}/system/heartbeat/"
    if error.status == 404:
        return FatalError(
            f"{heartbeat} was not found (404), so {base_url} is not the root of a Tasking "
            f"Manager API; give the URL that ends in /api/v2, then {again}"
        )
    if 300 <= error.status < 400:
        target = f" to {error.location}" if error.location else ""
        return FatalError(
            f"{heartbeat} returned {error.status}, a redirect{target}; tm-export follows no "
            f"redirects, which could carry the token elsewhere: give the base URL the server "
            f"redirects to, then {again} (a run begun at this URL needs --start-over)"
        )
    return None


class TokenRejectedError(FatalError):
    """The server returned 401: the token is missing, expired or invalid."""

    #: True when the server called the token expired or invalid (401 ``InvalidToken``), as
    #: it does for a token it once accepted. A token it cannot decode (400 ``Invalid auth
    #: credentials``) was never accepted, and a 401 for another reason (``partnerId`` requested
    #: by a user who is not an admin) shows nothing about the token's age.
    expired = False


class WaitTooLongError(FatalError):
    """The server asked for a wait longer than the recipe allows."""


class OutputLockedError(FatalError):
    """Another tm-export process holds the lock of the output folder."""


class StorageError(FatalError):
    """Writing a stream file or the manifest failed."""


class ManifestError(FatalError):
    """The manifest cannot be trusted or does not match the recipe."""


class RequestError(TmExportError):
    """One request failed."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = 1
        """How many attempts were made before this error was raised."""


class TransportError(RequestError):
    """No complete HTTP response arrived (connection error, timeout or a cut body), or one
    whose body is not the JSON it should be."""

    #: The status of a response whose body is not JSON; None when no response arrived.
    status: int | None = None


class ConnectError(TransportError):
    """No connection to the server could be made: refused, unresolved or timed out.

    Unlike the other transport errors, it is not caused by the request that got it, so the
    fetcher stops the run when it lasts through every retry (see ``Fetcher.get_json``).
    """


class HTTPStatusError(RequestError):
    """The server returned a status that is not a success."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int,
        content_type: str,
        excerpt: str,
        sub_code: str | None,
        retry_after: float | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.content_type = content_type
        self.excerpt = excerpt
        self.sub_code = sub_code
        self.retry_after = retry_after
        self.location = location
        """The ``Location`` header of a redirect, shortened."""
