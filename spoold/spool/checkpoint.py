"""A background WAL checkpointer (the spool file's, and the runs index's for the accept path).

SQLite's own auto-checkpoint (1000 pages, ~4 MiB) runs inside whichever commit
crosses the mark, and lets the WAL hold megabytes that a full disk could no
longer move into the database. This thread checkpoints (PASSIVE: it never
waits on readers or writers) once ``every_bytes`` have been put since the last
time, off the accept path, so a put never pays for copying the drainer's WAL
frames.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import structlog

from spoold.pauses import BusyClock
from spoold.spool import store

log = structlog.get_logger("spoold.spool")


class WalCheckpointer:
    """``note_written`` from the writer; the checkpoint runs on this object's thread."""

    def __init__(
        self,
        db_path: Path,
        busy_timeout_ms: int,
        every_bytes: int,
        *,
        name: str = "spool-checkpoint",
    ) -> None:
        self._every = every_bytes
        self._written = 0
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._closed = False
        self._conn = store.connect_side(db_path, busy_timeout_ms)
        self._name = name
        #: How long checkpoints have run (their fsyncs compete with the writer's).
        self.busy = BusyClock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def connection(self) -> sqlite3.Connection:
        """Its connection to the spool file (to read its settings back)."""
        return self._conn

    def note_written(self, nbytes: int) -> None:
        with self._lock:
            self._written += nbytes
            due = self._written >= self._every
            if due:
                self._written = 0
        if due:
            self._due.set()

    def _loop(self) -> None:
        while True:
            self._due.wait()
            self._due.clear()
            if self._closed:
                return
            self.busy.start()
            try:
                store.checkpoint(self._conn)
            except sqlite3.Error as exc:  # the puts are committed; this only bounds the WAL
                log.warning("wal_checkpoint_failed", thread=self._name, error=str(exc))
            finally:
                self.busy.stop()

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._due.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._conn.close()
