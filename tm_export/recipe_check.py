"""Check a recipe's plain data and build the ``Recipe`` that ``load_recipe`` returns.

``check_schema`` raises the JSON Schema error that comes first in the file.
``build_recipe`` then runs the checks the schema cannot express: the instance settings,
endpoints and parameters, references and cycles between streams, the token variable and
the output folder.
"""

from __future__ import annotations

import base64
import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import schema
from .catalog import CATALOG, WHOLE_BODY, Auth, Endpoint
from .params import (
    Constant,
    DateWindows,
    FromStream,
    ParamSpec,
    StaticSpec,
    VaryingSpec,
    count_static,
)
from .recipe import (
    DEFAULT_BASE_URL,
    MAX_PARTITIONS,
    Instance,
    Recipe,
    Retries,
    StreamSpec,
    Timeouts,
)
from .recipe_params import build_param, check_constant_dates
from .recipe_yaml import KeyLocator
from .records import PARTITION_KEY
from .schema import RATE_EXPECTED, parse_rate

# --- structural validation -----------------------------------------------------------


def check_finite(where: KeyLocator, node: Any, keys: tuple[Any, ...]) -> None:
    """Reject .inf and .nan, which pass the schema's numeric bounds."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(where, value, keys + (key,))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            check_finite(where, item, keys + (index,))
    elif isinstance(node, float) and not math.isfinite(node):
        raise where.error(keys, f"invalid number {node}; expected a finite number")


def check_schema(where: KeyLocator, plain: Any) -> None:
    """Raise the schema error that comes first in the file, if the plain data has any."""
    explained = []
    for error in schema.iter_errors(plain):
        keys, message = schema.explain(error)
        # A missing key has no line of its own, so any other error is reported first.
        explained.append(
            (error.validator == "required", where.line(keys), len(keys), keys, message)
        )
    if explained:
        _, _, _, keys, message = min(explained, key=lambda item: item[:3])
        raise where.error(keys, message)
    if isinstance(plain.get("version"), float):
        # JSON Schema takes 1.0 for the integer 1.
        raise where.error(
            ("version",), f"invalid value {plain['version']} (a number); expected the integer 1"
        )


#: The stream name whose file would take the place of a bag's manifest.
RESERVED_STREAM_NAME = "manifest"

# --- building the model --------------------------------------------------------------


def build_recipe(where: KeyLocator, text: str, plain: dict[str, Any]) -> Recipe:
    """Run the checks that need the endpoint catalog or other streams, and build the recipe."""
    instance = _build_instance(where, plain.get("instance", {}))
    streams = {
        name: _build_stream(where, name, raw, instance) for name, raw in plain["streams"].items()
    }

    _check_references(where, streams)
    ordered = {name: streams[name] for name in _topological_order(where, streams)}
    _check_token_env(where, ordered, instance)

    output = plain.get("output")
    if output is not None:
        _check_output(where, output)
    return Recipe(
        path=where.path,
        text=text,
        instance=instance,
        output=output,
        streams=ordered,
        token_env_line=where.line(("instance", "token_env")),
    )


def _build_instance(where: KeyLocator, raw: dict[str, Any]) -> Instance:
    keys = ("instance",)
    base_url = raw.get("base_url")
    if base_url is not None:
        _check_base_url(where, keys + ("base_url",), base_url)
    contact = raw.get("contact")
    if contact is not None:
        _check_contact(where, keys + ("contact",), contact)
    token_env = raw.get("token_env")
    if token_env is not None and looks_like_api_key(token_env):
        raise where.error(
            keys + ("token_env",),
            f"the value ({len(token_env)} characters, not shown) looks like an API key, not the "
            "name of an environment variable: it decodes to a user id and a token. Put the key "
            "in a variable, such as TM_API_TOKEN, and its name here",
        )

    timeouts = Timeouts(**{name: float(value) for name, value in raw.get("timeouts", {}).items()})
    retry_settings = raw.get("retries", {})
    waits = {name: float(value) for name, value in retry_settings.items() if name != "attempts"}
    retries = Retries(attempts=int(retry_settings.get("attempts", Retries().attempts)), **waits)
    if retries.wait_initial > retries.wait_max:
        name = "wait_initial" if "wait_initial" in retry_settings else "wait_max"
        raise where.error(
            keys + ("retries", name),
            f"wait_initial ({retries.wait_initial:g} s) is longer than wait_max "
            f"({retries.wait_max:g} s); expected wait_initial <= wait_max",
        )

    defaults = Instance()
    return Instance(
        base_url=base_url,
        token_env=raw.get("token_env"),
        contact=contact,
        concurrency=int(raw.get("concurrency", defaults.concurrency)),
        rate_limit=_rate(where, keys + ("rate_limit",), raw.get("rate_limit", defaults.rate_limit)),
        timeouts=timeouts,
        retries=retries,
        max_pages=int(raw.get("max_pages", defaults.max_pages)),
    )


def _check_base_url(where: KeyLocator, keys: tuple[Any, ...], url: str) -> None:
    problem = base_url_problem(url)
    if problem is not None:
        raise where.error(keys, problem)


def base_url_problem(url: str) -> str | None:
    """Return why ``url`` cannot be an API root, as a message, or None when it can be."""
    expected = f"expected the API root, such as {DEFAULT_BASE_URL}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading the port validates it
    except ValueError as error:
        # urlsplit rejects a bad [IPv6] host, and .port rejects a port outside 0-65535.
        reason = "the port is not a number from 0 to 65535" if "Port" in str(error) else error
        return f"invalid URL {url!r}: {reason}; {expected}"
    if not url.strip():
        reason = "it is empty"
    elif any(char.isspace() for char in url):
        reason = "it contains a space"
    elif parts.scheme.lower() not in ("http", "https"):
        reason = "it must start with http:// or https://"
    elif not parts.hostname:
        reason = "it has no host name"
    elif parts.query or parts.fragment:
        reason = "it has a query or a fragment; put query parameters under a stream's params"
    else:
        return None
    return f"invalid URL {url!r}: {reason}; {expected}"


def looks_like_api_key(value: str) -> bool:
    """Tell whether ``value`` decodes as a TM API key does.

    A key is the base64 of a session token. TM makes the token with itsdangerous: three
    base64url parts joined by dots, the first of them the user's id as JSON. The mock
    server's tokens are simpler: the user id, a dot and a random token. Either shape can
    also be a valid variable name (no ``=``, ``+`` or ``/``); a variable name never
    decodes to one.
    """
    try:
        # A key copied without its trailing = is still the key.
        padded = value + "=" * (-len(value) % 4)
        decoded = base64.b64decode(padded, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return False
    parts = decoded.split(".")
    if len(parts) == 2:
        user, token = parts
        return user.isdigit() and len(token) >= 8 and token.isprintable()
    if len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in parts):
        first = parts[0]
        try:
            payload = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            return False
        return payload.isdigit()
    return False


def _check_contact(where: KeyLocator, keys: tuple[Any, ...], contact: str) -> None:
    if contact.strip() and all(32 <= ord(char) < 127 for char in contact):
        return
    raise where.error(
        keys,
        f"invalid contact {schema.short_repr(contact)}: it goes into the User-Agent header; "
        "expected printable ASCII on one line, such as an email address or a URL",
    )


def _rate(where: KeyLocator, keys: tuple[Any, ...], value: float | str) -> float:
    """Return a rate limit as requests per second; the schema has checked its form."""
    rate = parse_rate(str(value))
    if rate is None:
        raise where.error(
            keys, f"invalid rate {schema.short_repr(value)}; expected {RATE_EXPECTED}"
        )
    return rate


# --- streams -------------------------------------------------------------------------


def _build_stream(
    where: KeyLocator, name: str, raw: dict[str, Any], instance: Instance
) -> StreamSpec:
    keys = ("streams", name)
    if name.lower() == RESERVED_STREAM_NAME:
        # A bag moves the run's manifest to data/manifest.jsonl, the file of such a stream.
        raise where.error(
            keys,
            f"invalid stream name '{name}': data/{name}.jsonl is where a bag keeps the run's "
            "manifest; choose another name",
        )
    endpoint = _resolve_endpoint(where, keys, raw)
    params: dict[str, Any] = raw.get("params", {})

    specs: list[ParamSpec] = []
    set_by: dict[str, str] = {}  # parameter sent -> the key under params that sets it
    for pname, value in params.items():
        pkeys = keys + ("params", pname)
        spec = build_param(where, pkeys, pname, value, endpoint)
        for sent in _sent_names(spec):
            if sent in set_by:
                first = set_by[sent]
                raise where.error(
                    pkeys,
                    f"parameter '{sent}' is already set by '{first}' on line "
                    f"{where.line(keys + ('params', first))}; set each parameter once",
                )
            set_by[sent] = pname
        specs.append(spec)

    _check_required_params(where, keys, raw, endpoint, set_by)
    constants = tuple(s for s in specs if isinstance(s, Constant))
    varying = tuple(s for s in specs if not isinstance(s, Constant))
    _check_from_sources(where, keys, varying)
    check_constant_dates(where, keys, endpoint, constants)
    _check_partition_count(where, keys, varying)

    return StreamSpec(
        name=name,
        endpoint=endpoint,
        constants=constants,
        varying=varying,
        max_pages=int(raw.get("max_pages", instance.max_pages)),
        line=where.line(keys),
    )


_RAW_KEYS = ("path", "records", "key", "paginated", "auth")


def _resolve_endpoint(where: KeyLocator, keys: tuple[Any, ...], raw: dict[str, Any]) -> Endpoint:
    if "endpoint" in raw:
        for key in _RAW_KEYS:
            if key in raw:
                raise where.error(
                    keys + (key,),
                    f"'{key}' belongs to a raw path, but this stream names a catalog endpoint; "
                    f"remove '{key}', or replace 'endpoint' with 'path'",
                )
        name = raw["endpoint"]
        if name not in CATALOG:
            close = difflib.get_close_matches(name, list(CATALOG), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise where.error(
                keys + ("endpoint",),
                f"unknown endpoint {name!r}; {hint}run 'tm-export endpoints' for the list",
            )
        return CATALOG[name]

    if "path" not in raw:
        raise where.error(
            keys + ("endpoint",),
            "missing key; expected endpoint (a name that 'tm-export endpoints' lists) or path "
            "(a raw path such as /projects/{project_id}/)",
        )
    template = raw["path"]
    _check_raw_path(where, keys + ("path",), template)
    if "records" not in raw:
        raise where.error(
            keys + ("path",),
            "a raw path needs 'records': the key of the record list in the response body, "
            "or '$' when the whole body is one record",
        )
    if raw.get("key") == "":
        raise where.error(
            keys + ("key",),
            "invalid key ''; expected the dotted path of the field that identifies a record, "
            "$ for the whole record, or null",
        )
    template = template if template.endswith("/") else template + "/"
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


def _check_raw_path(where: KeyLocator, keys: tuple[Any, ...], template: str) -> None:
    if "?" in template or "#" in template:
        reason = "it contains '?' or '#'; put query parameters under params"
    elif any(char.isspace() for char in template):
        reason = "it contains a space"
    elif re.search(r"[{}]", re.sub(r"{[A-Za-z_][A-Za-z0-9_]*}", "", template)):
        reason = "a '{' or '}' is not part of a {name} path parameter"
    else:
        return
    raise where.error(
        keys,
        f"invalid path {template!r}: {reason}; expected a path such as /projects/{{project_id}}/",
    )


def _sent_names(spec: ParamSpec) -> tuple[str, ...]:
    if isinstance(spec, DateWindows):
        return (spec.start_param, spec.end_param)
    return (spec.name,)


# --- checks across parameters and streams --------------------------------------------


def _check_required_params(
    where: KeyLocator,
    keys: tuple[Any, ...],
    raw: dict[str, Any],
    endpoint: Endpoint,
    set_by: Mapping[str, str],
) -> None:
    """Raise RecipeError for a path parameter, or a query parameter the server requires,
    that the stream's params do not set."""
    # The parameter is absent, so point at the params mapping, or else at the endpoint.
    if "params" in raw:
        anchor = keys + ("params",)
    elif "endpoint" in raw:
        anchor = keys + ("endpoint",)
    else:
        anchor = keys + ("path",)

    for pname in endpoint.path_params:
        if pname not in set_by:
            raise where.error(
                anchor,
                f"missing path parameter '{pname}' of {endpoint.path}; set it under params to "
                "a value, {each: [...]}, {range: [first, last]} or {from: STREAM.FIELD}",
            )
    for pname in sorted(endpoint.required_params):
        if pname in set_by:
            continue
        window = endpoint.window
        if window is not None and pname in (window.start_param, window.end_param):
            fix = (
                "set a date window, such as dates: {start: 2026-01-01, end: 2026-12-31, "
                f"step: 1 month}}, or {window.start_param} and {window.end_param} constants"
            )
        else:
            fix = "set it under params"
        raise where.error(
            anchor,
            f"missing query parameter '{pname}', without which the server rejects every "
            f"request to {endpoint.path} (422); {fix}",
        )


def _check_from_sources(
    where: KeyLocator, keys: tuple[Any, ...], varying: tuple[VaryingSpec, ...]
) -> None:
    """Check that every ``from`` parameter of a stream names the same stream.

    The engine takes the values of all of them together from each record of that stream,
    so a task id comes with the project id of the same record.
    """
    sources = [spec for spec in varying if isinstance(spec, FromStream)]
    for spec in sources[1:]:
        first = sources[0]
        if spec.stream != first.stream:
            raise where.error(
                keys + ("params", spec.name, "from"),
                "all from parameters of a stream must name one stream, because their values "
                f"are taken together from each of its records; '{first.name}' already takes "
                f"values from '{first.stream}'",
            )


def _check_partition_count(
    where: KeyLocator, keys: tuple[Any, ...], varying: tuple[VaryingSpec, ...]
) -> None:
    static = tuple(spec for spec in varying if not isinstance(spec, FromStream))
    if count_static(static, limit=MAX_PARTITIONS) > MAX_PARTITIONS:
        sizes = " × ".join(_partition_size(spec) for spec in static)
        raise where.error(
            keys + ("params",),
            f"the parameters make more than {MAX_PARTITIONS:,} partitions ({sizes}); "
            "narrow the ranges, lists or date windows",
        )


def _partition_size(spec: StaticSpec) -> str:
    """Describe how many values one varying parameter gives, for the partition-count error."""
    if isinstance(spec, DateWindows):
        # Windows are counted one by one, so the count stops just past the limit.
        count = count_static((spec,), limit=MAX_PARTITIONS)
        size = f"more than {MAX_PARTITIONS:,}" if count > MAX_PARTITIONS else f"{count:,}"
        return f"{spec.start_param}..{spec.end_param}: {size}"
    return f"{spec.name}: {count_static((spec,)):,}"


def _check_references(where: KeyLocator, streams: Mapping[str, StreamSpec]) -> None:
    for stream in streams.values():
        parent = stream.parent
        if parent is None:
            continue
        keys = ("streams", stream.name, "params", parent.name, "from")
        if parent.stream == stream.name:
            raise where.error(
                keys, "a stream cannot take values from its own records; name another stream"
            )
        if parent.stream not in streams:
            others = sorted(name for name in streams if name != stream.name)
            close = difflib.get_close_matches(parent.stream, others, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            valid = ", ".join(others) or "none, this is the only stream"
            raise where.error(
                keys, f"stream '{parent.stream}' does not exist; {hint}valid streams: {valid}"
            )
        for spec in stream.varying:
            if isinstance(spec, FromStream):
                _check_from_field(where, stream, spec, streams[parent.stream])


def _check_from_field(
    where: KeyLocator, stream: StreamSpec, spec: FromStream, parent: StreamSpec
) -> None:
    """Raise RecipeError for a field path that no record can have: ``$`` inside a path,
    ``$`` of a catalog endpoint whose records are objects, or a ``_partition`` parameter
    that the parent stream does not vary.

    Other fields are known only from the records, so the run checks them.
    """
    keys = ("streams", stream.name, "params", spec.name, "from")
    parts = spec.field.split(".")
    if WHOLE_BODY in parts and spec.field != WHOLE_BODY:
        raise where.error(
            keys,
            f"$ stands for the whole record and cannot be part of a path; write "
            f"{spec.stream}.$ for the record itself, or a dotted path of field names",
        )
    endpoint = parent.endpoint
    if spec.field == WHOLE_BODY and not endpoint.raw and endpoint.key != WHOLE_BODY:
        example = f"such as {spec.stream}.{endpoint.key}" if endpoint.key else "by its path"
        raise where.error(
            keys,
            f"the records of endpoint '{endpoint.name}' are objects, and $ takes records that "
            f"are strings or numbers; name a field of its records, {example}",
        )
    if parts[0] != PARTITION_KEY:
        return

    varied = [name for parent_spec in parent.varying for name in _sent_names(parent_spec)]
    if not varied:
        raise where.error(
            keys,
            f"stream '{parent.name}' has no varying parameters, so its records have no "
            f"{PARTITION_KEY}; name a field of its records",
        )
    if len(parts) == 2 and parts[1] in varied:
        return
    close = difflib.get_close_matches(parts[-1], varied, n=1)
    hint = f"did you mean {spec.stream}.{PARTITION_KEY}.{close[0]}? " if close else ""
    raise where.error(
        keys,
        f"{PARTITION_KEY} of stream '{parent.name}' has only the parameters it varies; "
        f"{hint}valid: {', '.join(f'{spec.stream}.{PARTITION_KEY}.{name}' for name in varied)}",
    )


def _topological_order(where: KeyLocator, streams: Mapping[str, StreamSpec]) -> list[str]:
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(chain[chain.index(name) :] + (name,))
            parent = streams[name].parent
            assert parent is not None
            raise where.error(
                ("streams", name, "params", parent.name, "from"),
                f"streams take values from each other in a cycle: {cycle}; "
                "a stream can only take values from a stream that does not depend on it",
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


def _check_token_env(
    where: KeyLocator, streams: Mapping[str, StreamSpec], instance: Instance
) -> None:
    if instance.token_env:
        return
    for stream in streams.values():
        if stream.endpoint.auth != "required":
            continue
        fix = (
            "set instance.token_env to the name of the environment variable that contains your "
            "TM API key, such as TM_API_TOKEN"
        )
        if stream.endpoint.raw:
            raise where.error(
                ("streams", stream.name, "auth"),
                f"auth: required needs an API token, but instance.token_env is not set; {fix}",
            )
        raise where.error(
            ("streams", stream.name, "endpoint"),
            f"endpoint '{stream.endpoint.name}' needs an API token, but instance.token_env is "
            f"not set; {fix}",
        )


def _check_output(where: KeyLocator, output: str) -> None:
    problem = output_problem(output)
    if problem is not None:
        raise where.error(("output",), problem)


def output_problem(output: str) -> str | None:
    """Return why ``output`` cannot be an output folder, as a message, or None when it can be."""
    if not output.strip():
        return "the folder name is empty; choose a folder path, such as exports/demo"
    if "\0" in output:
        return "invalid folder name: it contains a NUL character"
    path = Path(output)
    for candidate in (path, *path.parents):
        try:
            is_file = candidate.exists() and not candidate.is_dir()
        except (OSError, UnicodeError):
            # Not readable here, or not a name this system can write: creating the folder,
            # or check_output before it, reports the real error.
            return None
        if not is_file:
            continue
        if candidate == path:
            return f"'{output}' is an existing file, not a folder; choose a folder path"
        return (
            f"'{candidate}' is an existing file, so '{output}' cannot be a folder below it; "
            "choose another folder path"
        )
    return None
