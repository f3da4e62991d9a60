"""One TEMP trigger per kind of row change feeds both the run counts and the distinct values.

The run counters (``counters``) and the distinct agent names and job types
(``metadata``) follow every inserted, re-labelled or deleted run. Each used to keep
its own TEMP table and triggers; two trigger programs per insert cost SQLite about
as much again as the insert's own index work beyond the first (bench/write_cost.py
``--callgrind``). Here one trigger per event records one row, (agent_name, status,
created_at minute, job_type, ±1), into one TEMP table inside the group's transaction:
a savepoint rolled back takes its rows with it, and so does a failed group. Just
before COMMIT the writer reads the group's net changes in one statement and empties
the table; both consumers get their sums once COMMIT has succeeded. Whatever code
path writes (create, batch, upsert, patch, prune, reaper), the answers follow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from server.storage.counters import RunCounters
from server.storage.metadata import DistinctValues

_TABLE = "run_deltas"
_DELTAS = f"temp.{_TABLE}"
_MINUTE_CHARS = 16  # "2026-01-12T10:30" of the canonical created_at, as counters keys it
# The trigger bodies copy columns only; the minute is cut in Python when read.
_NEW = "NEW.agent_name, NEW.status, NEW.created_at, NEW.job_type"
_OLD = "OLD.agent_name, OLD.status, OLD.created_at, OLD.job_type"

_STATEMENTS = (
    "PRAGMA temp_store = MEMORY",
    f"CREATE TEMP TABLE IF NOT EXISTS {_TABLE} "
    "(agent_name TEXT, status TEXT, created_at TEXT, job_type TEXT, n INTEGER NOT NULL)",
    "CREATE TEMP TRIGGER IF NOT EXISTS run_deltas_insert AFTER INSERT ON main.agent_runs "
    f"BEGIN INSERT INTO {_TABLE} VALUES ({_NEW}, 1); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS run_deltas_delete AFTER DELETE ON main.agent_runs "
    f"BEGIN INSERT INTO {_TABLE} VALUES ({_OLD}, -1); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS run_deltas_update "
    "AFTER UPDATE OF agent_name, status, created_at, job_type ON main.agent_runs "
    "WHEN OLD.agent_name IS NOT NEW.agent_name OR OLD.status IS NOT NEW.status "
    "OR OLD.created_at IS NOT NEW.created_at OR OLD.job_type IS NOT NEW.job_type "
    f"BEGIN INSERT INTO {_TABLE} VALUES ({_OLD}, -1); INSERT INTO {_TABLE} VALUES ({_NEW}, 1); END",
)


class RunDeltas:
    """The writer's commit hook for the run counters and the distinct values together."""

    def __init__(self, counters: RunCounters, distinct: DistinctValues) -> None:
        self._counters = counters
        self._distinct = distinct

    def install(self, conn: sqlite3.Connection) -> None:
        """Create the TEMP delta table and triggers on the writer's connection."""
        for statement in _STATEMENTS:
            conn.execute(statement)

    def before_commit(self, conn: sqlite3.Connection) -> Callable[[], None]:
        """Inside the group transaction: take the group's net changes; apply once committed."""
        # The rows as they are: netting them is a dict pass below, cheaper than SQLite's sorter.
        rows = conn.execute(
            f"SELECT agent_name, status, created_at, job_type, n FROM {_DELTAS}"
        ).fetchall()
        if not rows:  # a group that added, removed and re-labelled no run: nothing to empty
            return _nothing
        conn.execute(f"DELETE FROM {_DELTAS}")  # rows netting to zero too: never piled up
        # Net per key of each consumer, so neither sees a value pass through zero or below
        # on its way to the group's result (a rename shows as -1 on one row, +1 on another).
        runs: dict[tuple[str, str, str], int] = {}
        values: dict[tuple[str, str], int] = {}
        for agent, status, created_at, job_type, n in rows:
            key = (str(agent), str(status), str(created_at)[:_MINUTE_CHARS])
            runs[key] = runs.get(key, 0) + int(n)
            for value in (("agent_name", key[0]), ("job_type", str(job_type))):
                values[value] = values.get(value, 0) + int(n)
        run_deltas = [(*key, n) for key, n in runs.items() if n]
        value_deltas = [(*key, n) for key, n in values.items() if n]

        def apply() -> None:
            if run_deltas:
                self._counters.apply(run_deltas)
            if value_deltas:
                self._distinct.apply(value_deltas)

        return apply


def _nothing() -> None:
    return None
