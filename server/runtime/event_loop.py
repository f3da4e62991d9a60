"""The event loop both daemons run on: uvloop where it is installed, else asyncio's own.

uvloop (libuv, its transports in C) costs less CPU per request than asyncio's
selector loop with its Python transports: measured on the server at 1M runs, side by
side, 0.268 against 0.288 ms per create and 0.291 against 0.306 per lifecycle request
(``bench/server_bench.py --compare-root``). At c=32 on two cores the latency p99 is
mostly queueing for the CPU, so it follows. ``asyncio`` keeps the standard loop (an
operator's way out if uvloop ever misbehaves on some platform); ``uvloop`` refuses to
start without it rather than quietly running slower.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

#: The settings' values: ``auto`` is uvloop when importable, else asyncio.
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


class EventLoopUnavailable(RuntimeError):
    """``uvloop`` was asked for and is not installed."""


@functools.cache
def uvloop_imports() -> bool:
    """Whether uvloop imports here (installed, and built for this platform)."""
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def resolve(choice: EventLoopChoice) -> Literal["uvloop", "asyncio"]:
    """The loop ``choice`` means on this machine."""
    installed = uvloop_imports()
    if choice == "uvloop" and not installed:
        raise EventLoopUnavailable("uvloop was asked for (event loop setting) but is not installed")
    if choice == "asyncio" or not installed:
        return "asyncio"
    return "uvloop"


def available(choice: EventLoopChoice) -> EventLoopChoice:
    """``choice`` if this machine can run it (a settings validator: ValueError if not)."""
    try:
        resolve(choice)
    except EventLoopUnavailable as exc:
        raise ValueError(str(exc)) from exc
    return choice


def new_loop(choice: EventLoopChoice = "auto") -> asyncio.AbstractEventLoop:
    """A new loop of the kind ``choice`` resolves to (for ``web.run_app(loop=...)``: the
    benchmarks' ceilings run on the loop the daemons run on)."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice) -> T:
    """``asyncio.run(main)`` on a loop made by ``new_loop(choice)``."""
    with asyncio.Runner(loop_factory=lambda: new_loop(choice)) as runner:
        return runner.run(main)
