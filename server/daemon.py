"""Running an aiohttp app as a daemon: bind, tell systemd, wait for a signal, stop cleanly.

Shared by both daemons. Signal handlers only set an event; the shutdown itself
(close the socket, let in-flight requests finish, run the cleanup contexts in
reverse) happens in the main flow, and ends with one summary log line from the
app's own cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl

import structlog
from aiohttp import web

from server.exposure import Exposure, warn_if_exposed
from server.systemd import notify, watchdog, watchdog_interval_s

log = structlog.get_logger("daemon")


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    shutdown_timeout_s: float,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    exposure: Exposure | None = None,
) -> None:
    """Serve app on host:port (over TLS when ssl_context is given) until SIGTERM or SIGINT."""
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout_s
    )
    await runner.setup()  # startup: the cleanup contexts open storage here
    pinger: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        bound = ", ".join(str(address) for address in runner.addresses)
        log.info(f"{name}_listening", addresses=bound, tls=ssl_context is not None)
        if exposure is not None:
            warn_if_exposed(name, runner.addresses, exposure)
        notify(f"READY=1\nSTATUS=serving on {bound}")
        interval = watchdog_interval_s()
        if interval is not None:
            pinger = asyncio.create_task(watchdog(interval), name="sd-watchdog")
        await stop.wait()
        log.info(f"{name}_stopping")
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
) -> None:
    asyncio.run(
        serve(
            app,
            host=host,
            port=port,
            shutdown_timeout_s=shutdown_timeout_s,
            name=name,
            ssl_context=ssl_context,
            exposure=exposure,
        )
    )
