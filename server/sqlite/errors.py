"""Which kind of failure an SQLite error is, by its primary result code.

SQLite reports extended codes (SQLITE_BUSY_SNAPSHOT 517, SQLITE_IOERR_READ 266,
SQLITE_CORRUPT_INDEX 779, ...) whose low byte is the primary code, so errors are
classified by ``sqlite_errorcode & 0xFF``. Never by their message: messages carry
table and column names ("NOT NULL constraint failed: t.full_name") and change
between SQLite releases.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=sqlite3.Error)

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Kind(Enum):
    """What the caller can do about a failure (wait, make room, set the file aside...)."""

    BUSY = "busy"  # another connection holds a lock: retrying later may succeed
    FULL = "full"  # no space left for the file
    CORRUPT = "corrupt"  # the file is damaged or is not a database
    READONLY = "readonly"  # the file (or its directory) cannot be written
    IO = "io"  # the operating system failed a read, write or fsync
    INTERRUPTED = "interrupted"  # the statement was cut short (interrupt, progress handler)
    CONSTRAINT = "constraint"  # the data broke a constraint: retrying cannot help
    OTHER = "other"  # anything else, including sqlite3's own errors (no code)


_KINDS: dict[int, Kind] = {
    sqlite3.SQLITE_BUSY: Kind.BUSY,
    sqlite3.SQLITE_LOCKED: Kind.BUSY,
    sqlite3.SQLITE_FULL: Kind.FULL,
    sqlite3.SQLITE_CORRUPT: Kind.CORRUPT,
    sqlite3.SQLITE_NOTADB: Kind.CORRUPT,
    sqlite3.SQLITE_READONLY: Kind.READONLY,
    sqlite3.SQLITE_IOERR: Kind.IO,
    sqlite3.SQLITE_INTERRUPT: Kind.INTERRUPTED,
    sqlite3.SQLITE_CONSTRAINT: Kind.CONSTRAINT,
}


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an error (extended codes folded), or None."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def kind(exc: BaseException) -> Kind:
    """The kind of an SQLite error (OTHER for an error without a code, or not SQLite's)."""
    code = primary_code(exc)
    return Kind.OTHER if code is None else _KINDS.get(code, Kind.OTHER)


def is_busy(exc: BaseException) -> bool:
    """True when the operation would have to wait for another connection's lock."""
    return kind(exc) is Kind.BUSY


def is_corruption(exc: BaseException) -> bool:
    """True when SQLite says the file is not a database or is malformed (any extended code)."""
    return isinstance(exc, sqlite3.DatabaseError) and kind(exc) is Kind.CORRUPT


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL or an OS error meaning no space (or quota) is left."""
    return kind(exc) is Kind.FULL or (isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS)


def coded_error(cls: type[E], message: str, code: int, name: str) -> E:
    """An error of our own that carries an SQLite code, so it is classified like SQLite's."""
    exc = cls(message)
    exc.sqlite_errorcode = code
    exc.sqlite_errorname = name
    return exc
