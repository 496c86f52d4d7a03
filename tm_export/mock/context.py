"""Handler context: the keys of the dataset and the caller, and the route description."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from tm_export.mock.auth import Caller
from tm_export.mock.dataset import Dataset

Auth = Literal["none", "optional", "required"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DATASET = web.AppKey("dataset", Dataset)
CALLER = web.RequestKey("caller", Caller)


@dataclass(frozen=True, slots=True)
class Route:
    """A GET route below ``/api/v2`` and the authentication it needs."""

    path: str
    handler: Handler
    auth: Auth = "none"


def dataset_of(request: web.Request) -> Dataset:
    return request.app[DATASET]


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]
