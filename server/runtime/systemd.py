"""The sd_notify protocol, spoken directly: one datagram to ``$NOTIFY_SOCKET``.

``READY=1`` once the socket is bound and storage is open, ``WATCHDOG=1`` from
the event loop (so a wedged loop stops the pings and systemd restarts us),
``STOPPING=1`` on shutdown, ``EXTEND_TIMEOUT_USEC`` while long start-up work runs.
Abstract-namespace sockets (``@name``) included.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping

import structlog

log = structlog.get_logger("systemd")


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification; False when not under systemd or the send failed."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False
    return True


def watchdog_interval_s(
    env: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """How often to ping: half of ``$WATCHDOG_USEC``, if the watchdog is meant for this process."""
    values = env if env is not None else os.environ
    usec = values.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    owner = values.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != (pid if pid is not None else os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog(interval_s: float) -> None:
    """Ping from the event loop until cancelled: a blocked loop means no pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


@contextlib.contextmanager
def extending_start_timeout(
    status: str, *, interval_s: float = 10.0, enabled: bool = True
) -> Iterator[None]:
    """Keep systemd's start timeout (and watchdog) from firing while a block runs.

    A schema migration of a large database can outlast ``TimeoutStartSec``; killed
    there, it rolls back and the next start begins it again, for ever. A thread asks
    for ``3 * interval_s`` more every ``interval_s`` until the block ends.
    """
    if not enabled or not os.environ.get("NOTIFY_SOCKET"):
        yield
        return
    done = threading.Event()
    extend_usec = int(interval_s * 3 * 1_000_000)

    def tick() -> None:
        while True:
            notify(f"EXTEND_TIMEOUT_USEC={extend_usec}\nWATCHDOG=1\nSTATUS={status}")
            if done.wait(interval_s):
                return

    ticker = threading.Thread(target=tick, name="start-timeout", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
