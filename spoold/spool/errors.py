"""Errors of the spool (and of the runs index as the accept path sees it).

SQLite and OS errors are translated here, at one boundary, so that the HTTP
layer and the drainer only ever see this small hierarchy (the original error
stays reachable as ``__cause__``).
"""

from __future__ import annotations

import sqlite3

from server.sqlite.errors import coded_error, is_disk_full

#: Retry-After suggested when the disk itself is full and no drain rate is known.
DISK_FULL_RETRY_AFTER_S = 5.0


class SpoolError(Exception):
    """Base class: the spool could not do what was asked; nothing was half-done (the HTTP
    handlers answer 503 to any of them, ``spoold.http.writes``)."""


class SpoolFull(SpoolError):
    """Accepting more would exceed the byte cap or the free-disk floor (back-pressure)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SpoolWriteError(SpoolError):
    """The spool could not commit a write (I/O error, locked database, closed spool)."""


class SpoolClosedError(SpoolWriteError):
    """The spool or the accept path is closed or closing; no new operation is accepted."""


class SpoolLockedError(SpoolError):
    """Another process already owns this spool directory."""


class SpoolFormatError(SpoolError):
    """The spool (or dead-letter store) on disk has a format this code does not understand."""


def corruption_found(path: object, findings: list[str]) -> sqlite3.DatabaseError:
    """An error for damage an integrity check reported as rows rather than raised.

    It carries SQLITE_CORRUPT, so every caller classifies it like SQLite's own.
    """
    message = f"{path}: integrity check failed: {'; '.join(findings)}"
    return coded_error(sqlite3.DatabaseError, message, sqlite3.SQLITE_CORRUPT, "SQLITE_CORRUPT")


def translate_write_error(exc: BaseException, retry_after_s: float) -> SpoolError:
    """Map a failed write to SpoolFull (no space left) or SpoolWriteError (anything else)."""
    if isinstance(exc, SpoolError):
        return exc
    if is_disk_full(exc):
        return SpoolFull(f"spool disk is full: {exc}", retry_after_s)
    return SpoolWriteError(f"spool write failed: {exc}")
