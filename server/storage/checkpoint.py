"""WAL checkpoints on a thread of their own, so no commit ever waits for one.

SQLite's automatic checkpoint runs inside the COMMIT that pushes the WAL past
1,000 pages: that commit copies the WAL into the database file and fsyncs it
(synchronous=FULL) before its requests are answered, a pause of tens to
hundreds of milliseconds under load. Here the writer's connection never
checkpoints (``wal_autocheckpoint = 0``); a ``Checkpointer`` thread with its
own connection, on the same ``synchronous`` setting (so the database file is
fsynced before any WAL frame can be overwritten), copies the WAL in PASSIVE
mode: it never takes the write lock, so commits go on while it copies. It
copies once per ``interval_s`` (a second) while commits go on, and what is left
once writes pause. It never opens the WAL or its shared-memory index: closing any
descriptor of a database file releases every POSIX lock this process holds on it
(SQLite's connections' included), and another process opening the database would then
re-initialise the index under our feet (SIGBUS, or worse). It learns their state only
from SQLite's answers.

It does hold one read-only descriptor of the main database file, to flush what each pass
copied (``server.sqlite.db_flush``): SQLite fsyncs that file only after a pass that copied
every frame, so under continuous writes every page copied since the last complete pass
stayed dirty until the writer's catch-up (below), the one pass that is always complete:
at 1M rows ~50 MB flushed on the writer's thread, 100-120 ms with a group of requests
waiting on it. The descriptor is opened at ``start`` and closed by ``close_file`` only
once the writer and every other connection of this process to the database have closed;
when that cannot be known, it is left to the process's exit. A flush that fails stops
checkpoints for good, as a failed fsync stops the writer (``server.sqlite.wal_sync``).
The frames stay in the WAL, which grows until a restart replays it.

A PASSIVE checkpoint alone does not bound the WAL: SQLite starts the WAL over
from its beginning only when a write transaction begins with every frame
already copied, and under continuous writes the copy always trails the
writer by the frames of its last commits. So once the WAL holds
``restart_frames``, the thread copies again until it trails by at most
``catch_up_frames``, then asks the writer to copy that small remainder itself
between two groups, when its queue is empty (or within 10 ms); its
next transaction then starts the WAL over. The WAL therefore holds at most
``restart_frames`` plus what is written in one pass interval and one chase: under the
heaviest load measured (~25,000 frames a second) 110-130 MB when it starts over, which
``journal_size_limit`` (above that) leaves in place; the file is cut back to that
limit only after a larger burst.

Durability does not depend on any of this: an acknowledged write is fsynced
in the WAL by its COMMIT, and a crash during a checkpoint leaves the WAL
to be replayed at the next open.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from server.sqlite.connect import connect
from server.sqlite.db_flush import DatabaseFlush, FlushFailed

log = structlog.get_logger("server.checkpoint")

#: The WAL size (pages, ~32 MB at 4 KiB) at which it is started over: each restart costs
#: the writer one small copy and fsync (see ``catch_up``), so not too often.
RESTART_FRAMES = 8000
#: The writer copies at most about this many frames itself (then the WAL restarts).
CATCH_UP_FRAMES = 64
#: One pass per this interval while commits go on, and one after this long without
#: commits (then the next write starts the WAL over by itself). Each pass fsyncs the
#: database file and copies every page written since the last one, hot index pages
#: included, so passing far more often costs CPU (measured: passes every 50 ms cost ~25%
#: more server CPU per write than SQLite's own checkpoints every 1,000 frames).
PASS_INTERVAL_S = 1.0
#: The thread looks again this long after each wake-up (commits wake it at every group).
POLL_S = 0.05
#: The writer copies the remainder when its queue is empty (nobody waits for it), or once
#: it has been due this long (under load that never pauses). Short: the remainder is what
#: was committed since the thread's last pass, and the writer copies and fsyncs it while a
#: group waits; when this was half a pass interval, that was ~10,000 frames at 1M rows.
CATCH_UP_WITHIN_S = 0.01
#: Passes in a row chasing the writer before the thread gives up until the next wake-up.
MAX_CHASE_PASSES = 8
#: The WAL file is truncated to this size when it restarts after a burst. Above the largest
#: WAL the once-a-second passes leave at this machine's peak (~25,000 frames/s of create+PATCH
#: lifecycles at 1M runs, c=32: 110-130 MB when it starts over), so a steady load never
#: truncates it: at 64 MiB every restart cut the file and the next second grew it back, and
#: the commit doing the cut took 20 ms (lifecycle p99 32-34 ms against 26-27 ms at 256 MiB,
#: two runs each, alternated). The cost: up to this much disk kept after a burst.
JOURNAL_SIZE_LIMIT_BYTES = 256 * 1024 * 1024


@dataclass
class CheckpointStats:
    passes: int = 0
    frames_copied: int = 0
    busy: int = 0
    writer_catch_ups: int = 0
    failures: int = 0
    #: Frames in the WAL at the last pass (0 right after a restart).
    wal_frames: int = 0
    #: fdatasyncs of what the passes copied, and the longest one (seconds).
    flushes: int = 0
    longest_flush_s: float = 0.0


class Checkpointer:
    """Copies the WAL into the database off the writer thread; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        busy_timeout_ms: int,
        restart_frames: int = RESTART_FRAMES,
        catch_up_frames: int = CATCH_UP_FRAMES,
        interval_s: float = PASS_INTERVAL_S,
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self.restart_frames = restart_frames
        self.catch_up_frames = min(catch_up_frames, max(restart_frames // 8, 1))
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._catch_up = threading.Event()
        self._catch_up_since = 0.0
        self._thread = threading.Thread(target=self._main, name="sqlite-checkpoint", daemon=True)
        self._db_file: DatabaseFlush | None = None
        self._halted = False  # a flush failed: no pass, and no catch-up, ever again
        self._flushed_up_to = 0  # frames copied at the last flush
        self._flushed_wal_frames = 0  # and the WAL's length then (shorter later: restarted)
        self.stats = CheckpointStats()

    def start(self) -> None:
        self._db_file = DatabaseFlush(self._path)
        self._thread.start()

    @property
    def holds_file(self) -> bool:
        """Whether its descriptor of the database file is open (``close_file``)."""
        return self._db_file is not None and self._db_file.is_open

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the pass under way (if any) and close the connection. The database file's
        descriptor stays open: ``close_file`` once every connection to it has closed."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def close_file(self) -> bool:
        """Close the descriptor the flushes use; call it after ``stop`` and only once
        every connection of this process to the database has closed (closing it releases
        their locks). Whether it was closed: not while a pass may still run (``stop``
        timed out); then it is left to the process's exit."""
        if self._thread.is_alive():
            log.warning("db_checkpoint_file_left_open", reason="a pass is still running")
            return False
        if self._db_file is not None:
            self._db_file.close()
        return True

    # ---- the writer's side ------------------------------------------------------------

    def nudge(self) -> None:
        """A group was committed: the WAL has grown."""
        self._wake.set()

    def catch_up_now(self, *, idle: bool) -> bool:
        """Whether the writer should catch up now: it is due, and the writer is idle (no
        group waits behind it) or it has been due for ``CATCH_UP_WITHIN_S`` already."""
        if not self._catch_up.is_set() or self._halted:
            return False
        overdue = time.monotonic() - self._catch_up_since >= CATCH_UP_WITHIN_S
        return idle or overdue

    def catch_up(self, conn: sqlite3.Connection) -> None:
        """On the writer's connection, outside a transaction: copy the few frames left, so
        the next write transaction starts the WAL over."""
        self._catch_up.clear()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("db_checkpoint_catch_up_failed", error=str(exc))
            return
        self.stats.writer_catch_ups += 1
        self._wake.set()

    # ---- the thread -------------------------------------------------------------------

    def _main(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = self._open()
            last_pass = time.monotonic()
            written = False  # commits since the last pass
            while not self._stopping.is_set():
                nudged = self._wake.wait(self.interval_s)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if self._catch_up.is_set():
                    if nudged:
                        continue  # the writer copies the rest, then the WAL starts over
                    # Writes paused: the writer looks only between groups, perhaps not
                    # before long; copy the rest here (its next write starts the WAL over).
                    self._catch_up.clear()
                    written = True
                written = written or nudged
                # Once per interval while commits go on; and once writes paused (the
                # wait above timed out), to copy what is left.
                due = time.monotonic() - last_pass >= self.interval_s
                if written and (due or not nudged):
                    self._chase(conn)
                    last_pass, written = time.monotonic(), False
                self._stopping.wait(POLL_S)
        except FlushFailed as exc:
            self._halted = True
            self._catch_up.clear()
            self.stats.failures += 1
            log.error("db_checkpoints_stopped_after_failed_flush", error=str(exc))
        except Exception as exc:  # never take the server down: SQLite would still work
            self.stats.failures += 1
            log.exception("db_checkpointer_stopped", error=str(exc))
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _request_catch_up(self) -> None:
        self._catch_up_since = time.monotonic()
        self._catch_up.set()

    def _open(self) -> sqlite3.Connection:
        return connect(
            self._path, busy_timeout_ms=self._busy_timeout_ms, synchronous=self._synchronous
        )

    def _pass(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One PASSIVE checkpoint: (frames in the WAL, frames copied so far)."""
        started = time.perf_counter()
        busy, wal_frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        restarted = wal_frames < self._flushed_wal_frames  # copied counts from 0 again
        if copied > 0 and (copied != self._flushed_up_to or restarted):
            # It copied something. SQLite synced it only if no commit landed meanwhile
            # (it compares with the WAL's end as it is now, which the answer does not
            # show): flush (nearly free after a pass SQLite did sync).
            self._flush()
            self._flushed_up_to, self._flushed_wal_frames = copied, wal_frames
        self.stats.passes += 1
        self.stats.wal_frames = max(int(wal_frames), 0)
        if busy:
            self.stats.busy += 1
        log.debug(
            "db_checkpoint",
            wal_frames=wal_frames,
            copied=copied,
            seconds=round(time.perf_counter() - started, 4),
        )
        return max(int(wal_frames), 0), max(int(copied), 0)

    def _flush(self) -> None:
        """fdatasync what the pass copied (see the module docstring); FlushFailed if it
        fails."""
        seconds = None if self._db_file is None else self._db_file.flush()
        if seconds is not None:
            self.stats.flushes += 1
            self.stats.longest_flush_s = max(self.stats.longest_flush_s, seconds)

    def _chase(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL; past ``restart_frames``, copy again while each pass leaves the
        writer's lead smaller (a pass costs an fsync, during which the writer goes on),
        then hand what is left to the writer. At most MAX_CHASE_PASSES passes: the WAL
        stays bounded even if the copy cannot keep up."""
        try:
            wal_frames, copied = self._pass(conn)
            self.stats.frames_copied += copied
            passes, lead = 1, wal_frames
            while wal_frames >= self.restart_frames:
                previous = copied
                wal_frames, copied = self._pass(conn)
                passes += 1
                fresh = copied - previous if copied >= previous else copied
                self.stats.frames_copied += max(fresh, 0)
                if (
                    fresh <= self.catch_up_frames
                    or fresh >= lead  # no longer shrinking: the steady state
                    or passes >= MAX_CHASE_PASSES
                ):
                    self._request_catch_up()
                    return
                lead = fresh
        except sqlite3.Error as exc:
            self.stats.failures += 1
            log.warning("db_checkpoint_failed", error=str(exc))
