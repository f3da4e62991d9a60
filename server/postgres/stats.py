"""``GET /api/v1/stats`` on PostgreSQL: the answers of ``server.storage.stats``, read from
the runs in one statement (one snapshot) and merged by the same ``StatsParts``.

No rollup tables here yet (SQLite keeps them by triggers): the runs are read, through
the start_time index (``idx_runs_start_created``) when there is a window, so no write
pays anything for stats and no row is shared by the replicas' writes. The price is read
time on wide windows (``bench/pg_stats_bench.py``: 8-14x SQLite's rollups at 200k runs;
an agent's day 1.3-1.7x). A single rollup cell per (day, job type, status) kept by a
trigger halves the ingest of three replicas writing into one busy cell (its row lock is
held to each commit); cells sharded per backend cost nothing measurable
(``bench/pg_rollup_contention.py``), so that is the way on when wide windows must be fast.

Durations are aggregated as text lists and bucketed in Python, as SQLite reads its
runs, so both backends build the same histogram (counting the buckets in SQL with
``width_bucket`` measured 1.3-1.6x slower). Item totals are summed exactly (``numeric``) and
answered as SQLite answers its ``total()``: as floats (exact under 2**53; past 2**63 a
float in the JSON, where SQLite's own integers end).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from server.contract.stats import StatsQuery
from server.postgres.filters import filter_clauses
from server.postgres.text import decode
from server.storage.stale import StalePolicy
from server.storage.stats import StatsParts

_KEY_SQL = {
    "agent_name": "agent_name",
    "job_type": "job_type",
    "status": "status",
    "day": "substr(start_time, 1, 10)",
    "hour": "substr(start_time, 1, 13)",
}
_HAS_DURATION = "status <> 'running' AND duration_ms >= 1"
_ENCODED_KEYS = frozenset(("agent_name", "job_type"))


def stats_sql(query: StatsQuery, policy: StalePolicy, now: Any) -> tuple[str, list[Any]]:
    """The one SELECT of a stats query: per group key and status, the counts, exact item
    totals, first and last start, longest duration and the durations themselves."""
    clauses, params = filter_clauses(query, (policy, now))
    keys = [_KEY_SQL[name] for name in query.group_by]
    columns = ", ".join(
        (
            *keys,
            "status",
            "count(*)",
            "sum(items_discovered)",
            "sum(items_succeeded)",
            "sum(items_failed)",
            "min(start_time)",
            "max(start_time)",
            f"max(duration_ms) FILTER (WHERE {_HAS_DURATION})",
            f"string_agg(duration_ms::text, ',') FILTER (WHERE {_HAS_DURATION})",
        )
    )
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    grouped = ", ".join((*keys, "status"))
    return f"SELECT {columns} FROM agent_runs{where} GROUP BY {grouped}", params


def _total(value: Any) -> float:
    """An exact numeric sum as SQLite's ``total()`` gives it: a float (0.0 for none)."""
    return float(value) if isinstance(value, int | Decimal) else 0.0


async def read_stats(
    conn: Any, query: StatsQuery, policy: StalePolicy, now: Any
) -> list[dict[str, Any]]:
    """The answer's groups (``TooManyGroups`` past ``MAX_GROUPS``)."""
    parts = StatsParts(list(query.group_by))
    width = len(query.group_by)
    encoded = [name in _ENCODED_KEYS for name in query.group_by]
    sql, params = stats_sql(query, policy, now)
    rows = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, *params, prefetch=1000):
            values = tuple(row)
            key = tuple(
                decode(value) if enc else value
                for value, enc in zip(values[:width], encoded, strict=True)
            )
            status, runs, disc, succ, fail, *rest = values[width:]
            rows.append((*key, status, runs, _total(disc), _total(succ), _total(fail), *rest))
            if len(rows) >= 1000:
                parts.add_raw(rows)
                rows = []
    parts.add_raw(rows)
    return parts.answer()
