"""The dashboard's reads on PostgreSQL (``server.storage.dashboard.DashboardReads``): the
answers of SQLite's ``server.storage.dashboard_sqlite``, read through this schema's list
indexes, inside the page's one ``REPEATABLE READ`` read-only transaction.

Where SQLite runs a statement per item (its statements cost no round trip), this one
reads every item in one statement (``unnest`` of the items, a ``LATERAL`` index range
each), so a page costs a handful of round trips whatever the fleet. Instants are
canonical text here as in SQLite, so they order, compare and render alike; text that
may hold NUL goes through ``text.encode``/``decode`` as everywhere on this backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.contract.stats import StatsQuery
from server.postgres.runs import get_run, query_runs, stored_run
from server.postgres.stats import read_stats
from server.postgres.text import decode, encode
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
from server.storage.runs import Page
from server.storage.stale import StalePolicy

_FAILED_SQL = ", ".join(f"'{status}'" for status in FAILED)
# A pair's last finished, non-failed run: one backward index step per status on
# idx_runs_agent_job_status_created ('' for none, as SQLite's coalesce).
_LAST_OK_SQL = (
    "greatest("
    + ", ".join(
        "coalesce((SELECT max(r.created_at) FROM agent_runs AS r WHERE r.agent_name ="
        f" f.agent_name AND r.job_type = f.job_type AND r.status = '{status}'), '')"
        for status in RECOVERED
    )
    + ")"
)
_PAIRS = "unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS p(agent, job, at, i)"
_STREAKS_SQL = (
    "SELECT p.i, r.status, count(*), min(r.created_at) FROM "
    + _PAIRS
    + " JOIN agent_runs AS r ON r.agent_name = p.agent AND r.job_type = p.job"
    f" AND r.status IN ({_FAILED_SQL}) AND r.created_at > p.at GROUP BY p.i, r.status"
)
# The newest of the failed runs recorded at the pair's last failure (a batch shares one).
_LATEST_SQL = (
    "SELECT p.i, l.event_id, l.status, l.error_summary FROM "
    + _PAIRS
    + " CROSS JOIN LATERAL (SELECT r.event_id, r.status, r.error_summary FROM agent_runs"
    " AS r WHERE r.agent_name = p.agent AND r.job_type = p.job"
    f" AND r.status IN ({_FAILED_SQL}) AND r.created_at = p.at ORDER BY r.id DESC LIMIT 1) AS l"
)
_COLUMNS = ", ".join(RUN_COLUMNS)
_RELATIVES_SQL = (
    f"SELECT {_COLUMNS} FROM agent_runs"
    " WHERE created_at >= $1 AND created_at <= $2 AND event_id <> $3"
    " AND (run_id = $4 OR parent_run_id = $4 OR run_id = $5::text OR parent_run_id = $5::text)"
    " ORDER BY created_at DESC, id DESC LIMIT $6"
)
# Per (agent, status), in the order of the lists: one range of
# idx_runs_agent_status_created each.
_ACTIVITY_SQL = (
    "SELECT a.agent, s.status, x.n, x.lo, x.hi"
    " FROM unnest($1::text[]) WITH ORDINALITY AS a(agent, i)"
    " CROSS JOIN unnest($2::text[]) WITH ORDINALITY AS s(status, j)"
    " CROSS JOIN LATERAL (SELECT count(*) AS n, min(created_at) AS lo, max(created_at) AS hi"
    "  FROM agent_runs WHERE agent_name = a.agent AND status = s.status"
    "  AND created_at > $3) AS x"
    " WHERE x.n > 0 ORDER BY a.i, s.j"
)


def _last_seen_sql(column: str) -> str:
    # One backward step of the (column, created_at, id) index per value.
    return (
        "SELECT v.value, (SELECT max(created_at) FROM agent_runs"
        f" WHERE {column} = v.value) FROM unnest($1::text[]) AS v(value)"
    )


_LAST_SEEN_SQL = {column: _last_seen_sql(column) for column in LAST_SEEN_COLUMNS}


class PostgresDashboardReads:
    """``DashboardReads`` on one asyncpg connection, inside the caller's transaction."""

    def __init__(self, conn: Any, policy: StalePolicy, now: datetime) -> None:
        self.conn = conn
        self.policy = policy
        self.now = now

    async def stats(self, query: StatsQuery, *, agent_index: bool = False) -> list[dict[str, Any]]:
        # No rollups here: every stats query reads the runs (``stats``), so which index
        # serves an agent's window is the planner's choice.
        del agent_index
        return await read_stats(self.conn, query, self.policy, self.now)

    async def runs(self, query: RunQuery, after: Position | None = None) -> Page:
        return await query_runs(self.conn, query, after, (self.policy, self.now))

    async def failing_now(
        self, since: str, *, job_type: str | None = None, agent_name: str | None = None
    ) -> tuple[int, list[Failing]]:
        terms, params = [f"status IN ({_FAILED_SQL})", "created_at >= $1"], [since]
        for column, value in (("job_type", job_type), ("agent_name", agent_name)):
            if value is not None:
                params.append(encode(value))
                terms.append(f"{column} = ${len(params)}")
        rows = await self.conn.fetch(
            "WITH f AS MATERIALIZED ("
            "  SELECT agent_name, job_type, max(created_at) AS last_failed FROM agent_runs"
            f"  WHERE {' AND '.join(terms)} GROUP BY agent_name, job_type),"
            f" g AS MATERIALIZED (SELECT f.*, {_LAST_OK_SQL} AS last_ok FROM f)"
            " SELECT agent_name, job_type, last_failed, last_ok FROM g"
            " WHERE last_ok < last_failed ORDER BY last_failed DESC, agent_name, job_type",
            *params,
        )
        pairs = [tuple(row) for row in rows[:FAILING_SHOWN]]
        agents = [agent for agent, _, _, _ in pairs]
        jobs = [job for _, job, _, _ in pairs]
        streaks: dict[int, list[tuple[str, int, str]]] = {}
        latest: dict[int, tuple[Any, Any, Any]] = {}
        if pairs:
            last_oks = [last_ok for _, _, _, last_ok in pairs]
            for i, status, count, first in await self.conn.fetch(
                _STREAKS_SQL, agents, jobs, last_oks
            ):
                streaks.setdefault(int(i), []).append((str(status), int(count), str(first)))
            last_faileds = [last_failed for _, _, last_failed, _ in pairs]
            for i, event_id, status, error_summary in await self.conn.fetch(
                _LATEST_SQL, agents, jobs, last_faileds
            ):
                latest[int(i)] = (decode(event_id), status, decode(error_summary))
        shown: list[Failing] = []
        for i, (agent, job, last_failed, last_ok) in enumerate(pairs, start=1):
            item = failing(decode(agent), decode(job), last_failed, last_ok, streaks.get(i, []))
            if i in latest:
                item.event_id, item.status, item.error_summary = latest[i]
            shown.append(item)
        return len(rows), shown

    async def run_detail(self, event_id: str) -> RunDetail | None:
        run = await get_run(self.conn, event_id)
        if run is None:
            return None
        extra = await self.conn.fetchrow(
            "SELECT reaped_at, sidecar_id FROM agent_runs WHERE event_id = $1", encode(event_id)
        )
        reaped_at, sidecar_id = (extra[0], decode(extra[1])) if extra is not None else (None, None)
        created = datetime.fromisoformat(str(run["created_at"]))
        low = (created - RELATED_SPAN).isoformat(timespec="microseconds")
        high = (created + RELATED_SPAN).isoformat(timespec="microseconds")
        rows = await self.conn.fetch(
            _RELATIVES_SQL,
            low,
            high,
            encode(event_id),
            encode(run["run_id"]),
            encode(run.get("parent_run_id")),
            RELATED_READ,
        )
        return run_detail(run, reaped_at, sidecar_id, [stored_run(row) for row in rows])

    async def agent_activity(self, agents: Sequence[str], since: str) -> dict[str, AgentActivity]:
        found: dict[str, AgentActivity] = {}
        if not agents:
            return found
        names = [encode(agent) for agent in agents]
        rows = await self.conn.fetch(_ACTIVITY_SQL, names, list(CANONICAL_STATUSES), since)
        for agent, status, count, first, last in rows:
            name = decode(agent)
            found.setdefault(name, AgentActivity(name)).add(status, int(count), first, last)
        return found

    async def last_seen(self, column: str, values: Sequence[str]) -> dict[str, str]:
        if column not in _LAST_SEEN_SQL:
            raise ValueError(f"last_seen by {column!r}")
        if not values:
            return {}
        rows = await self.conn.fetch(_LAST_SEEN_SQL[column], [encode(v) for v in values])
        return {decode(value): str(last) for value, last in rows if last is not None}
