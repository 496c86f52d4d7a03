"""The request log and the ``/__mock__/`` control endpoints that tests use over HTTP.

``GET /__mock__/counts``       the expected record counts (``Dataset.counts()``); ``?role=admin``
                               gives them for a token's caller
``GET /__mock__/requests``     ``{"total": n, "requests": [...]}``: requests to ``/api/v2``
``POST /__mock__/faults``      add one rule object or a list of them; 400 on an invalid rule
``GET /__mock__/faults``       the rules with their ``matched`` and ``applied`` counters
``DELETE /__mock__/faults``    remove every rule
``POST /__mock__/reset-log``   empty the request log (``total`` keeps counting)

Changes to the data, for trying incremental runs; each one takes effect now (UTC):

``POST /__mock__/projects/ID/touch``       set the project's ``lastUpdated``, as an edit would
``POST /__mock__/projects/ID/activities``  add a task history entry to the project's task 1
``DELETE /__mock__/projects/ID``           delete the project; its id stays unused

Each returns a JSON object, or 404 for an unknown project id. Control requests are
neither logged nor subject to fault rules.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tm_export.mock.context import DATASET
from tm_export.mock.errors import json_response
from tm_export.mock.faults import FaultRule, FaultSet

logger = logging.getLogger("tm_export.mock")

CONTROL_PREFIX = "/__mock__/"
FAULTS = web.AppKey("faults", FaultSet)


class RequestLog:
    """Requests served under ``/api/v2`` in arrival order, shared with other threads.

    Entries hold method, path, query string, status, the caller's token name (``admin``,
    ``mapper``, ``other``) or ``anonymous``, and the fault action applied, if any. They never
    hold a token or any other header value.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []
        self.total = 0
        """Requests seen since the server started; a log reset does not change it."""

    def start(self) -> int:
        """Count a new request and return its sequence number, starting at 1."""
        with self._lock:
            self.total += 1
            return self.total

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._entries]

    def clear(self) -> int:
        with self._lock:
            removed = len(self._entries)
            self._entries.clear()
        return removed


LOG = web.AppKey("request_log", RequestLog)


async def counts(request: web.Request) -> web.StreamResponse:
    try:
        figures = request.app[DATASET].counts(request.query.get("role", "anonymous"))
    except ValueError as error:
        return json_response({"error": str(error)}, 400)
    return json_response(figures)


async def requests(request: web.Request) -> web.StreamResponse:
    log = request.app[LOG]
    return json_response({"total": log.total, "requests": log.entries()})


async def list_faults(request: web.Request) -> web.StreamResponse:
    return json_response({"rules": request.app[FAULTS].describe()})


async def add_faults(request: web.Request) -> web.StreamResponse:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        return json_response({"error": f"invalid JSON body: {error}"}, 400)
    rules = data if isinstance(data, list) else [data]
    faults = request.app[FAULTS]

    # Check every rule before adding any, so a bad list changes nothing.
    try:
        checked = [FaultRule.from_json(rule) for rule in rules]
    except (ValueError, TypeError) as error:
        return json_response({"error": str(error)}, 400)
    for rule in checked:
        faults.add(rule)
    return json_response({"added": len(checked), "rules": len(faults.describe())})


async def clear_faults(request: web.Request) -> web.StreamResponse:
    return json_response({"removed": request.app[FAULTS].clear()})


async def reset_log(request: web.Request) -> web.StreamResponse:
    return json_response({"removed": request.app[LOG].clear()})


def _now() -> datetime:
    """Return the current time as the dataset keeps times: naive, in UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _project_id(request: web.Request) -> int | None:
    """Return the request's project id, or None when the dataset has no such project."""
    text = request.match_info["project_id"]
    project_id = int(text) if text.isdigit() else None
    return project_id if project_id in request.app[DATASET].projects else None


def _unknown_project(request: web.Request) -> web.StreamResponse:
    project_id = request.match_info["project_id"]
    logger.warning("%s %s: project %s not found", request.method, request.path, project_id)
    return json_response({"error": f"project {project_id} not found"}, 404)


async def touch_project(request: web.Request) -> web.StreamResponse:
    project_id = _project_id(request)
    if project_id is None:
        return _unknown_project(request)
    when = _now()
    request.app[DATASET].touch_project(project_id, when)
    return json_response({"projectId": project_id, "lastUpdated": when.isoformat() + "Z"})


async def add_activity(request: web.Request) -> web.StreamResponse:
    project_id = _project_id(request)
    if project_id is None:
        return _unknown_project(request)
    history_id = request.app[DATASET].add_activity(project_id, when=_now())
    return json_response({"projectId": project_id, "historyId": history_id})


async def delete_project(request: web.Request) -> web.StreamResponse:
    project_id = _project_id(request)
    if project_id is None:
        return _unknown_project(request)
    request.app[DATASET].delete_project(project_id)
    return json_response({"deleted": project_id})


def add_control_routes(app: web.Application) -> None:
    app.router.add_get(CONTROL_PREFIX + "counts", counts, allow_head=False)
    app.router.add_get(CONTROL_PREFIX + "requests", requests, allow_head=False)
    app.router.add_get(CONTROL_PREFIX + "faults", list_faults, allow_head=False)
    app.router.add_post(CONTROL_PREFIX + "faults", add_faults)
    app.router.add_delete(CONTROL_PREFIX + "faults", clear_faults)
    app.router.add_post(CONTROL_PREFIX + "reset-log", reset_log)
    project = CONTROL_PREFIX + "projects/{project_id}"
    app.router.add_post(project + "/touch", touch_project)
    app.router.add_post(project + "/activities", add_activity)
    app.router.add_delete(project, delete_project)
