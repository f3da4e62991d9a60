"""Errors of the spool (and of the runs index as the accept path sees it).

SQLite and OS errors are translated here, at one boundary, so that the HTTP
layer and the drainer only ever see this small hierarchy (the original error
stays reachable as ``__cause__``).
"""

from __future__ import annotations

import errno
import sqlite3

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Primary result codes meaning "this file is damaged". SQLite reports extended codes
#: (SQLITE_CORRUPT_VTAB 267, _SEQUENCE 523, _INDEX 779, ...) whose low byte is the
#: primary code, so errors are classified by ``code & 0xFF``, never by their message.
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

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


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an error (extended codes folded), or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corruption(exc: BaseException) -> bool:
    """True when SQLite says the file is not a database or is malformed (any extended code)."""
    return isinstance(exc, sqlite3.DatabaseError) and primary_code(exc) in _CORRUPT_CODES


def corruption_found(path: object, findings: list[str]) -> sqlite3.DatabaseError:
    """An error for damage an integrity check reported as rows rather than raised.

    It carries SQLITE_CORRUPT, so every caller classifies it like SQLite's own.
    """
    exc = sqlite3.DatabaseError(f"{path}: integrity check failed: {'; '.join(findings)}")
    exc.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
    exc.sqlite_errorname = "SQLITE_CORRUPT"
    return exc


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL or an OS error meaning no space (or quota) is left."""
    return primary_code(exc) == sqlite3.SQLITE_FULL or (
        isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS
    )


def translate_write_error(exc: BaseException, retry_after_s: float) -> SpoolError:
    """Map a failed write to SpoolFull (no space left) or SpoolWriteError (anything else)."""
    if isinstance(exc, SpoolError):
        return exc
    if is_disk_full(exc):
        return SpoolFull(f"spool disk is full: {exc}", retry_after_s)
    return SpoolWriteError(f"spool write failed: {exc}")
