"""The JSON Schema of recipe version 1, and plain-language messages for its errors.

The validator checks a recipe's structure against this schema first, and
``tm-export schema`` prints it for editors. Checks that need the endpoint catalog or other
streams (unknown parameters, ``from`` references, date order) live in ``recipe_check.py`` and ``recipe_params.py``.

Each ``description`` is a noun phrase that describes a valid value, because error
messages end with "expected <description>".
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterator
from typing import Any

import jsonschema

_SCALAR: dict[str, Any] = {"type": ["string", "integer", "number", "boolean"]}
_STEP_PATTERN = r"^\s*[1-9][0-9]*\s+(day|week|month|year)s?\s*$"
_DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: The minimum rate limit, in requests per second. A run at a lower rate would take days for
#: a few thousand requests, which is more likely a typo than a plan.
MIN_RATE_LIMIT = 0.01
#: The description of a valid rate limit, as error messages and editors show it.
RATE_EXPECTED = (
    f"requests per second for the whole run, a number of at least {MIN_RATE_LIMIT} such as "
    "10 or 2.5/s"
)
#: Maximum length of a stream name, so that STREAM.jsonl.zst stays far below the 255 bytes
#: that most file systems allow in a file name.
STREAM_NAME_MAX = 100
_RATE_PATTERN = r"^\s*(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?)\s*(/\s*s)?\s*$"
_FROM_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[^.\s]+)+$"


def parse_rate(text: str) -> float | None:
    """Return the requests per second that ``text`` writes (``10``, ``2.5/s``, ``1e1 / s``),
    or None when it is not a rate of at least ``MIN_RATE_LIMIT``.

    The recipe's ``rate_limit`` and the ``--rate-limit`` option both read rates here, so
    the two accept the same forms.
    """
    match = re.fullmatch(_RATE_PATTERN, text)
    if match is None:
        return None
    rate = float(match.group(1))
    return rate if math.isfinite(rate) and rate >= MIN_RATE_LIMIT else None


def _seconds(description: str) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": 0, "description": description}


_MAX_PAGES: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "description": "an integer of 1 or more, the most pages fetched per partition",
}

#: The parameter value forms, in the order of the ``oneOf`` branches of ``_PARAM_VALUE``.
PARAM_FORMS: dict[str, str] = {
    "each": "{each: [value, ...]}",
    "range": "{range: [first, last]} or {range: [first, last, step]}",
    "from": "{from: STREAM.FIELD}",
    "window": "{start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}",
}
ALL_FORMS = (
    "a constant, a list, {each: [...]}, {range: [first, last]}, {from: STREAM.FIELD} "
    "or {start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'}"
)
_WINDOW_KEYS = ("start", "end", "step", "bind")

_PARAM_VALUE: dict[str, Any] = {
    "description": "a constant, a list sent as one comma-separated value, or a varying value",
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
            "properties": {"from": {"type": "string", "pattern": _FROM_PATTERN}},
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
                    "items": {"type": "string", "pattern": _NAME_PATTERN},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "required": ["start", "end"],
            "additionalProperties": False,
        },
    ],
}

_TIMEOUTS: dict[str, Any] = {
    "type": "object",
    "description": "a mapping with connect, read and total, each in seconds",
    "properties": {
        "connect": _seconds("a number of seconds greater than 0 to wait for a connection"),
        "read": _seconds("a number of seconds greater than 0 to wait for the next data"),
        "total": _seconds("a number of seconds greater than 0 for one whole request"),
    },
    "additionalProperties": False,
}

_RETRIES: dict[str, Any] = {
    "type": "object",
    "description": "a mapping with attempts, wait_initial, wait_max, wait_jitter "
    "and max_retry_after",
    "properties": {
        "attempts": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "description": "an integer from 1 to 100, the attempts per request, the first included",
        },
        "wait_initial": _seconds("a number of seconds greater than 0 before the first retry"),
        "wait_max": _seconds("a number of seconds greater than 0, the longest wait between tries"),
        "wait_jitter": {
            "type": "number",
            "minimum": 0,
            "description": "a number of seconds of 0 or more, the most random time added to a wait",
        },
        "max_retry_after": {
            "type": "number",
            "minimum": 0,
            "description": "a number of seconds of 0 or more, the longest Retry-After "
            "wait the run accepts",
        },
    },
    "additionalProperties": False,
}

_INSTANCE: dict[str, Any] = {
    "type": "object",
    "description": "a mapping of server settings such as base_url, token_env and rate_limit",
    "properties": {
        "base_url": {
            "type": "string",
            "pattern": "^https?://",
            "description": "the API root URL, such as "
            "https://tasking-manager-production-api.hotosm.org/api/v2",
        },
        "token_env": {
            "type": "string",
            "pattern": _NAME_PATTERN,
            "description": "the name of the environment variable that contains the API key, "
            "such as TM_API_TOKEN",
        },
        "contact": {
            "type": "string",
            "minLength": 1,
            "description": "an email address or URL for the server's operators, "
            "sent in the User-Agent header",
        },
        "concurrency": {
            "type": "integer",
            "minimum": 1,
            "maximum": 256,
            "description": "an integer from 1 to 256, the requests in flight at once",
        },
        "rate_limit": {
            "type": ["string", "number"],
            "pattern": _RATE_PATTERN,
            "minimum": MIN_RATE_LIMIT,
            "description": RATE_EXPECTED,
        },
        "timeouts": _TIMEOUTS,
        "retries": _RETRIES,
        "max_pages": _MAX_PAGES,
    },
    "additionalProperties": False,
}

_STREAM: dict[str, Any] = {
    "type": "object",
    "description": "a mapping with endpoint (a catalog name) or path (a raw path), "
    "and optional params",
    "properties": {
        "endpoint": {
            "type": "string",
            "description": "an endpoint name that 'tm-export endpoints' lists, such as projects",
        },
        "path": {
            "type": "string",
            "pattern": "^/",
            "description": "a path below the base URL, starting with /, "
            "such as /projects/{project_id}/",
        },
        "records": {
            "type": "string",
            "minLength": 1,
            "description": "the key of the record list in the response body, "
            "or $ when the whole body is one record",
        },
        "key": {
            "type": ["string", "null"],
            "description": "the dotted path of the field that identifies a record, "
            "$ for the whole record, or null",
        },
        "paginated": {
            "type": "boolean",
            "description": "true when the path takes page and returns TM's pagination "
            "object, else false",
        },
        "auth": {
            "enum": ["none", "optional", "required"],
            "description": "none, optional or required: whether the path needs the API token",
        },
        "params": {
            "type": "object",
            "description": "a mapping of parameter names to values",
            "propertyNames": {"pattern": _NAME_PATTERN},
            "additionalProperties": _PARAM_VALUE,
        },
        "max_pages": _MAX_PAGES,
    },
    "additionalProperties": False,
}

RECIPE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "tm-export recipe",
    "type": "object",
    "description": "a mapping with the keys version and streams, and optionally instance "
    "and output",
    "properties": {
        "version": {"const": 1, "description": "the recipe format version, the integer 1"},
        "instance": _INSTANCE,
        "output": {
            "type": "string",
            "minLength": 1,
            "description": "the folder to write the export to, relative to the current "
            "folder, such as exports/projects",
        },
        "streams": {
            "type": "object",
            "minProperties": 1,
            "description": "a mapping of stream names to streams, at least one",
            # A name becomes a file name, which most file systems cap at 255 bytes.
            "propertyNames": {"pattern": _NAME_PATTERN, "maxLength": STREAM_NAME_MAX},
            "additionalProperties": _STREAM,
        },
    },
    # output may be left to --output, which 'run' then requires.
    "required": ["version", "streams"],
    "additionalProperties": False,
}

_TYPE_NAMES = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean (true or false)",
    "null": "null",
}


def iter_errors(instance: Any) -> Iterator[jsonschema.ValidationError]:
    """Yield every error of ``instance`` against ``RECIPE_SCHEMA``, in no useful order."""
    return jsonschema.Draft202012Validator(RECIPE_SCHEMA).iter_errors(instance)


def explain(error: jsonschema.ValidationError) -> tuple[tuple[Any, ...], str]:
    """Return the path of the key a schema error concerns and a message with the fix."""
    keys = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    instance: Any = error.instance
    expected = f"expected {schema['description']}" if "description" in schema else ""

    if kind == "oneOf" and keys[-2:-1] == ("params",):
        return _explain_param_value(error, keys)
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(str(key) for key in set(instance) - set(allowed))[0]
        # A parameter such as project_id may be written beside endpoint, not under params.
        beside = len(keys) == 2 and keys[0] == "streams"
        return keys + (extra,), _unknown_key(extra, allowed, params_hint=beside)
    if kind == "required":
        missing = next(name for name in schema["required"] if name not in instance)
        description = schema["properties"][missing].get("description", "")
        return keys + (missing,), f"missing key; expected {description}"
    if kind == "propertyNames" or "propertyNames" in error.absolute_schema_path:
        name = instance
        what = "stream name" if keys == ("streams",) else "name"
        reason = " (it becomes the file name STREAM.jsonl)" if keys == ("streams",) else ""
        if error.validator == "maxLength":
            return keys + (name,), (
                f"invalid {what}: {len(name)} characters{reason}; expected at most "
                f"{STREAM_NAME_MAX}"
            )
        return keys + (name,), (
            f"invalid {what} {short_repr(name)}{reason}; expected letters, digits and _, "
            "not starting with a digit"
        )
    if kind == "type":
        message = f"invalid value {describe_value(instance)}; {expected or _types(schema)}"
        if instance is None and "object" in str(schema.get("type")):
            # YAML reads a key whose entries were not indented under it as an empty value.
            message += "; if its entries follow on the next lines, indent them under it"
        return keys, message
    if kind == "const":
        return keys, _explain_version(instance)
    if kind == "pattern":
        return keys, _explain_pattern(keys, instance, expected)
    if kind == "minProperties":
        return keys, f"the mapping is empty; {expected}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "minLength", "enum"):
        noun = "rate" if keys and keys[-1] == "rate_limit" else "value"
        return keys, f"invalid {noun} {short_repr(instance)}; {expected}"
    return keys, f"{error.message}; {expected}" if expected else str(error.message)


def _unknown_key(name: str, allowed: list[str], params_hint: bool = False) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        hint = f"did you mean '{close[0]}'? "
    elif params_hint:
        hint = f"if {name} is a parameter of the endpoint, indent it under params; "
    else:
        hint = ""
    return f"unknown key; {hint}valid keys: {', '.join(allowed)}"


def _explain_version(value: Any) -> str:
    if isinstance(value, str) and value.strip() == "1":
        return (
            f"invalid value {short_repr(value)} (a string); expected the integer 1, without quotes"
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return f"unsupported version {value}; this tool reads recipe version 1 only"
    return f"invalid value {describe_value(value)}; expected the integer 1"


def _explain_pattern(keys: tuple[Any, ...], value: str, expected: str) -> str:
    last = keys[-1] if keys else ""
    if last == "rate_limit":
        return f"invalid rate {short_repr(value)}; {expected}"
    if last == "base_url":
        return (
            f"invalid URL {short_repr(value)}: it must start with http:// or https://; {expected}"
        )
    if last == "token_env" and value.startswith("$"):
        return (
            "invalid environment variable name: it starts with $, which only a shell uses to "
            "read a variable; write the name alone, without $ or braces, since tm-export reads "
            "the variable itself"
        )
    if last == "token_env":
        # The value is not shown: a user who pasted the key here would see it in a CI log.
        return (
            f"invalid environment variable name ({len(value)} characters, not shown because it "
            f"may be the API key); {expected}. Put the variable's name here, never the key itself"
        )
    if last == "path":
        return f"invalid path {short_repr(value)}: it must start with /; {expected}"
    return f"invalid value {short_repr(value)}; {expected}"


# --- parameter values --------------------------------------------------------------------


def _explain_param_value(
    error: jsonschema.ValidationError, keys: tuple[Any, ...]
) -> tuple[tuple[Any, ...], str]:
    value = error.instance
    if value is None:
        return keys, (
            "the value is empty (null); give a value, indent the value's keys "
            "(such as from: or start:) under the parameter, or remove it"
        )
    if isinstance(value, list):
        if not value:
            return keys, "an empty list sends nothing; give at least one value or remove the key"
        return keys, (
            "a list contains plain values only (strings, numbers, true or false), "
            "sent as one comma-separated value"
        )
    assert isinstance(value, dict)

    kinds = [kind for kind in ("each", "range", "from") if kind in value]
    if any(key in value for key in _WINDOW_KEYS):
        kinds.append("window")
    if len(kinds) > 1:
        return keys, (
            f"a value takes one form, but this one mixes {' and '.join(kinds)}; "
            f"expected {ALL_FORMS}"
        )
    if not kinds:
        unknown = sorted(str(key) for key in value)
        if not unknown:
            return keys, f"an empty mapping is no parameter value; expected {ALL_FORMS}"
        return keys + (unknown[0],), f"unknown key in a parameter value; expected {ALL_FORMS}"

    kind = kinds[0]
    allowed = _WINDOW_KEYS if kind == "window" else (kind,)
    extra = sorted(str(key) for key in value if key not in allowed)
    if extra:
        return keys + (extra[0],), f"unknown key in the {kind} value; expected {PARAM_FORMS[kind]}"
    if kind == "window" and ("start" not in value or "end" not in value):
        missing = "start" if "start" not in value else "end"
        message = f"missing key; a date window needs start and end, as in {PARAM_FORMS['window']}"
        return keys + (missing,), message

    branch = list(PARAM_FORMS).index(kind) + 2  # the first two branches are constants
    for sub in error.context or []:
        if sub.relative_schema_path and sub.relative_schema_path[0] == branch:
            sub_keys = keys + tuple(sub.relative_path)
            return sub_keys, _explain_form_error(kind, sub)
    return keys, f"invalid {kind} value; expected {PARAM_FORMS[kind]}"


def _explain_form_error(kind: str, sub: jsonschema.ValidationError) -> str:
    """Explain an error inside one parameter value form (each, range, from, window)."""
    path = tuple(sub.relative_path)
    field = path[0] if path else kind
    value = sub.instance
    validator = sub.validator

    if kind == "each":
        if validator == "minItems":
            return "each needs at least one value; expected [value, ...]"
        if len(path) > 1:
            return (
                f"invalid value {describe_value(value)}; each takes plain values (strings, numbers)"
            )
        return f"invalid each {describe_value(value)}; expected a list [value, ...]"
    if kind == "range":
        if validator in ("minItems", "maxItems") or (validator == "type" and len(path) == 1):
            return (
                f"invalid range {short_repr(value)}; expected [first, last] or [first, last, step], "
                "two or three integers"
            )
        return f"invalid range bound {describe_value(value)}; expected an integer"
    if kind == "from":
        return (
            f"invalid reference {_text_or_describe(value)}; expected STREAM.FIELD: "
            "a stream name, a dot and a field of its records, such as projects.projectId, or "
            "$ for records that are text, such as countries.$"
        )
    if field == "step":
        return _explain_step(value)
    if field == "bind":
        return (
            f"invalid bind {describe_value(value)}; expected two parameter names "
            "[startParam, endParam], such as [createdFrom, createdTo]"
        )
    return f"invalid date {_text_or_describe(value)}; expected YYYY-MM-DD, such as 2025-01-31"


def _explain_step(value: Any) -> str:
    units = "day, week, month or year"
    if not isinstance(value, str):
        return (
            f"invalid step {describe_value(value)}; expected a count and a unit, such as '1 month'"
        )
    match = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", value)
    if match and match.group(1).strip("0") == "":
        return f"invalid step {short_repr(value)}: the count must be 1 or more, such as '1 month'"
    if match and match.group(2).lower().rstrip("s") not in ("day", "week", "month", "year"):
        return f"invalid step {short_repr(value)}: unknown unit; expected a count and {units}"
    return (
        f"invalid step {short_repr(value)}; expected a count, a space and {units} "
        "(lowercase, plural allowed), such as '1 month' or '2 weeks'"
    )


# --- describing values ---------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> str:
    names = schema.get("type", [])
    names = names if isinstance(names, list) else [names]
    return "expected " + " or ".join(_article(_TYPE_NAMES.get(str(n), str(n))) for n in names)


def describe_value(value: Any) -> str:
    """Return a value with its type for a message, such as ``'8' (a string)``."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, dict):
        return "(a mapping)"
    if isinstance(value, list):
        return f"{short_repr(value)} (a list)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    return f"{short_repr(value)} (a string)"


def _text_or_describe(value: Any) -> str:
    return short_repr(value) if isinstance(value, str) else describe_value(value)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def short_repr(value: Any, limit: int = 60) -> str:
    """Return ``repr(value)``, with a long string or value cut to about ``limit`` characters.

    A list or mapping is written as JSON, which is also YAML, rather than in Python's syntax.
    """
    if isinstance(value, str) and len(value) > limit:
        return repr(value[: limit - 5] + "...")
    if isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
