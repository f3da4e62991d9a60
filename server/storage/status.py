"""What /health and /metrics show of a database, whichever backend serves it: one small
value each backend fills from what it keeps in memory (no query)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StoreStatus:
    #: "sqlite" or "postgresql".
    backend: str
    schema_version: int = 0
    #: The database's durability settings as /health shows them (``journal_mode`` and
    #: ``synchronous`` on SQLite; ``synchronous`` is PostgreSQL's ``synchronous_commit``).
    settings: dict[str, object] = field(default_factory=dict)
    #: The file path or the URL without its password: shown only to callers that may
    #: read run data.
    location: str = ""
    pending_writes: int = 0
    #: Why writes are refused (the writer thread died), or None.
    failure: str | None = None
    size_bytes: int = 0
    write_transactions: int = 0
    write_operations: int = 0
    failed_write_transactions: int = 0
    reaped_runs: int = 0
    reaped_since_start: int = 0
