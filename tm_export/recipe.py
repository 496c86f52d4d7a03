"""Load and validate a recipe (YAML, version 1) into frozen dataclasses.

Every error is a ``RecipeError`` (exit code 2), raised before anything is written or
sent. Its message reads ``FILE:LINE: dotted.key: what is wrong; what would be valid``.
LINE is the line of the offending key or value. A YAML syntax error has ``invalid YAML``
in place of the dotted key. The structure is checked against ``schema.RECIPE_SCHEMA``
first, then come the checks that need the endpoint catalog or other streams.

``recipe_yaml`` reads and parses the file and formats the errors, and ``recipe_check``
and ``recipe_params`` run the checks and build the classes defined here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .catalog import DAY_START_UPPER_BOUNDS, Endpoint
from .errors import RecipeError
from .params import Constant, DateWindows, Each, FromStream, IntRange, StaticSpec, VaryingSpec
from .recipe_yaml import KeyLocator, parse_yaml, read_text, to_plain
from .words import named

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
    def sources(self) -> tuple[str, ...]:
        """``STREAM.FIELD`` of each ``from`` parameter, in the recipe's order."""
        return tuple(
            f"{spec.stream}.{spec.field}" for spec in self.varying if isinstance(spec, FromStream)
        )

    @property
    def static(self) -> tuple[StaticSpec, ...]:
        """The varying parameters whose values are known before the run starts."""
        return tuple(spec for spec in self.varying if not isinstance(spec, FromStream))

    @property
    def day_bounds(self) -> dict[str, str]:
        """End parameters of this stream's date windows that the server reads as the start
        of their day, each with the record field it bounds (see ``DAY_START_UPPER_BOUNDS``)."""
        if self.endpoint.name != "projects":
            return {}
        return {
            spec.end_param: DAY_START_UPPER_BOUNDS[spec.end_param]
            for spec in self.varying
            if isinstance(spec, DateWindows) and spec.end_param in DAY_START_UPPER_BOUNDS
        }

    def describe(self) -> dict[str, Any]:
        """Return what this stream exports, as plain data for hashing and the manifest."""
        described = {
            "path": self.endpoint.path,
            "records": self.endpoint.records,
            "key": self.endpoint.key,
            "paginated": self.endpoint.paginated,
            # A changed catalog default (such as the sort order) changes what pages hold.
            "defaults": dict(self.endpoint.defaults),
            "constants": {c.name: c.value for c in self.constants},
            "varying": [_describe_spec(spec) for spec in self.varying],
        }
        if self.day_bounds:
            # Runs before the next-day bound sent other queries, so they cannot be resumed.
            described["day_bounds"] = self.day_bounds
        return described


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
    output: str | None
    """The output folder, or None when the recipe leaves it to ``run --output``."""
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
    return parse_recipe(path, read_text(path))


def parse_recipe(path: Path, text: str) -> Recipe:
    """Parse and validate recipe ``text``, which ``path`` names in messages.

    Raises:
        RecipeError: the recipe is invalid.
    """
    # recipe_check builds the classes above, so importing it at the top would be circular.
    from .recipe_check import build_recipe, check_finite, check_schema

    tree = parse_yaml(path, text)
    where = KeyLocator(path, tree)
    plain = to_plain(where, tree, ())

    check_schema(where, plain)
    check_finite(where, plain, ())
    return build_recipe(where, text, plain)


def resolve_token(recipe: Recipe, environ: Mapping[str, str] = os.environ) -> str | None:
    """Return the API token from the environment, or None when no token is set.

    A recipe whose streams all work without a token runs anonymously when the variable
    is unset.

    Raises:
        RecipeError: a stream needs a token and the variable is unset or empty, or the
            value contains a control character such as a line break, or a character that
            is not ASCII.
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
        if not value.isascii():
            # A TM key is base64 text, and a header with other characters is not sent as
            # the server reads it: every request would fail, not only the token check.
            raise RecipeError(
                f"{prefix}: the environment variable {variable} contains a character that is "
                "not ASCII, which an API key never has; copy the key again from your Tasking "
                "Manager settings"
            )
        return value

    needing = recipe.needs_token()
    if needing and variable:
        raise RecipeError(
            f"{prefix}: the environment variable {variable} is not set or empty, but "
            f"{named('stream', needing)} {'needs' if len(needing) == 1 else 'need'} an API "
            f"token; copy the API key from your Tasking Manager settings, export "
            f"{variable}=<key> and run again"
        )
    return None
