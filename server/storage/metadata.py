"""Distinct agent names and job types kept in memory by the writer, so /api/v1/metadata
never queries.

Counted once at start-up (agent names from the run counters' start-up pass, job
types by one pass over their index), then kept exact with the run counts: the
TEMP triggers of ``run_deltas`` record every inserted, renamed or deleted row inside
the group's transaction (a rolled-back savepoint or a failed group takes its rows
with it) and hand the group's net changes per value to ``apply`` once COMMIT has
succeeded, so a value is listed exactly while at least one stored run carries it,
from the moment the write that added it is answered.

Values are kept sorted as SQLite's ``ORDER BY`` (BINARY collation) sorts them:
Python's ``str`` order is code-point order, which is UTF-8 byte order.
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Column = Literal["agent_name", "job_type"]
COLUMNS: tuple[Column, ...] = ("agent_name", "job_type")
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
