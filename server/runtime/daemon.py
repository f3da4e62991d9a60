"""Running an aiohttp app as a daemon: bind, tell systemd, wait for a signal, stop cleanly.

Shared by both daemons. Signal handlers only set an event; the shutdown itself
(close the socket, let in-flight requests finish, run the cleanup contexts in
reverse) happens in the main flow, and ends with one summary log line from the
app's own cleanup.

The whole stop has ONE deadline, ``shutdown_timeout_s`` from the signal
(``StopDeadline``): in-flight requests, then every cleanup context, take
their time from what is left of it. A last resort ends the process
``HARD_STOP_GRACE_S`` after the deadline if something still blocks, well
before systemd's ``TimeoutStopSec`` would SIGKILL it (nothing acknowledged is
lost either way: every acknowledged write is already committed to disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import ssl
import threading
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from server.runtime.event_loop import EventLoopChoice
from server.runtime.event_loop import run as run_on_loop
from server.runtime.exposure import Exposure, warn_if_exposed
from server.runtime.systemd import notify, watchdog, watchdog_interval_s

log = structlog.get_logger("daemon")

#: After the stop deadline, how long the last cleanups (joining threads, closing files)
#: may take before the process ends anyway. Units keep TimeoutStopSec >= deadline + this + 2.
HARD_STOP_GRACE_S = 4.0
HARD_STOP_EXIT_CODE = 70  # EX_SOFTWARE: the stop overran its deadline


def freeze_start_up_heap() -> None:
    """Keep the objects of start-up (modules, schemas, state loaded from disk) out of
    every later garbage collection.

    A full (generation 2) collection walks every tracked object; most of a daemon's
    heap is created once at start-up and lives until exit, and walking it paused
    the event loop for tens of milliseconds, every few seconds under load. After
    ``gc.freeze`` those objects sit in the permanent generation: collections walk
    only what was created since (requests in flight), so they stay short. Frozen
    objects are still freed when their last reference goes; only a reference
    cycle among them would never be collected, and start-up state has none worth
    reclaiming. Call once, when start-up is done and before serving.
    """
    gc.collect()
    gc.freeze()


@dataclass
class StopDeadline:
    """One deadline for the whole stop, started once (by the signal, or the first cleanup)."""

    budget_s: float
    at: float | None = None

    def start(self) -> None:
        if self.at is None:
            self.at = time.monotonic() + self.budget_s

    def remaining(self, floor_s: float = 0.0) -> float:
        """Seconds left (the whole budget before the stop began), at least ``floor_s``."""
        left = self.budget_s if self.at is None else self.at - time.monotonic()
        return max(floor_s, left)


STOP_DEADLINE: web.AppKey[StopDeadline] = web.AppKey("stop_deadline", StopDeadline)


def arm_hard_stop(after_s: float, name: str) -> None:
    """End the process if the stop is still running ``after_s`` from now."""

    def overran() -> None:
        log.error(f"{name}_stop_overran", after_s=after_s)
        os._exit(HARD_STOP_EXIT_CODE)

    timer = threading.Timer(after_s, overran)
    timer.daemon = True
    timer.start()


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    exposure: Exposure | None = None,
    hard_stop: bool = False,
) -> None:
    """Serve app on host:port (over TLS when ssl_context is given) until SIGTERM or SIGINT.

    ``hard_stop`` (the process entry point only): once stopping, end the process if it
    is still alive ``HARD_STOP_GRACE_S`` after the deadline, whatever still blocks it
    (including the interpreter's own exit, which joins worker threads).
    """
    if STOP_DEADLINE not in app:
        app[STOP_DEADLINE] = StopDeadline(shutdown_timeout_s)
    deadline = app[STOP_DEADLINE]
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()  # startup: the cleanup contexts open storage here
    freeze_start_up_heap()
    pinger: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        bound = ", ".join(str(address) for address in runner.addresses)
        log.info(
            f"{name}_listening",
            addresses=bound,
            tls=ssl_context is not None,
            event_loop=type(loop).__module__.partition(".")[0],  # uvloop or asyncio
        )
        if exposure is not None:
            warn_if_exposed(name, runner.addresses, exposure)
        notify(f"READY=1\nSTATUS=serving on {bound}")
        interval = watchdog_interval_s()
        if interval is not None:
            pinger = asyncio.create_task(watchdog(interval), name="sd-watchdog")
        await stop.wait()
        deadline.start()
        if hard_stop:  # never cancelled: it must also cover the interpreter's exit
            arm_hard_stop(deadline.budget_s + HARD_STOP_GRACE_S, name)
        log.info(f"{name}_stopping", deadline_s=deadline.budget_s)
        notify("STOPPING=1")
    finally:
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        await runner.cleanup()


def run(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    exposure: Exposure | None = None,
    event_loop: EventLoopChoice = "auto",
) -> None:
    run_on_loop(
        serve(
            app,
            host=host,
            port=port,
            shutdown_timeout_s=shutdown_timeout_s,
            name=name,
            ssl_context=ssl_context,
            exposure=exposure,
            hard_stop=True,
        ),
        event_loop,
    )
