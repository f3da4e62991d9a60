"""The rate limit's shared store on PostgreSQL: the SQL behind
``server.http.shared_ratelimit`` (which explains the design).

One ``telemetry_rate_exchange`` call per replica per tick (schema migration 4) reports
what the replica spent and takes its next lease for every client it serves; ``sweep``
deletes what no longer matters (full pools, leases of dead replicas, dead replicas),
skipping rows another replica holds, so it never waits on nor deadlocks with an
exchange. Every call has a short timeout: the limiter fails open, it never queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The longest an exchange or sweep may take, pool wait included.
CALL_TIMEOUT_S = 1.0
#: Rows the sweep deletes per table per call (a bounded statement).
SWEEP_LIMIT = 5000

_EXCHANGE = (
    "SELECT client, share, pool, active, others"
    " FROM telemetry_rate_exchange($1, $2, $3, $4, $5, $6)"
)

_SWEEP = (
    # A pool full again is the same as no row (a new row starts full).
    """DELETE FROM rate_limit_pools WHERE client IN (
        SELECT p.client FROM rate_limit_pools p
        WHERE p.full_at < extract(epoch FROM clock_timestamp())::double precision
          AND NOT EXISTS (SELECT 1 FROM rate_limit_leases l WHERE l.client = p.client)
        ORDER BY p.full_at LIMIT $1 FOR UPDATE SKIP LOCKED)""",
    """DELETE FROM rate_limit_leases WHERE (client, replica) IN (
        SELECT l.client, l.replica FROM rate_limit_leases l
        WHERE l.seen < extract(epoch FROM clock_timestamp())::double precision - $2
        LIMIT $1 FOR UPDATE SKIP LOCKED)""",
    """DELETE FROM rate_limit_replicas WHERE replica IN (
        SELECT r.replica FROM rate_limit_replicas r
        WHERE r.seen < extract(epoch FROM clock_timestamp())::double precision - $2
        LIMIT $1 FOR UPDATE SKIP LOCKED)""",
)


@dataclass(frozen=True)
class Report:
    """What a replica tells the pool of one client."""

    client: bytes
    #: Unspent lease given back (negative: spent beyond its lease, charged).
    returned: float
    #: The replica stops serving this client: no new lease.
    release: bool


@dataclass(frozen=True)
class Grant:
    """The pool's answer for one client."""

    client: bytes
    share: float
    pool: float
    active: int
    #: What the other replicas hold of the client's tokens.
    others: float = 0.0


class PostgresBudget:
    """The shared token pools, through the backend's connection pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def exchange(
        self, replica: str, rpm: int, window_s: float, reports: Sequence[Report]
    ) -> tuple[int, list[Grant]]:
        """Send the reports; the replicas alive and each client's grant."""
        async with self._pool.acquire(timeout=CALL_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                _EXCHANGE,
                replica,
                float(rpm),
                window_s,
                [r.client for r in reports],
                [r.returned for r in reports],
                [r.release for r in reports],
                timeout=CALL_TIMEOUT_S,
            )
        live = 1
        grants = []
        for row in rows:
            if row["client"] is None:
                live = max(1, int(row["active"]))
            else:
                grants.append(
                    Grant(
                        bytes(row["client"]),
                        row["share"],
                        row["pool"],
                        int(row["active"]),
                        row["others"],
                    )
                )
        return live, grants

    async def sweep(self, window_s: float) -> None:
        """Delete full pools, expired leases and dead replicas (a bounded batch each)."""
        async with self._pool.acquire(timeout=CALL_TIMEOUT_S) as conn:
            await conn.execute(_SWEEP[0], SWEEP_LIMIT, timeout=CALL_TIMEOUT_S)
            for statement in _SWEEP[1:]:
                await conn.execute(statement, SWEEP_LIMIT, window_s, timeout=CALL_TIMEOUT_S)
