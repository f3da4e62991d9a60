"""What the HTTP layer needs from a database, as one protocol both backends implement:
the run operations, the metadata and counts each keeps in memory, and its status for
/health and /metrics. ``server.storage.database.Database`` and ``PostgresDatabase`` both
satisfy it, which mypy checks here (``_both_conform``). The app factory picks the
backend once at start-up (``TELEMETRY_DATABASE_URL``); handlers see only this protocol.
The dashboard reads through ``read_dashboard`` (``server.storage.dashboard``'s protocol).
Retention's runner and the rate limit's shared token store come from the store too
(``pruner``, ``rate_budget``). What only SQLite has (its writer and readers, VACUUM,
backup, checkpoints) is reached through ``server.http.backend.sqlite_only``, a 501 on
PostgreSQL; the export is the one endpoint that still picks its backend's streaming
itself (``server.http.export``: SQLite's reads on worker threads, PostgreSQL's cursor)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.contract.stats import StatsQuery
from server.postgres.database import PostgresDatabase
from server.postgres.ratelimit import PostgresBudget
from server.storage.counters import RunCounts
from server.storage.cursor import CursorCodec, Position
from server.storage.dashboard import DashboardFetch
from server.storage.database import Database
from server.storage.metadata import MetadataSnapshot
from server.storage.retention import PruneReport, PruneRunner
from server.storage.runs import HeartbeatOutcome, JsonPage, Page, UpsertSummary
from server.storage.sidecars import Presence
from server.storage.status import StoreStatus

T = TypeVar("T")


class RunStore(Protocol):
    #: "sqlite" or "postgresql".
    backend: str
    #: Signs and checks list cursors with the database's own key.
    cursors: CursorCodec

    async def create(self, run: RunCreate) -> bool: ...

    async def patch(self, event_id: str, changes: dict[str, Any]) -> bool: ...

    async def update(self, event_id: str, changes: dict[str, Any]) -> str | None: ...

    async def insert_batch(
        self, batch: Sequence[RunCreate], presence: Presence | None = None
    ) -> int: ...

    async def upsert_batch(
        self, items: Sequence[UpsertItem], presence: Presence | None = None
    ) -> UpsertSummary: ...

    async def heartbeat(
        self, event_id: str, progress: dict[str, Any] | None
    ) -> HeartbeatOutcome: ...

    async def get(self, event_id: str) -> dict[str, Any] | None: ...

    async def query(self, query: RunQuery, after: Position | None = None) -> Page: ...

    async def query_json(self, query: RunQuery, after: Position | None = None) -> JsonPage: ...

    async def stats(self, query: StatsQuery) -> list[dict[str, Any]]: ...

    async def read_dashboard(
        self, fetch: DashboardFetch[T], now: datetime, shape: Hashable = None
    ) -> T:
        """A dashboard page's reads (``server.storage.dashboard.DashboardReads``) in one
        snapshot: the dashboard's one way to its data."""
        ...

    async def ping(self) -> None: ...

    def metadata(self) -> MetadataSnapshot: ...

    def counts(self) -> RunCounts: ...

    async def read_metadata(self) -> MetadataSnapshot: ...

    async def read_counts(self) -> RunCounts: ...

    def status(self) -> StoreStatus: ...

    async def lead(self) -> bool: ...

    def pruner(self, on_report: Callable[[PruneReport], None] | None = None) -> PruneRunner:
        """Retention's runner on this backend (the endpoint's and the background pass's)."""
        ...

    def rate_budget(self) -> PostgresBudget | None:
        """The token store a rate limit shares across replicas; None with one server."""
        ...

    async def reapable(self) -> bool: ...

    async def reap(self, limit: int) -> int: ...

    async def close(self, timeout_s: float = 10.0) -> None: ...


def _both_conform(sqlite: Database, postgres: PostgresDatabase) -> tuple[RunStore, RunStore]:
    """Never called: mypy fails here if either backend's methods drift from the protocol."""
    return sqlite, postgres
