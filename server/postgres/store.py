"""The run operations both backends offer, as one protocol: what the run endpoints
(``server.http.runs``) need from a database. ``server.storage.database.Database`` and
``PostgresDatabase`` both satisfy it, which mypy checks here (``_both_conform``); the
next step of issue 13 is to type the endpoints' database with it and pick the backend
from ``TELEMETRY_DATABASE_URL`` at start-up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.postgres.database import PostgresDatabase
from server.storage.cursor import CursorCodec, Position
from server.storage.database import Database
from server.storage.runs import HeartbeatOutcome, JsonPage, Page, UpsertSummary
from server.storage.sidecars import Presence


class RunStore(Protocol):
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

    async def ping(self) -> None: ...

    async def close(self, timeout_s: float = 10.0) -> None: ...


def _both_conform(sqlite: Database, postgres: PostgresDatabase) -> tuple[RunStore, RunStore]:
    """Never called: mypy fails here if either backend's methods drift from the protocol."""
    return sqlite, postgres
