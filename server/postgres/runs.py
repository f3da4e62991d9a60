"""All SQL that reads and writes runs on PostgreSQL: the semantics of
``server.storage.runs``, statement for statement, on an asyncpg connection.

The Python side (parameters of a validated run, the merge patch, a row as answered) is
``server.storage.runs``'s own, so both backends build and answer runs the same way;
only the SQL differs. Write functions run inside the caller's transaction.

Concurrency (several replicas on one database): a write that touches several runs first
takes a transaction advisory lock per run (``lock_runs``), in one global order, so two
batches touching the same runs serialise instead of deadlocking, and the upsert reads
the row it changes ``FOR UPDATE``, so a concurrent single PATCH waits for it. A single
create needs no lock: ``INSERT ... ON CONFLICT DO NOTHING`` is atomic.

The names' tables (``run_agent_names``, ``run_job_types``) are written by a trigger per
row, in the batch's row order; two batches naming the same new agents in other orders
would each wait for a name the other inserted, a deadlock. So a batch first notes its
names itself (``note_names``), sorted, agents before job types, after its run locks:
every writer takes the names in that one order, and the trigger then finds them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from server.contract.fields import TERMINAL_STATUSES
from server.contract.models import RunCreate, RunQuery, RunUpdate, UpsertItem
from server.contract.run_record import (
    RUN_COLUMNS,
    RUN_COUNTER_COLUMNS,
    RUN_DATA_COLUMNS,
    RUN_STALENESS_COLUMNS,
    RUN_TEXT_COLUMNS,
)
from server.postgres.filters import filter_clauses
from server.postgres.text import decode, encode
from server.storage.cursor import Position
from server.storage.run_rules import KEPT, db_value, merged_progress, upsert_diff
from server.storage.runs import (
    HeartbeatOutcome,
    Page,
    Snapshot,
    UpsertOutcome,
    UpsertSummary,
    insert_params,
    item_snapshot,
    overtaken,
    row_to_run,
    seen_instant,
)
from server.storage.sidecars import Presence
from server.storage.stale import StalePolicy, now_utc

#: The reaper's rule and the instant it is judged at (``stale=true``).
StaleRule = tuple[StalePolicy, datetime]

#: The columns of ``server.storage.runs.insert_params``' tuple, in its order.
INSERT_COLUMNS: tuple[str, ...] = (
    "event_id",
    *RUN_DATA_COLUMNS,
    "created_at",
    "updated_at",
    "last_seen_at",
    "sidecar_id",
)
#: Columns whose values go through ``text.encode`` (those that may hold any text).
ENCODED_COLUMNS = frozenset(("event_id", *RUN_TEXT_COLUMNS))
_ENCODED = ENCODED_COLUMNS
_ENCODED_POSITIONS = tuple(i for i, c in enumerate(INSERT_COLUMNS) if c in _ENCODED)
_DECODED_POSITIONS = tuple(i for i, c in enumerate(RUN_COLUMNS) if c in _ENCODED)
_INTEGER_COLUMNS = frozenset((*RUN_COUNTER_COLUMNS, *RUN_STALENESS_COLUMNS))

_COLUMN_LIST = ", ".join(INSERT_COLUMNS)
_INSERT_SQL = (
    f"INSERT INTO agent_runs ({_COLUMN_LIST})"
    f" VALUES ({', '.join(f'${i}' for i in range(1, len(INSERT_COLUMNS) + 1))})"
    " ON CONFLICT (event_id) DO NOTHING RETURNING id"
)
_ARRAYS = ", ".join(
    f"${i}::{'int8' if column in _INTEGER_COLUMNS else 'text'}[]"
    for i, column in enumerate(INSERT_COLUMNS, start=1)
)
# unnest() yields the rows in array order, so ids (the insertion order) follow the batch.
_INSERT_MANY_SQL = (
    f"WITH new AS (INSERT INTO agent_runs ({_COLUMN_LIST})"
    f" SELECT * FROM unnest({_ARRAYS})"
    " ON CONFLICT (event_id) DO NOTHING RETURNING 1) SELECT count(*) FROM new"
)
_SELECT_COLUMNS = ", ".join(RUN_COLUMNS)
_CREATED_AT = RUN_COLUMNS.index("created_at")
_LOCK_SQL = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::int8[]) AS k"


def stored_params(params: tuple[Any, ...]) -> list[Any]:
    """``insert_params``' tuple as this backend stores it (NUL-safe text)."""
    values = list(params)
    for position in _ENCODED_POSITIONS:
        values[position] = encode(values[position])
    return values


def lock_key(event_id: str) -> int:
    digest = hashlib.blake2b(event_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_runs(conn: Any, event_ids: Sequence[str]) -> None:
    """Take each run's transaction advisory lock, in one global order (no deadlock
    between writers that all lock this way); released at commit or rollback."""
    keys = sorted({lock_key(event_id) for event_id in event_ids})
    if keys:
        await conn.fetchval(_LOCK_SQL, keys)


_NOTE_AGENTS_SQL = (
    "WITH new AS (INSERT INTO run_agent_names (name) SELECT unnest($1::text[])"
    " ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM new"
)
_NOTE_JOBS_SQL = _NOTE_AGENTS_SQL.replace("run_agent_names", "run_job_types")


def batch_names(records: Sequence[RunCreate | RunUpdate]) -> tuple[set[str], set[str]]:
    """The agent names and job types a batch's creates and updates may write."""
    agents = {record.agent_name for record in records if record.agent_name is not None}
    jobs = {record.job_type for record in records if record.job_type is not None}
    return agents, jobs


async def note_names(conn: Any, agents: set[str], jobs: set[str]) -> None:
    """Insert the names not yet known, in the one order every batch uses (see the module's
    docstring), and tell the replicas (``LISTEN telemetry_metadata``) when one is new, as
    the trigger would have. Call inside the batch's transaction, after ``lock_runs``."""
    new = 0
    if agents:
        new += await conn.fetchval(_NOTE_AGENTS_SQL, sorted(encode(name) for name in agents))
    if jobs:
        new += await conn.fetchval(_NOTE_JOBS_SQL, sorted(encode(name) for name in jobs))
    if new:
        await conn.execute("SELECT pg_notify('telemetry_metadata', '')")


async def insert_row(conn: Any, params: tuple[Any, ...]) -> bool:
    """Insert one run's ``insert_params``; False for a duplicate event_id."""
    return await conn.fetchval(_INSERT_SQL, *stored_params(params)) is not None


async def insert_rows(conn: Any, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert prepared rows in one statement, in order; how many were new (a duplicate
    within the rows counts once, as SQLite's executemany has it)."""
    if not rows:
        return 0
    columns = list(zip(*(stored_params(row) for row in rows), strict=True))
    return int(await conn.fetchval(_INSERT_MANY_SQL, *(list(column) for column in columns)))


_UNREAP = "reaped_at = NULL, "
_UNREAP_REASON = "error_summary = CASE WHEN reaped_at IS NULL THEN error_summary END, "
_TOUCH = "last_seen_at = GREATEST(COALESCE(last_seen_at, ''), {seen}), sidecar_id = {sidecar}"


async def update_run(
    conn: Any,
    event_id: str,
    changes: dict[str, Any],
    now: str,
    *,
    seen: str | None = None,
    sidecar: str | None = None,
    snapshot: Snapshot | None = None,
) -> str | None:
    """``server.storage.runs.update_run``: set the given columns, refresh last_seen_at
    (never backwards) and keep ``snapshot`` if given; the run_id, or None if the run
    does not exist."""
    status = changes.get("status")
    params: list[Any] = []
    assignments = []
    for column, value in changes.items():
        params.append(encode(db_value(column, value)))
        if column == "status" and status == "running":  # a late running never revives
            assignments.append(
                f"status = CASE WHEN reaped_at IS NULL THEN ${len(params)} ELSE status END"
            )
        else:
            assignments.append(f"{column} = ${len(params)}")
    if snapshot is not None:
        params.extend(snapshot)
        assignments.append(f"snapshot_source = ${len(params) - 1}, snapshot_seq = ${len(params)}")
    prefix = ""
    if status in TERMINAL_STATUSES:
        # The agent's terminal status replaces the reaper's: the reaper's reason goes
        # unless the update gives its own (SQLite keeps the rightmost of two assignments;
        # PostgreSQL refuses two, so the reason's is left out when the update sets one).
        prefix = _UNREAP if "error_summary" in changes else _UNREAP + _UNREAP_REASON
    n = len(params)
    touch = _TOUCH.format(seen=f"${n + 2}", sidecar=f"${n + 3}")
    run_id = await conn.fetchval(
        f"UPDATE agent_runs SET {prefix}{', '.join(assignments)}, updated_at = ${n + 1}, {touch}"
        f" WHERE event_id = ${n + 4} RETURNING run_id",
        *params,
        now,
        seen or now,
        sidecar,
        encode(event_id),
    )
    return None if run_id is None else str(decode(run_id))


_TOUCH_SQL = (
    f"UPDATE agent_runs SET {_TOUCH.format(seen='$1', sidecar='$2')} WHERE event_id = $3"
    " AND (last_seen_at IS NULL OR last_seen_at < $1 OR sidecar_id IS DISTINCT FROM $2)"
)


_TOUCH_SNAPSHOT_SQL = (
    f"UPDATE agent_runs SET {_TOUCH.format(seen='$1', sidecar='$2')},"
    " snapshot_source = $4, snapshot_seq = $5 WHERE event_id = $3"
    " AND (last_seen_at IS NULL OR last_seen_at < $1 OR sidecar_id IS DISTINCT FROM $2"
    " OR snapshot_source IS DISTINCT FROM $4 OR snapshot_seq IS DISTINCT FROM $5)"
)


async def touch(
    conn: Any, event_id: str, seen: str, sidecar: str | None, snapshot: Snapshot | None = None
) -> None:
    """Refresh last_seen_at (never backwards), the delivering sidecar and, if given, the
    snapshot kept; a row already up to date is not written."""
    if snapshot is None:
        await conn.execute(_TOUCH_SQL, seen, sidecar, encode(event_id))
        return
    await conn.execute(_TOUCH_SNAPSHOT_SQL, seen, sidecar, encode(event_id), *snapshot)


def _create_only(item: UpsertItem) -> bool:
    return item.update is None and item.metrics_patch is None and not item.heartbeat


async def upsert_many(
    conn: Any,
    items: Sequence[UpsertItem],
    create_params: Sequence[tuple[Any, ...] | None],
    now: str,
    sidecar: str | None = None,
) -> UpsertSummary:
    """``server.storage.runs.upsert_many``: snapshots applied in order, consecutive
    create-only ones inserted in one statement. Call inside a transaction that holds
    ``lock_runs`` for every item's run."""
    summary = UpsertSummary()
    pending: list[tuple[Any, ...]] = []

    async def flush() -> None:
        inserted = await insert_rows(conn, pending)
        summary.inserted += inserted
        summary.unchanged += len(pending) - inserted
        if inserted < len(pending):  # duplicates (a retried batch): refresh them too
            await conn.executemany(
                _TOUCH_SQL, [(row[-2], row[-1], encode(row[0])) for row in pending]
            )
        pending.clear()

    for position, (item, params) in enumerate(zip(items, create_params, strict=True)):
        if params is not None and _create_only(item):
            pending.append(params)
            continue
        await flush()
        outcome = await upsert(conn, item, now, params, sidecar=sidecar)
        if outcome == "not_found":
            summary.not_found.append(position)
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
    await flush()
    return summary


async def upsert(
    conn: Any,
    item: UpsertItem,
    now: str,
    create_params: tuple[Any, ...] | None = None,
    *,
    sidecar: str | None = None,
) -> UpsertOutcome:
    """``server.storage.runs.upsert``: insert-if-new, then changed fields only, then the
    metrics merge patch; last_seen_at refreshed either way. The row is read ``FOR
    UPDATE``: what is compared is what is changed (and the snapshot kept: an item
    ``overtaken`` by a newer one of its source changes no field)."""
    seen = seen_instant(item.seen_at, now)
    snapshot = item_snapshot(item)
    if item.create is not None and create_params is None:
        create_params = insert_params(item.create, now, seen, sidecar)
    inserted = create_params is not None and await insert_row(conn, create_params)
    if _create_only(item):
        if not inserted:
            await touch(conn, item.event_id, seen, sidecar)
        return "inserted" if inserted else "unchanged"
    changes = item.update.changes() if item.update is not None else {}
    stored = await conn.fetchrow(
        f"SELECT {', '.join((*KEPT, *changes))} FROM agent_runs WHERE event_id = $1 FOR UPDATE",
        encode(item.event_id),
    )
    if stored is None:
        return "not_found"
    values = [decode(value) for value in stored]
    if overtaken(snapshot, values[3], values[4]):
        await touch(conn, item.event_id, seen, sidecar)
        return "unchanged"
    diff = upsert_diff(values, changes, item.metrics_patch)
    if diff:
        await update_run(
            conn, item.event_id, diff, now, seen=seen, sidecar=sidecar, snapshot=snapshot
        )
    else:
        await touch(conn, item.event_id, seen, sidecar, snapshot)
    if inserted:
        return "inserted"
    return "updated" if diff else "unchanged"


async def heartbeat(
    conn: Any,
    event_id: str,
    progress: dict[str, Any] | None,
    now: str,
    max_metrics_bytes: int,
) -> HeartbeatOutcome:
    """``server.storage.runs.heartbeat``: refresh last_seen_at and merge ``progress``
    into metrics_json, for a running run only; updated_at moves only when metrics_json
    changed. Call inside a transaction: the row is read ``FOR UPDATE``."""
    row = await conn.fetchrow(
        "SELECT id, status, metrics_json FROM agent_runs WHERE event_id = $1 FOR UPDATE",
        encode(event_id),
    )
    if row is None:
        return "not_found"
    row_id, status, stored = row
    if status in TERMINAL_STATUSES:
        return "finished"
    merged = merged_progress(stored, progress, max_metrics_bytes)
    changed, params = (
        ("metrics_json = $1, updated_at = $2, ", [merged, now]) if merged else ("", [])
    )
    n = len(params)
    touch = _TOUCH.format(seen=f"${n + 1}", sidecar=f"${n + 2}")
    await conn.execute(
        f"UPDATE agent_runs SET {changed}{touch} WHERE id = ${n + 3}", *params, now, None, row_id
    )
    return "applied"


async def record_presence(conn: Any, presence: Presence, now: str) -> None:
    """``server.storage.sidecars.record``: the sidecar was heard from now."""
    await conn.execute(
        "INSERT INTO sidecars (sidecar_id, last_contact_at, queued_since) VALUES ($1, $2, $3)"
        " ON CONFLICT (sidecar_id) DO UPDATE SET"
        " last_contact_at = GREATEST(sidecars.last_contact_at, excluded.last_contact_at),"
        " queued_since = excluded.queued_since",
        presence.sidecar_id,
        now,
        presence.queued_since,
    )


# ---- reads ---------------------------------------------------------------------------


def _run(row: Sequence[Any]) -> dict[str, Any]:
    return stored_run(row)


def stored_run(row: Sequence[Any]) -> dict[str, Any]:
    """A row of ``RUN_COLUMNS`` (any columns after them ignored) as the API answers it."""
    values = list(row)
    for position in _DECODED_POSITIONS:
        values[position] = decode(values[position])
    return row_to_run(values)


async def get_run(conn: Any, event_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_SELECT_COLUMNS} FROM agent_runs WHERE event_id = $1", encode(event_id)
    )
    return None if row is None else _run(row)


def query_sql(
    query: RunQuery, after: Position | None = None, stale: StaleRule | None = None
) -> tuple[str, list[Any]]:
    """A list query's SELECT (the filters and keyset cursor of ``server.storage.runs``,
    in the list order ``created_at DESC, id DESC``) and its parameters; one row more
    than the page, each with its id last. ``stale``: the reaper's rule and the instant,
    for ``stale=true`` (the SQLite backend's default rule when not given)."""
    clauses, params = filter_clauses(query, stale or (StalePolicy(), now_utc()))
    if after is not None:
        params.extend((after.created_at, after.row_id))
        clauses.append(f"(created_at, id) < (${len(params) - 1}, ${len(params)})")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.extend((query.limit + 1, query.offset))
    sql = (
        f"SELECT {_SELECT_COLUMNS}, id FROM agent_runs{where}"
        f" ORDER BY created_at DESC, id DESC LIMIT ${len(params) - 1} OFFSET ${len(params)}"
    )
    return sql, params


async def query_runs(
    conn: Any, query: RunQuery, after: Position | None = None, stale: StaleRule | None = None
) -> Page:
    """A page of runs as dicts, and where the next page starts (None on the last)."""
    rows = await conn.fetch(*_bound(query_sql(query, after, stale)))
    following = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        following = Position(str(last[_CREATED_AT]), int(last[-1]))
    return Page([_run(row) for row in rows[: query.limit]], following)


def _bound(sql_params: tuple[str, list[Any]]) -> list[Any]:
    sql, params = sql_params
    return [sql, *params]
