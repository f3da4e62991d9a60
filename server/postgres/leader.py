"""One replica does the background work (the stale-run reaper, retention): the one
holding a session-level advisory lock on a connection of its own.

The lock lives as long as that connection: a replica killed, frozen past TCP's
patience or cut off loses it when PostgreSQL ends its session, and the next replica
to ask takes it over (each asks before every pass of its background work). A
replica that loses the connection stops leading at once: it cannot know whether its
session (and lock) is gone, and two reapers would still be safe (``stale``'s row
locks), only wasteful.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("server.postgres")

#: The two-int advisory key space of ``schema.MIGRATION_LOCK``: "te13" and 2.
LEADER_LOCK: tuple[int, int] = (0x74653133, 2)
#: Longest wait for the lock connection's answers before giving up leadership.
ANSWER_TIMEOUT_S = 5.0


def _reraise_cancellation() -> None:
    """asyncpg may turn a cancellation in the middle of connecting into an error of its
    own: a task being cancelled must still end (its owner awaits it)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Leadership:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._held = False
        self._lock = asyncio.Lock()

    async def lead(self) -> bool:
        """Whether this replica leads now: keeps the lock it holds (after checking its
        connection answers), else tries to take it. Never raises: a database that does
        not answer means not leading."""
        async with self._lock:
            try:
                return await asyncio.wait_for(self._lead(), ANSWER_TIMEOUT_S)
            except Exception as exc:
                _reraise_cancellation()
                if self._held:
                    log.warning("leadership_lost", error=type(exc).__name__)
                await self._drop()
                return False

    async def _lead(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            if self._held:
                log.warning("leadership_lost", error="connection closed")
            self._held = False
            self._conn = await self._connect()
        if self._held:
            await self._conn.fetchval("SELECT 1")
            return True
        self._held = bool(
            await self._conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *LEADER_LOCK)
        )
        if self._held:
            log.info("leadership_taken")
        return self._held

    async def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def close(self) -> None:
        """Give the lock up (closing the session releases it)."""
        async with self._lock:
            conn, self._conn, self._held = self._conn, None, False
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
