"""Run the mock Tasking Manager: ``MockServer`` in a background thread, ``serve()`` in the foreground.

The server listens on a loopback address only. ``MockServer`` runs its own event loop in a
daemon thread, so synchronous tests and tests that start subprocesses can use it alike.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from aiohttp import web

from tm_export.mock.app import API_PREFIX, build_app
from tm_export.mock.auth import TokenStore
from tm_export.mock.controls import RequestLog
from tm_export.mock.dataset import Dataset
from tm_export.mock.faults import FaultRule, FaultSet

logger = logging.getLogger("tm_export.mock")

#: Seconds ``start()`` and ``stop()`` wait for the server thread before giving up.
THREAD_TIMEOUT = 30.0


def check_loopback(host: str) -> None:
    """Raise ValueError unless ``host`` is ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"invalid host {host!r}: expected a loopback address such as 127.0.0.1"
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"invalid host {host!r}: the mock server listens on loopback addresses only"
        )


class ServeError(Exception):
    """``serve`` could not listen, or could not write its ready file."""


class MockServer:
    """A mock Tasking Manager API on ``http://HOST:PORT/api/v2``, for tests.

    ``with MockServer() as server:`` starts it and stops it on exit. ``port=0`` picks a free
    port; ``base_url`` contains the chosen port after ``start()``.
    """

    def __init__(
        self,
        projects: int = 300,
        seed: int = 1,
        latency_ms: float = 0,
        faults: Iterable[Mapping[str, Any] | FaultRule] = (),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        check_loopback(host)
        self.dataset = Dataset(projects=projects, seed=seed)
        self.host = host
        self.port = port
        self.latency_ms = latency_ms
        self._token_store = TokenStore(self.dataset.users_by_name)
        self._faults = FaultSet(tuple(faults))
        self._log = RequestLog()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # -- addresses and tokens -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Server root, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def tokens(self) -> dict[str, str]:
        """Header values for ``Authorization: Token <value>`` by role: admin, mapper, other."""
        return dict(self._token_store.tokens)

    def renew_token(self, role: str) -> None:
        """Expire the token of ``role`` (``admin``, ``mapper``, ``other``) and mint a new one."""
        self._token_store.renew(role)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> MockServer:
        """Start serving; return once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the mock server is already running")
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="tm-export-mock", daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError(f"the mock server did not start within {THREAD_TIMEOUT} s")
        failure, self._failure = self._failure, None
        if failure is not None:
            self._thread.join(THREAD_TIMEOUT)
            self._thread = None
            raise RuntimeError(f"the mock server failed to start: {failure}") from failure
        logger.info("mock Tasking Manager listening on %s", self.api_url)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the server thread to end; does nothing when not running."""
        if self._thread is None or self._loop is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(THREAD_TIMEOUT)
        if self._thread.is_alive():
            logger.error("mock server thread still running %s s after stop", THREAD_TIMEOUT)
        self._thread = None
        logger.info("mock Tasking Manager on %s stopped", self.base_url)

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:
            if not self._ready.is_set():
                self._failure = error
                self._ready.set()
            else:
                logger.exception("mock server thread failed")
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        app = build_app(self.dataset, self._token_store, self._faults, self._log, self.latency_ms)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        listener = socket.create_server(
            (self.host, self.port), family=_family(self.host), backlog=128
        )
        try:
            self.port = listener.getsockname()[1]
            await web.SockSite(runner, listener).start()
            self._ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()
            listener.close()

    # -- test helpers ---------------------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        """Return a copy of the request log (see ``controls.RequestLog``)."""
        return self._log.entries()

    @property
    def request_count(self) -> int:
        """Requests to ``/api/v2`` since the server started, log resets included."""
        return self._log.total

    def reset_log(self) -> None:
        self._log.clear()

    def add_fault(
        self, rule: Mapping[str, Any] | FaultRule | None = None, **fields: Any
    ) -> FaultRule:
        """Add a fault rule, given as a mapping or as keyword fields (see ``tm_export.mock.faults``)."""
        return self._faults.add(rule if rule is not None else fields)

    def clear_faults(self) -> None:
        self._faults.clear()

    def faults(self) -> list[dict[str, Any]]:
        """Return the rules with their ``matched`` and ``applied`` counters."""
        return self._faults.describe()

    def counts(self, role: str = "anonymous") -> dict[str, int]:
        """Return the expected record count of every catalog endpoint (``Dataset.counts()``).

        ``role`` is ``anonymous`` or a token name (``admin``, ``mapper``, ``other``).
        """
        return self.dataset.counts(role)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    projects: int = 300,
    seed: int = 1,
    latency_ms: float = 0,
    ready_file: str | os.PathLike[str] | None = None,
) -> None:
    """Run a mock server until SIGINT or SIGTERM, printing its URLs and tokens first.

    Prints ``base_url``, ``api_url`` and one line per token as ``name: value``, and writes the
    same as ``{"base_url", "api_url", "tokens"}`` JSON to ``ready_file`` when given (atomically,
    so a reader never sees a partial file).

    Raises:
        ServeError: the port is taken, or ``ready_file`` cannot be written.
        ValueError: ``host`` is not a loopback address.
    """
    server = MockServer(projects=projects, seed=seed, latency_ms=latency_ms, host=host, port=port)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("mock server got signal %d, stopping", signum)
        stop_requested.set()

    # A signal the process started with ignored (a background job's SIGINT) stays ignored.
    stops = [
        sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) != signal.SIG_IGN
    ]
    previous = {sig: signal.signal(sig, request_stop) for sig in stops}
    try:
        try:
            server.start()
        except RuntimeError as error:
            cause = error.__cause__
            reason = (
                os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else error
            )
            raise ServeError(
                f"cannot listen on {host}:{port}: {reason}; choose another --port, or 0 for a "
                "free one"
            ) from error
        try:
            _announce(server, ready_file)
        except OSError as error:
            raise ServeError(
                f"--ready-file {ready_file}: cannot write it: {error.strerror}; give a file in "
                "a folder that exists and is writable"
            ) from error
        while not stop_requested.wait(1.0):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(server: MockServer, ready_file: str | os.PathLike[str] | None) -> None:
    """Write the ready file first, so that a reader of the banner finds the file in place."""
    if ready_file is not None:
        description = {
            "base_url": server.base_url,
            "api_url": server.api_url,
            "tokens": server.tokens,
        }
        _write_atomically(Path(ready_file), json.dumps(description) + "\n")

    lines = [f"base_url: {server.base_url}", f"api_url: {server.api_url}"]
    lines += [f"{name}: {value}" for name, value in server.tokens.items()]
    print("\n".join(lines), flush=True)  # noqa: T201 - the start banner is this command's output


def _write_atomically(target: Path, content: str) -> None:
    """Write through a temporary file in the same folder and rename it over ``target``."""
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(content)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
