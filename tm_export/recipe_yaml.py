"""Read a recipe file, parse its YAML and locate keys in it by line.

``KeyLocator`` finds the line of a dotted key and formats an error there as
``FILE:LINE: dotted.key: message``. Syntax errors from ruamel.yaml are reworded in plain
words, each with its line and a fix.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from .errors import RecipeError
from .params import MAX_INT64

# --- reading and parsing -------------------------------------------------------------

_RECIPE_SHAPE = "a recipe is a YAML mapping with the keys version, output and streams"


def read_text(path: Path) -> str:
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


def parse_yaml(path: Path, text: str) -> Any:
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
        if isinstance(tree, list):
            found = "a list"
        elif tree is None:
            found = "no value (null)"
        else:
            found = f"the value {schema.short_repr(str(tree))}"
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
    if tab_line is not None:
        return tab_line, (
            "a tab character indents this line; YAML indents with spaces only, "
            "so replace the tab with spaces"
        )
    if "'\\t'" in problem:
        return line, (
            f"a tab character at column {column}; YAML separates a key from its value, and a "
            "value from a comment, with spaces only, so replace the tab with a space"
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


class KeyLocator:
    """A recipe file's path and YAML tree, for finding the line of a key and formatting errors."""

    def __init__(self, path: Path, tree: Any) -> None:
        self.path = path
        self.tree = tree

    def line(self, keys: tuple[Any, ...]) -> int:
        return _line_of(self.tree, keys)

    def error(self, keys: tuple[Any, ...], message: str) -> RecipeError:
        return RecipeError(f"{self.path}:{self.line(keys)}: {_dotted(keys)}: {message}")


# --- plain data ----------------------------------------------------------------------

_STANDARD_TAG = "tag:yaml.org,2002:"


#: The spelling of each YAML key that is not text, by the value YAML gives it.
_NOT_TEXT = {None: "null (written null, Null, NULL or ~)", True: "true", False: "false"}


def _check_key(where: KeyLocator, keys: tuple[Any, ...], key: Any) -> None:
    """Raise for a mapping key that YAML reads as null, true or false, which is no name."""
    if key is None or isinstance(key, bool | ScalarBoolean):
        read_as = _NOT_TEXT[None if key is None else bool(key)]
        raise RecipeError(
            f"{where.path}:{where.line(keys + (key,))}: {_dotted(keys)}: a key here is YAML's "
            f"{read_as}, not a name; put the key in quotes, or choose another name"
        )


def to_plain(where: KeyLocator, node: Any, keys: tuple[Any, ...]) -> Any:
    """Convert the YAML tree to plain JSON types, rejecting tags and types JSON lacks."""
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(tag, str) and not tag.startswith(_STANDARD_TAG):
        raise where.error(keys, f"unsupported YAML tag '{tag}'; remove the tag")

    if isinstance(node, dict):
        for key in node:
            _check_key(where, keys, key)
        return {str(key): to_plain(where, value, keys + (str(key),)) for key, value in node.items()}
    if isinstance(node, list):
        return [to_plain(where, item, keys + (index,)) for index, item in enumerate(node)]
    if isinstance(node, TaggedScalar):  # !!str on a value that would be a timestamp
        return str(node.value)
    if isinstance(node, bool | ScalarBoolean):
        return bool(node)
    if isinstance(node, int):
        if not -MAX_INT64 - 1 <= node <= MAX_INT64:
            raise where.error(
                keys,
                f"the integer {node} is out of range; expected one of 64 bits, from "
                f"{-MAX_INT64 - 1} to {MAX_INT64}",
            )
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
