"""Synthetic Tasking Manager servers for the workloads that the bundled mock cannot serve.

Run one per process: ``python bench/servers.py MODE --port 0 --ready-file FILE``. It listens
on a loopback address only and writes ``{"base_url", "api_url"}`` to the ready file once it
accepts connections. Every mode responds to ``/api/v2/system/heartbeat/`` as TM does.

Modes:

``tasks``
    ``/api/v2/projects/1/tasks/`` returns the GeoJSON FeatureCollection in ``--body``,
    streamed from disk (``write_tasks_body`` makes such a file).
``activities``
    ``/api/v2/projects/{id}/activities/?page=N`` for ids 1..``--projects``: ``--pages``
    pages of ``--per-page`` synthetic task-history records each, with TM's pagination object.
``statistics``
    ``/api/v2/projects/{id}/statistics/`` returns a small statistics record for any id, at
    once.

Control endpoints, never counted as API requests:

``GET /__bench__/requests``   ``{"count": n, "times": [...], "paths": [...]}``: arrival time
                              (``time.monotonic()``, which on Linux is CLOCK_MONOTONIC and so
                              comparable across processes) and path with query of every API
                              request since the last reset
``POST /__bench__/reset``     empty that log
``POST /__bench__/kill``      ``{"pid": P, "after": N}``: send SIGKILL to process P when the
                              N-th request below ``/api/v2/projects/`` arrives after this call,
                              then answer it normally (the client never reads the answer)
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

API_PREFIX = "/api/v2"

HEARTBEAT = {"status": "Fine", "release": {"version": "v5.5.2", "published_date": "2025-10-01"}}

logger = logging.getLogger("bench.servers")


class RequestLog:
    """Arrival times and paths of the API requests, and an optional kill rule."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.paths: list[str] = []
        self.kill_pid: int | None = None
        self.kill_after = 0
        self.project_requests = 0

    def note(self, request: web.Request) -> None:
        self.times.append(time.monotonic())
        self.paths.append(request.path_qs)
        if request.path.startswith(API_PREFIX + "/projects/") and self.kill_pid is not None:
            self.project_requests += 1
            if self.project_requests == self.kill_after:
                pid, self.kill_pid = self.kill_pid, None
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    logger.warning("kill rule: no process %d", pid)


LOG = web.AppKey("log", RequestLog)


@web.middleware
async def record(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path.startswith(API_PREFIX):
        request.app[LOG].note(request)
    response: web.StreamResponse = await handler(request)
    return response


def json_response(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def heartbeat(request: web.Request) -> web.Response:
    return json_response(HEARTBEAT)


# --- control ---------------------------------------------------------------------------


async def list_requests(request: web.Request) -> web.Response:
    log = request.app[LOG]
    return json_response({"count": len(log.times), "times": log.times, "paths": log.paths})


async def reset_requests(request: web.Request) -> web.Response:
    log = request.app[LOG]
    removed = len(log.times)
    log.times, log.paths = [], []
    return json_response({"removed": removed})


async def set_kill(request: web.Request) -> web.Response:
    rule = orjson.loads(await request.read())
    pid, after = int(rule["pid"]), int(rule["after"])
    # pid 0, 1 and negative pids would signal process groups or init.
    if pid <= 1 or pid == os.getpid() or after < 1:
        return web.json_response({"error": f"invalid kill rule {rule}"}, status=400)
    log = request.app[LOG]
    log.kill_pid, log.kill_after, log.project_requests = pid, after, 0
    return json_response({"pid": pid, "after": after})


# --- modes -----------------------------------------------------------------------------


def tasks_routes(app: web.Application, options: argparse.Namespace) -> None:
    body = Path(options.body)
    if not body.is_file():
        raise SystemExit(f"servers.py tasks: body file {body} not found; create it first")

    async def tasks(request: web.Request) -> web.FileResponse:
        return web.FileResponse(body, headers={"Content-Type": "application/json"})

    app.router.add_get(API_PREFIX + "/projects/1/tasks/", tasks)


def activity_page(project_id: int, page: int, pages: int, per_page: int) -> dict[str, Any]:
    """Return one page of synthetic task history, newest first, in TM's response shape."""
    first = (project_id - 1) * pages * per_page + (page - 1) * per_page
    activity = [
        {
            "historyId": first + index + 1,
            "taskId": (first + index) % 400 + 1,
            "action": "STATE_CHANGE",
            "actionText": ("MAPPED", "VALIDATED", "INVALIDATED")[index % 3],
            "actionDate": f"2025-{(index % 12) + 1:02d}-{(index % 28) + 1:02d}T10:{index % 60:02d}:00.000000Z",
            "actionBy": f"mapper_{(first + index) % 5000:04d}",
            "pictureUrl": None,
            "issues": None,
        }
        for index in range(per_page)
    ]
    return {
        "activity": activity,
        "pagination": {
            "hasNext": page < pages,
            "hasPrev": page > 1,
            "nextNum": page + 1 if page < pages else None,
            "page": page,
            "pages": pages,
            "perPage": per_page,
            "prevNum": page - 1 if page > 1 else None,
            "total": pages * per_page,
        },
    }


def activities_routes(app: web.Application, options: argparse.Namespace) -> None:
    async def activities(request: web.Request) -> web.Response:
        project_id = int(request.match_info["project_id"])
        page = int(request.query.get("page", "1"))
        if not 1 <= project_id <= options.projects or not 1 <= page <= options.pages:
            return web.json_response({"Error": "not found", "SubCode": "NotFound"}, status=404)
        return json_response(activity_page(project_id, page, options.pages, options.per_page))

    app.router.add_get(API_PREFIX + "/projects/{project_id:\\d+}/activities/", activities)


def statistics_record(project_id: int) -> dict[str, Any]:
    return {
        "projectId": project_id,
        "projectArea": 12.5 + project_id % 7,
        "totalMappers": project_id % 40,
        "totalTasks": 120,
        "totalComments": project_id % 9,
        "totalMappingTime": 3600 * (project_id % 5),
        "totalValidationTime": 1800 * (project_id % 3),
        "percentMapped": project_id % 101,
        "percentValidated": project_id % 51,
        "percentBadImagery": 0,
    }


def statistics_routes(app: web.Application, options: argparse.Namespace) -> None:
    async def statistics(request: web.Request) -> web.Response:
        return json_response(statistics_record(int(request.match_info["project_id"])))

    app.router.add_get(API_PREFIX + "/projects/{project_id:\\d+}/statistics/", statistics)


MODES = {"tasks": tasks_routes, "activities": activities_routes, "statistics": statistics_routes}


# --- the tasks body --------------------------------------------------------------------


def write_tasks_body(path: Path, size_bytes: int) -> int:
    """Write a GeoJSON FeatureCollection of square task polygons of about ``size_bytes``.

    Returns the number of features. The file is written under a temporary name and renamed,
    so an interrupted write never leaves a truncated body behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    features = 0
    written = 0
    with temporary.open("wb") as file:
        file.write(b'{"type":"FeatureCollection","features":[')
        batch: list[bytes] = []
        while written < size_bytes:
            x, y = features % 4096, features // 4096
            west, south = 30.0 + x * 0.0014, -2.0 + y * 0.0014
            east, north = round(west + 0.0014, 6), round(south + 0.0014, 6)
            west, south = round(west, 6), round(south, 6)
            feature = {
                "type": "Feature",
                "geometry": {
                    "type": "MultiPolygon",
                    "coordinates": [
                        [
                            [
                                [west, south],
                                [east, south],
                                [east, north],
                                [west, north],
                                [west, south],
                            ]
                        ]
                    ],
                },
                "properties": {
                    "taskId": features + 1,
                    "taskX": 150_000 + x,
                    "taskY": 130_000 + y,
                    "taskZoom": 18,
                    "taskIsSquare": True,
                    "taskStatus": ("READY", "MAPPED", "VALIDATED")[features % 3],
                    "lockedBy": None,
                    "mappedBy": 1000 + features % 500 if features % 3 else None,
                },
            }
            encoded = orjson.dumps(feature)
            batch.append(encoded)
            written += len(encoded) + 1
            features += 1
            if len(batch) == 10_000:
                file.write((b"," if features > len(batch) else b"") + b",".join(batch))
                batch = []
        if batch:
            file.write((b"," if features > len(batch) else b"") + b",".join(batch))
        file.write(b"]}")
    os.replace(temporary, path)
    return features


# --- serving ---------------------------------------------------------------------------


def check_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"servers.py: {host} is not a loopback address; use 127.0.0.1")


async def serve(options: argparse.Namespace) -> None:
    app = web.Application(middlewares=[record], client_max_size=1 << 20)
    app[LOG] = RequestLog()
    app.router.add_get(API_PREFIX + "/system/heartbeat/", heartbeat)
    app.router.add_get("/__bench__/requests", list_requests)
    app.router.add_post("/__bench__/reset", reset_requests)
    app.router.add_post("/__bench__/kill", set_kill)
    MODES[options.mode](app, options)

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    listener = socket.create_server((options.host, options.port), backlog=512)
    port = listener.getsockname()[1]
    await web.SockSite(runner, listener).start()
    base_url = f"http://{options.host}:{port}"

    ready = {"base_url": base_url, "api_url": base_url + API_PREFIX}
    temporary = Path(options.ready_file + ".tmp")
    temporary.write_text(json.dumps(ready))
    os.replace(temporary, options.ready_file)
    print(f"api_url: {base_url}{API_PREFIX}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--ready-file", required=True, help="JSON file written once listening")
    parser.add_argument("--body", help="tasks mode: the FeatureCollection file to serve")
    parser.add_argument("--projects", type=int, default=1000, help="activities mode: project ids")
    parser.add_argument("--pages", type=int, default=10, help="activities mode: pages a project")
    parser.add_argument("--per-page", type=int, default=100, help="activities mode: records a page")
    options = parser.parse_args()
    check_loopback(options.host)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(options))


if __name__ == "__main__":
    main()
