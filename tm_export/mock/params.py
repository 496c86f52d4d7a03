"""Path and query parameter parsing with the genuine backend's error responses.

FastAPI validates typed parameters before the handler runs and returns 422 with Pydantic's
error items; a few handlers parse raw strings themselves and fail differently (400 or 500).
"""

from __future__ import annotations

import re
from datetime import date, datetime

from aiohttp import web

from tm_export.mock import errors

# Pydantic's lax integer parsing of strings: optional sign and surrounding whitespace.
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def path_int(request: web.Request, name: str) -> int:
    """Return an integer path parameter, or raise the 422 FastAPI sends for a non-integer."""
    value = request.match_info[name]
    if not _INTEGER.fullmatch(value):
        raise errors.validation_error(errors.int_parsing("path", name, value))
    return int(value)


def query_int(request: web.Request, name: str, default: int, minimum: int | None = None) -> int:
    """Return an integer query parameter (default when absent), or raise a 422."""
    value = request.query.get(name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise errors.validation_error(errors.int_parsing("query", name, value))
    number = int(value)
    if minimum is not None and number < minimum:
        raise errors.validation_error(errors.greater_than_equal(name, value, minimum))
    return number


def query_bool(request: web.Request, name: str, default: bool) -> bool:
    """Return a boolean query parameter as Pydantic reads it, or raise a 422."""
    value = request.query.get(name)
    if value is None:
        return default
    return parse_bool(name, value)


def parse_bool(name: str, value: str) -> bool:
    """Return the boolean that query parameter ``name`` gives, or raise Pydantic's 422."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise errors.validation_error(errors.bool_parsing(name, value))


def query_strtobool(request: web.Request, name: str) -> bool:
    """Read a flag the way ``distutils.util.strtobool`` does; other words fail with a 500."""
    word = request.query.get(name, "False").strip().lower()
    if word in ("y", "yes", "t", "true", "on", "1"):
        return True
    if word in ("n", "no", "f", "false", "off", "0"):
        return False
    raise errors.internal_error()


def parse_day(value: str) -> date | None:
    """Parse ``YYYY-MM-DD``; return None when the value has another form."""
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        return None
