"""Settings and option types that the commands of ``cli.py`` and ``cli_archive.py`` share."""

from __future__ import annotations

import re

import click

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class ShardParam(click.ParamType):  # type: ignore[type-arg]
    """A shard written as K/N, with 1 <= K <= N."""

    name = "shard"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        index, _, count = str(value).partition("/")
        if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
            self.fail(f"{value!r} is not K/N with 1 <= K <= N, e.g. 2/4", param, ctx)
        return int(index), int(count)


class RateParam(click.ParamType):  # type: ignore[type-arg]
    """A request budget as recipes write it: requests per second, with or without ``/s``."""

    name = "rate"

    _FORM = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*s)?\s*$")

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        match = self._FORM.match(str(value))
        if match is None or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a rate greater than 0, such as 10 or 2.5/s", param, ctx)
        return float(match.group(1))
