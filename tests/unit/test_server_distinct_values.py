"""server.storage.metadata.DistinctValues: the writer's distinct values, exact and sorted."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from server.storage.counters import RunCounters
from server.storage.metadata import DistinctValues
from server.storage.run_deltas import RunDeltas
from server.storage.schema import migrate


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection)
    yield connection
    connection.close()


def insert(conn: sqlite3.Connection, event_id: str, agent: str, job: str) -> None:
    conn.execute(
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time, created_at)"
        " VALUES (?, ?, ?, ?, '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z')",
        (event_id, event_id, agent, job),
    )


def install(conn: sqlite3.Connection, values: DistinctValues) -> RunDeltas:
    """The writer's TEMP triggers, feeding ``values`` (and run counters nobody reads here)."""
    deltas = RunDeltas(RunCounters(), values)
    deltas.install(conn)
    return deltas


def commit(conn: sqlite3.Connection, deltas: RunDeltas) -> None:
    """What the writer does: take the group's changes before COMMIT, apply them after."""
    apply = deltas.before_commit(conn)
    conn.execute("COMMIT")
    apply()


def sqlite_order(conn: sqlite3.Connection, column: str) -> tuple[str, ...]:
    sql = f"SELECT DISTINCT {column} FROM agent_runs ORDER BY 1"
    return tuple(row[0] for row in conn.execute(sql))


def test_load_sorts_as_sqlite_orders(conn: sqlite3.Connection) -> None:
    """Start-up load: values in SQLite's ORDER BY order, including non-ASCII and case."""
    names = ["b", "B", "ä", "a", "Z", "😀", "日本", "a b", "", "ÿ", "\u00e9", "e\u0301"]
    conn.execute("BEGIN")
    for i, name in enumerate(names):
        insert(conn, f"e{i}", name, f"job-{name}")
    conn.execute("COMMIT")
    values = DistinctValues()
    values.load(conn)
    snapshot = values.snapshot()
    assert snapshot.agent_names == sqlite_order(conn, "agent_name")
    assert snapshot.job_types == sqlite_order(conn, "job_type")


def test_changes_follow_inserts_renames_deletes(conn: sqlite3.Connection) -> None:
    """A value is listed while a run carries it: added on insert, gone with its last run."""
    values = DistinctValues()
    deltas = install(conn, values)
    values.load(conn)
    conn.execute("BEGIN")
    insert(conn, "e1", "a", "j")
    insert(conn, "e2", "a", "j")
    snapshot_before_commit = values.snapshot()
    commit(conn, deltas)
    assert snapshot_before_commit.agent_names == ()  # nothing visible before COMMIT
    assert values.snapshot().agent_names == ("a",)
    conn.execute("BEGIN")
    conn.execute("UPDATE agent_runs SET agent_name = 'b', job_type = 'k' WHERE event_id = 'e1'")
    commit(conn, deltas)
    assert (values.snapshot().agent_names, values.snapshot().job_types) == (("a", "b"), ("j", "k"))
    conn.execute("BEGIN")
    conn.execute("UPDATE agent_runs SET agent_name = 'b' WHERE event_id = 'e2'")
    conn.execute("DELETE FROM agent_runs WHERE event_id = 'e1'")
    commit(conn, deltas)
    assert (values.snapshot().agent_names, values.snapshot().job_types) == (("b",), ("j",))


def test_rolled_back_savepoint_and_group_leave_no_trace(conn: sqlite3.Connection) -> None:
    """Writes undone by ROLLBACK TO, or a whole ROLLBACK, never reach the values."""
    values = DistinctValues()
    deltas = install(conn, values)
    conn.execute("BEGIN")
    insert(conn, "e1", "kept", "j")
    conn.execute("SAVEPOINT op")
    insert(conn, "e2", "ghost", "ghost-job")
    conn.execute("UPDATE agent_runs SET agent_name = 'ghost2'")
    conn.execute("ROLLBACK TO op")
    conn.execute("RELEASE op")
    commit(conn, deltas)
    conn.execute("BEGIN")
    insert(conn, "e3", "ghost3", "j3")
    deltas.before_commit(conn)
    conn.execute("ROLLBACK")
    assert (values.snapshot().agent_names, values.snapshot().job_types) == (("kept",), ("j",))
    assert conn.execute("SELECT COUNT(*) FROM temp.run_deltas").fetchone()[0] == 0


def test_snapshot_is_reused_until_the_set_changes(conn: sqlite3.Connection) -> None:
    """Writes that add no value keep the same snapshot object (no copy per read)."""
    values = DistinctValues()
    deltas = install(conn, values)
    conn.execute("BEGIN")
    insert(conn, "e1", "a", "j")
    commit(conn, deltas)
    first = values.snapshot()
    conn.execute("BEGIN")
    insert(conn, "e2", "a", "j")
    commit(conn, deltas)
    assert values.snapshot() is first


def test_load_takes_known_counts_for_a_column(conn: sqlite3.Connection) -> None:
    """Counts already known (the run counters' agents) are used as they are, not re-read."""
    conn.execute("BEGIN")
    insert(conn, "e1", "stored-agent", "stored-job")
    conn.execute("COMMIT")
    values = DistinctValues()
    values.load(conn, known={"agent_name": {"b": 2, "a": 1}})
    snapshot = values.snapshot()
    assert (snapshot.agent_names, snapshot.job_types) == (("a", "b"), ("stored-job",))
