"""Load and validate a recipe (YAML, version 1) into frozen dataclasses.

Every error names the file, the line and the dotted key, says what is wrong and what
would be valid, and raises ``RecipeError`` (exit code 2) before anything is written or
sent. Structure is checked against ``schema.RECIPE_SCHEMA``; the checks that need the
endpoint catalog or other streams follow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .catalog import CATALOG, Auth, DateWindow, Endpoint
from .errors import RecipeError
from .params import (
    Constant,
    DateWindows,
    Each,
    FromStream,
    IntRange,
    ParamSpec,
    Scalar,
    StaticSpec,
    Step,
    VaryingSpec,
    render,
)
from .schema import RECIPE_SCHEMA

DEFAULT_BASE_URL = "https://tasking-manager-production-api.hotosm.org/api/v2"
BASE_URL_ENV = "TM_EXPORT_BASE_URL"
DEFAULT_MAX_PAGES = 10_000


@dataclass(frozen=True, slots=True)
class Timeouts:
    """HTTP timeouts in seconds."""

    connect: float = 10.0
    read: float = 60.0
    total: float = 300.0


@dataclass(frozen=True, slots=True)
class Retries:
    """Retry policy: attempts per request and exponential backoff bounds, in seconds."""

    attempts: int = 5
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0
    max_retry_after: float = 300.0
    """Longest ``Retry-After`` the run honours; a longer one stops the run, resumably."""


@dataclass(frozen=True, slots=True)
class Instance:
    """The server to export from and how politely to talk to it."""

    base_url: str | None = None
    token_env: str | None = None
    contact: str | None = None
    concurrency: int = 8
    rate_limit: float = 10.0
    """Requests per second over the whole run."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: Retries = field(default_factory=Retries)
    max_pages: int = DEFAULT_MAX_PAGES


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One named stream: an endpoint and the parameters to pull it with."""

    name: str
    endpoint: Endpoint
    constants: tuple[Constant, ...]
    varying: tuple[VaryingSpec, ...]
    max_pages: int
    line: int

    @property
    def parent(self) -> FromStream | None:
        """The ``from`` parameter that ties this stream to another, if any."""
        for spec in self.varying:
            if isinstance(spec, FromStream):
                return spec
        return None

    @property
    def static(self) -> tuple[StaticSpec, ...]:
        """The varying parameters whose values are known before the run starts."""
        return tuple(spec for spec in self.varying if not isinstance(spec, FromStream))

    def describe(self) -> dict[str, Any]:
        """Return what this stream exports, as plain data for hashing and the manifest."""
        return {
            "path": self.endpoint.path,
            "records": self.endpoint.records,
            "key": self.endpoint.key,
            "paginated": self.endpoint.paginated,
            "constants": {c.name: c.value for c in self.constants},
            "varying": [_describe_spec(spec) for spec in self.varying],
        }


def _describe_spec(spec: VaryingSpec) -> dict[str, Any]:
    if isinstance(spec, Each):
        return {"name": spec.name, "each": list(spec.values)}
    if isinstance(spec, IntRange):
        return {"name": spec.name, "range": [spec.start, spec.stop, spec.step]}
    if isinstance(spec, FromStream):
        return {"name": spec.name, "from": f"{spec.stream}.{spec.field}"}
    return {
        "bind": [spec.start_param, spec.end_param],
        "start": spec.start.isoformat(),
        "end": spec.end.isoformat(),
        "step": str(spec.step) if spec.step else None,
        "max_days": spec.max_days,
    }


@dataclass(frozen=True, slots=True)
class Recipe:
    """A validated recipe. ``streams`` is ordered so that parents come before children."""

    path: Path
    text: str
    instance: Instance
    output: str
    streams: Mapping[str, StreamSpec]

    def export_hash(self) -> str:
        """Return a SHA-256 of what the recipe exports, ignoring operational settings."""
        described = {name: stream.describe() for name, stream in self.streams.items()}
        return hashlib.sha256(orjson.dumps(described, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def needs_token(self) -> list[str]:
        """Return the names of streams whose endpoint requires a token."""
        return [name for name, s in self.streams.items() if s.endpoint.auth == "required"]


def load_recipe(path: str | Path) -> Recipe:
    """Read, parse and validate the recipe at ``path``.

    Raises:
        RecipeError: the file cannot be read or the recipe is invalid.
    """
    path = Path(path)
    text = _read_text(path)
    tree = _parse_yaml(path, text)
    plain = _to_plain(tree)

    _check_schema(path, tree, plain)
    return _build(path, text, tree, plain)


def resolve_token(recipe: Recipe, environ: Mapping[str, str] = os.environ) -> str | None:
    """Return the API token from the environment, or None when the recipe names none.

    Raises:
        RecipeError: a stream needs a token and the variable is unset or empty.
    """
    variable = recipe.instance.token_env
    value = environ.get(variable, "").strip() if variable else ""
    if value:
        return value

    needing = recipe.needs_token()
    if needing and variable:
        raise RecipeError(
            f"{recipe.path}: environment variable {variable} is not set, but stream "
            f"'{needing[0]}' needs an API token; export {variable}=<your TM API key> and run again"
        )
    return None


# --- reading and parsing -------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a folder, not a recipe file") from None
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the recipe: {error.strerror}") from None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecipeError(
            f"{path}:{line}: the recipe is not UTF-8 text (byte 0x{data[error.start]:02x} "
            f"at offset {error.start}); save the file as UTF-8"
        ) from None

    if not text.strip():
        raise RecipeError(f"{path}:1: the recipe is empty; start from a file in recipes/")
    return text


def _parse_yaml(path: Path, text: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = (error.problem or error.context or "invalid YAML").strip()
        raise RecipeError(f"{path}:{line}: invalid YAML: {problem}") from None
    except YAMLError as error:
        raise RecipeError(f"{path}:1: invalid YAML: {error}") from None

    if not isinstance(tree, dict):
        raise RecipeError(
            f"{path}:1: the recipe must be a mapping with the keys version, output and streams"
        )
    return tree


def _to_plain(node: Any) -> Any:
    """Convert the YAML tree to plain JSON types; dates become ISO strings."""
    if isinstance(node, dict):
        return {str(key): _to_plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_to_plain(item) for item in node]
    if isinstance(node, dt.datetime):
        return node.isoformat()
    if isinstance(node, dt.date):
        return node.isoformat()
    return node


# --- locating keys in the YAML tree --------------------------------------------------


def _line_of(tree: Any, keys: tuple[Any, ...]) -> int:
    """Return the 1-based line of the deepest key along ``keys`` that the tree has."""
    line = 1
    node = tree
    for key in keys:
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            if isinstance(node, dict) and key in node:
                line = lc.key(key)[0] + 1
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                line = lc.item(key)[0] + 1
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
        node = node[key]
    return line


def _dotted(keys: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for key in keys:
        if isinstance(key, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}]"]
        else:
            parts.append(str(key))
    return ".".join(parts) or "(top level)"


class _Where:
    """Formats errors for one recipe file."""

    def __init__(self, path: Path, tree: Any) -> None:
        self.path = path
        self.tree = tree

    def error(self, keys: tuple[Any, ...], message: str) -> RecipeError:
        line = _line_of(self.tree, keys)
        return RecipeError(f"{self.path}:{line}: {_dotted(keys)}: {message}")


# --- structural validation -----------------------------------------------------------


def _check_schema(path: Path, tree: Any, plain: Any) -> None:
    validator = jsonschema.Draft202012Validator(RECIPE_SCHEMA)
    errors = sorted(
        validator.iter_errors(plain),
        key=lambda e: (_line_of(tree, tuple(e.absolute_path)), len(e.absolute_path)),
    )
    if not errors:
        return

    where = _Where(path, tree)
    error = errors[0]
    keys, message = _explain(error)
    raise where.error(keys, message)


def _explain(error: jsonschema.ValidationError) -> tuple[tuple[Any, ...], str]:
    """Turn a schema error into the key it concerns and a message with the fix."""
    keys = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator

    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        if keys[-1:] == ("streams",) or not allowed:
            return keys + (extra[0],), "unknown key"
        return keys + (extra[0],), f"unknown key '{extra[0]}'; valid keys: {', '.join(allowed)}"
    if kind == "required":
        missing = str(error.message).split("'")[1]
        return keys, f"missing key '{missing}'"
    if kind == "oneOf" and keys[-2:-1] == ("params",):
        return keys, _explain_param_value(error)
    if kind == "propertyNames":
        return keys, f"invalid name {error.instance!r}: use letters, digits and _"
    if kind == "pattern" and keys and keys[-1] == "step":
        return keys, f"invalid step {error.instance!r}: use a number and a unit, such as '1 month'"
    if kind == "pattern" and keys and keys[-1] in ("start", "end"):
        return keys, f"invalid date {error.instance!r}: use YYYY-MM-DD"
    if kind == "pattern" and keys and keys[-1] == "rate_limit":
        return keys, f"invalid rate {error.instance!r}: use requests per second, such as '10/s'"
    if kind == "pattern" and keys and keys[-1] == "base_url":
        return keys, f"invalid URL {error.instance!r}: it must start with http:// or https://"
    if kind == "type":
        expected = schema.get("type")
        names = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return (
            keys,
            f"expected {_article(names)}, got {_json_type(error.instance)} {_short(error.instance)}",
        )
    if kind == "const":
        return keys, f"unsupported value {_short(error.instance)}; this tool reads version 1"
    if kind == "enum":
        choices = ", ".join(str(c) for c in schema.get("enum", []))
        return keys, f"invalid value {_short(error.instance)}; valid values: {choices}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "minItems", "maxItems", "minProperties"):
        return keys, f"invalid value {_short(error.instance)}: {error.message}"
    return keys, str(error.message)


_BRANCH_HINTS = {
    "each": "{each: [value, ...]} takes each value in turn",
    "range": "{range: [first, last]} or {range: [first, last, step]} takes integers, inclusive",
    "from": "{from: STREAM.FIELD} takes each value of another stream's records",
    "start": "{start: YYYY-MM-DD, end: YYYY-MM-DD, step: '1 month'} makes date windows",
}


def _explain_param_value(error: jsonschema.ValidationError) -> str:
    value = error.instance
    if isinstance(value, dict):
        for branch, hint in _BRANCH_HINTS.items():
            if branch in value:
                extra = sorted(
                    set(value) - {"start", "end", "step", "bind"}
                    if branch == "start"
                    else set(value) - {branch}
                )
                if extra:
                    return f"unknown key '{extra[0]}' in a {branch} value; {hint}"
                detail = _branch_detail(error, branch)
                return f"invalid {branch} value{detail}; {hint}"
        if "end" in value or "step" in value:
            return f"a date window needs start and end; {_BRANCH_HINTS['start']}"
    return (
        "invalid parameter value; use a constant, a list (sent comma-separated), "
        "{each: [...]}, {range: [first, last]}, {from: STREAM.FIELD} or {start, end, step}"
    )


def _branch_detail(error: jsonschema.ValidationError, branch: str) -> str:
    for sub in error.context or []:
        path = tuple(sub.relative_path)
        if (path and path[0] == branch) or (
            branch == "start" and path and path[0] in ("end", "step")
        ):
            if sub.validator == "pattern" and path[0] in ("start", "end"):
                return f" ({path[0]} {sub.instance!r} is not YYYY-MM-DD)"
            if sub.validator == "pattern" and path[0] == "step":
                return f" (step {sub.instance!r} is not a number and a unit)"
            if sub.validator in ("minItems", "maxItems") and branch == "range":
                return " (give two or three integers)"
            if sub.validator == "type":
                return (
                    f" ({_json_type(sub.instance)} {_short(sub.instance)} where a number belongs)"
                )
    return ""


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return "null"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- building the model --------------------------------------------------------------


def _build(path: Path, text: str, tree: Any, plain: dict[str, Any]) -> Recipe:
    where = _Where(path, tree)
    instance = _build_instance(plain.get("instance", {}))
    streams = {
        name: _build_stream(where, name, raw, instance) for name, raw in plain["streams"].items()
    }

    _check_references(where, streams)
    ordered = {name: streams[name] for name in _topological_order(where, streams)}

    needing = [s for s in ordered.values() if s.endpoint.auth == "required"]
    if needing and not instance.token_env:
        stream = needing[0]
        raise where.error(
            ("streams", stream.name, "endpoint"),
            f"endpoint '{stream.endpoint.name}' needs an API token; set instance.token_env to the "
            "name of the environment variable that holds it",
        )

    output = plain["output"]
    _check_output(where, output)
    return Recipe(path=path, text=text, instance=instance, output=output, streams=ordered)


def _build_instance(raw: dict[str, Any]) -> Instance:
    timeouts = Timeouts(**raw.get("timeouts", {}))
    retries = Retries(**raw.get("retries", {}))
    rate = raw.get("rate_limit", 10.0)
    if isinstance(rate, str):
        rate = float(rate.split("/")[0])
    return Instance(
        base_url=raw.get("base_url"),
        token_env=raw.get("token_env"),
        contact=raw.get("contact"),
        concurrency=raw.get("concurrency", 8),
        rate_limit=float(rate),
        timeouts=timeouts,
        retries=retries,
        max_pages=raw.get("max_pages", DEFAULT_MAX_PAGES),
    )


def _build_stream(where: _Where, name: str, raw: dict[str, Any], instance: Instance) -> StreamSpec:
    keys = ("streams", name)
    endpoint = _resolve_endpoint(where, keys, raw)
    params = raw.get("params", {})

    specs = [
        _build_param(where, keys + ("params", pname), pname, value, endpoint)
        for pname, value in params.items()
    ]
    _check_param_names(where, keys, endpoint, params)

    constants = tuple(s for s in specs if isinstance(s, Constant))
    varying = tuple(s for s in specs if not isinstance(s, Constant))
    if sum(isinstance(s, FromStream) for s in varying) > 1:
        raise where.error(
            keys + ("params",), "only one parameter may take values from another stream"
        )

    return StreamSpec(
        name=name,
        endpoint=endpoint,
        constants=constants,
        varying=varying,
        max_pages=raw.get("max_pages", instance.max_pages),
        line=_line_of(where.tree, keys),
    )


def _resolve_endpoint(where: _Where, keys: tuple[Any, ...], raw: dict[str, Any]) -> Endpoint:
    raw_keys = ("path", "records", "key", "paginated", "auth")
    if "endpoint" in raw:
        for key in raw_keys:
            if key in raw:
                raise where.error(
                    keys + (key,), f"'{key}' belongs to a raw path; remove it or remove 'endpoint'"
                )
        name = raw["endpoint"]
        if name not in CATALOG:
            close = _closest(name, CATALOG)
            hint = f"did you mean '{close}'? " if close else ""
            raise where.error(
                keys + ("endpoint",),
                f"unknown endpoint '{name}'; {hint}run 'tm-export endpoints' for the list",
            )
        return CATALOG[name]

    if "path" not in raw:
        raise where.error(
            keys, "missing key 'endpoint' (a catalog name) or 'path' (a raw path template)"
        )
    if "records" not in raw:
        raise where.error(
            keys + ("path",),
            "a raw path needs 'records': the key of the record "
            "list, or '$' when the whole body is one record",
        )
    template = raw["path"] if raw["path"].endswith("/") else raw["path"] + "/"
    auth: Auth = raw.get("auth", "optional")
    return Endpoint(
        name=f"path:{template}",
        path=template,
        records=raw["records"],
        key=raw.get("key"),
        summary="raw path",
        auth=auth,
        paginated=raw.get("paginated", False),
        query_params=frozenset(),
        defaults={},
        window=None,
    )


def _closest(name: str, choices: Mapping[str, Any]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, list(choices), n=1)
    return matches[0] if matches else None


def _check_param_names(
    where: _Where, keys: tuple[Any, ...], endpoint: Endpoint, params: dict[str, Any]
) -> None:
    is_raw = endpoint.name.startswith("path:")
    if not is_raw:
        for pname in params:
            if pname not in endpoint.accepted_params:
                valid = ", ".join(sorted(endpoint.accepted_params)) or "(none)"
                raise where.error(
                    keys + ("params", pname),
                    f"unknown parameter for endpoint '{endpoint.name}'; valid: {valid}",
                )
    set_names = set(params)
    for spec_value in params.values():
        if isinstance(spec_value, dict) and "start" in spec_value:
            bound = spec_value.get("bind") or (
                [endpoint.window.start_param, endpoint.window.end_param] if endpoint.window else []
            )
            set_names |= set(bound)
    for pname in endpoint.path_params:
        if pname not in set_names:
            raise where.error(
                keys + ("params",) if "params" in params or params else keys + ("endpoint",),
                f"missing parameter '{pname}' for the path {endpoint.path}",
            )


def _build_param(
    where: _Where, keys: tuple[Any, ...], name: str, value: Any, endpoint: Endpoint
) -> ParamSpec:
    if not isinstance(value, dict):
        return Constant(name, render(value))
    if "each" in value:
        return Each(name, tuple(_scalar(v) for v in value["each"]))
    if "range" in value:
        bounds = value["range"]
        start, stop = bounds[0], bounds[1]
        step = bounds[2] if len(bounds) == 3 else 1
        if step < 1:
            raise where.error(keys + ("range",), f"invalid step {step}: it must be 1 or more")
        if stop < start:
            raise where.error(
                keys + ("range",),
                f"the range ends ({stop}) before it starts ({start}); "
                "give [first, last] with first <= last",
            )
        return IntRange(name, start, stop, step)
    if "from" in value:
        stream, _, field_path = value["from"].partition(".")
        return FromStream(name, stream, field_path)
    return _build_window(where, keys, name, value, endpoint)


def _build_window(
    where: _Where, keys: tuple[Any, ...], name: str, value: dict[str, Any], endpoint: Endpoint
) -> DateWindows:
    window: DateWindow | None = endpoint.window
    if "bind" in value:
        start_param, end_param = value["bind"]
        max_days = window.max_days if window and window.start_param == start_param else None
    elif window is not None and name == "dates":
        start_param, end_param, max_days = window.start_param, window.end_param, window.max_days
    else:
        hint = "name it 'dates'" if window else "add bind: [startParam, endParam]"
        raise where.error(keys, f"a date window needs the parameters it sets; {hint}")

    start = _date(where, keys + ("start",), value["start"])
    end = _date(where, keys + ("end",), value["end"])
    if end < start:
        raise where.error(
            keys + ("end",), f"the date window ends ({end}) before it starts ({start})"
        )

    step = None
    if "step" in value:
        count, unit = value["step"].split()
        step = Step(int(count), unit.rstrip("s"))
    return DateWindows(start_param, end_param, start, end, step, max_days)


def _date(where: _Where, keys: tuple[Any, ...], text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise where.error(keys, f"invalid date {text!r}: no such day in the calendar") from None


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool) or not isinstance(value, int):
        return render(value)
    return value


def _check_references(where: _Where, streams: Mapping[str, StreamSpec]) -> None:
    for stream in streams.values():
        parent = stream.parent
        if parent is None:
            continue
        keys = ("streams", stream.name, "params", parent.name, "from")
        if parent.stream not in streams:
            valid = ", ".join(sorted(s for s in streams if s != stream.name)) or "(no other stream)"
            raise where.error(
                keys, f"stream '{parent.stream}' does not exist; valid streams: {valid}"
            )
        if parent.stream == stream.name:
            raise where.error(keys, "a stream cannot take values from its own records")


def _topological_order(where: _Where, streams: Mapping[str, StreamSpec]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(chain[chain.index(name) :] + (name,))
            stream = streams[name]
            parent = stream.parent
            assert parent is not None
            raise where.error(
                ("streams", name, "params", parent.name, "from"),
                f"streams take values from each other in a cycle: {cycle}",
            )
        state[name] = "visiting"
        parent = streams[name].parent
        if parent is not None:
            visit(parent.stream, chain + (name,))
        state[name] = "done"
        order.append(name)

    for name in streams:
        visit(name, ())
    return order


def _check_output(where: _Where, output: str) -> None:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise where.error(
            ("output",), f"'{output}' is an existing file, not a folder; choose a folder path"
        )
