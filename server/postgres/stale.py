"""The stale-run reaper's SQL on PostgreSQL: SQLite's rule (``server.storage.stale``),
the same allowance, the same sidecar condition, the same marks on a reaped run.

A batch locks its candidates ``FOR UPDATE SKIP LOCKED`` (a run another transaction is
writing is left for the next pass, and PostgreSQL re-checks the rule on the row's
latest version) and marks them in the same transaction, so a run is reaped whole or not
at all, and a terminal status committed first wins. Only the elected replica reaps
(``leader``); the lock makes even two reapers safe.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from server.contract.codec import dumps_text
from server.contract.timestamps import format_instant
from server.storage.stale import StalePolicy, cuts

#: A run's allowance in seconds (0: never stale), from $1 (the default) and the job
#: types' allowances ($2: names, $3: seconds).
_ALLOWANCE = (
    "COALESCE(r.heartbeat_timeout_s,"
    " (SELECT a.s FROM unnest($2::text[], $3::bigint[]) AS a(j, s) WHERE a.j = r.job_type),"
    " $1::bigint)"
)
_DEADLINE = f"(r.last_seen_at::timestamptz + {_ALLOWANCE} * interval '1 second')"
#: Reapable running runs: overdue, and not waiting for their sidecar's delivery ($4 now,
#: $5 the presence cut, $6 the lost cut: canonical text).
_REAPABLE = (
    "SELECT r.id, r.start_time, r.last_seen_at, r.context_json"
    " FROM agent_runs AS r LEFT JOIN sidecars AS s ON s.sidecar_id = r.sidecar_id"
    f" WHERE r.status = 'running' AND {_ALLOWANCE} > 0 AND {_DEADLINE} < $4::timestamptz"
    " AND (r.sidecar_id IS NULL OR s.sidecar_id IS NULL OR s.last_contact_at < $6"
    f" OR (s.last_contact_at >= $5 AND s.last_contact_at::timestamptz > {_DEADLINE}"
    f" AND (s.queued_since IS NULL OR s.queued_since::timestamptz > {_DEADLINE})))"
    " ORDER BY r.last_seen_at LIMIT $7"
)
_MARK = (
    "UPDATE agent_runs SET status = 'timeout', end_time = last_seen_at, duration_ms = $2,"
    " error_summary = $3, context_json = $4, reaped_at = $5, updated_at = $5"
    " WHERE id = $1 AND status = 'running'"
)


def overdue_clause(policy: StalePolicy, now: datetime, first: int) -> tuple[str, list[Any]]:
    """A WHERE clause of the running runs past their allowance (``GET /api/v1/runs
    ?stale=true``: reaped or not yet, held back for their sidecar included), its
    parameters numbered from ``$first``."""
    allowance = (
        "COALESCE(heartbeat_timeout_s, (SELECT a.s FROM"
        f" unnest(${first + 1}::text[], ${first + 2}::bigint[]) AS a(j, s)"
        f" WHERE a.j = job_type), ${first}::bigint)"
    )
    sql = (
        f"status = 'running' AND {allowance} > 0"
        f" AND last_seen_at::timestamptz + {allowance} * interval '1 second'"
        f" < ${first + 3}::timestamptz"
    )
    jobs = [job for job, _ in policy.by_job]
    seconds = [s for _, s in policy.by_job]
    return sql, [policy.default_s, jobs, seconds, now]


def _params(policy: StalePolicy, now: datetime, limit: int) -> list[Any]:
    at = cuts(policy, now)
    jobs = [job for job, _ in policy.by_job]
    seconds = [s for _, s in policy.by_job]
    return [policy.default_s, jobs, seconds, now, at.presence, at.lost, limit]


async def any_reapable(conn: Any, policy: StalePolicy, now: datetime) -> bool:
    """Whether a pass would reap anything (one read, over the running runs' index)."""
    return await conn.fetchrow(_REAPABLE, *_params(policy, now, 1)) is not None


async def reap_batch(conn: Any, policy: StalePolicy, now: datetime, limit: int) -> int:
    """Mark up to ``limit`` reapable runs ``timeout`` in the caller's transaction; the
    number marked. The marks are SQLite's: ``end_time = last_seen_at``, the duration,
    "no update for N s", ``context_json.reaped_at``."""
    rows = await conn.fetch(
        _REAPABLE + " FOR UPDATE OF r SKIP LOCKED", *_params(policy, now, limit)
    )
    stamp = format_instant(now)
    marks = []
    for run_id, start_time, last_seen_at, context_json in rows:
        seen = datetime.fromisoformat(last_seen_at)
        duration = round((seen - datetime.fromisoformat(start_time)).total_seconds() * 1000)
        silent = round((now - seen).total_seconds())
        marks.append(
            (
                run_id,
                max(0, duration),
                f"no update for {silent} s",
                _with_reaped_at(context_json, stamp),
                stamp,
            )
        )
    if marks:
        await conn.executemany(_MARK, marks)
    return len(marks)


def _with_reaped_at(context_json: str | None, stamp: str) -> str | None:
    """``context_json`` with ``reaped_at`` set, as SQLite's ``json_set`` leaves it: a new
    object when null, the key replaced in place or appended, anything else unchanged."""
    if context_json is None:
        return dumps_text({"reaped_at": stamp})
    try:
        value = orjson.loads(context_json)
    except orjson.JSONDecodeError:
        return context_json
    if not isinstance(value, dict):
        return context_json
    value["reaped_at"] = stamp
    return dumps_text(value)
