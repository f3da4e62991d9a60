"""The PostgreSQL database as the HTTP layer will see it: the async run operations of
``server.storage.database.Database`` (same names, arguments and answers) over an asyncpg
pool. Open with ``await PostgresDatabase.open(url)``; close with ``await db.close()``.

Several server processes may share one database: each operation is one transaction
(``runs`` explains the locks), committed before it is answered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import asyncpg
import structlog

from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.contract.stats import StatsQuery
from server.contract.timestamps import utc_now
from server.postgres import runs, stale, stats
from server.postgres.dashboard import PostgresDashboardReads
from server.postgres.errors import ACQUIRE_TIMEOUT_S, available, describe_open_failure
from server.postgres.export import PostgresExport
from server.postgres.leader import Leadership
from server.postgres.ratelimit import PostgresBudget
from server.postgres.retention import PostgresPruner
from server.postgres.schema import SCHEMA_VERSION, cursor_key, migrate
from server.postgres.snapshot import Snapshots
from server.postgres.url import DatabaseUrl
from server.storage.connection import StorageUnavailable
from server.storage.counters import RunCounts
from server.storage.cursor import CursorCodec, Position
from server.storage.dashboard import DashboardFetch
from server.storage.metadata import MetadataSnapshot
from server.storage.retention import PruneReport
from server.storage.run_json import python_rendering
from server.storage.runs import (
    HeartbeatOutcome,
    JsonPage,
    Page,
    UpsertSummary,
    insert_params,
    upsert_params,
)
from server.storage.sidecars import Presence
from server.storage.stale import StalePolicy, now_utc
from server.storage.status import StoreStatus

log = structlog.get_logger("server.postgres")

#: How often a write is tried when PostgreSQL rolls it back (deadlock, serialization
#: failure) before the failure is answered (a 503), within how long, and the pause
#: between tries (random in this range, so two writers that collided part).
ROLLED_BACK_ATTEMPTS = 3
ROLLED_BACK_BUDGET_S = 5.0
ROLLED_BACK_PAUSE_S = (0.005, 0.05)

T = TypeVar("T")


@dataclass(frozen=True)
class PostgresSettings:
    url: DatabaseUrl
    #: Connections this process keeps to the database (its share of max_connections).
    pool_size: int = 10
    connect_timeout_s: float = 10.0
    #: The longest any one statement may take (a lock wait included) before it fails.
    command_timeout_s: float = 60.0
    #: How long start-up waits for another replica's migration.
    migration_wait_s: float = 600.0
    #: Largest metrics_json a heartbeat's merge patch may leave (the body limit).
    max_metrics_bytes: int = 5 * 1024 * 1024
    stale: StalePolicy = field(default_factory=StalePolicy)


class NotUtf8(RuntimeError):
    """The database's encoding is not UTF8: it cannot store every run SQLite stores."""


class PostgresDatabase:
    backend = "postgresql"

    def __init__(
        self,
        settings: PostgresSettings,
        pool: Any,
        cursors: CursorCodec,
        durability: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.cursors = cursors
        self.durability = durability or {}
        self.snapshots = Snapshots(pool, self._connect)
        self.leadership = Leadership(self._connect)
        self.writes = 0
        self.failed_writes = 0
        self.reaped_since_start = 0
        #: Exports open at once at most: each holds a pooled connection for as long as
        #: its client reads (a client that stalls, for as long as it stalls), so they
        #: get half the pool and the writes and reads keep the rest.
        self.export_slots = max(1, settings.pool_size // 2)
        self._exports_open = 0

    def _connect(self) -> Any:
        """A connection of its own, outside the pool (the LISTEN, the leader's lock)."""
        return asyncpg.connect(
            self.settings.url.dsn,
            timeout=self.settings.connect_timeout_s,
            server_settings={"application_name": "telemetry-server"},
        )

    @classmethod
    async def open(cls, settings: PostgresSettings) -> PostgresDatabase:
        """Connect, check the encoding, migrate (one replica at a time), then open the pool.
        Any failure is a ``CannotOpen`` with one line for the operator (no password)."""
        try:
            return await cls._open(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise describe_open_failure(exc, settings.url.dsn, settings.url.redacted) from exc

    @classmethod
    async def _open(cls, settings: PostgresSettings) -> PostgresDatabase:
        conn = await asyncpg.connect(settings.url.dsn, timeout=settings.connect_timeout_s)
        try:
            encoding = await conn.fetchval("SHOW server_encoding")
            if encoding != "UTF8":
                raise NotUtf8(
                    f"database encoding is {encoding}; create it with ENCODING 'UTF8'"
                    f" ({settings.url.redacted})"
                )
            applied = await migrate(conn, lock_wait_s=settings.migration_wait_s)
            cursors = CursorCodec(await cursor_key(conn))
            durability = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit")
            }
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            settings.url.dsn,
            min_size=1,
            max_size=settings.pool_size,
            timeout=settings.connect_timeout_s,
            command_timeout=settings.command_timeout_s,
            server_settings={"application_name": "telemetry-server"},
        )
        if durability["fsync"] != "on" or durability["synchronous_commit"] in ("off", "local"):
            log.warning("postgres_not_durable", database=settings.url.redacted, **durability)
        log.info(
            "db_opened",
            backend="postgresql",
            database=settings.url.redacted,
            migrations_applied=applied,
            schema_version=SCHEMA_VERSION,
            **durability,
        )
        database = cls(settings, pool, cursors, durability)
        try:
            await database.snapshots.start()
        except BaseException:
            await pool.close()
            raise
        return database

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let operations in flight finish (for at most timeout_s), then close."""
        await self.snapshots.stop()
        await asyncio.wait({asyncio.ensure_future(self.leadership.close())}, timeout=5)
        try:
            await asyncio.wait_for(self.pool.close(), timeout_s)
        except TimeoutError:
            self.pool.terminate()

    # ---- writes ---------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self, agents: set[str], jobs: set[str]) -> AsyncIterator[None]:
        """A write: its failures as 503s (``available``), counted for /metrics, and the
        cached counts and names told (even a failed write may have committed)."""
        try:
            async with available():
                yield
        except BaseException:
            self.failed_writes += 1
            raise
        finally:
            self.writes += 1
            self.snapshots.wrote(agents, jobs)

    async def create(self, run: RunCreate) -> bool:
        """Insert a run; False when its event_id already exists."""
        params = insert_params(run, utc_now())
        async with self._writing({run.agent_name}, {run.job_type}):
            return await self._retried(lambda conn: runs.insert_row(conn, params))

    async def update(self, event_id: str, changes: dict[str, Any]) -> str | None:
        """Set fields of a run; its run_id, or None if unknown."""
        now = utc_now()
        agents = {changes["agent_name"]} if isinstance(changes.get("agent_name"), str) else set()
        jobs = {changes["job_type"]} if isinstance(changes.get("job_type"), str) else set()
        async with self._writing(agents, jobs):
            return await self._retried(lambda conn: runs.update_run(conn, event_id, changes, now))

    async def patch(self, event_id: str, changes: dict[str, Any]) -> bool:
        """Set fields of a run (PATCH); whether it exists."""
        return await self.update(event_id, changes) is not None

    async def insert_batch(
        self, batch: Sequence[RunCreate], presence: Presence | None = None
    ) -> int:
        """Insert valid runs in one transaction (with the sending sidecar's presence, if
        any); the number that were new."""
        if not batch and presence is None:
            return 0
        now = utc_now()
        sidecar = presence.sidecar_id if presence is not None else None
        rows = [insert_params(run, now, sidecar=sidecar) for run in batch]
        agents, jobs = runs.batch_names(batch)
        new_agents, new_jobs = self.snapshots.unlisted(agents, jobs)

        async def insert(conn: Any) -> int:
            await runs.lock_runs(conn, [run.event_id for run in batch])
            if presence is not None:
                await runs.record_presence(conn, presence, now)
            await runs.note_names(conn, new_agents, new_jobs)
            return await runs.insert_rows(conn, rows)

        async with self._writing(agents, jobs):
            return await self._retried(insert, transaction=True)

    async def upsert_batch(
        self, items: Sequence[UpsertItem], presence: Presence | None = None
    ) -> UpsertSummary:
        """Apply sidecar snapshots in one transaction, in order, with the sidecar's
        presence (a presence batch, ``[]``, records only that)."""
        if not items and presence is None:
            return UpsertSummary()
        now = utc_now()
        sidecar = presence.sidecar_id if presence is not None else None
        params = upsert_params(items, now, sidecar)
        records = [r for item in items for r in (item.create, item.update) if r is not None]
        agents, jobs = runs.batch_names(records)
        new_agents, new_jobs = self.snapshots.unlisted(agents, jobs)

        async def upsert(conn: Any) -> UpsertSummary:
            await runs.lock_runs(conn, [item.event_id for item in items])
            if presence is not None:
                await runs.record_presence(conn, presence, now)
            await runs.note_names(conn, new_agents, new_jobs)
            return await runs.upsert_many(conn, items, params, now, sidecar)

        async with self._writing(agents, jobs):
            return await self._retried(upsert, transaction=True)

    async def _retried(
        self, work: Callable[[Any], Awaitable[T]], *, transaction: bool = False
    ) -> T:
        """``work`` on a pooled connection (in one transaction if ``transaction``), run
        again when PostgreSQL rolled it back to break a deadlock or a serialization failure:
        nothing of it was committed, so running it again applies it once. The locks of
        ``runs`` keep batches from deadlocking each other, but a single write racing a
        batch for the same run may still. At most ROLLED_BACK_ATTEMPTS tries within
        ROLLED_BACK_BUDGET_S (then the failure is the answer, a 503, well before a
        sidecar's upstream timeout), a short random pause between them."""
        deadline = time.monotonic() + ROLLED_BACK_BUDGET_S
        for attempt in range(1, ROLLED_BACK_ATTEMPTS + 1):
            try:
                async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    if not transaction:
                        return await work(conn)
                    async with conn.transaction():
                        return await work(conn)
            except asyncpg.TransactionRollbackError as exc:
                if attempt == ROLLED_BACK_ATTEMPTS or time.monotonic() >= deadline:
                    raise
                log.warning("write_rolled_back_retrying", attempt=attempt, sqlstate=exc.sqlstate)
            await asyncio.sleep(random.uniform(*ROLLED_BACK_PAUSE_S))
        raise AssertionError("unreachable")

    async def heartbeat(self, event_id: str, progress: dict[str, Any] | None) -> HeartbeatOutcome:
        """A run says it is alive (see ``runs.heartbeat``)."""
        now = utc_now()
        limit = self.settings.max_metrics_bytes
        async with self._writing(set(), set()):
            return await self._retried(
                lambda conn: runs.heartbeat(conn, event_id, progress, now, limit),
                transaction=True,
            )

    async def lead(self) -> bool:
        """Whether this replica is the one that does background work (``leader``)."""
        return await self.leadership.lead()

    def pruner(self, on_report: Callable[[PruneReport], None] | None = None) -> PostgresPruner:
        """Retention's runner on the pool; what it deletes reaches every replica's caches."""
        return PostgresPruner(self.pool, on_change=self.snapshots.changed, on_report=on_report)

    def rate_budget(self) -> PostgresBudget:
        """The rate limit's token store shared by the replicas (``shared_ratelimit``)."""
        return PostgresBudget(self.pool)

    async def reap(self, limit: int) -> int:
        """One batch of the reaper (see ``stale``): the runs marked ``timeout``."""
        policy, now = self.settings.stale, now_utc()
        async with (
            self._writing(set(), set()),
            self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            conn.transaction(),
        ):
            reaped = await stale.reap_batch(conn, policy, now, limit)
        self.reaped_since_start += reaped
        return reaped

    async def reapable(self) -> bool:
        """Whether anything is due for the reaper: one read."""
        policy, now = self.settings.stale, now_utc()
        async with available(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await stale.any_reapable(conn, policy, now)

    # ---- reads ----------------------------------------------------------------------

    async def get(self, event_id: str) -> dict[str, Any] | None:
        async with available(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await runs.get_run(conn, event_id)

    async def query(self, query: RunQuery, after: Position | None = None) -> Page:
        async with available(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await runs.query_runs(conn, query, after, (self.settings.stale, now_utc()))

    async def query_json(self, query: RunQuery, after: Position | None = None) -> JsonPage:
        """A page as the API answers it, JSON bytes: the Python rendering, which SQLite's
        stored ``run_json`` reproduces byte for byte (``server.storage.run_json``)."""
        page = await self.query(query, after)
        body = b",".join(python_rendering(run) for run in page.runs)
        return JsonPage(b"[" + body + b"]", page.next_position)

    async def export(
        self, query: RunQuery, fmt: Literal["ndjson", "csv"], *, escape_formulas: bool
    ) -> PostgresExport:
        """An export of the runs ``query`` matches, its snapshot taken (see ``export``);
        the caller closes it."""
        if self._exports_open >= self.export_slots:
            raise StorageUnavailable("too many exports in progress; retry shortly", retry_after_s=5)
        self._exports_open += 1
        export = PostgresExport(
            self.pool,
            query,
            fmt,
            escape_formulas=escape_formulas,
            stale=(self.settings.stale, now_utc()),
            on_close=self._export_closed,
        )
        try:
            await export.open()
        except BaseException:
            await export.close()
            raise
        return export

    def _export_closed(self) -> None:
        self._exports_open -= 1

    async def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        """The groups of ``GET /api/v1/stats``, as SQLite answers them (see ``stats``)."""
        async with available(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            return await stats.read_stats(conn, query, self.settings.stale, now_utc())

    async def read_dashboard(
        self, fetch: DashboardFetch[T], now: datetime, shape: Hashable = None
    ) -> T:
        """A dashboard page's reads (``dashboard.PostgresDashboardReads``) in one
        read-only snapshot, ``stale`` judged at ``now`` (``shape``: SQLite's reader's)."""
        del shape
        reads_at = (self.settings.stale, now)
        async with (
            available(),
            self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            return await fetch(PostgresDashboardReads(conn, *reads_at))

    async def ping(self) -> None:
        """Touch the database for real."""
        async with available(), self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")

    # ---- what the process keeps (``snapshot``) ---------------------------------------

    def metadata(self) -> MetadataSnapshot:
        """The distinct values as last loaded (no query; ``read_metadata`` reloads)."""
        return self.snapshots.metadata

    def counts(self) -> RunCounts:
        """The run counts as last counted (no query; ``read_counts`` recounts)."""
        return self.snapshots.counts

    async def read_metadata(self) -> MetadataSnapshot:
        """The distinct values, reloaded first if a replica wrote a new one."""
        async with available():
            return await self.snapshots.read_metadata()

    async def read_counts(self) -> RunCounts:
        """The run counts, at most ``snapshot.COUNTS_TTL_S`` old (fresh after our writes)."""
        async with available():
            return await self.snapshots.read_counts()

    def status(self) -> StoreStatus:
        """/health's and /metrics' view (no query)."""
        return StoreStatus(
            backend=self.backend,
            schema_version=SCHEMA_VERSION,
            settings={"synchronous": self.durability.get("synchronous_commit", "")},
            location=self.settings.url.redacted,
            pending_writes=self.pool.get_size() - self.pool.get_idle_size(),
            write_transactions=self.writes,
            write_operations=self.writes,
            failed_write_transactions=self.failed_writes,
            reaped_runs=self.snapshots.reaped_runs,
            reaped_since_start=self.reaped_since_start,
        )
