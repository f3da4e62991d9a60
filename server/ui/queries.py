"""The dashboard's reads: what each page shows, in SQL that stays cheap at 1M runs.

Each function takes a read connection; a page runs its functions in one read
transaction (``runs.snapshot``), so its numbers agree. Where the API's stats answer a
question (runs by status, per job type), the page asks them (``stats.compute_stats``:
the rollups serve a start_time window without an agent). A page about one agent reads
its runs through ``idx_runs_agent_status_created`` with a created_at bound, so the
agents' windows are on created_at (when the server recorded the run; within
``PROMPT_LAG_S`` of start_time for all but late runs). The fleet's agents: see
``agent_stats``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.contract.stats import StatsQuery
from server.storage.runs import Overdue, Page, get_run, query_runs, row_to_run
from server.storage.stats import compute_stats

#: Statuses that count as a failed run on the dashboard.
FAILED = ("failure", "timeout")
#: Finished, not failed: a run of these ends a failing streak.
RECOVERED = ("success", "partial", "cancelled")
AGENT_INDEX = "idx_runs_agent_status_created"
PAIR_INDEX = "idx_runs_agent_job_status_created"
#: Rows a page lists at most in each of its small tables.
SHORT_LIST = 10
FAILING_SHOWN = 50
#: Related runs (same run_id, parent, children) are looked for among the runs created
#: this long before or after the run: run_id and parent_run_id have no index.
RELATED_SPAN = timedelta(hours=24)
RELATED_SHOWN = 50

STATUS_JSON = orjson.dumps(list(CANONICAL_STATUSES)).decode()
_COLUMNS = ", ".join(RUN_COLUMNS)


def _parse(instant: str) -> datetime:
    return datetime.fromisoformat(instant)


# ---- stats ---------------------------------------------------------------------------


def stats_groups(
    conn: sqlite3.Connection,
    query: StatsQuery,
    *,
    overdue: Overdue | None = None,
    raw_index: str | None = None,
) -> list[dict[str, Any]]:
    """The API's stats groups (rollups where they serve the query)."""
    if raw_index is None:
        return compute_stats(conn, query, overdue=overdue)
    return compute_stats(conn, query, overdue=overdue, raw_index=raw_index)


def by_status(groups: list[dict[str, Any]]) -> dict[str, int]:
    """Runs per status, every status listed, summed over the groups."""
    counts = dict.fromkeys(CANONICAL_STATUSES, 0)
    for group in groups:
        for status, runs in group["by_status"].items():
            counts[status] = counts.get(status, 0) + runs
    return counts


def failed_count(group: dict[str, Any]) -> int:
    return sum(int(group["by_status"].get(status, 0)) for status in FAILED)


def job_summaries(
    conn: sqlite3.Connection, start: str, end: str, job_type: str | None = None
) -> list[dict[str, Any]]:
    """Per job type over [start, end] of start_time: runs, statuses, success rate, p50/p95."""
    query = StatsQuery(
        group_by=["job_type"], start_time_from=start, start_time_to=end, job_type=job_type
    )
    return stats_groups(conn, query)


def hourly_counts(
    conn: sqlite3.Connection,
    start: str,
    end: str,
    *,
    job_type: str | None = None,
    agent_name: str | None = None,
    by_job: bool = False,
) -> dict[tuple[str, ...], int]:
    """Runs per hour (and per job type with ``by_job``) keyed by (hour, [job]); an agent's
    by created_at (see the module's docstring), a job's by start_time from the rollups."""
    group_by: list[Any] = ["hour", "job_type"] if by_job else ["hour"]
    if agent_name is not None:
        query = StatsQuery(group_by=group_by, agent_name=agent_name, created_after=start)
        groups = stats_groups(conn, query, raw_index=AGENT_INDEX)
    else:
        query = StatsQuery(
            group_by=group_by, job_type=job_type, start_time_from=start, start_time_to=end
        )
        groups = stats_groups(conn, query)
    return {tuple(group["key"][key] for key in group_by): int(group["runs"]) for group in groups}


def daily_durations(
    conn: sqlite3.Connection,
    since: str,
    end: str,
    *,
    job_type: str | None = None,
    agent_name: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per UTC day of start_time: the stats group (p50/p95 in ``duration_ms``)."""
    if agent_name is not None:
        query = StatsQuery(group_by=["day"], agent_name=agent_name, created_after=since)
        groups = stats_groups(conn, query, raw_index=AGENT_INDEX)
    else:
        query = StatsQuery(
            group_by=["day"], job_type=job_type, start_time_from=since, start_time_to=end
        )
        groups = stats_groups(conn, query)
    return {group["key"]["day"]: group for group in groups}


def stale_summary(
    conn: sqlite3.Connection, overdue: Overdue, job_type: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """How many running runs are overdue now, and the newest of them."""
    groups = stats_groups(conn, StatsQuery(stale="true", job_type=job_type), overdue=overdue)
    total = sum(int(group["runs"]) for group in groups)
    page = query_runs(
        conn, RunQuery(stale="true", job_type=job_type, limit=SHORT_LIST), overdue=overdue
    )
    return total, page.runs


def last_failures(
    conn: sqlite3.Connection, start: str, *, job_type: str | None = None
) -> list[dict[str, Any]]:
    """The newest failed runs (failure or timeout) started since ``start``."""
    found: list[dict[str, Any]] = []
    for status in FAILED:
        query = RunQuery(status=status, job_type=job_type, start_time_from=start, limit=SHORT_LIST)
        found += query_runs(conn, query).runs
    found.sort(key=lambda run: str(run["created_at"]), reverse=True)
    return found[:SHORT_LIST]


# ---- failing now ---------------------------------------------------------------------


@dataclass
class Failing:
    """An agent + job whose latest finished run failed, with its failing streak."""

    agent_name: str
    job_type: str
    last_failed: str
    #: The streak: failed runs since the last run that was not (within what is stored).
    failures: int
    since: str
    last_ok: str | None
    event_id: str = ""
    status: str = ""
    error_summary: str | None = None
    #: The streak per failed status (a list filters on one status: each is a link).
    by_status: dict[str, int] = field(default_factory=dict)


_FAILED_SQL = ", ".join(f"'{status}'" for status in FAILED)
_LAST_OK_SQL = (
    "max("
    + ", ".join(
        f"coalesce((SELECT max(created_at) FROM agent_runs INDEXED BY {PAIR_INDEX}"
        f" WHERE agent_name = f.agent_name AND job_type = f.job_type AND status = '{status}'), '')"
        for status in RECOVERED
    )
    + ")"
)


def failing_now(
    conn: sqlite3.Connection,
    since: str,
    *,
    job_type: str | None = None,
    agent_name: str | None = None,
) -> tuple[int, list[Failing]]:
    """Agent + job pairs with a failed run recorded since ``since`` and no finished,
    non-failed run after it (a run still ``running`` does not clear the alarm), newest
    failure first: how many, and the first ``FAILING_SHOWN`` with their streaks."""
    terms, params = [f"status IN ({_FAILED_SQL})", "created_at >= ?"], [since]
    for column, value in (("job_type", job_type), ("agent_name", agent_name)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    # MATERIALIZED (SQLite 3.35, the server's minimum): a flattened subquery computed
    # each pair's last_ok twice, once for the WHERE and once for the answer.
    rows = conn.execute(
        "WITH f AS MATERIALIZED ("
        "  SELECT agent_name, job_type, max(created_at) AS last_failed FROM agent_runs"
        f"  INDEXED BY idx_runs_status_created WHERE {' AND '.join(terms)}"
        "  GROUP BY agent_name, job_type),"
        f" g AS MATERIALIZED (SELECT f.*, {_LAST_OK_SQL} AS last_ok FROM f)"
        " SELECT agent_name, job_type, last_failed, last_ok FROM g"
        " WHERE last_ok < last_failed ORDER BY last_failed DESC",
        params,
    ).fetchall()
    shown: list[Failing] = []
    for agent, job, last_failed, last_ok in rows[:FAILING_SHOWN]:
        streak = conn.execute(
            f"SELECT status, count(*), min(created_at) FROM agent_runs INDEXED BY {PAIR_INDEX}"
            f" WHERE agent_name = ? AND job_type = ? AND status IN ({_FAILED_SQL})"
            " AND created_at > ? GROUP BY status",
            (agent, job, last_ok),
        ).fetchall()
        by_status = {str(status): int(count) for status, count, _ in streak}
        first = min(str(earliest) for _, _, earliest in streak)
        item = Failing(agent, job, last_failed, sum(by_status.values()), first, last_ok or None)
        item.by_status = {status: by_status[status] for status in FAILED if status in by_status}
        latest = conn.execute(
            f"SELECT event_id, status, error_summary FROM agent_runs INDEXED BY {PAIR_INDEX}"
            f" WHERE agent_name = ? AND job_type = ? AND status IN ({_FAILED_SQL})"
            " AND created_at = ? LIMIT 1",
            (agent, job, last_failed),
        ).fetchone()
        if latest is not None:
            item.event_id, item.status, item.error_summary = latest
        shown.append(item)
    return len(rows), shown


# ---- runs ----------------------------------------------------------------------------


def runs_page(
    conn: sqlite3.Connection, query: RunQuery, after: Any, overdue: Overdue | None
) -> Page:
    return query_runs(conn, query, after, overdue if query.stale is not None else None)


@dataclass
class RunDetail:
    run: dict[str, Any]
    reaped_at: str | None
    sidecar_id: str | None
    same_run_id: list[dict[str, Any]]
    parents: list[dict[str, Any]]
    children: list[dict[str, Any]]
    #: Runs sharing its parent_run_id (none without one).
    siblings: list[dict[str, Any]] = field(default_factory=list)


def run_detail(conn: sqlite3.Connection, event_id: str) -> RunDetail | None:
    """A run, its bookkeeping (reaped_at, sidecar_id) and its relatives among the runs
    created within RELATED_SPAN of it (an index range on created_at; run_id and
    parent_run_id have no index of their own)."""
    run = get_run(conn, event_id)
    if run is None:
        return None
    extra = conn.execute(
        "SELECT reaped_at, sidecar_id FROM agent_runs WHERE event_id = ?", (event_id,)
    ).fetchone()
    reaped_at, sidecar_id = extra if extra is not None else (None, None)
    created = _parse(str(run["created_at"]))
    low = (created - RELATED_SPAN).isoformat(timespec="microseconds")
    high = (created + RELATED_SPAN).isoformat(timespec="microseconds")
    run_id, parent = run["run_id"], run.get("parent_run_id")
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM agent_runs INDEXED BY idx_runs_created"
        " WHERE created_at >= ? AND created_at <= ? AND event_id != ?"
        " AND (run_id = ? OR parent_run_id = ? OR run_id = ? OR parent_run_id = ?)"
        " ORDER BY created_at DESC LIMIT ?",
        (low, high, event_id, run_id, run_id, parent, parent, RELATED_SHOWN * 4),
    ).fetchall()
    same, parents, children, siblings = [], [], [], []
    for row in rows:
        other = row_to_run(row)
        if other["run_id"] == run_id:
            same.append(other)
        if parent is not None and other["run_id"] == parent:
            parents.append(other)
        if other.get("parent_run_id") == run_id:
            children.append(other)
        if parent is not None and other.get("parent_run_id") == parent:
            siblings.append(other)
    return RunDetail(
        run,
        reaped_at,
        sidecar_id,
        same[:RELATED_SHOWN],
        parents[:RELATED_SHOWN],
        children[:RELATED_SHOWN],
        siblings[:RELATED_SHOWN],
    )
