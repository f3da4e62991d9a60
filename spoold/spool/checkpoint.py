"""A background WAL checkpointer (the spool file's, and the runs index's for the accept path).

SQLite's own auto-checkpoint (1000 pages, ~4 MiB) runs inside whichever commit
crosses the mark, and lets the WAL hold megabytes that a full disk could no
longer move into the database. This thread checkpoints (PASSIVE: it never
waits on readers or writers) once ``every_bytes`` have been put since the last
time, off the accept path, so a put never pays for copying the drainer's WAL
frames.

A PASSIVE checkpoint alone does not bound the WAL: SQLite starts it over only when a
write transaction begins with every frame copied, and under writes that never pause
the copy trails the last commits. Given ``restart_frames``, a pass that finds the WAL
that long passes again until a pass copies at most ``CHASE_FRAMES`` new frames (at
most ``MAX_CHASE_PASSES`` more), then asks the writer for a restart: between two of
its transactions, the writer copies what is left on its own connection
(``restart_now``; ``restarted`` if every frame was copied, else ``retry_later``), and
its next transaction starts the WAL over, unless another writer or a reader got in
between (then the next pass asks again). Without this the WAL grew for as long as the
writes went on, and the commit that finally restarted it truncated the whole file
(``journal_size_limit``) inside the writer's commit: most likely the 240 ms accept
commit (150 ms of it CPU) seen in ``bench/spoold_accept.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import structlog

from spoold.pauses import BusyClock
from spoold.spool import store

log = structlog.get_logger("spoold.spool")

#: A due restart waits for the writer to be idle at most this long (writes that never
#: pause must not keep the WAL growing).
RESTART_WITHIN_S = 0.5
#: Before a restart is due, passes follow each other until one copies at most this many
#: frames (or ``MAX_CHASE_PASSES`` did): the writer's own copy stays this small.
CHASE_FRAMES = 64
MAX_CHASE_PASSES = 4


class WalCheckpointer:
    """``note_written`` from the writer; the checkpoint runs on this object's thread."""

    def __init__(
        self,
        db_path: Path,
        busy_timeout_ms: int,
        every_bytes: int,
        *,
        name: str = "spool-checkpoint",
        restart_frames: int | None = None,
    ) -> None:
        self._every = every_bytes
        self._restart_frames = restart_frames
        #: monotonic time since which the writer should copy the rest; 0.0: not due.
        self._restart_due_since = 0.0
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
                frames, copied = store.checkpoint(self._conn)
                limit = self._restart_frames
                if limit is not None and frames >= limit and not self._restart_due_since:
                    frames = self._chase(copied)
                    if frames >= limit:  # (not restarted meanwhile by another writer)
                        self._restart_due_since = time.monotonic()
            except sqlite3.Error as exc:  # the puts are committed; this only bounds the WAL
                log.warning("wal_checkpoint_failed", thread=self._name, error=str(exc))
            finally:
                self.busy.stop()

    def _chase(self, backfilled: int) -> int:
        """Pass again while each pass copies more than ``CHASE_FRAMES`` new frames (the
        writes made during the previous pass's fsync), at most ``MAX_CHASE_PASSES``
        times, so that the writer's own copy is small; the frames the WAL then holds."""
        frames = 0
        for _ in range(MAX_CHASE_PASSES):
            before = backfilled
            frames, backfilled = store.checkpoint(self._conn)
            if frames < before:  # the WAL started over meanwhile
                return frames
            if backfilled - before <= CHASE_FRAMES:
                break
        return frames

    def restart_now(self, *, idle: bool) -> bool:
        """Whether the writer should copy the WAL's last frames now: a restart is due and
        the writer is idle, or it has been due for ``RESTART_WITHIN_S``."""
        since = self._restart_due_since
        if not since:
            return False
        return idle or time.monotonic() - since >= RESTART_WITHIN_S

    def restarted(self) -> None:
        """The writer copied every frame: its next transaction starts the WAL over."""
        self._restart_due_since = 0.0

    def retry_later(self) -> None:
        """The writer's copy left frames behind (a reader's snapshot, another checkpoint
        under way): try again once it is overdue, not at every group."""
        self._restart_due_since = time.monotonic()

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        self._due.set()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._conn.close()
