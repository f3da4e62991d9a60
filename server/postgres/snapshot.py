"""The metadata and run counts on PostgreSQL, kept in the process so /api/v1/metadata,
/metrics and /health cost no query per request, as SQLite's are kept by its writer.

Several replicas write one database, so no process sees every write. Instead:

* the distinct agent names and job types are kept in two small tables by a trigger
  (migration 2) which, when a write brings a new one, sends ``NOTIFY
  telemetry_metadata``; every replica LISTENs on a connection of its own and reloads
  them (one index probe per name, so names whose runs were all deleted drop out) at the
  next read after a notification, after its own write of a name it did not know, and at
  least every ``FULL_RELOAD_S``. A lost listening connection is re-opened, and the
  reload after it catches up whatever was missed meanwhile;
* the run counts are counted at a read (one pass over the runs, single-flight) when
  this process wrote since the last count or the count is older than ``COUNTS_TTL_S``.

So another replica's new agent is listed within one notification's delay (the tests
bound it at 1 s) and counts are at most ``COUNTS_TTL_S`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from server.postgres.errors import ACQUIRE_TIMEOUT_S
from server.postgres.text import decode
from server.storage.counters import WINDOW_MINUTES, RunCounts, agents_json, minute_of
from server.storage.metadata import MetadataSnapshot

log = structlog.get_logger("server.postgres")

CHANNEL = "telemetry_metadata"
#: Counts older than this are counted again at the next read.
COUNTS_TTL_S = 1.0
#: The names are reloaded at least this often (deletes send no notification).
FULL_RELOAD_S = 30.0
#: Longest wait for the listener to end at close.
STOP_WAIT_S = 5.0
#: Pause between two attempts to re-open the listening connection.
RELISTEN_PAUSE_S = 1.0

_NAMES_SQL = (
    "SELECT name FROM {table} AS n WHERE EXISTS"
    " (SELECT 1 FROM agent_runs AS r WHERE r.{column} = n.name) ORDER BY name"
)
_COUNTS_SQL = "SELECT agent_name, status, count(*) FROM agent_runs GROUP BY agent_name, status"
_RECENT_SQL = "SELECT count(*) FROM agent_runs WHERE created_at >= $1"
_REAPED_SQL = "SELECT count(*) FROM agent_runs WHERE reaped_at IS NOT NULL"


class Snapshots:
    """The cached metadata and counts of one process (see the module's docstring)."""

    def __init__(self, pool: Any, connect: Callable[[], Any]) -> None:
        self._pool = pool
        self._connect = connect
        self.metadata = MetadataSnapshot((), ())
        self._agents: frozenset[str] = frozenset()
        self._jobs: frozenset[str] = frozenset()
        self.counts = RunCounts(0, b"{}", 0, {})
        self.reaped_runs = 0
        self._names_dirty = True
        self._names_at = 0.0
        self._counts_dirty = True
        self._counts_at = 0.0
        self._names_lock = asyncio.Lock()
        self._counts_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    # ---- start and stop -------------------------------------------------------------

    async def start(self) -> None:
        await self.read_metadata()
        await self.read_counts()
        self._listener = asyncio.create_task(self._listen(), name="pg-metadata-listener")

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            # Bounded: the listener's connection is its own, never needed after this.
            await asyncio.wait({self._listener}, timeout=STOP_WAIT_S)

    # ---- what writes tell -----------------------------------------------------------

    def wrote(self, agent_names: set[str], job_types: set[str]) -> None:
        """This process wrote runs with these names: counts change, and a name not yet
        listed must be listed at the next read (our own notification may come later)."""
        self._counts_dirty = True
        if not agent_names.issubset(self._agents) or not job_types.issubset(self._jobs):
            self._names_dirty = True

    def unlisted(self, agent_names: set[str], job_types: set[str]) -> tuple[set[str], set[str]]:
        """The names this process has not seen stored yet (the others need no write)."""
        return agent_names - self._agents, job_types - self._jobs

    def changed(self) -> None:
        """Runs changed in a way that may remove names (a delete): recount everything."""
        self._counts_dirty = self._names_dirty = True

    # ---- reads ----------------------------------------------------------------------

    async def read_metadata(self) -> MetadataSnapshot:
        if self._names_dirty or time.monotonic() - self._names_at > FULL_RELOAD_S:
            async with self._names_lock:  # single-flight: the waiters take its answer
                if self._names_dirty or time.monotonic() - self._names_at > FULL_RELOAD_S:
                    self._names_dirty = False
                    try:
                        await self._load_names()
                    except BaseException:
                        self._names_dirty = True
                        raise
        return self.metadata

    async def read_counts(self) -> RunCounts:
        if self._counts_dirty or time.monotonic() - self._counts_at > COUNTS_TTL_S:
            async with self._counts_lock:
                if self._counts_dirty or time.monotonic() - self._counts_at > COUNTS_TTL_S:
                    self._counts_dirty = False
                    try:
                        await self._count()
                    except BaseException:
                        self._counts_dirty = True
                        raise
        return self.counts

    async def _load_names(self) -> None:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            agents = await conn.fetch(
                _NAMES_SQL.format(table="run_agent_names", column="agent_name")
            )
            jobs = await conn.fetch(_NAMES_SQL.format(table="run_job_types", column="job_type"))
        self.metadata = MetadataSnapshot(
            tuple(sorted(decode(row[0]) for row in agents)),
            tuple(sorted(decode(row[0]) for row in jobs)),
        )
        self._agents = frozenset(self.metadata.agent_names)
        self._jobs = frozenset(self.metadata.job_types)
        self._names_at = time.monotonic()

    async def _count(self) -> None:
        window_start = minute_of(datetime.now(UTC) - timedelta(minutes=WINDOW_MINUTES - 1))
        async with (
            self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            conn.transaction(readonly=True),
        ):
            rows = await conn.fetch(_COUNTS_SQL)
            recent = await conn.fetchval(_RECENT_SQL, window_start)
            reaped = await conn.fetchval(_REAPED_SQL)
        agents: dict[str, int] = {}
        statuses: dict[str, int] = {}
        for agent, status, n in rows:
            name = decode(agent)
            agents[name] = agents.get(name, 0) + int(n)
            statuses[status] = statuses.get(status, 0) + int(n)
        busiest = agents_json(sorted(agents.items(), key=lambda item: (-item[1], item[0])))
        self.counts = RunCounts(sum(agents.values()), busiest, int(recent), statuses)
        self.reaped_runs = int(reaped)
        self._counts_at = time.monotonic()

    # ---- the listening connection ---------------------------------------------------

    async def _listen(self) -> None:
        """LISTEN for new names for as long as the process serves; re-open the connection
        when it breaks (the database restarted, a network cut)."""
        while True:
            conn = None
            try:
                conn = await self._connect()
                ended = asyncio.Event()
                conn.add_termination_listener(_setter(ended))
                await conn.add_listener(CHANNEL, self._notified)
                self._names_dirty = True  # whatever came while not listening
                self.listening.set()
                await ended.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # asyncpg may hide a cancel
                    raise asyncio.CancelledError from exc
                log.warning("postgres_listener_lost", error=type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            self._names_dirty = True
            await asyncio.sleep(RELISTEN_PAUSE_S)

    def _notified(self, *_: Any) -> None:
        self._names_dirty = True


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    """A termination listener: the connection ended (closed, or lost)."""

    def ended(_: Any) -> None:
        event.set()

    return ended
