"""The path and query of one page of a partition, built the same way for runs and plans."""

from __future__ import annotations

import datetime as dt
import urllib.parse

from .params import Partition, next_day_bounds, render
from .recipe import StreamSpec


class QueryBuilder:
    """Builder of the path and query of each page of a stream.

    What every request of the stream shares (catalog defaults, constants, path parameter
    names, date-window bounds) is computed once, because a request is built for every page.
    """

    def __init__(self, spec: StreamSpec, *, since: dt.datetime | None = None) -> None:
        """``since`` is the start of an incremental run's window, for the projects search."""
        self._path = spec.endpoint.path
        self._paginated = spec.endpoint.paginated
        self._path_params = spec.endpoint.path_params
        self._fixed = {**spec.endpoint.defaults, **{c.name: c.value for c in spec.constants}}
        self._day_bounds = spec.day_bounds
        self._since_day = since.date().isoformat() if since is not None else None

    def build(self, partition: Partition, page: int) -> tuple[str, dict[str, str]]:
        """Return the path and the query of page ``page`` of ``partition``."""
        values = dict(self._fixed)
        values.update({name: render(value) for name, value in partition.items()})
        next_day_bounds(values, self._day_bounds)
        if self._since_day is not None:
            # The server compares whole days, so the page writer checks the exact time later.
            values.setdefault("lastUpdatedFrom", self._since_day)

        path = self._path
        for name in self._path_params:
            # A value from another stream's records (a username) may contain any character.
            path = path.replace("{" + name + "}", urllib.parse.quote(values.pop(name), safe=""))

        if self._paginated:
            values["page"] = str(page)
        return path, values
