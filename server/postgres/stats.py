"""``GET /api/v1/stats`` on PostgreSQL: the answers of ``server.storage.stats``, read from
the runs in one statement (one snapshot) and merged by the same ``StatsParts``.

Why no rollup tables here (SQLite keeps them by triggers): on PostgreSQL every replica
writes at once, and a rollup cell per (day, job type, status) is one row that every run
of that day and job updates in the run's own transaction, so replicas would queue on
its row lock (and deadlock across cells written in different orders). The runs are read
instead, through the start_time index (``idx_runs_start_created``) for a window, by a
parallel-capable aggregate; the cost is measured in ``bench/pg_stats_bench.py`` and in
the README. Rollups per replica (summed at read) are the way on if large windows must be
fast; the answers would not change.

Durations are aggregated as text lists and bucketed in Python, as on SQLite, so both
backends build the same histogram. Item totals are summed exactly (``numeric``) and
answered as SQLite answers its ``total()``: as floats (exact under 2**53; past 2**63 a
float in the JSON, where SQLite's own integers end).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from server.contract.stats import StatsQuery
from server.postgres.stale import overdue_clause
from server.postgres.text import decode, encode
from server.storage.rollups import duration_bucket_floors
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
#: The duration histogram's bucket floors (SQLite's), and each as the text key it uses.
FLOORS = duration_bucket_floors()
_FLOOR_TEXTS = tuple(str(floor) for floor in FLOORS)


def stats_sql(
    query: StatsQuery, policy: StalePolicy, now: Any, *, buckets: bool = True
) -> tuple[str, list[Any]]:
    """The one SELECT of a stats query: per group key, status and duration bucket (the
    bucket's index in ``FLOORS``, NULL for a run without a duration), the counts, exact
    item totals, first and last start and longest duration. ``buckets=False``: the
    durations as a text list per key and status instead (as SQLite reads its runs)."""
    clauses: list[str] = []
    params: list[Any] = []
    if query.stale is not None:
        clause, clause_params = overdue_clause(policy, now, 1)
        clauses.append(clause)
        params.extend(clause_params)
    for column, operator, value in (
        ("agent_name", "=", encode(query.agent_name)),
        ("job_type", "=", encode(query.job_type)),
        ("status", "=", query.status),
        ("created_at", "<", query.created_before),
        ("created_at", ">", query.created_after),
        ("start_time", ">=", query.start_time_from),
        ("start_time", "<=", query.start_time_to),
    ):
        if value is not None:
            params.append(value)
            clauses.append(f"{column} {operator} ${len(params)}::text")
    keys = [_KEY_SQL[name] for name in query.group_by]
    if buckets:
        params.append(list(FLOORS))
        durations = f"CASE WHEN {_HAS_DURATION} THEN width_bucket(duration_ms, ${len(params)}::bigint[]) END"
        grouped = ", ".join((*keys, "status", durations))
    else:
        durations = f"string_agg(duration_ms::text, ',') FILTER (WHERE {_HAS_DURATION})"
        grouped = ", ".join((*keys, "status"))
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
            durations,
        )
    )
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return f"SELECT {columns} FROM agent_runs{where} GROUP BY {grouped}", params


def _total(value: Any) -> float:
    """An exact numeric sum as SQLite's ``total()`` gives it: a float (0.0 for none)."""
    return float(value) if isinstance(value, int | Decimal) else 0.0


async def read_stats(
    conn: Any, query: StatsQuery, policy: StalePolicy, now: Any, *, buckets: bool = True
) -> list[dict[str, Any]]:
    """The answer's groups (``TooManyGroups`` past ``MAX_GROUPS``)."""
    parts = StatsParts(list(query.group_by))
    width = len(query.group_by)
    encoded = [name in _ENCODED_KEYS for name in query.group_by]
    sql, params = stats_sql(query, policy, now, buckets=buckets)
    rows = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, *params, prefetch=1000):
            values = tuple(row)
            key = tuple(
                decode(value) if enc else value
                for value, enc in zip(values[:width], encoded, strict=True)
            )
            status, runs, disc, succ, fail, first, last, longest, durations = values[width:]
            totals = (_total(disc), _total(succ), _total(fail))
            if not buckets:
                rows.append((*key, status, runs, *totals, first, last, longest, durations))
                continue
            hist = {} if durations is None else {_FLOOR_TEXTS[durations - 1]: runs}
            parts.group(tuple(str(k) for k in key)).add(
                status, runs, totals, (first, last), longest, hist
            )
    parts.add_raw(rows)
    return parts.answer()
