"""The dashboard's reads on a real SQLite file (``dashboard_sqlite``, driven as the pages
drive them, one coroutine that never suspends): what counts as failing now and since
when, which agents are silent, agents' activity and last seen, a run's relatives."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.contract.models import RunCreate
from server.storage.dashboard_sqlite import SqliteDashboardReads, complete
from server.storage.runs import insert_params, insert_row
from server.storage.schema import migrate
from server.storage.stale import StalePolicy
from server.ui import agent_stats

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "q.sqlite", isolation_level=None)
    migrate(connection)
    yield connection
    connection.close()


counter = iter(range(1_000_000))


class reads:  # read as a function: reads(conn).failing_now(...)
    """The SQLite reads of ``conn`` at NOW, each method called to its answer."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.inner = SqliteDashboardReads(conn, StalePolicy(), NOW)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        return lambda *args, **kwargs: complete(method(*args, **kwargs))


def add(conn: sqlite3.Connection, hours_ago: float, **fields: Any) -> str:
    at = NOW - timedelta(hours=hours_ago)
    event_id = fields.pop("event_id", f"ev-{next(counter)}")
    run = RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": fields.pop("run_id", event_id),
            "agent_name": "a",
            "job_type": "j",
            "status": "success",
            "start_time": stamp(at),
            "created_at": stamp(at),
            **fields,
        }
    )
    insert_row(conn, insert_params(run, stamp(at)))
    return event_id


def test_failing_now_is_the_latest_finished_run_and_its_streak(conn: sqlite3.Connection) -> None:
    """A pair fails from its first failure after its last good run; a later success
    clears it; a run still going does not."""
    for hours in (10, 9):
        add(conn, hours)
    first = add(conn, 8, status="failure", error_summary="e1")
    add(conn, 7, status="timeout")
    last = add(conn, 6, status="failure", error_summary="the newest")
    add(conn, 5, status="running")
    add(conn, 9, agent_name="b", status="failure")
    add(conn, 8, agent_name="b", status="success")  # recovered
    add(conn, 30, agent_name="c", status="failure")  # failed before the window only
    total, failing = reads(conn).failing_now(stamp(NOW - timedelta(hours=24)))
    assert total == 1
    (item,) = failing
    assert (item.agent_name, item.job_type, item.failures) == ("a", "j", 3)
    assert item.since == stamp(NOW - timedelta(hours=8))
    assert item.last_ok == stamp(NOW - timedelta(hours=9))
    assert (item.event_id, item.error_summary) == (last, "the newest")
    assert first != last
    # Filters narrow it to a job or an agent.
    assert reads(conn).failing_now(stamp(NOW - timedelta(days=1)), job_type="x") == (0, [])
    assert reads(conn).failing_now(stamp(NOW - timedelta(days=2)), agent_name="c")[0] == 1


def test_a_pair_that_never_succeeded_fails_since_its_first_failure(
    conn: sqlite3.Connection,
) -> None:
    add(conn, 3, status="failure")
    add(conn, 2, status="failure")
    _, (item,) = reads(conn).failing_now(stamp(NOW - timedelta(days=1)))
    assert item.last_ok is None
    assert item.failures == 2
    assert item.since == stamp(NOW - timedelta(hours=3))


def test_silent_agents_by_their_own_rhythm(conn: sqlite3.Connection) -> None:
    """Silent: last run older than 3 x the mean gap (and 30 min); too few runs: no rhythm."""
    for half_hours in range(40, 10, -1):  # every 30 min until 5.5 h ago
        add(conn, half_hours / 2, agent_name="steady-then-quiet")
    for hours in range(48, 0, -1):  # hourly, on time
        add(conn, hours, agent_name="on-time")
    for hours in (30, 20):  # two runs: no rhythm yet
        add(conn, hours, agent_name="newcomer")
    activity = reads(conn).agent_activity(
        ["steady-then-quiet", "on-time", "newcomer", "nobody"], stamp(NOW - timedelta(days=7))
    )
    assert activity["on-time"].runs == 48
    assert "nobody" not in activity
    silent = agent_stats.silent_agents(activity, NOW)
    assert [s.name for s in silent] == ["steady-then-quiet"]
    assert silent[0].usual_gap == timedelta(minutes=30)
    assert silent[0].silent_for == timedelta(hours=5, minutes=30)


def test_activity_counts_statuses_and_last_seen_spans_all_time(conn: sqlite3.Connection) -> None:
    add(conn, 200, agent_name="old")
    add(conn, 3, agent_name="new", status="failure")
    add(conn, 2, agent_name="new", status="running")
    add(conn, 1, agent_name="new")
    activity = reads(conn).agent_activity(["old", "new"], stamp(NOW - timedelta(days=1)))
    assert "old" not in activity
    new = activity["new"]
    assert new.by_status == {"failure": 1, "running": 1, "success": 1}
    assert new.success_rate == 0.5  # running runs are not finished
    assert new.failed == 1
    seen = reads(conn).last_seen("agent_name", ["old", "new", "nobody"])
    assert seen == {
        "old": stamp(NOW - timedelta(hours=200)),
        "new": stamp(NOW - timedelta(hours=1)),
    }
    assert reads(conn).last_seen("job_type", ["j"]) == {"j": stamp(NOW - timedelta(hours=1))}


def test_run_detail_finds_relatives_near_it(conn: sqlite3.Connection) -> None:
    parent = add(conn, 5, run_id="R")
    retry = add(conn, 4, run_id="R")
    child = add(conn, 4, run_id="C", parent_run_id="R")
    add(conn, 100, run_id="R", event_id="too-far")  # outside the 24 h neighbourhood
    detail = reads(conn).run_detail(parent)
    assert detail is not None
    assert [r["event_id"] for r in detail.same_run_id] == [retry]
    assert [r["event_id"] for r in detail.children] == [child]
    child_detail = reads(conn).run_detail(child)
    assert child_detail is not None
    assert {r["event_id"] for r in child_detail.parents} == {parent, retry}
    assert reads(conn).run_detail("missing") is None


def test_activity_reads_created_at_as_another_writer_left_it(conn: sqlite3.Connection) -> None:
    """Text with spaces (not this server's form) is still each run's own first and last."""
    first = add(conn, 3, agent_name="foreign")
    last = add(conn, 2, agent_name="foreign")
    conn.execute(
        "UPDATE agent_runs SET created_at = '2026-06-01 09:00 x y' WHERE event_id = ?", (first,)
    )
    conn.execute(
        "UPDATE agent_runs SET created_at = '2026-06-01 10:00 z' WHERE event_id = ?", (last,)
    )
    activity = reads(conn).agent_activity(["foreign"], "2026-05-01")["foreign"]
    assert (activity.first, activity.last, activity.runs) == (
        "2026-06-01 09:00 x y",
        "2026-06-01 10:00 z",
        2,
    )
