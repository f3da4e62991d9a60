"""Online backup with SQLite's backup API, while writes continue.

The copy is taken in one step inside one read transaction, so it is a
consistent snapshot of the database as of the moment it began (in WAL mode
the writer keeps committing meanwhile). It is written beside the destination,
checked with ``PRAGMA integrity_check``, fsync'd and renamed into place, so a
half-written backup never carries the destination's name.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from server.sqlite.connect import connect
from server.storage.connection import open_reader


@dataclass(frozen=True)
class BackupResult:
    destination: Path
    bytes: int
    runs: int
    seconds: float


class BackupError(RuntimeError):
    """The backup could not be made or did not verify."""


def backup(source: Path, destination: Path, *, busy_timeout_ms: int = 5000) -> BackupResult:
    """Copy the database at source to destination; raise BackupError if it fails."""
    if not source.exists():
        raise BackupError(f"no database at {source}")
    if destination.is_dir():
        destination = (
            destination / f"telemetry-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.sqlite"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    started = time.monotonic()
    src = open_reader(source, busy_timeout_ms=busy_timeout_ms)
    try:
        partial.unlink(missing_ok=True)
        dst = connect(partial, busy_timeout_ms=busy_timeout_ms)
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode = DELETE")
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
            runs = int(dst.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup failed: {exc}") from exc
    finally:
        src.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise BackupError(f"backup did not verify: {verdict}")
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, destination)
    directory = os.open(destination.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return BackupResult(destination, destination.stat().st_size, runs, time.monotonic() - started)
