"""``telemetry-server migrate``: copy a server's SQLite file into PostgreSQL, in batches,
resumable, then verify both sides hold the same rows.

The source is read through one ``server.storage.dump.Dump`` (a read transaction: a
consistent snapshot, safe beside a running server). Runs are copied in id order, each
batch with ``COPY`` into ``agent_runs`` with the SQLite ids kept (so the list order's
tie-break, and therefore every page, is the same; a batch meeting a row that is there
already goes again through a staging table with ``INSERT ... ON CONFLICT DO NOTHING``)
and, in the same transaction, the progress marker (the last id copied, in ``server_meta``
under a key naming the source database). A run killed at any moment leaves whole batches and a
marker that matches them; the next run goes on after the marker, and ON CONFLICT keeps
a row that is somehow there already from being doubled. Then the identity sequence is
moved past the largest id (the PostgreSQL server's own inserts continue after it), the
sidecars' presence rows are copied, and the verification compares the run counts and
per-agent digests (``digest``) of the snapshot and of the target.

The rules (a refusal says which):

* The target is the migration's alone until it verified: the first run needs an empty
  ``agent_runs`` (a database holding other runs is refused: ids and event_ids are kept
  as they are, so two sources cannot be merged). The cursor key of the SQLite server is
  copied with the first batch, so its list cursors go on working on PostgreSQL.
* Writes to the SQLite file after a run's snapshot are not in it. New runs are copied by
  the next run (it resumes after the marker, on a new snapshot); runs changed or deleted
  after they were copied make the verification fail, and ``resync`` copies the source's
  rows of every differing agent again (SQLite wins). Hence: copy while the server runs,
  then stop it and run again with ``resync`` before switching the servers over.
* Only one migrate at a time into a database (a session advisory lock).
* A first copy of ``bulk_indexes.BULK_ROWS`` runs or more drops the list indexes (their definitions
  kept beside the marker, in the marker's transaction) and makes them again once every
  run is in, before verifying; a run killed meanwhile leaves them dropped, and the next
  run makes them. Until a migrate verified, the target is not for serving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from server.postgres import bulk_indexes
from server.postgres.digest import AgentDigests, Digests, differing, read_digests
from server.postgres.errors import describe_open_failure
from server.postgres.runs import ENCODED_COLUMNS
from server.postgres.schema import migrate
from server.postgres.text import decode, encode
from server.postgres.url import DatabaseUrl
from server.storage.dump import ROW_COLUMNS, SIDECAR_COLUMNS, Dump

#: Runs per batch (one transaction each): ~5-10 MB at the fleet's row sizes.
BATCH_ROWS = 5000
#: Upper bound of ``--batch-rows``: a batch is held in memory twice (read, then COPY);
#: at the 2.6 KB of a typical run 50,000 rows are ~130 MB, and a batch past it buys
#: no speed (the per-transaction cost is already small at 5,000).
MAX_BATCH_ROWS = 50_000
#: The session advisory lock held by a migrate (two-int space: "te13", 3; 1 is the
#: schema migration's, 2 the leader's).
MIGRATE_LOCK: tuple[int, int] = (0x74653133, 3)
_STAGING = "telemetry_migrate_staging"
_COLUMNS = ", ".join(ROW_COLUMNS)
_INTEGER_COLUMNS = frozenset(
    (
        "id",
        "items_discovered",
        "items_succeeded",
        "items_failed",
        "items_skipped",
        "duration_ms",
        "heartbeat_timeout_s",
        "snapshot_seq",
    )
)
_ENCODED_POSITIONS = frozenset(i for i, c in enumerate(ROW_COLUMNS) if c in ENCODED_COLUMNS)
_INTEGER_POSITIONS = frozenset(i for i, c in enumerate(ROW_COLUMNS) if c in _INTEGER_COLUMNS)
_INSERT = (
    f"INSERT INTO agent_runs ({_COLUMNS}) OVERRIDING SYSTEM VALUE"
    f" SELECT {_COLUMNS} FROM {_STAGING} ORDER BY id ON CONFLICT DO NOTHING"
)

Progress = Callable[[int, int], None]


class MigrateRefused(RuntimeError):
    """The migration cannot start or go on; one line for the operator (no password)."""


class CannotCopy(RuntimeError):
    """A source row PostgreSQL cannot hold as it is (a foreign writer's value)."""


@dataclass
class Outcome:
    #: Runs inserted by this run (resynced ones included).
    copied: int = 0
    source_runs: int = 0
    target_runs: int = 0
    agents: int = 0
    sidecars: int = 0
    resynced_agents: int = 0
    #: Agents whose runs differ after the copy (empty: verified).
    differing: list[str] = field(default_factory=list)
    sidecars_differ: bool = False
    seconds: float = 0.0
    #: Of which: copying (resync included), and verifying.
    copy_seconds: float = 0.0
    verify_seconds: float = 0.0

    @property
    def verified(self) -> bool:
        return not self.differing and not self.sidecars_differ


def stored_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """A SQLite row (``ROW_COLUMNS``) in PostgreSQL's stored form: free text NUL-safe
    (``text.encode``), the rest checked to be what the column holds."""
    values = list(row)
    for position, value in enumerate(values):
        if value is None:
            continue
        if position in _INTEGER_POSITIONS:
            if type(value) is not int:
                raise CannotCopy(
                    f"run id {values[0]!r}: {ROW_COLUMNS[position]} holds a"
                    f" {type(value).__name__}, not an integer"
                )
        elif type(value) is not str:
            raise CannotCopy(
                f"run id {values[0]}: {ROW_COLUMNS[position]} holds a {type(value).__name__},"
                " not text"
            )
        elif position in _ENCODED_POSITIONS:
            values[position] = encode(value)
        elif "\x00" in value:
            raise CannotCopy(
                f"run id {values[0]}: {ROW_COLUMNS[position]} holds U+0000, which"
                " PostgreSQL's text cannot store"
            )
    return tuple(values)


def _marker_key(dump: Dump) -> str:
    return f"migrate:sqlite:{dump.identity}"


async def connect(url: DatabaseUrl, timeout_s: float = 10.0) -> Any:
    """A connection to the target, its failures as one line without the password."""
    try:
        return await asyncpg.connect(
            url.dsn, timeout=timeout_s, server_settings={"application_name": "telemetry-migrate"}
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise MigrateRefused(str(describe_open_failure(exc, url.dsn, url.redacted))) from exc


async def run(
    dump: Dump,
    url: DatabaseUrl,
    *,
    batch_rows: int = BATCH_ROWS,
    resync: bool = False,
    progress: Progress | None = None,
) -> Outcome:
    """Copy what the target lacks of ``dump``, resync if asked, then verify."""
    started = time.monotonic()
    conn = await connect(url)
    try:
        await _prepare(conn, url)
        outcome = Outcome(source_runs=dump.runs)
        after = await _start(conn, dump)
        outcome.copied = await _copy(conn, dump, after, batch_rows, progress)
        await bulk_indexes.restore(conn, "migrate:%:indexes")
        await _finish(conn, dump)
        outcome.sidecars = await _copy_sidecars(conn, dump)
        verifying = time.monotonic()
        source = await _verify(conn, dump, outcome)
        outcome.verify_seconds = time.monotonic() - verifying
        if resync and not outcome.verified:
            outcome.resynced_agents = len(outcome.differing)
            outcome.copied += await _resync(conn, dump, outcome.differing, batch_rows)
            outcome.sidecars = await _copy_sidecars(conn, dump, replace=True)
            verifying = time.monotonic()
            await _verify(conn, dump, outcome, source)
            outcome.verify_seconds += time.monotonic() - verifying
        outcome.seconds = time.monotonic() - started
        outcome.copy_seconds = outcome.seconds - outcome.verify_seconds
        return outcome
    finally:
        await conn.close(timeout=5)


async def _prepare(conn: Any, url: DatabaseUrl) -> None:
    """One migrate at a time, a UTF8 database, migrated to this server's schema."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *MIGRATE_LOCK):
        raise MigrateRefused(f"another migrate into {url.redacted} is running")
    encoding = await conn.fetchval("SHOW server_encoding")
    if encoding != "UTF8":
        raise MigrateRefused(
            f"{url.redacted}: database encoding is {encoding}; create it with ENCODING 'UTF8'"
        )
    try:
        await migrate(conn)
    except RuntimeError as exc:  # SchemaTooNew, MigrationLockTimeout
        raise MigrateRefused(f"{url.redacted}: {exc}") from exc
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} (LIKE agent_runs INCLUDING DEFAULTS)"
    )


async def _start(conn: Any, dump: Dump) -> int:
    """The id to copy after: the marker's, or 0 on a first run into an empty target
    (which then gets the marker and the source's cursor key)."""
    key = _marker_key(dump)
    async with conn.transaction():
        found = await conn.fetchval("SELECT value FROM server_meta WHERE key = $1", key)
        if found is not None:
            return int(orjson.loads(bytes(found))["last_id"])
        # Locks out a PostgreSQL server inserting between the check and the marker.
        await conn.execute("LOCK TABLE agent_runs IN SHARE MODE")
        present = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM agent_runs LIMIT 1) AS r"
        )
        if present:
            total = await conn.fetchval("SELECT count(*) FROM agent_runs")
            raise MigrateRefused(
                f"the target already holds {total} runs that were not copied from"
                f" {dump.path}: migrate copies into an empty database only (ids and"
                " event_ids are kept as they are); use a new database"
            )
        await _mark(conn, key, 0)
        if dump.runs >= bulk_indexes.BULK_ROWS:
            await bulk_indexes.defer(conn, f"{key}:indexes")
        if dump.cursor_key:
            await conn.execute(
                "UPDATE server_meta SET value = $1 WHERE key = 'cursor_key'", dump.cursor_key
            )
    return 0


async def _mark(conn: Any, key: str, last_id: int) -> None:
    value = orjson.dumps({"last_id": last_id})
    await conn.execute(
        "INSERT INTO server_meta (key, value) VALUES ($1, $2)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        key,
        value,
    )


async def _insert(conn: Any, rows: Sequence[tuple[Any, ...]]) -> int:
    """Stored rows into agent_runs; how many were new. Call inside a transaction.

    ``COPY`` straight into the table (it writes the given ids, as ``OVERRIDING SYSTEM
    VALUE`` does), in a savepoint; when a row is there already (a unique violation),
    the batch goes again through the staging table with ``ON CONFLICT DO NOTHING``, so
    a row is never doubled and the others still arrive (the verification then says
    whether the one there was the same)."""
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("agent_runs", records=rows, columns=list(ROW_COLUMNS))
        return len(rows)
    except asyncpg.UniqueViolationError:
        pass
    await conn.copy_records_to_table(_STAGING, records=rows, columns=list(ROW_COLUMNS))
    status = await conn.execute(_INSERT)
    await conn.execute(f"TRUNCATE {_STAGING}")
    return int(status.rsplit(" ", 1)[-1])


async def _copy(
    conn: Any, dump: Dump, after: int, batch_rows: int, progress: Progress | None
) -> int:
    """Every run of the snapshot after ``after``, a batch per transaction, each with
    the marker. The next batch is read from SQLite (in a thread) while PostgreSQL
    writes this one."""
    key = _marker_key(dump)

    def read(after_id: int) -> list[tuple[Any, ...]]:
        return [stored_row(row) for row in dump.runs_after(after_id, batch_rows)]

    copied = 0
    pending = asyncio.ensure_future(asyncio.to_thread(read, after))
    try:
        while rows := await pending:
            last = int(rows[-1][0])
            pending = asyncio.ensure_future(asyncio.to_thread(read, last))
            async with conn.transaction():
                copied += await _insert(conn, rows)
                await _mark(conn, key, last)
            if progress is not None:
                progress(copied, last)
    finally:
        # The dump's connection is closed by the caller: never under a read.
        if not pending.done():
            await asyncio.wait({pending})
    return copied


async def _finish(conn: Any, dump: Dump) -> None:
    """The identity sequence past the largest id (PostgreSQL's inserts go on after it)."""
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('agent_runs', 'id'),"
        " (SELECT coalesce(max(id), 0) + 1 FROM agent_runs), false)"
    )


async def _copy_sidecars(conn: Any, dump: Dump, *, replace: bool = False) -> int:
    """The sidecars' presence rows (the source's win); with ``replace`` the target's
    others go."""
    rows = [stored_row_sidecar(row) for row in dump.sidecars()]
    async with conn.transaction():
        if replace:
            await conn.execute("DELETE FROM sidecars")
        await conn.executemany(
            f"INSERT INTO sidecars ({', '.join(SIDECAR_COLUMNS)}) VALUES ($1, $2, $3)"
            " ON CONFLICT (sidecar_id) DO UPDATE SET last_contact_at = excluded.last_contact_at,"
            " queued_since = excluded.queued_since",
            rows,
        )
    return len(rows)


def stored_row_sidecar(row: Sequence[Any]) -> tuple[Any, ...]:
    for value in row:
        if value is not None and (type(value) is not str or "\x00" in value):
            raise CannotCopy(f"sidecar {row[0]!r}: a value PostgreSQL's text cannot store")
    return tuple(row)


async def _verify(
    conn: Any, dump: Dump, outcome: Outcome, source: Digests | None = None
) -> Digests:
    """Counts and per-agent digests of the snapshot and the target, side by side
    (SQLite's in a thread while PostgreSQL computes its own)."""

    def source_digests() -> Digests:
        digests = AgentDigests()
        for rows in dump.all_runs():
            digests.add(stored_row(row) for row in rows)
        return digests.result()

    reading = asyncio.ensure_future(asyncio.to_thread(source_digests)) if source is None else None
    try:
        target = await read_digests(conn)
    finally:
        if reading is not None:
            source = await reading
    assert source is not None
    outcome.differing = differing(source, target)
    outcome.agents = len(source)
    outcome.source_runs = sum(count for count, _ in source.values())
    outcome.target_runs = sum(count for count, _ in target.values())
    there = await conn.fetch(f"SELECT {', '.join(SIDECAR_COLUMNS)} FROM sidecars")
    outcome.sidecars_differ = sorted(tuple(row) for row in there) != sorted(dump.sidecars())
    return source


async def _resync(conn: Any, dump: Dump, agents: Sequence[str], batch_rows: int) -> int:
    """The source's runs of ``agents`` in place of the target's, in one transaction
    (killed, it leaves the target as it was). Deleting by agent is enough: a run that
    moved between agents, or exists on one side only, makes every agent it touches
    differ. ``agents`` are names as stored here (``text.encode``d), SQLite's are not."""
    batches = dump.runs_of_agents([decode(agent) for agent in agents], batch_rows)

    def read() -> list[tuple[Any, ...]]:
        return [stored_row(row) for row in next(batches, [])]

    copied = 0
    async with conn.transaction():
        await conn.execute(
            "DELETE FROM agent_runs WHERE agent_name = ANY($1::text[])", list(agents)
        )
        while rows := await asyncio.to_thread(read):
            copied += await _insert(conn, rows)
        await _mark(conn, _marker_key(dump), dump.max_id)
    await _finish(conn, dump)
    return copied
