"""Settings, option types and the error exit that ``cli.py`` and ``cli_archive.py`` share."""

from __future__ import annotations

import os
import re
import sys
import time
from typing import NoReturn

import click

from .errors import TmExportError
from .logs import json_line
from .recipe import Recipe
from .schema import MIN_RATE_LIMIT, parse_rate
from .words import named

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def missing_token_note(recipe: Recipe) -> str | None:
    """Return the note that the recipe's token variable is unset while a stream needs it,
    or None. 'run' then stops before its first request (exit 2)."""
    variable = recipe.instance.token_env
    needing = recipe.needs_token()
    if variable and needing and not os.environ.get(variable, "").strip():
        return f"note: {variable} is not set; 'run' needs it for {named('stream', needing)}"
    return None


def fail(error: TmExportError | str, code: int, *, json_logs: bool = False) -> NoReturn:
    """Print ``error`` on stderr and exit with ``code``: a JSON log line with ``json_logs``."""
    if json_logs:
        line = json_line(
            time.time(), "error", "tm_export", str(error), event="error", exit_code=int(code)
        )
        click.echo(line, err=True)
    else:
        click.echo(f"tm-export: error: {error}", err=True)
    sys.exit(code)


class ShardParam(click.ParamType):  # type: ignore[type-arg]
    """A shard written as K/N, with 1 <= K <= N."""

    name = "shard"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"([0-9]+)/([0-9]+)", str(value))
        if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
            self.fail(f"{value!r} is not K/N with 1 <= K <= N, e.g. 2/4", param, ctx)
        return int(match.group(1)), int(match.group(2))


class RateParam(click.ParamType):  # type: ignore[type-arg]
    """A request budget as recipes write it: requests per second, with or without ``/s``."""

    name = "rate"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        rate = parse_rate(str(value))
        if rate is None:
            self.fail(
                f"{value!r} is not a rate of at least {MIN_RATE_LIMIT} requests per second, "
                "such as 10 or 2.5/s",
                param,
                ctx,
            )
        return rate
