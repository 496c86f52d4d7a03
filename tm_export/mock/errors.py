"""Error bodies of the genuine Tasking Manager, and the responses that carry them.

The backend (v5.5.2) returns errors in several shapes side by side: the structured
``{"error": {...}}`` of its service exceptions, the legacy ``{"Error", "SubCode"}`` pair
(often with a leading space in ``Error``), FastAPI's ``{"detail": [...]}`` for invalid
parameters, Starlette's ``{"detail": "..."}``, and plain text from the auth middleware.
Handlers raise ``ApiError``; the application turns it into a response.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

PYDANTIC_DOCS = "https://errors.pydantic.dev/2.5/v/"


class ApiError(Exception):
    """A complete error response: status, body (JSON value or text) and extra headers."""

    def __init__(
        self,
        status: int,
        body: object,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.content_type = content_type

    def response(self) -> web.Response:
        if self.content_type == "application/json":
            return json_response(self.body, self.status, self.headers)
        return text_response(str(self.body), self.status, self.content_type, self.headers)


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return compact JSON with ``content-type: application/json`` and no charset."""
    response = web.Response(body=orjson.dumps(body), status=status, headers=headers)
    response.headers["Content-Type"] = "application/json"
    return response


def text_response(
    text: str,
    status: int,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    response = web.Response(body=text.encode("utf-8"), status=status, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


# -- FastAPI and Starlette ----------------------------------------------------------------------


def validation_error(*items: dict[str, object]) -> ApiError:
    """Return FastAPI's 422 for invalid or missing parameters."""
    return ApiError(422, {"detail": list(items)})


def int_parsing(location: str, name: str, value: str) -> dict[str, object]:
    return {
        "type": "int_parsing",
        "loc": [location, name],
        "msg": "Input should be a valid integer, unable to parse string as an integer",
        "input": value,
        "url": PYDANTIC_DOCS + "int_parsing",
    }


def bool_parsing(name: str, value: str) -> dict[str, object]:
    return {
        "type": "bool_parsing",
        "loc": ["query", name],
        "msg": "Input should be a valid boolean, unable to interpret input",
        "input": value,
        "url": PYDANTIC_DOCS + "bool_parsing",
    }


def missing(name: str) -> dict[str, object]:
    return {
        "type": "missing",
        "loc": ["query", name],
        "msg": "Field required",
        "input": None,
        "url": PYDANTIC_DOCS + "missing",
    }


def greater_than_equal(name: str, value: str, minimum: int) -> dict[str, object]:
    return {
        "type": "greater_than_equal",
        "loc": ["query", name],
        "msg": f"Input should be greater than or equal to {minimum}",
        "input": value,
        "ctx": {"ge": minimum},
        "url": PYDANTIC_DOCS + "greater_than_equal",
    }


def route_not_found() -> ApiError:
    return ApiError(404, {"detail": "Not Found"})


def method_not_allowed() -> ApiError:
    return ApiError(405, {"detail": "Method Not Allowed"})


def internal_error() -> ApiError:
    """Return the plain-text 500 that the genuine backend sends for unhandled exceptions."""
    return ApiError(500, "Internal Server Error", content_type="text/plain; charset=utf-8")


# -- authentication -----------------------------------------------------------------------------


def not_authenticated() -> ApiError:
    return ApiError(403, {"detail": "Not authenticated"})


def invalid_token() -> ApiError:
    return ApiError(
        401,
        {"Error": "Token is expired or invalid", "SubCode": "InvalidToken"},
        headers={"WWW-Authenticate": "Bearer"},
    )


def invalid_scheme() -> ApiError:
    return service_error(401, "UNKNOWN_ERROR", "Invalid authentication scheme", {})


def invalid_credentials() -> ApiError:
    """Return the auth middleware's 400 for a header it cannot split or decode."""
    return ApiError(400, "Invalid auth credentials", content_type="text/plain; charset=utf-8")


# -- service errors ---------------------------------------------------------------------------


def service_error(
    status: int, sub_code: str, message: str, details: Mapping[str, object]
) -> ApiError:
    body = {
        "error": {
            "code": status,
            "sub_code": sub_code,
            "message": message,
            "details": dict(details),
        }
    }
    return ApiError(status, body)


def legacy_error(status: int, error: str, sub_code: str | None = None) -> ApiError:
    body: dict[str, str] = {"Error": error}
    if sub_code is not None:
        body["SubCode"] = sub_code
    return ApiError(status, body)


def project_not_found(project_id: int) -> ApiError:
    message = "The requested project was not found on the server."
    return service_error(404, "PROJECT_NOT_FOUND", message, {"project_id": project_id})


def project_detail_not_found() -> ApiError:
    """Return the free-text 404 of ``/projects/{id}/`` (and a few others) for unknown ids."""
    return service_error(404, "Project not found", "Project not found", {})


def task_not_found(project_id: int, task_id: int) -> ApiError:
    message = "The requested task was not found on the server."
    return service_error(
        404, "TASK_NOT_FOUND", message, {"project_id": project_id, "task_id": task_id}
    )


def user_not_found(username: str) -> ApiError:
    message = "The requested user was not found on the server."
    return service_error(404, "USER_NOT_FOUND", message, {"username": username})


def organisation_not_found(organisation: object) -> ApiError:
    message = "The requested organisation was not found on the server."
    return service_error(404, "ORGANISATION_NOT_FOUND", message, {"organisation": organisation})


def private_project() -> ApiError:
    return legacy_error(403, "User not permitted: Private Project", "PrivateProject")


def project_not_fetched() -> ApiError:
    return legacy_error(403, " Unable to fetch project", "ProjectNotFetched")


def not_a_manager() -> ApiError:
    return legacy_error(403, "User is not a manager of the project", "UserPermissionError")


def invalid_date_range(message: str) -> ApiError:
    return legacy_error(400, f" {message}", "InvalidDateRange")


def invalid_date_value() -> ApiError:
    # NOTE: the wording of this message is a guess; only the SubCode is documented.
    return legacy_error(400, " Invalid date value", "InvalidDateValue")
