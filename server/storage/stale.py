"""Stale runs: the rule that says a `running` run is overdue, and the SQL that reaps it.

A run's allowance is its own ``heartbeat_timeout_s``, else its job type's
(``TELEMETRY_STALE_AFTER_BY_JOB``), else the default (``TELEMETRY_STALE_AFTER_S``); an
allowance of 0 means never. A run is overdue when ``now - last_seen_at`` exceeds it.

Every query here is a union of index ranges on two partial indexes over running runs
only (migration 6), each run in one of them: runs with an allowance of their own, ordered
by deadline; the others by (job_type, last_seen_at), one range per configured job type
and, for the default, one per job type of the running runs (found one seek each). A
pass with nothing overdue reads the first entry of each range and stops. (Migration 9
dropped a third index, by last_seen_at alone, that served the default: every write to a
running run, a heartbeat included, updated it too; ``bench/write_cost.py`` measures it.)

A run written through a sidecar is reaped only once that sidecar has delivered
everything its agent wrote before the deadline (heard from after the deadline, with
nothing queued older than it), or once the sidecar has been silent long enough to be gone (the contract in
``stale_protocol``): the time a sidecar could not reach the server is not staleness.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from server.contract.fields import HEARTBEAT_TIMEOUT_MAX_S, identifier_problem
from server.contract.timestamps import format_instant
from server.storage.schema import OWN_DEADLINE_SQL

#: TELEMETRY_STALE_AFTER_S's default: six hours.
DEFAULT_STALE_AFTER_S = 6 * 3600
#: Runs reaped per write (one writer operation). Measured (bench/stale_bench.py): 100 us
#: of CPU per run at 20k runs, 300 us at 1M (the row, its run_json, its four status
#: indexes and a cold cache after the upgrade), so a batch holds the writer ~5-20 ms.
REAP_BATCH = 64

#: Running runs without an allowance of their own, by job type and last_seen_at (migration
#: 6); it serves both the configured job types and the default (migration 9 dropped the
#: last_seen_at-only index that did: every write to a running run updated both).
JOB_SEEN_INDEX = "idx_runs_running_job_seen"
#: The first job type of that index (after ``jobs.job`` when appended with AND).
_FIRST_JOB = (
    f"SELECT min(job_type) FROM agent_runs INDEXED BY {JOB_SEEN_INDEX}"
    " WHERE status = 'running' AND heartbeat_timeout_s IS NULL"
)

_PAIR = re.compile(r"^(?P<job>[^=,]+)=(?P<seconds>[0-9]+)$")


def parse_job_allowances(value: Any) -> Any:
    """``job=seconds,job2=seconds`` into a dict; anything malformed is a ValueError that
    names the offending pair (start-up stops with it)."""
    if not isinstance(value, str):
        return value
    allowances: dict[str, int] = {}
    for raw in value.split(","):
        pair = raw.strip()
        if not pair:
            continue
        match = _PAIR.match(pair)
        if match is None:
            raise ValueError(
                f"{pair!r} is not job=seconds (e.g. nightly-etl=7200,crawl=600; whole seconds)"
            )
        job, seconds = match["job"].strip(), int(match["seconds"])
        problem = identifier_problem(job)
        if problem is not None:
            raise ValueError(f"job type {job!r} {problem}")
        if seconds > HEARTBEAT_TIMEOUT_MAX_S:
            raise ValueError(f"{job}={seconds}: at most {HEARTBEAT_TIMEOUT_MAX_S} seconds")
        if job in allowances:
            raise ValueError(f"job type {job!r} is given twice")
        allowances[job] = seconds
    return allowances


@dataclass(frozen=True)
class StalePolicy:
    """The reaper's settings, validated once (``ServerConfig.stale_policy``)."""

    default_s: int = DEFAULT_STALE_AFTER_S
    by_job: tuple[tuple[str, int], ...] = ()
    presence_s: float = 120.0
    lost_s: float = 86_400.0


@dataclass(frozen=True)
class Cuts:
    """The instants the rule compares stored timestamps with, for one ``now``."""

    now: str
    now_s: float  # Julian-day seconds, as OWN_DEADLINE_SQL counts
    presence: str
    lost: str


def cuts(policy: StalePolicy, now: datetime) -> Cuts:
    now_s = (now.timestamp() / 86400.0 + 2440587.5) * 86400.0  # julianday(now) * 86400
    return Cuts(
        now=format_instant(now),
        now_s=now_s,
        presence=format_instant(now - timedelta(seconds=policy.presence_s)),
        lost=format_instant(now - timedelta(seconds=policy.lost_s)),
    )


def _before(now: datetime, seconds: int) -> str:
    return format_instant(now - timedelta(seconds=seconds))


def overdue_ids_sql(policy: StalePolicy, now: datetime) -> tuple[str, list[Any]]:
    """``SELECT id`` of every overdue running run: a UNION ALL of index ranges."""
    selects: list[str] = []
    params: list[Any] = []
    selects.append(
        "SELECT id FROM agent_runs INDEXED BY idx_runs_running_deadline"
        " WHERE status = 'running' AND heartbeat_timeout_s IS NOT NULL"
        f" AND {OWN_DEADLINE_SQL} < ?"
    )
    params.append(cuts(policy, now).now_s)
    for job, seconds in policy.by_job:
        if seconds > 0:
            selects.append(
                f"SELECT id FROM agent_runs INDEXED BY {JOB_SEEN_INDEX}"
                " WHERE status = 'running' AND heartbeat_timeout_s IS NULL"
                " AND job_type = ? AND last_seen_at < ?"
            )
            params += (job, _before(now, seconds))
    if policy.default_s > 0:
        configured = [job for job, _ in policy.by_job]
        # likelihood(): the planner's estimate of the job types is that of a recursive
        # CTE (a million rows); a few is the truth, and a large estimate would have a
        # join with the overdue ids (``runs.stale_query_sql``) build a Bloom filter, a
        # read of the whole table.
        not_configured = " WHERE likelihood(job IS NOT NULL, 0.000001)" + (
            f" AND job NOT IN ({', '.join('?' for _ in configured)})" if configured else ""
        )
        # The job types of the running runs, one index seek each (a loose index scan),
        # then each one's range: the job type index serves the default too, so a run
        # is in one reaper index, not two (a heartbeat moves one entry).
        selects.append(
            f"SELECT id FROM (WITH RECURSIVE jobs(job) AS (SELECT ({_FIRST_JOB})"
            f" UNION ALL SELECT ({_FIRST_JOB} AND job_type > jobs.job) FROM jobs"
            " WHERE jobs.job IS NOT NULL)"
            f" SELECT id FROM (SELECT job FROM jobs{not_configured}) AS j"
            f" CROSS JOIN agent_runs INDEXED BY {JOB_SEEN_INDEX}"
            " WHERE status = 'running' AND heartbeat_timeout_s IS NULL"
            # job_type = j.job AND last_seen_at < ?, as one range of row values: an
            # equality would let SQLite (given ANALYZE's statistics) build a Bloom filter
            # first, a walk of every running run. -9e999 is -infinity: no bound.
            " AND (job_type, last_seen_at) >= (j.job, -9e999)"
            " AND (job_type, last_seen_at) < (j.job, ?))"
        )
        params += (*configured, _before(now, policy.default_s))
    return " UNION ALL ".join(selects), params


def allowance_sql(policy: StalePolicy, table: str = "") -> tuple[str, list[Any]]:
    """A run's allowance in seconds, as an SQL expression over its columns (of the
    table named ``table``, if given)."""
    own = f"{table}.heartbeat_timeout_s" if table else "heartbeat_timeout_s"
    if not policy.by_job:
        return f"COALESCE({own}, ?)", [policy.default_s]
    job = f"{table}.job_type" if table else "job_type"
    whens = " ".join("WHEN ? THEN ?" for _ in policy.by_job)
    params: list[Any] = [value for pair in policy.by_job for value in pair]
    return f"COALESCE({own}, CASE {job} {whens} ELSE ? END)", [*params, policy.default_s]


def reapable_ids_sql(policy: StalePolicy, now: datetime, limit: int) -> tuple[str, list[Any]]:
    """``SELECT id`` of up to ``limit`` overdue runs the reaper may mark now: direct
    writers' runs, and sidecar runs whose sidecar has delivered up to their deadline
    or is gone."""
    overdue, params = overdue_ids_sql(policy, now)
    allowance, allowance_params = allowance_sql(policy, "r")
    at = cuts(policy, now)
    sql = (
        "SELECT r.id FROM agent_runs AS r LEFT JOIN sidecars AS s USING (sidecar_id)"
        f" WHERE r.id IN ({overdue}) AND ("
        " r.sidecar_id IS NULL OR s.sidecar_id IS NULL OR s.last_contact_at < ?"
        " OR (s.last_contact_at >= ?"
        # Heard from after the run's deadline: before it, an empty spool says nothing of
        # what the agent wrote later, in a partition shorter than the presence window.
        " AND julianday(s.last_contact_at) * 86400.0"
        f" > julianday(r.last_seen_at) * 86400.0 + {allowance}"
        " AND (s.queued_since IS NULL"
        " OR julianday(s.queued_since) * 86400.0"
        f" > julianday(r.last_seen_at) * 86400.0 + {allowance}))"
        ") LIMIT ?"
    )
    return sql, [*params, at.lost, at.presence, *allowance_params, *allowance_params, limit]


_REAP_SQL = (
    "UPDATE agent_runs SET status = 'timeout', end_time = last_seen_at,"
    " duration_ms = max(0, COALESCE(CAST(round("
    "(julianday(last_seen_at) - julianday(start_time)) * 86400000.0) AS INTEGER), 0)),"
    " error_summary = 'no update for ' || CAST(round("
    "(julianday(?) - julianday(last_seen_at)) * 86400.0) AS INTEGER) || ' s',"
    " context_json = CASE"
    " WHEN context_json IS NULL THEN json_object('reaped_at', ?)"
    " WHEN json_valid(context_json) AND json_type(context_json) = 'object'"
    " THEN json_set(context_json, '$.reaped_at', ?)"
    " ELSE context_json END,"
    " reaped_at = ?, updated_at = ?"
    " WHERE +status = 'running' AND id IN ({ids})"  # by row id: never walk every running run
)


def reap_batch(
    conn: sqlite3.Connection, policy: StalePolicy, now: datetime, limit: int = REAP_BATCH
) -> int:
    """Mark up to ``limit`` reapable runs ``timeout`` (one statement: each run is reaped
    whole or not at all); the number reaped. Runs in the writer's transaction, so the
    rule is judged on the same data the update sees (a heartbeat or a terminal PATCH
    committed before it wins)."""
    select, params = reapable_ids_sql(policy, now, limit)
    stamp = format_instant(now)
    sql = _REAP_SQL.format(ids=select)
    return conn.execute(sql, [stamp] * _REAP_SQL.count("?") + params).rowcount


def any_reapable(conn: sqlite3.Connection, policy: StalePolicy, now: datetime) -> bool:
    """Whether a pass would reap anything: the cheap probe, on a reader."""
    select, params = reapable_ids_sql(policy, now, 1)
    return conn.execute(select, params).fetchone() is not None


def now_utc() -> datetime:
    return datetime.now(UTC)
