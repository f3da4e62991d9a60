"""The /health probe: its own read-only connection on its own thread.

Queries cannot starve it: however many slow list queries fill the reader
pool, the probe's read goes straight to SQLite. Concurrent probes share one
read in flight (single flight), so a flood of /health calls costs the
database one read at a time and cannot be turned into load.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from server.storage.connection import classify, open_reader


class HealthProbe:
    def __init__(self, path: Path, *, busy_timeout_ms: int) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-health")
        self._in_flight: asyncio.Future[None] | None = None

    async def ping(self) -> None:
        """Really read the database (its schema version); raise StorageUnavailable if not."""
        if self._in_flight is None or self._in_flight.done():
            loop = asyncio.get_running_loop()
            self._in_flight = loop.run_in_executor(self._thread, self._read)
            # A caller that timed out no longer looks: mark the outcome as seen anyway.
            self._in_flight.add_done_callback(_seen)
        await asyncio.shield(self._in_flight)

    def _read(self) -> None:
        try:
            if self._conn is None:
                self._conn = open_reader(self._path, busy_timeout_ms=self._busy_timeout_ms)
            self._conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            self._drop()  # the next probe starts from a fresh connection
            raise classify(exc) from exc

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        self._drop()


def _seen(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
