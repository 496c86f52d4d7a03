"""The aiohttp application of the mock server: routes below ``/api/v2`` and the middleware chain.

A request passes, from the outside in:

1. ``record``: counts and logs the request, and reads its Authorization header;
2. ``inject_faults``: the global latency, then the first fault rule that acts on it;
3. ``authenticate``: 400 for a header that cannot be decoded, on every path;
4. ``handle_errors``: unknown routes (307 to the slashed path when that one exists, else 404),
   405 for other methods, and ``ApiError`` or unexpected exceptions turned into responses.

Every response carries ``server: uvicorn`` unless a fault set another server name.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from tm_export.mock import errors, other_handlers, project_handlers
from tm_export.mock.auth import Caller, TokenStore
from tm_export.mock.context import CALLER, DATASET, Handler, Route, caller_of
from tm_export.mock.controls import CONTROL_PREFIX, FAULTS, LOG, RequestLog, add_control_routes
from tm_export.mock.dataset import Dataset
from tm_export.mock.delay import Delays
from tm_export.mock.faults import FaultSet, apply

logger = logging.getLogger("tm_export.mock")

API_PREFIX = "/api/v2"
TOKENS = web.AppKey("tokens", TokenStore)
LATENCY_MS = web.AppKey("latency_ms", float)
DELAYS = web.AppKey("delays", Delays)
FAULT_APPLIED = web.RequestKey("fault", str)
"""Name of the fault action applied to a request."""


def build_app(
    dataset: Dataset,
    tokens: TokenStore,
    faults: FaultSet,
    log: RequestLog,
    latency_ms: float = 0.0,
) -> web.Application:
    """Create the application serving ``dataset``; it keeps references to every argument."""
    app = web.Application(middlewares=[record, inject_faults, authenticate, handle_errors])
    app[DATASET] = dataset
    app[TOKENS] = tokens
    app[FAULTS] = faults
    app[LOG] = log
    app[LATENCY_MS] = float(latency_ms)
    app[DELAYS] = Delays()
    app.on_cleanup.append(_close_delays)

    for route in project_handlers.ROUTES + other_handlers.ROUTES:
        app.router.add_get(API_PREFIX + route.path, _guarded(route), allow_head=False)
    add_control_routes(app)
    app.on_response_prepare.append(_name_server)
    return app


async def _close_delays(app: web.Application) -> None:
    app[DELAYS].close()


def _guarded(route: Route) -> Handler:
    """Wrap a handler with the auth rule of its route."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        caller = caller_of(request)
        if route.auth == "required":
            if caller.state == "absent":
                raise errors.not_authenticated()
            if caller.state == "wrong_scheme":
                raise errors.invalid_scheme()
            if caller.state == "invalid":
                raise errors.invalid_token()
        elif route.auth == "optional" and caller.state == "wrong_scheme":
            raise errors.invalid_scheme()
        return await route.handler(request)

    return guarded


def _is_control(request: web.Request) -> bool:
    return request.path.startswith(CONTROL_PREFIX)


def _caller(request: web.Request) -> Caller:
    """Return the request's caller, reading the header once per request object."""
    caller = request.get(CALLER)
    if caller is None:
        caller = request.app[TOKENS].identify(request.headers.get("Authorization"))
        request[CALLER] = caller
    return caller


@web.middleware
async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_control(request):
        return await handler(request)
    log = request.app[LOG]
    sequence = log.start()
    caller = _caller(request)
    status = None
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        fault = request.get(FAULT_APPLIED)
        log.record(
            {
                "seq": sequence,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "status": None if fault == "reset" else status,
                "user": caller.role,
                "fault": fault,
            }
        )


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_control(request):
        return await handler(request)
    latency = request.app[LATENCY_MS]
    if latency:
        await request.app[DELAYS].sleep(latency / 1000)

    rule = request.app[FAULTS].select(request.path, request.query)
    if rule is None:
        return await handler(request)
    action = rule.action or "latency_ms"
    request[FAULT_APPLIED] = action
    logger.info("fault rule %s applied to %s %s", action, request.method, request.path_qs)
    return await apply(rule, request, handler)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_control(request) and _caller(request).state == "malformed":
        return errors.invalid_credentials().response()
    return await handler(request)


@web.middleware
async def handle_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_control(request):
        return await handler(request)

    failure = request.match_info.http_exception
    if isinstance(failure, web.HTTPMethodNotAllowed):
        return errors.method_not_allowed().response()
    if failure is not None:
        return await _redirect_to_slash(request) or errors.route_not_found().response()

    try:
        # Handlers never await, so the lock is held for one synchronous step only.
        with request.app[DATASET].lock:
            return await handler(request)
    except errors.ApiError as error:
        logger.debug("%s %s returned %d", request.method, request.path_qs, error.status)
        return error.response()
    except Exception:
        logger.exception("unhandled error while serving %s %s", request.method, request.path_qs)
        return errors.internal_error().response()


async def _redirect_to_slash(request: web.Request) -> web.StreamResponse | None:
    """Return Starlette's 307 to the same URL with a slash appended, when that URL has a route."""
    if request.path.endswith("/"):
        return None
    slashed = request.rel_url.with_path(request.path + "/").with_query(request.query_string)
    match = await request.app.router.resolve(request.clone(rel_url=slashed))
    if match.http_exception is not None and not isinstance(
        match.http_exception, web.HTTPMethodNotAllowed
    ):
        return None
    location = request.url.with_path(request.path + "/").with_query(request.query_string)
    return web.Response(status=307, headers={"Location": str(location)})


async def _name_server(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp has filled in its own name by now; a name set by a fault rule stays.
    if response.headers.get("Server") == SERVER_SOFTWARE:
        response.headers["Server"] = "uvicorn"
