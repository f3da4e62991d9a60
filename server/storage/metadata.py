"""Distinct agent names and job types kept in memory by the writer, so /api/v1/metadata
never queries.

Counted once at start-up (agent names from the run counters' start-up pass, job
types by one pass over their index), then kept exact the way ``counters`` keeps
the run counts: TEMP triggers on the writer's connection record every inserted,
renamed or deleted row's values into a TEMP table inside the group's transaction;
a rolled-back savepoint or a failed group takes its rows with it. The writer reads the group's net changes just before COMMIT and applies
them once COMMIT has succeeded, so a value is listed exactly while at least one
stored run carries it, from the moment the write that added it is answered.

Values are kept sorted as SQLite's ``ORDER BY`` (BINARY collation) sorts them:
Python's ``str`` order is code-point order, which is UTF-8 byte order.
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Column = Literal["agent_name", "job_type"]
COLUMNS: tuple[Column, ...] = ("agent_name", "job_type")
_TABLE = "distinct_value_deltas"
_DELTAS = f"temp.{_TABLE}"

_TRIGGERS = (
    "PRAGMA temp_store = MEMORY",
    f"CREATE TEMP TABLE IF NOT EXISTS {_TABLE} "
    "(col TEXT NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL)",
    "CREATE TEMP TRIGGER IF NOT EXISTS distinct_values_insert "
    "AFTER INSERT ON main.agent_runs BEGIN "
    f"INSERT INTO {_TABLE} VALUES "
    "('agent_name', NEW.agent_name, 1), ('job_type', NEW.job_type, 1); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS distinct_values_delete "
    "AFTER DELETE ON main.agent_runs BEGIN "
    f"INSERT INTO {_TABLE} VALUES "
    "('agent_name', OLD.agent_name, -1), ('job_type', OLD.job_type, -1); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS distinct_values_update "
    "AFTER UPDATE OF agent_name, job_type ON main.agent_runs "
    "WHEN OLD.agent_name IS NOT NEW.agent_name OR OLD.job_type IS NOT NEW.job_type BEGIN "
    f"INSERT INTO {_TABLE} VALUES "
    "('agent_name', OLD.agent_name, -1), ('job_type', OLD.job_type, -1), "
    "('agent_name', NEW.agent_name, 1), ('job_type', NEW.job_type, 1); END",
)

#: (column, value, change in the number of runs carrying it)
Delta = tuple[str, str, int]


@dataclass(frozen=True)
class MetadataSnapshot:
    """The distinct values at one moment, sorted."""

    agent_names: tuple[str, ...]
    job_types: tuple[str, ...]


class _Values:
    """Runs per value and the values with at least one run, sorted."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sorted: list[str] = []

    def reset(self, counts: dict[str, int]) -> None:
        """Start from these counts (one sort, not an insertion per value)."""
        self.counts = counts
        self.sorted = sorted(counts)

    def add(self, value: str, n: int) -> bool:
        """Apply a change in count; True if the set of values changed."""
        before = self.counts.get(value, 0)
        after = before + n
        if after > 0:
            self.counts[value] = after
        else:
            self.counts.pop(value, None)
        if before <= 0 < after:
            bisect.insort(self.sorted, value)
            return True
        if after <= 0 < before:
            del self.sorted[bisect.bisect_left(self.sorted, value)]
            return True
        return False


class DistinctValues:
    """Thread-safe: the writer thread applies changes, handlers take snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, _Values] = {column: _Values() for column in COLUMNS}
        self._snapshot: MetadataSnapshot | None = MetadataSnapshot((), ())

    # ---- writer side ----------------------------------------------------------------

    def install(self, conn: sqlite3.Connection) -> None:
        """Create the TEMP delta table and triggers on the writer's connection."""
        for statement in _TRIGGERS:
            conn.execute(statement)

    def load(
        self, conn: sqlite3.Connection, known: Mapping[Column, Mapping[str, int]] | None = None
    ) -> None:
        """Count the runs per value (start-up: one pass over each column's index); a column
        whose counts are ``known`` already (the run counters have agent_name's) is not read."""
        known = known or {}
        for column in COLUMNS:
            if column in known:
                counts = list(known[column].items())
            else:
                counts = conn.execute(
                    f"SELECT {column}, COUNT(*) FROM agent_runs GROUP BY {column}"
                ).fetchall()
            self._values[column].reset({str(value): int(n) for value, n in counts if n > 0})
        with self._lock:
            self._snapshot = None

    def before_commit(self, conn: sqlite3.Connection) -> Callable[[], None]:
        """Inside the group transaction: take the group's net changes; apply once committed."""
        deltas: list[Delta] = conn.execute(
            f"SELECT col, value, SUM(n) FROM {_DELTAS} GROUP BY col, value HAVING SUM(n) != 0"
        ).fetchall()
        conn.execute(f"DELETE FROM {_DELTAS}")
        if not deltas:
            return _nothing
        return lambda: self.apply(deltas)

    def apply(self, deltas: Iterable[Delta]) -> None:
        with self._lock:
            changed = False
            for column, value, n in deltas:
                changed |= self._values[column].add(value, n)
            if changed:
                self._snapshot = None  # rebuilt by the next reader, not by the writer

    # ---- readers --------------------------------------------------------------------

    def snapshot(self) -> MetadataSnapshot:
        """The current values; a copy only after a change of the set, never a query."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = MetadataSnapshot(
                    tuple(self._values["agent_name"].sorted),
                    tuple(self._values["job_type"].sorted),
                )
            return self._snapshot


def _nothing() -> None:
    return None
