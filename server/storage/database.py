"""The database as the HTTP layer sees it: async operations over writer and readers, and the
state the writer keeps in memory (run counts, distinct values)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.contract.stats import StatsQuery
from server.contract.timestamps import utc_now
from server.runtime.systemd import extending_start_timeout
from server.sqlite.version import check_sqlite_version
from server.storage import runs
from server.storage.checkpoint import (
    JOURNAL_SIZE_LIMIT_BYTES,
    PASS_INTERVAL_S,
    RESTART_FRAMES,
    Checkpointer,
)
from server.storage.connection import open_writer, pragma_value
from server.storage.counters import RunCounters, RunCounts
from server.storage.cursor import CursorCodec, Position
from server.storage.dashboard import DashboardFetch
from server.storage.dashboard_sqlite import SqliteDashboardReads, complete
from server.storage.metadata import DistinctValues, MetadataSnapshot
from server.storage.probe import HealthProbe
from server.storage.reader import Reader
from server.storage.reaped_count import ReapedCount
from server.storage.retention import Pruner, PruneReport, prefer_incremental_vacuum
from server.storage.run_deltas import RunDeltas
from server.storage.schema import SCHEMA_VERSION, current_version, cursor_key, migrate
from server.storage.sidecars import Presence, record
from server.storage.stale import StalePolicy, any_reapable, now_utc, overdue_ids_sql, reap_batch
from server.storage.stats import read_stats, rollups_serve
from server.storage.status import StoreStatus
from server.storage.writer import GroupObserver, Writer

log = structlog.get_logger("server.database")

T = TypeVar("T")


@dataclass(frozen=True)
class StorageSettings:
    path: Path
    journal_mode: str = "WAL"
    synchronous: str = "FULL"
    busy_timeout_ms: int = 2000
    reader_threads: int = 4
    #: 0: SQLite checkpoints inside commits; else see ``checkpoint`` (WAL mode only).
    wal_restart_pages: int = RESTART_FRAMES
    checkpoint_interval_s: float = PASS_INTERVAL_S
    stale: StalePolicy = field(default_factory=StalePolicy)
    #: Largest metrics_json a heartbeat's merge patch may leave (the body limit).
    max_metrics_bytes: int = 5 * 1024 * 1024


class DatabaseSize:
    """The file's size as the writer last saw it (read inside each group, so free)."""

    def __init__(self) -> None:
        self.bytes = 0
        self._page_size = 0

    def measure(self, conn: sqlite3.Connection) -> int:
        # The page size is fixed for the file's life (only a VACUUM could change it, and
        # the server runs none): one statement per group, not two, on the writer thread.
        if not self._page_size:
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * self._page_size

    def before_commit(self, conn: sqlite3.Connection) -> Callable[[], None]:
        measured = self.measure(conn)

        def keep() -> None:
            self.bytes = measured

        return keep


class Database:
    """Open with ``Database.open(settings)``; close with ``await db.close()``."""

    backend = "sqlite"

    def __init__(
        self,
        settings: StorageSettings,
        writer: Writer,
        reader: Reader,
        *,
        counters: RunCounters,
        distinct: DistinctValues,
        size: DatabaseSize,
        cursors: CursorCodec,
        checkpointer: Checkpointer | None = None,
        reaped: ReapedCount | None = None,
    ) -> None:
        self.settings = settings
        self.reaped = reaped or ReapedCount()
        self.checkpointer = checkpointer
        self.writer = writer
        self.reader = reader
        self.counters = counters
        self.distinct = distinct
        self.size = size
        self.cursors = cursors
        self.probe = HealthProbe(settings.path, busy_timeout_ms=settings.busy_timeout_ms)
        self.journal_mode = settings.journal_mode
        self.synchronous = settings.synchronous

    @classmethod
    def open(
        cls, settings: StorageSettings, *, on_write_group: GroupObserver | None = None
    ) -> Database:
        """Check SQLite, migrate, analyse, count the runs and start the writer (blocking;
        call at start-up)."""
        check_sqlite_version(needs_json=True)
        conn = open_writer(
            settings.path,
            journal_mode=settings.journal_mode,
            synchronous=settings.synchronous,
            busy_timeout_ms=settings.busy_timeout_ms,
        )
        counters, distinct, size = RunCounters(), DistinctValues(), DatabaseSize()
        reaped = ReapedCount()
        try:
            prefer_incremental_vacuum(conn)  # a new file: so prunes can give space back
            migrating = current_version(conn) < SCHEMA_VERSION  # a rebuild may take minutes
            with extending_start_timeout("migrating the database schema", enabled=migrating):
                applied = migrate(conn)
            # Planner statistics (bounded work even on a large table): PRAGMA optimize only
            # analyses on its own from SQLite 3.46, so ask for it explicitly.
            conn.execute("PRAGMA analysis_limit = 1000")
            conn.execute("ANALYZE")
            deltas = RunDeltas(counters, distinct)
            deltas.install(conn)  # one TEMP trigger per kind of change feeds both
            counters.load(conn)  # the one full count, at start-up; the writer keeps it after
            distinct.load(conn, known={"agent_name": counters.snapshot().agents})
            size.bytes = size.measure(conn)
            reaped.install(conn)
            reaped.load(conn)
            cursors = CursorCodec(cursor_key(conn))
            checkpointer = _background_checkpoints(conn, settings)
        except BaseException:
            conn.close()
            raise
        db = cls(
            settings,
            Writer(
                conn,
                on_group=on_write_group,
                hooks=(deltas, size, reaped),
                checkpointer=checkpointer,
            ),
            Reader(
                settings.path,
                threads=settings.reader_threads,
                busy_timeout_ms=settings.busy_timeout_ms,
            ),
            counters=counters,
            distinct=distinct,
            size=size,
            cursors=cursors,
            checkpointer=checkpointer,
            reaped=reaped,
        )
        db.journal_mode = pragma_value(conn, "journal_mode")
        db.synchronous = pragma_value(conn, "synchronous")
        if checkpointer is not None:
            checkpointer.start()
        db.writer.start()
        log.info(
            "db_opened",
            db_path=str(settings.path),
            migrations_applied=applied,
            journal_mode=db.journal_mode,
            synchronous=db.synchronous,
        )
        return db

    async def close(self, timeout_s: float = 10.0) -> None:
        """Let the writer finish its queue (for at most timeout_s), then close."""
        writer_closed = await self.writer.close(timeout_s)
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.reader.close()
        self.probe.close()
        # Last, and only once the writer's connection is closed: see Checkpointer.close_file.
        if self.checkpointer is not None and writer_closed:
            self.checkpointer.close_file()

    # ---- writes ---------------------------------------------------------------------

    async def create(self, run: RunCreate) -> bool:
        """Insert a run; False when its event_id already exists."""
        # Python work here, not in the writer thread (it is the one every write waits for).
        prepared = runs.prepare_insert(runs.insert_params(run, utc_now()))
        return await self.writer.run(lambda conn: runs.insert_row(conn, prepared))

    async def patch(self, event_id: str, changes: dict[str, Any]) -> bool:
        """Set fields of a run (a PATCH); False if unknown. Cheaper than ``update``: no
        run_id to return."""
        statement = runs.update_statement(event_id, changes, utc_now(), returning=False)
        return await self.writer.run(lambda conn: runs.run_patch(conn, statement))

    async def update(self, event_id: str, changes: dict[str, Any]) -> str | None:
        """Set fields of a run; its run_id, or None if unknown."""
        statement = runs.update_statement(event_id, changes, utc_now())
        return await self.writer.run(lambda conn: runs.run_update(conn, statement))

    async def insert_batch(
        self, batch: Sequence[RunCreate], presence: Presence | None = None
    ) -> int:
        """Insert valid runs in one transaction (with the sending sidecar's presence, if
        any); the number that were new."""
        if not batch and presence is None:
            return 0
        now = utc_now()
        sidecar = presence.sidecar_id if presence is not None else None
        rows = [runs.insert_params(run, now, sidecar=sidecar) for run in batch]

        def write(conn: sqlite3.Connection) -> int:
            if presence is not None:
                record(conn, presence, now)
            return runs.insert_rows(conn, rows) if rows else 0

        return await self.writer.run(write)

    async def upsert_batch(
        self, items: Sequence[UpsertItem], presence: Presence | None = None
    ) -> runs.UpsertSummary:
        """Apply sidecar snapshots in one transaction, in order, with the sidecar's
        presence (a presence batch, ``[]``, records only that)."""
        if not items and presence is None:
            return runs.UpsertSummary()
        now = utc_now()
        sidecar = presence.sidecar_id if presence is not None else None
        params = runs.upsert_params(items, now, sidecar)  # off the writer thread

        def write(conn: sqlite3.Connection) -> runs.UpsertSummary:
            if presence is not None:
                record(conn, presence, now)
            return runs.upsert_many(conn, items, params, now, sidecar)

        return await self.writer.run(write)

    async def heartbeat(
        self, event_id: str, progress: dict[str, Any] | None
    ) -> runs.HeartbeatOutcome:
        """A run says it is alive (see ``runs.heartbeat``)."""
        now = utc_now()
        limit = self.settings.max_metrics_bytes
        return await self.writer.run(
            lambda conn: runs.heartbeat(conn, event_id, progress, now, limit)
        )

    async def lead(self) -> bool:
        """The one server on its file always does the background work."""
        return True

    def pruner(self, on_report: Callable[[PruneReport], None] | None = None) -> Pruner:
        """Retention's runner: its deletes through the writer, its previews on a reader."""
        return Pruner(self.writer.run, self.reader.run, sleep=asyncio.sleep, on_report=on_report)

    def rate_budget(self) -> None:
        """No budget to share: one server on its file keeps its rate buckets itself."""
        return None

    async def reap(self, limit: int) -> int:
        """One batch of the reaper, through the writer: the runs marked ``timeout``."""
        policy, now = self.settings.stale, now_utc()
        return await self.writer.run(lambda conn: reap_batch(conn, policy, now, limit))

    async def reapable(self) -> bool:
        """Whether anything is due for the reaper: one indexed read, on a reader."""
        policy, now = self.settings.stale, now_utc()
        return await self.reader.run(lambda conn: any_reapable(conn, policy, now))

    # ---- reads ----------------------------------------------------------------------

    async def get(self, event_id: str) -> dict[str, Any] | None:
        return await self.reader.run(lambda conn: runs.get_run(conn, event_id))

    async def query(self, query: RunQuery, after: Position | None = None) -> runs.Page:
        return await self.reader.run(lambda conn: runs.query_runs(conn, query, after))

    async def query_json(self, query: RunQuery, after: Position | None = None) -> runs.JsonPage:
        """A page as the API answers it, JSON bytes (see ``run_json``)."""
        shape = runs.cost_shape(query)
        if query.stale is not None:
            overdue = overdue_ids_sql(self.settings.stale, now_utc())
            return await self.reader.run(
                lambda conn: runs.query_page_json(conn, query, after, overdue), shape=shape
            )
        return await self.reader.run(
            lambda conn: runs.query_page_json(conn, query, after), shape=shape
        )

    async def stats(self, query: StatsQuery) -> list[dict[str, Any]]:
        """The groups of ``GET /api/v1/stats`` (``stats.TooManyGroups`` past the limit)."""
        # What a read costs depends on which parts it reads (see Reader.run's shape).
        shape = ("stats", tuple(query.group_by), rollups_serve(query), query.stale)
        overdue = None if query.stale is None else overdue_ids_sql(self.settings.stale, now_utc())
        return await self.reader.run(lambda conn: read_stats(conn, query, overdue), shape=shape)

    async def read_dashboard(
        self, fetch: DashboardFetch[T], now: datetime, shape: Hashable = None
    ) -> T:
        """A dashboard page's reads (``dashboard.DashboardReads``) in one read transaction
        on a reader, ``stale`` judged at ``now``; ``shape`` as ``Reader.run``'s."""
        policy = self.settings.stale

        def in_snapshot(conn: sqlite3.Connection) -> T:
            with runs.snapshot(conn):
                return complete(fetch(SqliteDashboardReads(conn, policy, now)))

        return await self.reader.run(in_snapshot, shape=shape)

    def metadata(self) -> MetadataSnapshot:
        """The distinct agent names and job types, from the writer's state (no query)."""
        return self.distinct.snapshot()

    def counts(self) -> RunCounts:
        """The run counts, from the writer's counters (no query)."""
        return self.counters.snapshot()

    async def ping(self) -> None:
        """Touch the database for real, on the probe's own connection (not the readers')."""
        await self.probe.ping()

    async def read_metadata(self) -> MetadataSnapshot:
        """``metadata``: the writer keeps it exact, so there is nothing to read."""
        return self.distinct.snapshot()

    async def read_counts(self) -> RunCounts:
        """``counts``: the writer keeps them exact, so there is nothing to read."""
        return self.counters.snapshot()

    def status(self) -> StoreStatus:
        """/health's and /metrics' view, from the writer's state (no query)."""
        stats = self.writer.stats
        return StoreStatus(
            backend=self.backend,
            schema_version=SCHEMA_VERSION,
            settings={"journal_mode": self.journal_mode, "synchronous": self.synchronous},
            location=str(self.settings.path),
            pending_writes=self.writer.pending,
            failure=self.writer.failure,
            size_bytes=self.size.bytes,
            write_transactions=stats.groups,
            write_operations=stats.operations,
            failed_write_transactions=stats.failed_groups,
            reaped_runs=self.reaped.stored,
            reaped_since_start=self.reaped.reaped_since_start,
        )


def _background_checkpoints(
    conn: sqlite3.Connection, settings: StorageSettings
) -> Checkpointer | None:
    """In WAL mode, take checkpoints off the writer's commits (see ``checkpoint``)."""
    if settings.wal_restart_pages == 0 or pragma_value(conn, "journal_mode") != "WAL":
        return None
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT_BYTES:d}")
    return Checkpointer(
        settings.path,
        synchronous=settings.synchronous,
        busy_timeout_ms=settings.busy_timeout_ms,
        restart_frames=settings.wal_restart_pages,
        interval_s=settings.checkpoint_interval_s,
    )
