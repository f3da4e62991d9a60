"""Every SQL statement a SQLite-backed server runs, on any of its connections."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from server.storage import reader as reader_module


@contextmanager
def every_statement(database: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The statements run meanwhile on the writer's connection, every reader connection
    (the pool's, the event loop's inline one) and any reader connection the reader opens
    meanwhile: a test that an answer runs no query must not only watch one code path.
    Not watched: the health probe's and the checkpointer's own connections (neither
    serves an answer's data)."""
    statements: list[str] = []
    reader = database.reader
    connections: list[sqlite3.Connection] = [database.writer._conn, *reader._connections]
    if reader._inline is not None:
        connections.append(reader._inline)
    opened = reader_module.open_reader

    def traced_reader(path: Path, *, busy_timeout_ms: int) -> sqlite3.Connection:
        conn = opened(path, busy_timeout_ms=busy_timeout_ms)
        conn.set_trace_callback(statements.append)
        connections.append(conn)
        return conn

    monkeypatch.setattr(reader_module, "open_reader", traced_reader)
    for conn in connections:
        conn.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        for conn in connections:
            conn.set_trace_callback(None)
        monkeypatch.setattr(reader_module, "open_reader", opened)
