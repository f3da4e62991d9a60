"""Flush what a partial WAL checkpoint copied into a database file (``fdatasync``).

SQLite fsyncs the main database file only after a checkpoint pass that copied every
frame in the WAL. Under writes that never pause a pass rarely does (a commit lands
during the copy), so each partial pass leaves the pages it copied dirty in the page
cache, and the one complete pass that follows (often a writer's own, while requests
wait on it) flushes all of them at once: at a million rows, tens of MB and 100 ms or
more. A checkpoint thread that flushes after each of its passes spreads that write-back
over its own thread, a pass's worth at a time; SQLite's own syncs are unchanged, so
durability never depends on this.

The descriptor is read-only on the main database file, and closing it releases every
POSIX lock this process holds on that file, SQLite's connections' included (SQLite
defers its own closes for that reason; ours it cannot know of). So ``close`` is for the
owner of every connection to the file, once they have all closed; until then the
descriptor stays open.

A failed flush is final, as a failed fsync is in ``wal_sync``: Linux may drop the pages
it could not write and report the error once, so a later flush that succeeds proves
nothing, and a checkpoint that trusted it could let SQLite start the WAL over on top of
pages that never reached the disk. ``FlushFailed`` tells the caller to stop
checkpointing; the frames stay in the WAL, which a restart replays.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import structlog

log = structlog.get_logger("server.sqlite.db_flush")

#: ``close`` waits this long for a flush under way, then leaves the descriptor open.
CLOSE_WAIT_S = 1.0
#: ``os.fdatasync`` where there is one (Linux), else ``os.fsync``.
_fdatasync = getattr(os, "fdatasync", os.fsync)


class FlushFailed(Exception):
    """fdatasync of the database file failed: no further checkpoint may trust the file."""


class DatabaseFlush:
    """One read-only descriptor of a database's main file; ``flush`` from any thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._failed: OSError | None = None
        self._fd: int | None
        try:
            self._fd = os.open(path, os.O_RDONLY)  # not inherited (PEP 446)
        except OSError as exc:  # checkpoints go on; SQLite's syncs flush what they copy
            log.warning("db_flush_unavailable", path=str(path), error=str(exc))
            self._fd = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def flush(self) -> float | None:
        """fdatasync the file; how long it took (None: no descriptor, nothing done).
        ``FlushFailed`` if this or an earlier flush failed."""
        with self._lock:
            if self._failed is not None:
                raise FlushFailed(f"an earlier fdatasync of {self._path} failed ({self._failed})")
            fd = self._fd
            if fd is None:
                return None
            started = time.perf_counter()
            try:
                _fdatasync(fd)
            except OSError as exc:
                self._failed = exc
                raise FlushFailed(f"fdatasync of {self._path}: {exc}") from exc
            return time.perf_counter() - started

    def close(self) -> bool:
        """Close the descriptor: only once every connection of this process to the file
        has closed (see the module docstring). Whether it is closed: not while a flush
        still runs after ``CLOSE_WAIT_S`` (a stuck disk), whose descriptor number must
        not be reused under it; then it is left to the process's exit."""
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            log.warning("db_flush_file_left_open", path=str(self._path), reason="flush running")
            return False
        try:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
        finally:
            self._lock.release()
        return True
