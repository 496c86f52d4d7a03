"""The event loop that runs the engine: uvloop where it is installed, else asyncio's own.

uvloop runs the same asyncio program with less CPU per socket operation and callback,
which matters when the client and not the server sets the pace (a fast or local server).
Set ``TM_EXPORT_EVENT_LOOP=asyncio`` to use asyncio's loop anyway, for example to compare
the two or to rule uvloop out when a problem appears.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def uses_uvloop() -> bool:
    """Tell whether the engine runs on uvloop in this process."""
    if os.environ.get("TM_EXPORT_EVENT_LOOP", "").lower() == "asyncio":
        return False
    return importlib.util.find_spec("uvloop") is not None


def run(function: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
    """Run ``function(*args)`` to completion on a new event loop and return its result."""
    return anyio.run(
        function, *args, backend="asyncio", backend_options={"use_uvloop": uses_uvloop()}
    )
