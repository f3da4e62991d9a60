"""Every documented filter and the list ordering are served by an index (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3

import pytest

from server.contract.models import RunQuery
from server.storage.cursor import Position
from server.storage.runs import distinct_values, query_sql
from server.storage.schema import migrate

T = "2026-01-12T10:30:00Z"


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    """A migrated database with realistic spread and planner statistics (ANALYZE)."""
    path = tmp_path_factory.mktemp("plans") / "plans.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    migrate(connection)
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, status, start_time,"
        " created_at) VALUES (?, 'r', ?, ?, ?, ?, ?)",
        [
            (
                f"e{i}",
                f"agent-{i % 50}",
                f"job-{i % 20}",
                ("running", "success", "failure")[i % 3],
                f"2026-01-{1 + i % 28:02d}T10:{i % 60:02d}:00.000000+00:00",
                f"2026-02-{1 + i % 28:02d}T10:{i % 60:02d}:00.{i:06d}+00:00",
            )
            for i in range(5000)
        ],
    )
    connection.execute("COMMIT")
    connection.execute("ANALYZE")
    return connection


def plan(conn: sqlite3.Connection, sql: str, params: list[object]) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (RunQuery(), "idx_runs_created"),
        (RunQuery(agent_name="a"), "idx_runs_agent_created"),
        (RunQuery(job_type="j"), "idx_runs_job_created"),
        (RunQuery(status="failed"), "idx_runs_status_created"),
        (RunQuery(created_before=T), "idx_runs_created"),
        (RunQuery(created_after=T), "idx_runs_created"),
        (RunQuery(start_time_from=T, start_time_to="2026-01-13T00:00:00Z"), "idx_runs_start_time"),
        # A one-sided start_time bound matches most rows; walking the ordering index and
        # stopping at `limit` beats sorting every match, and the planner knows it.
        (RunQuery(start_time_from=T), "idx_runs_created"),
        (RunQuery(start_time_to=T), "idx_runs_created"),
    ],
)
def test_each_filter_uses_an_index(conn: sqlite3.Connection, query: RunQuery, index: str) -> None:
    """No documented filter scans the table; the named index serves it."""
    sql, params = query_sql(query)
    text = plan(conn, sql, params)
    assert index in text, text
    assert "SCAN agent_runs" not in text.replace(f"SCAN agent_runs USING INDEX {index}", ""), text


def test_filter_with_ordering_needs_no_sort(conn: sqlite3.Connection) -> None:
    """agent_name filter plus created_at DESC ordering come straight off one index."""
    sql, params = query_sql(RunQuery(agent_name="a"))
    assert "TEMP B-TREE" not in plan(conn, sql, params)


def test_distinct_values_use_index_seeks(conn: sqlite3.Connection) -> None:
    """Metadata's distinct values come from index seeks, not a table scan."""
    assert distinct_values(conn, "agent_name") == sorted(f"agent-{i}" for i in range(50))
    assert distinct_values(conn, "job_type") == sorted(f"job-{i}" for i in range(20))
    text = plan(conn, "SELECT MIN(agent_name) FROM agent_runs WHERE agent_name > ?", ["x"])
    assert "idx_runs_agent_created" in text


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (RunQuery(), "idx_runs_created"),
        (RunQuery(agent_name="a"), "idx_runs_agent_created"),
        (RunQuery(job_type="j"), "idx_runs_job_created"),
        (RunQuery(status="failed"), "idx_runs_status_created"),
    ],
)
def test_cursor_pages_seek_the_index(conn: sqlite3.Connection, query: RunQuery, index: str) -> None:
    """A keyset page (after a cursor) is an index range search, never a scan or a sort."""
    after = Position("2026-02-14T10:30:00.000000+00:00", 2500)
    sql, params = query_sql(query, after)
    text = plan(conn, sql, params)
    assert f"SEARCH agent_runs USING INDEX {index}" in text, text
    assert "TEMP B-TREE" not in text, text
