"""The JSON Schema of recipe version 1.

The validator checks a recipe's structure against this schema first, so it is also what
``tm-export schema`` prints for editors. Checks that need the endpoint catalog or other
streams (unknown parameters, ``from`` references, date order) live in ``recipe.py``.
"""

from __future__ import annotations

from typing import Any

_SCALAR: dict[str, Any] = {"type": ["string", "integer", "number", "boolean"]}
_POSITIVE_NUMBER: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
_STEP_PATTERN = r"^\s*[1-9][0-9]*\s+(day|week|month|year)s?\s*$"
_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

_PARAM_VALUE: dict[str, Any] = {
    "description": "A constant, a list sent as one comma-separated value, or a varying value.",
    "oneOf": [
        _SCALAR,
        {"type": "array", "items": _SCALAR, "minItems": 1},
        {
            "type": "object",
            "description": "One partition per list item.",
            "properties": {"each": {"type": "array", "items": _SCALAR, "minItems": 1}},
            "required": ["each"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "description": "One partition per integer from the first to the last, inclusive.",
            "properties": {
                "range": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 3,
                }
            },
            "required": ["range"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "description": "One partition per distinct value of STREAM.FIELD in another stream.",
            "properties": {"from": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*\..+$"}},
            "required": ["from"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "description": "Date windows from start to end, inclusive, one partition each.",
            "properties": {
                "start": {"type": "string", "pattern": _DATE_PATTERN},
                "end": {"type": "string", "pattern": _DATE_PATTERN},
                "step": {"type": "string", "pattern": _STEP_PATTERN},
                "bind": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "required": ["start", "end"],
            "additionalProperties": False,
        },
    ],
}

RECIPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tm-export recipe",
    "type": "object",
    "properties": {
        "version": {"const": 1},
        "instance": {
            "type": "object",
            "properties": {
                "base_url": {"type": "string", "pattern": "^https?://"},
                "token_env": {"type": "string", "pattern": _NAME_PATTERN},
                "contact": {"type": "string", "minLength": 1},
                "concurrency": {"type": "integer", "minimum": 1, "maximum": 256},
                "rate_limit": {
                    "description": "Requests per second for the whole run, e.g. 10/s or 10.",
                    "type": ["string", "number"],
                    "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*/\s*s\s*$",
                    "exclusiveMinimum": 0,
                },
                "timeouts": {
                    "type": "object",
                    "properties": {
                        "connect": _POSITIVE_NUMBER,
                        "read": _POSITIVE_NUMBER,
                        "total": _POSITIVE_NUMBER,
                    },
                    "additionalProperties": False,
                },
                "retries": {
                    "type": "object",
                    "properties": {
                        "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                        "wait_initial": _POSITIVE_NUMBER,
                        "wait_max": _POSITIVE_NUMBER,
                        "wait_jitter": {"type": "number", "minimum": 0},
                        "max_retry_after": {"type": "number", "minimum": 0},
                    },
                    "additionalProperties": False,
                },
                "max_pages": {"type": "integer", "minimum": 1},
            },
            "additionalProperties": False,
        },
        "output": {"type": "string", "minLength": 1},
        "streams": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _NAME_PATTERN},
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "endpoint": {"type": "string"},
                    "path": {"type": "string", "pattern": "^/"},
                    "records": {"type": "string", "minLength": 1},
                    "key": {"type": ["string", "null"]},
                    "paginated": {"type": "boolean"},
                    "auth": {"enum": ["none", "optional", "required"]},
                    "params": {
                        "type": "object",
                        "propertyNames": {"pattern": _NAME_PATTERN},
                        "additionalProperties": _PARAM_VALUE,
                    },
                    "max_pages": {"type": "integer", "minimum": 1},
                },
                "additionalProperties": False,
            },
        },
    },
    "required": ["version", "output", "streams"],
    "additionalProperties": False,
}
