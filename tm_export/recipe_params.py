"""Build the parameters of one stream and check them against its endpoint.

A parameter is a constant, an ``each`` list, a ``range``, a ``from`` reference to another
stream or a date window.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import re
from typing import Any

from . import schema
from .catalog import DateWindow, Endpoint
from .params import (
    MAX_INT64,
    Constant,
    DateWindows,
    Each,
    FromStream,
    IntRange,
    ParamSpec,
    Scalar,
    Step,
    as_id,
    render,
)
from .recipe_yaml import KeyLocator

# --- parameters ----------------------------------------------------------------------

_WINDOW_KEYS = ("start", "end", "step", "bind")

#: The project statuses the search accepts. It returns 400 for any other value.
PROJECT_STATUSES = ("PUBLISHED", "ARCHIVED", "DRAFT")

#: The search's sort directions. It takes any other value, ``desc`` included, as ascending.
SORT_DIRECTIONS = ("ASC", "DESC")

#: The search's difficulties. It compares them in capitals, so ``easy`` matches no project.
DIFFICULTIES = ("EASY", "MODERATE", "CHALLENGING", "ALL")

#: Search parameters that take one value: a comma-joined list sorts in ascending order, or
#: matches no project.
SINGLE_VALUE_SEARCH_PARAMS = frozenset({"orderByType", "difficulty"})

#: Date parameters of the project search. It returns 400 InvalidDateValue for a value that
#: is not a date.
SEARCH_DATE_PARAMS = frozenset(
    {
        "createdFrom",
        "createdTo",
        "lastUpdatedFrom",
        "lastUpdatedTo",
        "partnershipFrom",
        "partnershipTo",
    }
)


def build_param(
    where: KeyLocator, keys: tuple[Any, ...], name: str, value: Any, endpoint: Endpoint
) -> ParamSpec:
    """Build one entry of a stream's params, checked against the endpoint."""
    if isinstance(value, dict) and any(key in value for key in _WINDOW_KEYS):
        return _build_window(where, keys, name, value, endpoint)

    _check_param_name(where, keys, name, endpoint)
    if endpoint.window is not None and name == "dates":
        raise where.error(
            keys,
            f"'dates' takes a date window; expected {schema.PARAM_FORMS['window']}",
        )
    is_path_param = name in endpoint.path_params
    if not isinstance(value, dict):
        if is_path_param and isinstance(value, list):
            raise where.error(
                keys,
                "a path parameter takes one value, not a list; use {each: [...]} for one "
                "partition per value",
            )
        scalar = _scalar(value)
        if is_path_param:
            scalar = _path_value(where, keys, scalar, name, endpoint)
        if isinstance(value, list):
            if endpoint.name == "projects" and name in SINGLE_VALUE_SEARCH_PARAMS:
                # A list is sent as one comma-joined value, which the server reads as another.
                raise where.error(
                    keys,
                    f"{name} takes one value, not a list; use {{each: [...]}} for one "
                    "partition per value",
                )
            for index, item in enumerate(value):
                _check_search_value(where, keys + (index,), name, item, endpoint)
        else:
            _check_search_value(where, keys, name, value, endpoint)
        return Constant(name, render(scalar))

    if "each" in value:
        return _build_each(where, keys, name, value["each"], endpoint)
    if "range" in value:
        return _build_range(where, keys + ("range",), name, value["range"], endpoint)
    stream, _, field_path = value["from"].partition(".")
    return FromStream(name, stream, field_path)


def _check_param_name(
    where: KeyLocator, keys: tuple[Any, ...], name: str, endpoint: Endpoint
) -> None:
    if name == "page" and endpoint.paginated:
        raise where.error(
            keys, "the tool sets 'page' itself on a paginated endpoint; remove this parameter"
        )
    if endpoint.raw or name in endpoint.accepted_params:
        return
    if name in endpoint.rejected_params:
        raise where.error(
            keys, f"not allowed for endpoint '{endpoint.name}': {endpoint.rejected_params[name]}"
        )
    accepted = sorted(endpoint.accepted_params)
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    valid = ", ".join(accepted) or "none, it takes no parameters"
    raise where.error(
        keys, f"unknown parameter for endpoint '{endpoint.name}'; {hint}valid parameters: {valid}"
    )


def _path_value(
    where: KeyLocator, keys: tuple[Any, ...], value: Scalar, name: str, endpoint: Endpoint
) -> Scalar:
    """Check one value of a path parameter and return it as the partition keeps it.

    A TM id becomes an integer, so that ``"042"`` and ``42`` are one partition.
    """
    text = render(value)
    if endpoint.takes_id(name):
        number = as_id(value)
        if number is None:
            # The server rejects anything but an integer with 422, and a negative one with 404.
            largest = f" and at most {MAX_INT64}" if text.isascii() and text.isdigit() else ""
            raise where.error(
                keys,
                f"invalid id {text!r}; expected a whole number of 0 or more{largest}, such as 42",
            )
        return number
    if text and not any(char in text for char in "/?#"):
        return value
    raise where.error(
        keys,
        f"invalid path parameter value {text!r}; expected a value that is not empty "
        "and has no '/', '?' or '#'",
    )


def _build_each(
    where: KeyLocator, keys: tuple[Any, ...], name: str, raw_values: list[Any], endpoint: Endpoint
) -> Each:
    is_path_param = name in endpoint.path_params
    values: list[Scalar] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_values):
        item_keys = keys + ("each", index)
        value = _scalar(raw)
        if is_path_param:
            value = _path_value(where, item_keys, value, name, endpoint)
        _check_search_value(where, item_keys, name, raw, endpoint)
        text = render(value)
        if text in seen:
            raise where.error(
                item_keys,
                f"duplicate value {raw!r} (each[{seen[text]}] already has it); "
                "list each value once",
            )
        seen[text] = index
        values.append(value)
    return Each(name, tuple(values))


def _check_search_value(
    where: KeyLocator, keys: tuple[Any, ...], name: str, value: Any, endpoint: Endpoint
) -> None:
    """Reject a value of the project search that the server refuses on every request (400),
    which would fail every partition of the stream, or reads as another without a sign."""
    if endpoint.name != "projects":
        return
    text = render(value)
    if name in SEARCH_DATE_PARAMS:
        _check_date_constant(where, keys, text)
    elif name == "projectStatuses":
        for status in text.split(","):
            if status not in PROJECT_STATUSES:
                raise where.error(
                    keys,
                    f"invalid project status {status!r}; expected {', '.join(PROJECT_STATUSES)}, "
                    "in capitals",
                )
    elif name == "orderByType" and text not in SORT_DIRECTIONS:
        raise where.error(
            keys,
            f"invalid sort direction {text!r}; expected ASC or DESC, in capitals (the server "
            "sorts in ascending order for any other value)",
        )
    elif name == "difficulty" and text not in DIFFICULTIES:
        raise where.error(
            keys,
            f"invalid difficulty {text!r}; expected {', '.join(DIFFICULTIES)}, in capitals (the "
            "server matches no project for any other value)",
        )


def _build_range(
    where: KeyLocator, keys: tuple[Any, ...], name: str, bounds: list[int], endpoint: Endpoint
) -> IntRange:
    # JSON Schema counts 2.0 as an integer, so the bounds may arrive as floats.
    start, stop = int(bounds[0]), int(bounds[1])
    step = int(bounds[2]) if len(bounds) == 3 else 1
    if step < 1:
        raise where.error(
            keys, f"invalid step {step}; expected [first, last, step] with a step of 1 or more"
        )
    if stop < start:
        raise where.error(
            keys,
            f"the range ends ({stop}) before it starts ({start}); expected [first, last] "
            "with first <= last",
        )
    if start < 0 and endpoint.takes_id(name):
        # The server returns 404 for a negative id, which the run would count as skipped.
        raise where.error(
            keys, f"invalid first id {start}; expected ids of 0 or more, such as [1, 500]"
        )
    return IntRange(name, start, stop, step)


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool) or not isinstance(value, int):
        return render(value)
    return value


# --- date windows --------------------------------------------------------------------


def _build_window(
    where: KeyLocator, keys: tuple[Any, ...], name: str, value: dict[str, Any], endpoint: Endpoint
) -> DateWindows:
    start_param, end_param, max_days = _window_params(where, keys, name, value, endpoint)

    start = _date(where, keys + ("start",), value["start"])
    end = _date(where, keys + ("end",), value["end"])
    if end < start:
        raise where.error(
            keys + ("end",),
            f"the date window ends ({end}) before it starts ({start}); expected end >= start",
        )

    step = Step.parse(value["step"]) if "step" in value else None
    return DateWindows(start_param, end_param, start, end, step, max_days)


def _window_params(
    where: KeyLocator, keys: tuple[Any, ...], name: str, value: dict[str, Any], endpoint: Endpoint
) -> tuple[str, str, int | None]:
    """Return the start and end parameters a date window sets, and its longest window."""
    window: DateWindow | None = endpoint.window
    if "bind" not in value:
        if window is None:
            raise where.error(keys, _no_window_message(endpoint))
        if name != "dates":
            raise where.error(
                keys,
                f"a date window of endpoint '{endpoint.name}' goes under the key 'dates', which "
                f"sets {window.start_param} and {window.end_param}; rename '{name}' to 'dates'",
            )
        return window.start_param, window.end_param, window.max_days

    start_param, end_param = value["bind"]
    if start_param == end_param:
        raise where.error(
            keys + ("bind",),
            f"bind names '{start_param}' twice; expected two parameters [startParam, endParam]",
        )
    if not endpoint.raw:
        for index, bound in enumerate((start_param, end_param)):
            if bound in endpoint.path_params or bound == "dates":
                raise where.error(
                    keys + ("bind", index),
                    f"'{bound}' cannot take a date; expected two query parameters of "
                    f"endpoint '{endpoint.name}'",
                )
            _check_param_name(where, keys + ("bind", index), bound, endpoint)
    if start_param.endswith("To") and end_param == start_param.removesuffix("To") + "From":
        # Such a pair would send each window's start as its end: the server then finds
        # nothing in any window, and the run ends complete with no records.
        raise where.error(
            keys + ("bind",),
            f"bind lists the end parameter first; expected [{end_param}, {start_param}]",
        )
    if window is None:
        return start_param, end_param, None
    if (end_param, start_param) == (window.start_param, window.end_param):
        raise where.error(
            keys + ("bind",),
            f"bind lists the end parameter first; expected [{window.start_param}, "
            f"{window.end_param}]",
        )
    if (start_param, end_param) == (window.start_param, window.end_param):
        return start_param, end_param, window.max_days
    return start_param, end_param, None


def _no_window_message(endpoint: Endpoint) -> str:
    if endpoint.raw:
        return "a raw path has no date window of its own; add bind: [startParam, endParam]"
    pairs = [
        (name, name[: -len("From")] + "To")
        for name in sorted(endpoint.accepted_params)
        if name.endswith("From") and name[: -len("From")] + "To" in endpoint.accepted_params
    ]
    example = f", such as bind: [{pairs[0][0]}, {pairs[0][1]}]" if pairs else ""
    return (
        f"endpoint '{endpoint.name}' has no date window of its own; add bind: "
        f"[startParam, endParam] to name the two parameters the window sets{example}"
    )


def _date(where: KeyLocator, keys: tuple[Any, ...], text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        pass
    year, month, day = (int(part) for part in text.split("-"))
    if not 1 <= month <= 12:
        reason = f"there is no month {month}"
    elif year < 1:
        reason = "the year must be 1 or later"
    else:
        days = calendar.monthrange(year, month)[1]
        reason = f"{year}-{month:02d} has {days} days" if day else "there is no day 0"
    raise where.error(keys, f"invalid date {text!r}: {reason}; expected a real date as YYYY-MM-DD")


def _check_date_constant(where: KeyLocator, keys: tuple[Any, ...], text: str) -> None:
    """Reject a date constant for which the server would return 400 InvalidDateValue.

    TM parses these parameters with ``strptime("%Y-%m-%d")``, which also takes a month or
    day of one digit, so the same parse decides here.
    """
    try:
        dt.datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        if re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}", text):
            _date(where, keys, text)  # names what is wrong: no month 13, no February 30
        raise where.error(
            keys, f"invalid date {text!r}; expected YYYY-MM-DD, such as 2025-01-31"
        ) from None


def check_constant_dates(
    where: KeyLocator, keys: tuple[Any, ...], endpoint: Endpoint, constants: tuple[Constant, ...]
) -> None:
    """Check a date range set by two constants against the endpoint's window limit."""
    window = endpoint.window
    if window is None:
        return
    values = {constant.name: constant.value for constant in constants}
    for name in (window.start_param, window.end_param):
        if name in values:
            _check_date_constant(where, keys + ("params", name), str(values[name]))
    try:
        # Parsed as the server parses them, so 2025-1-5 counts as a date too.
        start = dt.datetime.strptime(str(values[window.start_param]), "%Y-%m-%d").date()
        end = dt.datetime.strptime(str(values[window.end_param]), "%Y-%m-%d").date()
    except KeyError:
        return  # not both set
    end_keys = keys + ("params", window.end_param)
    if end < start:
        raise where.error(
            end_keys, f"{window.end_param} ({end}) is before {window.start_param} ({start})"
        )
    days = (end - start).days + 1
    if window.max_days is not None and days > window.max_days:
        raise where.error(
            end_keys,
            f"{window.start_param}..{window.end_param} covers {days} days, more than the "
            f"{window.max_days} that endpoint '{endpoint.name}' accepts in one request; use "
            f"dates: {{start: {start}, end: {end}}} in place of both, and the tool splits it",
        )
