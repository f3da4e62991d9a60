"""The dashboard's reads on SQLite (``dashboard.DashboardReads``), in SQL that stays
cheap at 1M runs.

A page's reads run on a reader's connection in its thread, inside one read transaction
(``runs.snapshot``). The page composes them as a coroutine (the protocol is async for
PostgreSQL's sake); these methods never suspend, so ``complete`` runs that coroutine to
its end in one step, in the reader's thread, with no event loop.

A page about one agent reads its runs through ``idx_runs_agent_status_created`` with a
created_at bound, so the agents' windows are on created_at (when the server recorded the
run; within ``PROMPT_LAG_S`` of start_time for all but late runs). Where the API's stats
answer a question, the page asks them (``stats.compute_stats``: the rollups serve a
start_time window without an agent).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.contract.stats import StatsQuery
from server.storage.cursor import Position
from server.storage.dashboard import (
    FAILED,
    FAILING_SHOWN,
    LAST_SEEN_COLUMNS,
    RECOVERED,
    RELATED_READ,
    RELATED_SPAN,
    AgentActivity,
    Failing,
    RunDetail,
    failing,
    run_detail,
)
from server.storage.runs import Overdue, Page, get_run, query_runs, row_to_run
from server.storage.stale import StalePolicy, overdue_ids_sql
from server.storage.stats import compute_stats

T = TypeVar("T")

AGENT_INDEX = "idx_runs_agent_status_created"
PAIR_INDEX = "idx_runs_agent_job_status_created"
_LAST_SEEN_INDEX = {"agent_name": AGENT_INDEX, "job_type": "idx_runs_job_status_created"}
_STATUS_JSON = orjson.dumps(list(CANONICAL_STATUSES)).decode()
_COLUMNS = ", ".join(RUN_COLUMNS)
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


def complete(coro: Coroutine[Any, Any, T]) -> T:
    """The value of a coroutine that never suspends (a page's reads on SQLite)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a SQLite dashboard read suspended: only reads of this module may run")


class SqliteDashboardReads:
    """``DashboardReads`` on one SQLite connection, inside the caller's read transaction."""

    def __init__(self, conn: sqlite3.Connection, policy: StalePolicy, now: datetime) -> None:
        self.conn = conn
        self.policy = policy
        self.now = now
        self._overdue: Overdue | None = None

    def _overdue_ids(self) -> Overdue:
        if self._overdue is None:
            self._overdue = overdue_ids_sql(self.policy, self.now)
        return self._overdue

    async def stats(self, query: StatsQuery, *, agent_index: bool = False) -> list[dict[str, Any]]:
        overdue = self._overdue_ids() if query.stale is not None else None
        if agent_index:
            return compute_stats(self.conn, query, overdue=overdue, raw_index=AGENT_INDEX)
        return compute_stats(self.conn, query, overdue=overdue)

    async def runs(self, query: RunQuery, after: Position | None = None) -> Page:
        overdue = self._overdue_ids() if query.stale is not None else None
        return query_runs(self.conn, query, after, overdue)

    async def failing_now(
        self, since: str, *, job_type: str | None = None, agent_name: str | None = None
    ) -> tuple[int, list[Failing]]:
        terms, params = [f"status IN ({_FAILED_SQL})", "created_at >= ?"], [since]
        for column, value in (("job_type", job_type), ("agent_name", agent_name)):
            if value is not None:
                terms.append(f"{column} = ?")
                params.append(value)
        # MATERIALIZED (SQLite 3.35, the server's minimum): a flattened subquery computed
        # each pair's last_ok twice, once for the WHERE and once for the answer.
        rows = self.conn.execute(
            "WITH f AS MATERIALIZED ("
            "  SELECT agent_name, job_type, max(created_at) AS last_failed FROM agent_runs"
            f"  INDEXED BY idx_runs_status_created WHERE {' AND '.join(terms)}"
            "  GROUP BY agent_name, job_type),"
            f" g AS MATERIALIZED (SELECT f.*, {_LAST_OK_SQL} AS last_ok FROM f)"
            " SELECT agent_name, job_type, last_failed, last_ok FROM g"
            " WHERE last_ok < last_failed ORDER BY last_failed DESC, agent_name, job_type",
            params,
        ).fetchall()
        shown: list[Failing] = []
        for agent, job, last_failed, last_ok in rows[:FAILING_SHOWN]:
            streak = self.conn.execute(
                "SELECT status, count(*), min(created_at) FROM agent_runs"
                f" INDEXED BY {PAIR_INDEX} WHERE agent_name = ? AND job_type = ?"
                f" AND status IN ({_FAILED_SQL}) AND created_at > ? GROUP BY status",
                (agent, job, last_ok),
            ).fetchall()
            item = failing(agent, job, last_failed, last_ok, streak)
            # The newest of the failed runs recorded at that instant (a batch shares one).
            latest = self.conn.execute(
                "SELECT event_id, status, error_summary FROM agent_runs"
                f" INDEXED BY {PAIR_INDEX} WHERE agent_name = ? AND job_type = ?"
                f" AND status IN ({_FAILED_SQL}) AND created_at = ? ORDER BY id DESC LIMIT 1",
                (agent, job, last_failed),
            ).fetchone()
            if latest is not None:
                item.event_id, item.status, item.error_summary = latest
            shown.append(item)
        return len(rows), shown

    async def run_detail(self, event_id: str) -> RunDetail | None:
        # An index range on created_at: run_id and parent_run_id have no index of their own.
        run = get_run(self.conn, event_id)
        if run is None:
            return None
        extra = self.conn.execute(
            "SELECT reaped_at, sidecar_id FROM agent_runs WHERE event_id = ?", (event_id,)
        ).fetchone()
        reaped_at, sidecar_id = extra if extra is not None else (None, None)
        created = datetime.fromisoformat(str(run["created_at"]))
        low = (created - RELATED_SPAN).isoformat(timespec="microseconds")
        high = (created + RELATED_SPAN).isoformat(timespec="microseconds")
        run_id, parent = run["run_id"], run.get("parent_run_id")
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM agent_runs INDEXED BY idx_runs_created"
            " WHERE created_at >= ? AND created_at <= ? AND event_id != ?"
            " AND (run_id = ? OR parent_run_id = ? OR run_id = ? OR parent_run_id = ?)"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (low, high, event_id, run_id, run_id, parent, parent, RELATED_READ),
        ).fetchall()
        return run_detail(run, reaped_at, sidecar_id, [row_to_run(row) for row in rows])

    async def agent_activity(self, agents: Sequence[str], since: str) -> dict[str, AgentActivity]:
        # One range of the agent index per (agent, status), read from the index alone:
        # one scalar subquery per pair, three aggregates packed in one text as
        # "count length(first) first last" (length-prefixed: whatever another writer put
        # in created_at). A join grouped by agent and status sorted every entry (65 ms
        # for a 7-day lookback at 1M runs); three subqueries each cost a seek per pair
        # (48 ms); this, about 40.
        found: dict[str, AgentActivity] = {}
        rows = self.conn.execute(
            "SELECT a.value, s.value, (SELECT count(*) || ' ' || length(min(created_at)) || ' '"
            f" || min(created_at) || max(created_at) FROM agent_runs INDEXED BY {AGENT_INDEX}"
            "  WHERE agent_name = a.value AND status = s.value AND created_at > ?)"
            " FROM json_each(?) AS a CROSS JOIN json_each(?) AS s",
            (since, orjson.dumps(list(agents)).decode(), _STATUS_JSON),
        )
        for agent, status, packed in rows:
            if packed is None:  # no run: min() is NULL, and so is the text
                continue
            count, width, both = str(packed).split(" ", 2)
            first, last = both[: int(width)], both[int(width) :]
            found.setdefault(agent, AgentActivity(agent)).add(status, int(count), first, last)
        return found

    async def last_seen(self, column: str, values: Sequence[str]) -> dict[str, str]:
        # One index seek per (value, status), on the list index that leads with the column.
        if column not in LAST_SEEN_COLUMNS:
            raise ValueError(f"last_seen by {column!r}")
        index = _LAST_SEEN_INDEX[column]
        rows = self.conn.execute(
            "SELECT a.value, max(("
            f"  SELECT max(created_at) FROM agent_runs INDEXED BY {index}"
            f"   WHERE {column} = a.value AND status = s.value))"
            " FROM json_each(?) AS a CROSS JOIN json_each(?) AS s GROUP BY a.value",
            (orjson.dumps(list(values)).decode(), _STATUS_JSON),
        )
        return {str(value): str(last) for value, last in rows if last is not None}
