"""PostgreSQL failures the server answers with 503 and ``Retry-After``, as SQLite's busy,
full and unavailable are (``server.storage.connection.StorageUnavailable``, which the
HTTP layer already translates). Classified by exception class (SQLSTATE), never by
message; the message answered is fixed (no SQL, no values, no host)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, urlsplit

import asyncpg

from server.postgres.url import host_list
from server.storage.connection import StorageUnavailable

#: The longest a request waits for a pooled connection (all busy: slow queries,
#: exports) before its answer is a 503 "busy, retry shortly" rather than a wait as long
#: as theirs (up to the command timeout); below spoold's upstream timeout, so a batch
#: is refused for sure instead of left in doubt.
ACQUIRE_TIMEOUT_S = 5.0

#: Another transaction is in the way: retry soon.
_BUSY: tuple[type[BaseException], ...] = (
    asyncpg.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,  # statement_timeout, lock_timeout
    asyncpg.TooManyConnectionsError,
    TimeoutError,  # the pool's acquire or command timeout
)
_FULL: tuple[type[BaseException], ...] = (asyncpg.DiskFullError, asyncpg.OutOfMemoryError)
#: The server is gone, restarting, read-only (a standby), or the connection broke.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, crash shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InterfaceError,  # the connection was closed under the operation
    # asyncpg's protocol state machine, when the server vanished mid-statement ("cannot
    # switch to state 12; another operation (2) is in progress", seen in the kill -9 test)
    asyncpg.InternalClientError,
    OSError,  # refused, reset, unreachable
)


def classify(exc: BaseException) -> StorageUnavailable | None:
    """The 503 for a failure of the database rather than of the request; None otherwise."""
    if isinstance(exc, _BUSY):
        return StorageUnavailable("database is busy; retry shortly", retry_after_s=1)
    if isinstance(exc, _FULL):
        return StorageUnavailable("database storage is full", retry_after_s=30)
    if isinstance(exc, _UNAVAILABLE):
        return StorageUnavailable("database unavailable", retry_after_s=5)
    return None


@asynccontextmanager
async def available() -> AsyncIterator[None]:
    """Raise what ``classify`` makes of a database failure inside the block."""
    try:
        yield
    except Exception as exc:
        # asyncpg may turn a cancellation in the middle of connecting into an error of
        # its own: a task being cancelled must end, not carry on with a 503.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError from exc
        translated = classify(exc)
        if translated is None:
            raise
        raise translated from exc


class CannotOpen(RuntimeError):
    """The database could not be opened at start-up; the message is one line for the
    operator, with the URL's password removed."""


def describe_open_failure(exc: BaseException, dsn: str, redacted: str) -> CannotOpen:
    """``exc`` (from connecting, checking or migrating) as one line naming the database
    without its password, whatever the driver put in its message."""
    reason = without_secrets(" ".join(str(exc).split()) or type(exc).__name__, dsn)
    if isinstance(exc, TimeoutError):
        reason = "no answer in time"
    hosts = _host_count(dsn)
    if hosts > 1:
        # asyncpg raises the last host's failure (often "connection refused") even when
        # an earlier host answered but was not what target_session_attrs asks: say both.
        attrs = dict(parse_qsl(urlsplit(dsn).query)).get("target_session_attrs", "any")
        reason = (
            f"none of its {hosts} hosts was usable as target_session_attrs={attrs}"
            f" (down, or another role); last failure: {reason}"
        )
    return CannotOpen(f"cannot open {redacted}: {reason} ({type(exc).__name__})")


def _host_count(dsn: str) -> int:
    try:
        return len(host_list(urlsplit(dsn).netloc))
    except ValueError:
        return 0


def without_secrets(text: str, dsn: str) -> str:
    """``text`` with the URL's password (user part or ``?password=``) as ``***``."""
    for secret in _secrets(dsn):
        text = text.replace(secret, "***")
    return text


def _secrets(dsn: str) -> list[str]:
    parts = urlsplit(dsn)
    found = [parts.password] if parts.password else []
    found += [value for key, value in parse_qsl(parts.query) if key == "password" and value]
    return [secret for secret in found if len(secret) >= 1]
