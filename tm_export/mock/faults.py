"""Fault rules: deterministic failures injected into the mock server's responses.

A rule is a JSON object. It matches a request when ``path`` (a regular expression, searched in
the path below the server root, e.g. ``^/api/v2/projects/$``) is found and every entry of
``query`` equals the request's query value. The rule counts its matching requests and acts on
the ones numbered ``after`` (default 0, the first) up to ``after + times - 1`` (``times``
defaults to unlimited); with ``every: N`` only each N-th of those, counting from ``after``. Triggers are request counts only, never timers. When several rules act
on the same request the first one added wins; every matching rule still counts the request.

Actions (one per rule; ``latency_ms`` may be combined with any other):

==============================  ===============================================================
``{"status": 503}``             answer this status; optional ``body`` (JSON value, or text),
                                ``content_type`` and ``headers`` (e.g. ``{"Retry-After": "2"}``)
``{"html": 502}``               a gateway error page with ``text/html``, like a load balancer's
``{"latency_ms": 250}``         wait this many milliseconds, then answer normally
``{"reset": true}``             close the connection without any response
``{"truncate": true}``          send the headers with the full Content-Length, half the body,
                                then close the connection
``{"repeat_page": 1}``          answer with the records of page 1 of the same query, with a
                                pagination object that still says ``hasNext: true``
``{"empty_page": true}``        answer with empty record lists and ``hasNext: true``
``{"echo_headers": true}``      a 500 whose JSON body echoes every request header, secrets too
``{"kill": 12345}``             send SIGKILL to process 12345 when the request arrives, then
                                answer normally; ``"signal": "SIGTERM"`` (or SIGINT, SIGHUP)
                                sends that signal instead
``{"call": function}``          Python API only: call ``function()`` when the request arrives,
                                then answer normally (to change the data between two pages)
==============================  ===============================================================

With ``status`` or ``html``, ``retry_after_date: N`` sets ``Retry-After`` to an HTTP-date N
seconds after the response's own ``Date`` header (both computed from one clock reading).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from tm_export.mock.errors import json_response, text_response

logger = logging.getLogger("tm_export.mock")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACTIONS = (
    "status",
    "html",
    "reset",
    "truncate",
    "repeat_page",
    "empty_page",
    "echo_headers",
    "kill",
    "call",
)
_OPTIONS = frozenset(
    {
        "path",
        "query",
        "after",
        "times",
        "every",
        "body",
        "content_type",
        "headers",
        "latency_ms",
        "retry_after_date",
        "signal",
    }
)
_SIGNALS = {
    "SIGKILL": signal.SIGKILL,
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
    "SIGHUP": signal.SIGHUP,
}

_GATEWAY_PAGE = """<!DOCTYPE html>
<html>
<head><title>{status} {reason}</title></head>
<body>
<h1>{status} {reason}</h1>
<p>The gateway did not get a valid response from the application server.</p>
</body>
</html>
"""


@dataclass(slots=True)
class FaultRule:
    """One fault rule; build it with ``FaultRule.from_json`` to get its fields checked."""

    path: re.Pattern[str]
    action: str | None
    """Name of the action, or None for a rule that only adds latency."""
    argument: Any = None
    """Value given with the action: a status code, a page number, a pid, or True."""
    query: dict[str, str] = field(default_factory=dict)
    after: int = 0
    times: int | None = None
    every: int = 1
    """Act on every N-th matching request of the window only (1: each one)."""
    latency_ms: float = 0.0
    body: Any = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_date: float | None = None
    """Seconds between the response's Date header and the HTTP-date sent in Retry-After."""
    signal_name: str = "SIGKILL"
    matched: int = 0
    """Matching requests seen so far."""
    applied: int = 0
    """Requests this rule acted on so far."""
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaultRule:
        """Check a rule object and build the rule; raise ValueError on any invalid field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"invalid fault rule {data!r}: expected a JSON object")
        unknown = set(data) - _OPTIONS - set(ACTIONS)
        if unknown:
            raise ValueError(f"invalid fault rule: unknown keys {sorted(unknown)}")
        actions = [name for name in ACTIONS if name in data]
        if len(actions) > 1:
            raise ValueError(f"invalid fault rule: one action expected, got {actions}")
        if not actions and "latency_ms" not in data:
            raise ValueError(f"invalid fault rule: expected one of {list(ACTIONS)} or latency_ms")

        action = actions[0] if actions else None
        argument = data[action] if action else None
        _check_argument(action, argument)
        try:
            path = re.compile(str(data.get("path", "")))
        except re.error as error:
            raise ValueError(f"invalid fault rule path {data.get('path')!r}: {error}") from error
        if str(data.get("signal", "SIGKILL")) not in _SIGNALS:
            raise ValueError(
                f"invalid signal {data['signal']!r}: expected one of {sorted(_SIGNALS)}"
            )
        after = int(data.get("after", 0))
        times = data.get("times")
        every = int(data.get("every", 1))
        if after < 0 or (times is not None and int(times) < 0):
            raise ValueError("invalid fault rule: after and times must be 0 or more")
        if every < 1:
            raise ValueError(f"invalid fault rule: every must be 1 or more, got {every}")

        return cls(
            path=path,
            action=action,
            argument=argument,
            query={str(key): str(value) for key, value in dict(data.get("query") or {}).items()},
            after=after,
            every=every,
            times=None if times is None else int(times),
            latency_ms=float(data.get("latency_ms", 0)),
            body=data.get("body"),
            content_type=data.get("content_type"),
            headers={
                str(key): str(value) for key, value in dict(data.get("headers") or {}).items()
            },
            retry_after_date=data.get("retry_after_date"),
            signal_name=str(data.get("signal", "SIGKILL")),
            source={key: value for key, value in data.items() if key != "call"},
        )

    def matches(self, path: str, query: Mapping[str, str]) -> bool:
        if not self.path.search(path):
            return False
        return all(query.get(key) == value for key, value in self.query.items())

    def in_window(self, index: int) -> bool:
        """Tell whether the rule acts on its ``index``-th matching request (0-based)."""
        if index < self.after:
            return False
        if (index - self.after) % self.every:
            return False
        return self.times is None or index < self.after + self.times

    def describe(self) -> dict[str, Any]:
        return {**self.source, "matched": self.matched, "applied": self.applied}


def _check_argument(action: str | None, argument: Any) -> None:
    if action in ("status", "html") and not (isinstance(argument, int) and 100 <= argument <= 599):
        raise ValueError(f"invalid {action} {argument!r}: expected an HTTP status code 100-599")
    if action == "repeat_page" and not (isinstance(argument, int) and argument >= 1):
        raise ValueError(f"invalid repeat_page {argument!r}: expected a page number, 1 or more")
    # pid 0, 1 and negative pids would signal process groups or init. The server's own pid
    # would kill the process that embeds it, often the test runner.
    if action == "kill" and not (
        isinstance(argument, int) and argument > 1 and argument != os.getpid()
    ):
        raise ValueError(f"invalid kill pid {argument!r}: expected another process's pid")
    if action == "call" and not callable(argument):
        raise ValueError(f"invalid call {argument!r}: expected a function")


class FaultSet:
    """The fault rules of one server, safe to change from any thread while it runs."""

    def __init__(self, rules: tuple[Mapping[str, Any] | FaultRule, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        for rule in rules:
            self.add(rule)

    def add(self, rule: Mapping[str, Any] | FaultRule) -> FaultRule:
        checked = rule if isinstance(rule, FaultRule) else FaultRule.from_json(rule)
        with self._lock:
            self._rules.append(checked)
        return checked

    def clear(self) -> int:
        with self._lock:
            removed = len(self._rules)
            self._rules.clear()
        return removed

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.describe() for rule in self._rules]

    def select(self, path: str, query: Mapping[str, str]) -> FaultRule | None:
        """Count a request against every matching rule and return the first that acts on it."""
        chosen = None
        with self._lock:
            for rule in self._rules:
                if not rule.matches(path, query):
                    continue
                index = rule.matched
                rule.matched += 1
                if chosen is None and rule.in_window(index):
                    rule.applied += 1
                    chosen = rule
        return chosen


async def apply(rule: FaultRule, request: web.Request, handler: Handler) -> web.StreamResponse:
    """Build the response the rule prescribes; ``handler`` produces the normal response."""
    if rule.latency_ms:
        await asyncio.sleep(rule.latency_ms / 1000)

    if rule.action == "kill":
        _kill(int(rule.argument), rule.signal_name)
        return await handler(request)
    if rule.action == "call":
        rule.argument()
        return await handler(request)
    if rule.action == "status":
        return _with_retry_date(rule, _status_response(rule))
    if rule.action == "html":
        return _with_retry_date(rule, _gateway_page(int(rule.argument), rule.headers))
    if rule.action == "reset":
        _drop_connection(request)
        # aiohttp needs a response object, but none can reach the closed connection.
        return web.Response(status=499)
    if rule.action == "truncate":
        return await _truncated(request, await handler(request))
    if rule.action == "repeat_page":
        return await _repeat_page(request, handler, int(rule.argument))
    if rule.action == "empty_page":
        return _empty_page(await handler(request))
    if rule.action == "echo_headers":
        headers = {str(name): value for name, value in request.headers.items()}
        body = {"Error": "Unhandled error while serving the request", "headers": headers}
        return json_response(body, 500)
    return await handler(request)


def _kill(pid: int, name: str) -> None:
    try:
        os.kill(pid, _SIGNALS[name])
    except ProcessLookupError:
        logger.warning("fault rule could not signal pid %d: no such process", pid)
        return
    logger.info("fault rule sent %s to pid %d", name, pid)


def _with_retry_date(rule: FaultRule, response: web.Response) -> web.Response:
    if rule.retry_after_date is None:
        return response
    now = time.time()
    response.headers["Date"] = email.utils.formatdate(now, usegmt=True)
    response.headers["Retry-After"] = email.utils.formatdate(
        now + rule.retry_after_date, usegmt=True
    )
    return response


def _status_response(rule: FaultRule) -> web.Response:
    status = int(rule.argument)
    body = rule.body
    if body is None:
        body = {"detail": _reason(status)}
    if isinstance(body, str):
        content_type = rule.content_type or "text/plain; charset=utf-8"
        return text_response(body, status, content_type, rule.headers)
    response = json_response(body, status, rule.headers)
    if rule.content_type:
        response.headers["Content-Type"] = rule.content_type
    return response


def _gateway_page(status: int, headers: Mapping[str, str]) -> web.Response:
    page = _GATEWAY_PAGE.format(status=status, reason=_reason(status))
    response = text_response(page, status, "text/html", headers)
    response.headers.setdefault("Server", "nginx")
    return response


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _truncated(request: web.Request, full: web.StreamResponse) -> web.StreamResponse:
    body = full.body if isinstance(full, web.Response) else None
    if not isinstance(body, bytes):
        return full
    partial = web.StreamResponse(status=full.status, headers=full.headers)
    partial.content_length = len(body)
    await partial.prepare(request)
    await partial.write(body[: len(body) // 2])
    _drop_connection(request)
    return partial


async def _repeat_page(request: web.Request, handler: Handler, page: int) -> web.StreamResponse:
    requested_page = _page_of(request)
    replayed = request.clone(rel_url=request.rel_url.update_query(page=str(page)))
    response = await handler(replayed)
    body = _json_body(response)
    if body is None or not isinstance(body.get("pagination"), dict):
        return response
    body["pagination"] = _still_more(body["pagination"], requested_page)
    return json_response(body, response.status)


def _empty_page(response: web.StreamResponse) -> web.StreamResponse:
    body = _json_body(response)
    if body is None:
        return response
    for key, value in body.items():
        if isinstance(value, list) and key != "mapResults":
            body[key] = []
    if isinstance(body.get("pagination"), dict):
        body["pagination"] = _still_more(body["pagination"], int(body["pagination"]["page"]))
    return json_response(body, response.status)


def _still_more(pagination: dict[str, Any], page: int) -> dict[str, Any]:
    """Rewrite a pagination object for ``page`` so that it claims another page follows."""
    return {
        **pagination,
        "hasNext": True,
        "hasPrev": page > 1,
        "nextNum": page + 1,
        "page": page,
        "prevNum": page - 1 if page > 1 else None,
    }


def _page_of(request: web.Request) -> int:
    try:
        return int(request.query.get("page", "1"))
    except ValueError:
        return 1


def _json_body(response: web.StreamResponse) -> dict[str, Any] | None:
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None
