"""How many stored runs the reaper marked ``timeout`` (and no agent has finished since),
kept in memory by the writer so /metrics never counts them.

As ``counters`` does for the run counts: counted once at start-up (on the partial index
``idx_runs_reaped``, so only the reaped runs are read), then kept exact by a TEMP
trigger that records each change of ``reaped_at`` between null and not null (and each
deletion of a reaped run) inside the group's transaction; applied once COMMIT succeeded.
``reaped_since_start`` counts the reaper's marks in this process (a Prometheus counter).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

_TABLE = "reaped_deltas"
_STATEMENTS = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_TABLE} (n INTEGER NOT NULL)",
    "CREATE TEMP TRIGGER IF NOT EXISTS reaped_mark AFTER UPDATE OF reaped_at ON main.agent_runs"
    " WHEN (OLD.reaped_at IS NULL) != (NEW.reaped_at IS NULL) BEGIN"
    f" INSERT INTO {_TABLE} VALUES (CASE WHEN NEW.reaped_at IS NULL THEN -1 ELSE 1 END); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS reaped_delete AFTER DELETE ON main.agent_runs"
    f" WHEN OLD.reaped_at IS NOT NULL BEGIN INSERT INTO {_TABLE} VALUES (-1); END",
)


class ReapedCount:
    """Thread-safe: the writer thread applies deltas, handlers read ``stored``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stored = 0
        self._reaped_since_start = 0

    def install(self, conn: sqlite3.Connection) -> None:
        for statement in _STATEMENTS:
            conn.execute(statement)

    def load(self, conn: sqlite3.Connection) -> None:
        (count,) = conn.execute(
            "SELECT count(*) FROM agent_runs INDEXED BY idx_runs_reaped WHERE reaped_at IS NOT NULL"
        ).fetchone()
        with self._lock:
            self._stored = int(count)

    def before_commit(self, conn: sqlite3.Connection) -> Callable[[], None]:
        marks = conn.execute(
            f"SELECT COALESCE(SUM(n), 0), COALESCE(SUM(n > 0), 0) FROM temp.{_TABLE}"
        ).fetchone()
        net, reaped = int(marks[0]), int(marks[1])
        if not reaped and not net:
            return _nothing
        conn.execute(f"DELETE FROM temp.{_TABLE}")

        def apply() -> None:
            with self._lock:
                self._stored += net
                self._reaped_since_start += reaped

        return apply

    @property
    def stored(self) -> int:
        with self._lock:
            return self._stored

    @property
    def reaped_since_start(self) -> int:
        with self._lock:
            return self._reaped_since_start


def _nothing() -> None:
    return None
