"""Load and validate a recipe (YAML, version 1) into frozen dataclasses.

Every error is a ``RecipeError`` (exit code 2), raised before anything is written or
sent. Its message reads ``FILE:LINE: dotted.key: what is wrong; what would be valid``.
LINE is the line of the offending key or value. A YAML syntax error has ``invalid YAML``
in place of the dotted key. The structure is checked against ``schema.RECIPE_SCHEMA``
first, then come the checks that need the endpoint catalog or other streams.
"""

from __future__ import annotations

import calendar
import datetime as dt
import difflib
import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.tokens import (
    FlowMappingEndToken,
    FlowMappingStartToken,
    FlowSequenceEndToken,
    FlowSequenceStartToken,
)

from . import schema
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
    count_static,
    render,
)

DEFAULT_BASE_URL = "https://tasking-manager-production-api.hotosm.org/api/v2"
BASE_URL_ENV = "TM_EXPORT_BASE_URL"
DEFAULT_MAX_PAGES = 10_000

#: Maximum number of partitions that a stream's each, range and date-window parameters make.
#: The expansion keeps every value of each parameter in memory, and a count above this is
#: almost always a typo in a range: a million requests at 10 per second take 28 hours.
MAX_PARTITIONS = 1_000_000


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
            # A changed catalog default (such as the sort order) changes what pages hold.
            "defaults": dict(self.endpoint.defaults),
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
    token_env_line: int = 1
    """Line of ``instance.token_env`` in the file, for the message of ``resolve_token``."""

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
    where = _Where(path, tree)
    plain = _to_plain(where, tree, ())

    _check_schema(where, plain)
    _check_finite(where, plain, ())
    return _build(where, text, plain)


def resolve_token(recipe: Recipe, environ: Mapping[str, str] = os.environ) -> str | None:
    """Return the API token from the environment, or None when no token is set.

    A recipe whose streams all work without a token runs anonymously when the variable
    is unset.

    Raises:
        RecipeError: a stream needs a token and the variable is unset or empty, or the
            value contains a control character such as a line break.
    """
    variable = recipe.instance.token_env
    value = environ.get(variable, "").strip() if variable else ""
    prefix = f"{recipe.path}:{recipe.token_env_line}: instance.token_env"
    if value:
        if any(ord(char) < 32 or ord(char) == 127 for char in value):
            raise RecipeError(
                f"{prefix}: the environment variable {variable} contains a line break or "
                "another control character; it must contain only the API key, on one line"
            )
        return value

    needing = recipe.needs_token()
    if needing and variable:
        raise RecipeError(
            f"{prefix}: the environment variable {variable} is not set or empty, but stream "
            f"'{needing[0]}' needs an API token; copy the API key from your Tasking Manager "
            f"settings, export {variable}=<key> and run again"
        )
    return None


# --- reading and parsing -------------------------------------------------------------

_RECIPE_SHAPE = "a recipe is a YAML mapping with the keys version, output and streams"


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found; check the path") from None
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
        raise RecipeError(f"{path}:1: the file is empty; {_RECIPE_SHAPE} (see docs/recipes.md)")
    return text


class _Constructor(RoundTripConstructor):
    """A round-trip constructor that keeps YAML timestamps as the text written.

    The stock constructor raises a ValueError without a line for 2025-02-30 and turns
    2025-01-01 10:00 into a datetime. As text, both reach the date checks, which name the line.
    """


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_str)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    return yaml


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        node = _yaml().compose(text)
    except YAMLError as error:
        raise _syntax_error(path, text, error) from None
    if node is None:
        raise RecipeError(
            f"{path}:1: the file contains only comments or blank lines; {_RECIPE_SHAPE}"
        )
    _check_duplicate_keys(path, node)

    try:
        tree = _yaml().load(text)
    except YAMLError as error:
        raise _syntax_error(path, text, error) from None
    except (ValueError, TypeError) as error:
        # A constructor for an explicit tag such as !!int failed without a position.
        raise RecipeError(f"{path}:1: invalid YAML value: {error}") from None

    if not isinstance(tree, dict):
        line = node.start_mark.line + 1
        found = "a list" if isinstance(tree, list) else f"the value {schema.short_repr(str(tree))}"
        raise RecipeError(
            f"{path}:{line}: (top level): the file contains {found}, not a mapping; {_RECIPE_SHAPE}"
        )
    return tree


def _check_duplicate_keys(path: Path, root: Node) -> None:
    """Raise for the first repeated key of a mapping, naming where it was first defined.

    ruamel.yaml raises for duplicates too, but without the dotted key.
    """
    duplicates: list[tuple[int, int, tuple[Any, ...], int]] = []
    visited: set[int] = set()

    def walk(node: Node, keys: tuple[Any, ...]) -> None:
        if id(node) in visited:  # an alias shares the node of its anchor
            return
        visited.add(id(node))
        if isinstance(node, MappingNode):
            first_lines: dict[str, int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, ScalarNode) else "?"
                mark = key_node.start_mark
                if isinstance(key_node, ScalarNode) and name != "<<":
                    if name in first_lines:
                        duplicates.append(
                            (mark.line, mark.column, keys + (name,), first_lines[name])
                        )
                    else:
                        first_lines[name] = mark.line + 1
                walk(value_node, keys + (name,))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, keys + (index,))

    walk(root, ())
    if duplicates:
        line, _, keys, first = min(duplicates, key=lambda found: (found[0], found[1]))
        raise RecipeError(
            f"{path}:{line + 1}: {_dotted(keys)}: duplicate key; it is first defined on line "
            f"{first}, so remove one of them or rename it"
        )


# --- explaining YAML syntax errors ----------------------------------------------------


def _syntax_error(path: Path, text: str, error: YAMLError) -> RecipeError:
    line, message = _explain_yaml(text, error)
    return RecipeError(f"{path}:{line}: invalid YAML: {message}")


@dataclass(frozen=True, slots=True)
class _Marks:
    """1-based positions of a YAML error and of the construct it happened in."""

    line: int
    column: int
    opened_line: int
    opened_column: int


def _explain_yaml(text: str, error: YAMLError) -> tuple[int, str]:
    """Return the line of a YAML syntax error and a message in plain words, with the fix."""
    if isinstance(error, ReaderError):
        position = error.position if isinstance(error.position, int) else 0
        char = (
            error.character
            if isinstance(error.character, int)
            else ord(str(error.character)[:1] or "\0")
        )
        line = text[:position].count("\n") + 1
        return line, f"the control character U+{char:04X} is not allowed in YAML; remove it"
    if not isinstance(error, MarkedYAMLError):
        return 1, str(error).splitlines()[0]

    problem = (error.problem or "").strip()
    context = (error.context or "").strip()
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark is not None else 1
    column = mark.column + 1 if mark is not None else 1
    opened = error.context_mark
    marks = _Marks(
        line,
        column,
        opened.line + 1 if opened is not None else line,
        opened.column + 1 if opened is not None else column,
    )

    tab_line = _tab_indented_line(text, line)
    if tab_line is not None or "'\\t'" in problem:
        return tab_line or line, (
            "a tab character indents this line; YAML indents with spaces only, "
            "so replace the tab with spaces"
        )
    explained = _explain_unclosed(text, problem, context, marks) or _explain_misplaced(
        problem, context, marks
    )
    if explained is not None:
        return explained
    detail = f"{context}: {problem}" if context else problem
    return line, detail or "the file is not valid YAML"


def _explain_unclosed(
    text: str, problem: str, context: str, marks: _Marks
) -> tuple[int, str] | None:
    """Explain a quote, bracket or brace that is not closed, at the line that opens it."""
    if "quoted scalar" in context:
        if "end of stream" in problem:
            return marks.opened_line, (
                f"the quoted string that starts at column {marks.opened_column} is never "
                "closed; add the closing quote"
            )
        return marks.line, (
            f"{problem} in a double-quoted string at column {marks.column}; use single quotes, "
            "or write \\\\ for a backslash"
        )
    if context in ("while parsing a flow sequence", "while parsing a flow mapping"):
        opener, closer = ("[", "]") if "sequence" in context else ("{", "}")
        found = _found_token(problem)
        if found == "'<stream end>'":
            return marks.opened_line, (
                f"the '{opener}' at column {marks.opened_column} is never closed; "
                f"close it with '{closer}'"
            )
        return marks.opened_line, (
            f"the '{opener}' at column {marks.opened_column} is not closed where expected: "
            f"line {marks.line} has {found} at column {marks.column}; separate items with ',' "
            f"and close with '{closer}'"
        )
    if "<stream end>" in problem or "end of stream" in problem:
        unclosed = _unclosed_bracket(text)
        if unclosed is None:
            return marks.line, (
                "the file ends in the middle of a value; complete or remove the last entry"
            )
        bracket_line, bracket_column, opener = unclosed
        closer = "]" if opener == "[" else "}"
        return bracket_line, (
            f"the '{opener}' at column {bracket_column} is never closed; close it with '{closer}'"
        )
    return None


def _explain_misplaced(problem: str, context: str, marks: _Marks) -> tuple[int, str] | None:
    """Explain a line that is indented wrongly, or a character YAML reads as syntax."""
    if problem.startswith("expected <block end>"):
        what = "list" if "collection" in context else "mapping"
        if _found_token(problem) == "'-'" and what == "mapping":
            return marks.line, (
                "a list item ('-') stands among the keys of the mapping that starts on line "
                f"{marks.opened_line}; put the list under a key, indented below it"
            )
        return marks.line, (
            f"this line is indented differently from the rest of the {what} that starts on "
            f"line {marks.opened_line}; indent every entry of one {what} by the same number "
            "of spaces"
        )
    if problem == "mapping values are not allowed here":
        return marks.line, (
            f"unexpected ':' at column {marks.column}; check the indentation of this line, "
            "or quote a value that contains ': '"
        )
    if problem.startswith("could not find expected ':'"):
        return marks.opened_line, (
            "this line has no ':' after its key; write KEY: VALUE, with a space after the colon"
        )
    alias = re.match(r"found undefined alias '(.*)'", problem)
    if alias:
        name = alias.group(1)
        return marks.line, (
            f"'*{name}' refers to an anchor '&{name}' that is not defined before it; "
            "quote the value if the '*' is part of it"
        )
    if context == "expected a single document in the stream":
        return marks.line, (
            "a second YAML document starts here; a recipe is one document, so remove the "
            "'---' line and what follows"
        )
    character = re.match(r"found character '(.+)' that cannot start any token", problem)
    if character:
        return marks.line, (
            f"the character '{character.group(1)}' at column {marks.column} cannot start a "
            "plain value; quote the value"
        )
    if context.startswith(("while scanning an alias", "while scanning an anchor")):
        return marks.line, (
            f"a value at column {marks.column} starts with '*' or '&', which YAML reads as an "
            "alias or anchor; quote the value"
        )
    return None


def _tab_indented_line(text: str, last_line: int) -> int | None:
    """Return the first line up to ``last_line`` whose indentation contains a tab."""
    for number, line in enumerate(text.splitlines()[:last_line], start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip():
            return number
    return None


def _found_token(problem: str) -> str:
    match = re.search(r"but (?:got|found) (.+)$", problem)
    return match.group(1) if match else "something else"


def _unclosed_bracket(text: str) -> tuple[int, int, str] | None:
    """Return the line, column and character of the innermost '[' or '{' left open."""
    stack: list[tuple[int, int, str]] = []
    try:
        for token in YAML(typ="rt").scan(text):
            if isinstance(token, FlowSequenceStartToken | FlowMappingStartToken):
                opener = "[" if isinstance(token, FlowSequenceStartToken) else "{"
                stack.append((token.start_mark.line + 1, token.start_mark.column + 1, opener))
            elif isinstance(token, FlowSequenceEndToken | FlowMappingEndToken) and stack:
                stack.pop()
    except YAMLError:
        pass
    return stack[-1] if stack else None


# --- locating keys in the YAML tree --------------------------------------------------

_MISSING = object()


def _actual_key(node: dict[Any, Any], key: Any) -> Any:
    """Return the key of ``node`` that ``key`` names; plain data turned every key to text."""
    if key in node:
        return key
    for candidate in node:
        if str(candidate) == str(key):
            return candidate
    return _MISSING


def _line_of(tree: Any, keys: tuple[Any, ...]) -> int:
    """Return the 1-based line of the deepest key along ``keys`` that the tree has."""
    line = 1
    node = tree
    for key in keys:
        lc = getattr(node, "lc", None)
        if lc is None:
            break
        try:
            if isinstance(node, dict):
                actual = _actual_key(node, key)
                if actual is _MISSING:
                    break
                line = lc.key(actual)[0] + 1
                node = node[actual]
            elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                line = lc.item(key)[0] + 1
                node = node[key]
            else:
                break
        except (KeyError, IndexError, TypeError):
            break
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

    def line(self, keys: tuple[Any, ...]) -> int:
        return _line_of(self.tree, keys)

    def error(self, keys: tuple[Any, ...], message: str) -> RecipeError:
        return RecipeError(f"{self.path}:{self.line(keys)}: {_dotted(keys)}: {message}")


# --- plain data and structural validation --------------------------------------------

_STANDARD_TAG = "tag:yaml.org,2002:"


def _to_plain(where: _Where, node: Any, keys: tuple[Any, ...]) -> Any:
    """Convert the YAML tree to plain JSON types, rejecting tags and types JSON lacks."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(tag, str) and not tag.startswith(_STANDARD_TAG):
        raise where.error(keys, f"unsupported YAML tag '{tag}'; remove the tag")

    if isinstance(node, dict):
        return {
            str(key): _to_plain(where, value, keys + (str(key),)) for key, value in node.items()
        }
    if isinstance(node, list):
        return [_to_plain(where, item, keys + (index,)) for index, item in enumerate(node)]
    if isinstance(node, TaggedScalar):  # !!str on a value that would be a timestamp
        return str(node.value)
    if isinstance(node, bool | ScalarBoolean):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, dt.date):  # an explicit !!timestamp tag
        return node.isoformat()
    if node is None:
        return None
    raise where.error(
        keys,
        f"unsupported YAML value of type {type(node).__name__}; expected a string, a number, "
        "true or false, a list or a mapping",
    )


def _check_finite(where: _Where, node: Any, keys: tuple[Any, ...]) -> None:
    """Reject .inf and .nan, which pass the schema's numeric bounds."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(where, value, keys + (key,))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _check_finite(where, item, keys + (index,))
    elif isinstance(node, float) and not math.isfinite(node):
        raise where.error(keys, f"invalid number {node}; expected a finite number")


def _check_schema(where: _Where, plain: Any) -> None:
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


# --- building the model --------------------------------------------------------------


def _build(where: _Where, text: str, plain: dict[str, Any]) -> Recipe:
    instance = _build_instance(where, plain.get("instance", {}))
    streams = {
        name: _build_stream(where, name, raw, instance) for name, raw in plain["streams"].items()
    }

    _check_references(where, streams)
    ordered = {name: streams[name] for name in _topological_order(where, streams)}
    _check_token_env(where, ordered, instance)

    output = plain["output"]
    _check_output(where, output)
    return Recipe(
        path=where.path,
        text=text,
        instance=instance,
        output=output,
        streams=ordered,
        token_env_line=where.line(("instance", "token_env")),
    )


def _build_instance(where: _Where, raw: dict[str, Any]) -> Instance:
    keys = ("instance",)
    base_url = raw.get("base_url")
    if base_url is not None:
        _check_base_url(where, keys + ("base_url",), base_url)
    contact = raw.get("contact")
    if contact is not None:
        _check_contact(where, keys + ("contact",), contact)

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


def _check_base_url(where: _Where, keys: tuple[Any, ...], url: str) -> None:
    expected = f"expected the API root, such as {DEFAULT_BASE_URL}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading the port validates it
    except ValueError as error:
        # urlsplit rejects a bad [IPv6] host, and .port rejects a port outside 0-65535.
        reason = "the port is not a number from 0 to 65535" if "Port" in str(error) else error
        raise where.error(keys, f"invalid URL {url!r}: {reason}; {expected}") from None
    if any(char.isspace() for char in url):
        reason = "it contains a space"
    elif not parts.hostname:
        reason = "it has no host name"
    elif parts.query or parts.fragment:
        reason = "it has a query or a fragment; put query parameters under a stream's params"
    else:
        return
    raise where.error(keys, f"invalid URL {url!r}: {reason}; {expected}")


def _check_contact(where: _Where, keys: tuple[Any, ...], contact: str) -> None:
    if contact.strip() and all(32 <= ord(char) < 127 for char in contact):
        return
    raise where.error(
        keys,
        f"invalid contact {schema.short_repr(contact)}: it goes into the User-Agent header; "
        "expected printable ASCII on one line, such as an email address or a URL",
    )


def _rate(where: _Where, keys: tuple[Any, ...], value: float | str) -> float:
    """Return a rate limit as requests per second; the schema has checked its form."""
    rate = float(value.split("/")[0]) if isinstance(value, str) else float(value)
    if rate <= 0:
        raise where.error(
            keys,
            f"invalid rate {value!r}: it must be greater than 0; expected requests per second, "
            "such as 10 or 2.5/s",
        )
    return rate


# --- streams -------------------------------------------------------------------------


def _build_stream(where: _Where, name: str, raw: dict[str, Any], instance: Instance) -> StreamSpec:
    keys = ("streams", name)
    endpoint = _resolve_endpoint(where, keys, raw)
    params: dict[str, Any] = raw.get("params", {})

    specs: list[ParamSpec] = []
    set_by: dict[str, str] = {}  # parameter sent -> the key under params that sets it
    for pname, value in params.items():
        pkeys = keys + ("params", pname)
        spec = _build_param(where, pkeys, pname, value, endpoint)
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

    _check_path_params(where, keys, raw, endpoint, set_by)
    constants = tuple(s for s in specs if isinstance(s, Constant))
    varying = tuple(s for s in specs if not isinstance(s, Constant))
    _check_from_sources(where, keys, varying)
    _check_constant_dates(where, keys, endpoint, constants)
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


def _resolve_endpoint(where: _Where, keys: tuple[Any, ...], raw: dict[str, Any]) -> Endpoint:
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


def _check_raw_path(where: _Where, keys: tuple[Any, ...], template: str) -> None:
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


def _is_raw(endpoint: Endpoint) -> bool:
    return endpoint.name.startswith("path:")


def _sent_names(spec: ParamSpec) -> tuple[str, ...]:
    if isinstance(spec, DateWindows):
        return (spec.start_param, spec.end_param)
    return (spec.name,)


# --- parameters ----------------------------------------------------------------------

_WINDOW_KEYS = ("start", "end", "step", "bind")


def _build_param(
    where: _Where, keys: tuple[Any, ...], name: str, value: Any, endpoint: Endpoint
) -> ParamSpec:
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
        constant = Constant(name, render(value))
        if is_path_param:
            _check_path_value(where, keys, constant.value)
        return constant

    if "each" in value:
        return _build_each(where, keys, name, value["each"], is_path_param)
    if "range" in value:
        return _build_range(where, keys + ("range",), name, value["range"])
    stream, _, field_path = value["from"].partition(".")
    return FromStream(name, stream, field_path)


def _check_param_name(where: _Where, keys: tuple[Any, ...], name: str, endpoint: Endpoint) -> None:
    if name == "page" and endpoint.paginated:
        raise where.error(
            keys, "the tool sets 'page' itself on a paginated endpoint; remove this parameter"
        )
    if _is_raw(endpoint) or name in endpoint.accepted_params:
        return
    accepted = sorted(endpoint.accepted_params)
    close = difflib.get_close_matches(name, accepted, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    valid = ", ".join(accepted) or "none, it takes no parameters"
    raise where.error(
        keys, f"unknown parameter for endpoint '{endpoint.name}'; {hint}valid parameters: {valid}"
    )


def _check_path_value(where: _Where, keys: tuple[Any, ...], value: str) -> None:
    if value and not any(char in value for char in "/?#"):
        return
    raise where.error(
        keys,
        f"invalid path parameter value {value!r}; expected a value that is not empty "
        "and has no '/', '?' or '#'",
    )


def _build_each(
    where: _Where, keys: tuple[Any, ...], name: str, raw_values: list[Any], is_path_param: bool
) -> Each:
    values: list[Scalar] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_values):
        value = _scalar(raw)
        text = render(value)
        item_keys = keys + ("each", index)
        if text in seen:
            raise where.error(
                item_keys,
                f"duplicate value {raw!r} (item {seen[text] + 1} already has it); "
                "list each value once",
            )
        if is_path_param:
            _check_path_value(where, item_keys, text)
        seen[text] = index
        values.append(value)
    return Each(name, tuple(values))


def _build_range(where: _Where, keys: tuple[Any, ...], name: str, bounds: list[int]) -> IntRange:
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
    return IntRange(name, start, stop, step)


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool) or not isinstance(value, int):
        return render(value)
    return value


# --- date windows --------------------------------------------------------------------


def _build_window(
    where: _Where, keys: tuple[Any, ...], name: str, value: dict[str, Any], endpoint: Endpoint
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
    where: _Where, keys: tuple[Any, ...], name: str, value: dict[str, Any], endpoint: Endpoint
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
    if not _is_raw(endpoint):
        for index, bound in enumerate((start_param, end_param)):
            if bound in endpoint.path_params or bound == "dates":
                raise where.error(
                    keys + ("bind", index),
                    f"'{bound}' cannot take a date; expected two query parameters of "
                    f"endpoint '{endpoint.name}'",
                )
            _check_param_name(where, keys + ("bind", index), bound, endpoint)
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
    if _is_raw(endpoint):
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


def _date(where: _Where, keys: tuple[Any, ...], text: str) -> dt.date:
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


def _check_constant_dates(
    where: _Where, keys: tuple[Any, ...], endpoint: Endpoint, constants: tuple[Constant, ...]
) -> None:
    """Check a date range set by two constants against the endpoint's window limit."""
    window = endpoint.window
    if window is None:
        return
    values = {constant.name: constant.value for constant in constants}
    try:
        start = dt.date.fromisoformat(values[window.start_param])
        end = dt.date.fromisoformat(values[window.end_param])
    except (KeyError, ValueError):
        return  # not both set, or not plain dates: the server judges them
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


# --- checks across parameters and streams --------------------------------------------


def _check_path_params(
    where: _Where,
    keys: tuple[Any, ...],
    raw: dict[str, Any],
    endpoint: Endpoint,
    set_by: Mapping[str, str],
) -> None:
    for pname in endpoint.path_params:
        if pname in set_by:
            continue
        # The parameter is absent, so point at the params mapping, or else at the endpoint.
        if "params" in raw:
            anchor = "params"
        elif "endpoint" in raw:
            anchor = "endpoint"
        else:
            anchor = "path"
        raise where.error(
            keys + (anchor,),
            f"missing path parameter '{pname}' of {endpoint.path}; set it under params to a "
            "value, {each: [...]}, {range: [first, last]} or {from: STREAM.FIELD}",
        )


def _check_from_sources(
    where: _Where, keys: tuple[Any, ...], varying: tuple[VaryingSpec, ...]
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
    where: _Where, keys: tuple[Any, ...], varying: tuple[VaryingSpec, ...]
) -> None:
    static = tuple(spec for spec in varying if not isinstance(spec, FromStream))
    if count_static(static, limit=MAX_PARTITIONS) > MAX_PARTITIONS:
        raise where.error(
            keys + ("params",),
            f"the parameters make more than {MAX_PARTITIONS:,} partitions; narrow the ranges, "
            "lists or date windows",
        )


def _check_references(where: _Where, streams: Mapping[str, StreamSpec]) -> None:
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


def _topological_order(where: _Where, streams: Mapping[str, StreamSpec]) -> list[str]:
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


def _check_token_env(where: _Where, streams: Mapping[str, StreamSpec], instance: Instance) -> None:
    if instance.token_env:
        return
    for stream in streams.values():
        if stream.endpoint.auth != "required":
            continue
        fix = (
            "set instance.token_env to the name of the environment variable that contains your "
            "TM API key, such as TM_API_TOKEN"
        )
        if _is_raw(stream.endpoint):
            raise where.error(
                ("streams", stream.name, "auth"),
                f"auth: required needs an API token, but instance.token_env is not set; {fix}",
            )
        raise where.error(
            ("streams", stream.name, "endpoint"),
            f"endpoint '{stream.endpoint.name}' needs an API token, but instance.token_env is "
            f"not set; {fix}",
        )


def _check_output(where: _Where, output: str) -> None:
    keys = ("output",)
    if "\0" in output:
        raise where.error(keys, "invalid folder name: it contains a NUL character")
    path = Path(output)
    for candidate in (path, *path.parents):
        try:
            is_file = candidate.exists() and not candidate.is_dir()
        except OSError:
            return  # not readable here: creating the folder reports the real error
        if not is_file:
            continue
        if candidate == path:
            raise where.error(
                keys, f"'{output}' is an existing file, not a folder; choose a folder path"
            )
        raise where.error(
            keys,
            f"'{candidate}' is an existing file, so '{output}' cannot be a folder below it; "
            "choose another folder path",
        )
