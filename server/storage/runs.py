"""All SQL that reads and writes runs. Functions take a connection; callers own threads.

Write functions run inside the writer's group transaction (see ``writer``);
read functions run on read-only connections (see ``reader``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, is_not
from typing import Any, Literal

import orjson

from server.contract.codec import dumps_text
from server.contract.fields import CANONICAL_STATUSES, TERMINAL_STATUSES
from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.contract.run_record import RUN_COLUMNS, RUN_DATA_COLUMNS, RUN_JSON_COLUMNS
from server.contract.stats import StatsQuery
from server.storage import run_json, window
from server.storage.cursor import Position
from server.storage.run_rules import KEPT, db_value, merged_progress, upsert_diff
from server.storage.schema import (
    EARLY_INDEXES,
    EQUALITY_FILTERS,
    LATE_CREATED_INDEXES,
    LATE_INDEXES,
    LIST_INDEXES,
    late_value_sql,
)

_INSERT_COLUMNS = (
    "event_id",
    *RUN_DATA_COLUMNS,
    "created_at",
    "updated_at",
    "last_seen_at",
    "sidecar_id",
)
_INSTANTS = (_INSERT_COLUMNS.index("start_time"), _INSERT_COLUMNS.index("created_at"))


def _insert_sql(holders: Sequence[str]) -> str:
    """The INSERT of ``_INSERT_COLUMNS`` with these value holders (``?`` or ``NULL``), and
    the ``late`` flag computed from the start_time and created_at it inserts (numbered
    parameters name the same bound values again)."""

    def again(column: int) -> str:
        if holders[column] != "?":
            return holders[column]
        return f"?{holders[: column + 1].count('?'):d}"

    late = late_value_sql(*(again(column) for column in _INSTANTS))
    return (
        f"INSERT INTO agent_runs ({', '.join(_INSERT_COLUMNS)}, late) "
        f"VALUES ({', '.join(holders)}, {late}) ON CONFLICT(event_id) DO NOTHING"
    )


_INSERT_SQL = _insert_sql(["?"] * len(_INSERT_COLUMNS))
_SELECT_COLUMNS = ", ".join(RUN_COLUMNS)
_CREATED_AT = RUN_COLUMNS.index("created_at")

UpsertOutcome = Literal["inserted", "updated", "unchanged", "not_found"]


_DATA_VALUES = attrgetter(*RUN_DATA_COLUMNS)
_JSON_POSITIONS = tuple(
    i for i, column in enumerate(RUN_DATA_COLUMNS) if column in RUN_JSON_COLUMNS
)


def insert_params(
    run: RunCreate, now: str, seen: str | None = None, sidecar: str | None = None
) -> tuple[Any, ...]:
    """The INSERT parameters of a validated run; created_at defaults to now, last_seen_at
    to now (``seen``: a sidecar item's clamped seen_at); ``sidecar``: the id of the
    sidecar that delivered it (None: a direct write).

    Every column read in one ``attrgetter`` call: this runs per row of every batch, on
    the event loop, while the writer inserts the previous batch."""
    values = list(_DATA_VALUES(run))
    for position in _JSON_POSITIONS:
        if values[position] is not None:
            values[position] = dumps_text(values[position])
    return (run.event_id, *values, run.created_at or now, now, seen or now, sidecar)


def seen_instant(seen_at: str | None, now: str) -> str:
    """An item's last_seen_at: its seen_at, never later than the server's clock (a fast
    agent clock must not keep a run alive), else now. Canonical instants compare as text."""
    return now if seen_at is None or seen_at > now else seen_at


def upsert_params(
    items: Sequence[UpsertItem], now: str, sidecar: str | None
) -> list[tuple[Any, ...] | None]:
    """Each upsert item's create as INSERT parameters (None for an item without one),
    last seen at its clamped seen_at and stamped with the delivering sidecar: built by
    both backends before their transaction (here, off SQLite's writer thread)."""
    return [
        insert_params(item.create, now, seen_instant(item.seen_at, now), sidecar)
        if item.create is not None
        else None
        for item in items
    ]


#: The INSERT's text per set of null columns, each NULL a literal: the sqlite3 module
#: binds None through its adapter lookup (an AttributeError formatted and dropped twice
#: per parameter), about 5% of the writer thread's instructions at 15-20 nulls a run.
_INSERT_BY_NULLS: dict[tuple[bool, ...], str] = {}
#: Bound so hostile variety cannot grow it (or crowd the connection's statement cache).
_MAX_INSERT_SHAPES = 32


@dataclass(frozen=True, slots=True)
class PreparedInsert:
    """An INSERT with its nulls written into the text, built off the writer thread."""

    sql: str
    values: tuple[Any, ...]


def prepare_insert(params: tuple[Any, ...]) -> PreparedInsert:
    """The INSERT of ``insert_params`` with each None as a literal NULL (same row stored)."""
    bound = tuple(map(is_not, params, repeat(None)))  # C loops: this runs per create
    sql = _INSERT_BY_NULLS.get(bound)
    if sql is None:
        if len(_INSERT_BY_NULLS) >= _MAX_INSERT_SHAPES:
            return PreparedInsert(_INSERT_SQL, params)
        holders = ["?" if keep else "NULL" for keep in bound]
        sql = _INSERT_BY_NULLS.setdefault(bound, _insert_sql(holders))
    return PreparedInsert(sql, tuple(compress(params, bound)))


def insert_row(conn: sqlite3.Connection, params: tuple[Any, ...] | PreparedInsert) -> bool:
    """Insert prepared parameters (built off the writer thread, best as ``prepare_insert``);
    False for a duplicate."""
    prepared = params if isinstance(params, PreparedInsert) else prepare_insert(params)
    return conn.execute(prepared.sql, prepared.values).rowcount == 1


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert prepared rows in one statement; return how many were new."""
    # rowcount, not total_changes: the latter also counts the rows of TEMP triggers.
    return max(conn.executemany(_INSERT_SQL, rows).rowcount, 0)


#: A terminal status from the agent replaces the reaper's ``timeout``: the run is no
#: longer reaped, and the reaper's reason goes (the update may give its own; SQLite
#: keeps the rightmost assignment of a column, and reads the old row in all of them).
_UNREAP = "error_summary = CASE WHEN reaped_at IS NULL THEN error_summary END, reaped_at = NULL, "
#: A late ``running`` never revives a reaped run.
_RUNNING_UNLESS_REAPED = "status = CASE WHEN reaped_at IS NULL THEN ? ELSE status END"
_TOUCH = "last_seen_at = max(COALESCE(last_seen_at, ''), ?), sidecar_id = ?"
#: The same for a direct write (no sidecar): its NULL written, not bound (see _INSERT_BY_NULLS).
_TOUCH_DIRECT = "last_seen_at = max(COALESCE(last_seen_at, ''), ?), sidecar_id = NULL"
#: The sidecar snapshot applied last (``upsert``): direct writes never set it.
_SNAPSHOT = "snapshot_source = ?, snapshot_seq = ?"
#: An upsert item's (source, sequence): where and in what order its snapshot was made.
Snapshot = tuple[str, int]

#: An UPDATE's text and parameters (``update_statement``).
UpdateStatement = tuple[str, tuple[Any, ...]]


def update_statement(
    event_id: str,
    changes: dict[str, Any],
    now: str,
    *,
    seen: str | None = None,
    sidecar: str | None = None,
    snapshot: Snapshot | None = None,
    returning: bool = True,
) -> UpdateStatement:
    """The UPDATE of ``update_run``, built where the caller likes (off the writer thread).
    ``returning=False`` for ``run_patch``: without RETURNING, SQLite buffers no result
    row (about 5% of a terminal PATCH's instructions). ``snapshot``: the (source,
    sequence) of the sidecar snapshot being applied, kept on the row (``upsert``)."""
    status = changes.get("status")
    parts: list[str] = []
    params: list[Any] = []
    for column, value in changes.items():
        if column == "status" and status == "running":
            parts.append(_RUNNING_UNLESS_REAPED)
        elif value is None:
            parts.append(f"{column} = NULL")
            continue
        else:
            parts.append(f"{column} = ?")
        params.append(db_value(column, value))
    if snapshot is not None:
        parts.append(_SNAPSHOT)
        params.extend(snapshot)
    assignments = ", ".join(parts)
    if status in TERMINAL_STATUSES:
        assignments = _UNREAP + assignments
    touch = _TOUCH_DIRECT if sidecar is None else _TOUCH
    tail: tuple[Any, ...] = (now, seen or now, event_id)
    if sidecar is not None:
        tail = (now, seen or now, sidecar, event_id)
    return (
        f"UPDATE agent_runs SET {assignments}, updated_at = ?, {touch} WHERE event_id = ?"
        + (" RETURNING run_id" if returning else ""),
        (*params, *tail),
    )


def run_update(conn: sqlite3.Connection, statement: UpdateStatement) -> str | None:
    """Run an ``update_statement``; the run_id, or None if the run does not exist."""
    row = conn.execute(*statement).fetchone()
    return None if row is None else str(row[0])


def run_patch(conn: sqlite3.Connection, statement: UpdateStatement) -> bool:
    """Run an ``update_statement(..., returning=False)``; False if the run does not exist.
    (rowcount counts the statement's own row only, never the triggers' rows.)"""
    return conn.execute(*statement).rowcount == 1


def update_run(
    conn: sqlite3.Connection,
    event_id: str,
    changes: dict[str, Any],
    now: str,
    *,
    seen: str | None = None,
    sidecar: str | None = None,
    snapshot: Snapshot | None = None,
) -> str | None:
    """Set the given columns and refresh last_seen_at (to ``seen``, else now; never
    backwards); return the run_id, or None if the run does not exist."""
    statement = update_statement(
        event_id, changes, now, seen=seen, sidecar=sidecar, snapshot=snapshot
    )
    return run_update(conn, statement)


_TOUCH_SQL = (
    f"UPDATE agent_runs SET {_TOUCH} WHERE event_id = ?"
    " AND (last_seen_at IS NULL OR last_seen_at < ? OR sidecar_id IS NOT ?)"
)


_TOUCH_SNAPSHOT_SQL = (
    f"UPDATE agent_runs SET {_TOUCH}, {_SNAPSHOT} WHERE event_id = ?"
    " AND (last_seen_at IS NULL OR last_seen_at < ? OR sidecar_id IS NOT ?"
    " OR snapshot_source IS NOT ? OR snapshot_seq IS NOT ?)"
)


def touch(
    conn: sqlite3.Connection,
    event_id: str,
    seen: str,
    sidecar: str | None,
    snapshot: Snapshot | None = None,
) -> None:
    """Refresh last_seen_at (never backwards), the delivering sidecar and, if given, the
    snapshot kept; nothing else. A row already up to date is not written (no new row
    version, no index work)."""
    if snapshot is None:
        conn.execute(_TOUCH_SQL, (seen, sidecar, event_id, seen, sidecar))
        return
    conn.execute(
        _TOUCH_SNAPSHOT_SQL, (seen, sidecar, *snapshot, event_id, seen, sidecar, *snapshot)
    )


def item_snapshot(item: UpsertItem) -> Snapshot | None:
    """An upsert item's (source, sequence), if it carries them (the model: both or neither)."""
    if item.source is None or item.sequence is None:
        return None
    return item.source, item.sequence


def overtaken(snapshot: Snapshot | None, stored_source: Any, stored_seq: Any) -> bool:
    """Whether a run already holds a newer snapshot from the same source than this item's:
    then the item is a batch committed late (by one replica, after its re-sent copy and
    newer snapshots went to another) and applying it would regress the run. Another
    source, no source, or nothing kept: not overtaken (applied as before)."""
    if snapshot is None or stored_source != snapshot[0] or not isinstance(stored_seq, int):
        return False
    return snapshot[1] < stored_seq


HeartbeatOutcome = Literal["applied", "finished", "not_found"]


def heartbeat(
    conn: sqlite3.Connection,
    event_id: str,
    progress: dict[str, Any] | None,
    now: str,
    max_metrics_bytes: int,
) -> HeartbeatOutcome:
    """A direct heartbeat: refresh last_seen_at and merge ``progress`` into metrics_json,
    for a running run only (a heartbeat is a late "running": it never revives a run).
    updated_at moves only when progress changed metrics_json (it stays the time the
    run's data last changed)."""
    row = conn.execute(
        "SELECT id, status, metrics_json FROM agent_runs WHERE event_id = ?", (event_id,)
    ).fetchone()
    if row is None:
        return "not_found"
    row_id, status, stored = row
    if status in TERMINAL_STATUSES:
        return "finished"
    merged = merged_progress(stored, progress, max_metrics_bytes)
    changed, params = ("metrics_json = ?, updated_at = ?, ", (merged, now)) if merged else ("", ())
    conn.execute(
        f"UPDATE agent_runs SET {changed}{_TOUCH_DIRECT} WHERE id = ?", (*params, now, row_id)
    )
    return "applied"


@dataclass
class UpsertSummary:
    """What a batch of snapshots did; ``not_found`` holds the positions of updates for
    runs that neither exist nor were created in the batch."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    not_found: list[int] = field(default_factory=list)


def _create_only(item: UpsertItem) -> bool:
    return item.update is None and item.metrics_patch is None and not item.heartbeat


def upsert_many(
    conn: sqlite3.Connection,
    items: Sequence[UpsertItem],
    create_params: Sequence[tuple[Any, ...] | None],
    now: str,
    sidecar: str | None = None,
) -> UpsertSummary:
    """Apply snapshots in order. Runs of consecutive create-only snapshots (a sidecar's
    backlog of new runs) go in one ``executemany``, as a plain batch insert does.
    ``create_params`` were built with each item's clamped seen_at and ``sidecar``."""
    summary = UpsertSummary()
    pending: list[tuple[Any, ...]] = []

    def flush() -> None:
        inserted = insert_rows(conn, pending)
        summary.inserted += inserted
        summary.unchanged += len(pending) - inserted
        if inserted < len(pending):  # duplicates (a retried batch): refresh them too
            conn.executemany(
                _TOUCH_SQL,
                [(row[-2], row[-1], row[0], row[-2], row[-1]) for row in pending],
            )
        pending.clear()

    for position, (item, params) in enumerate(zip(items, create_params, strict=True)):
        if params is not None and _create_only(item):
            pending.append(params)
            continue
        flush()
        outcome = upsert(conn, item, now, params, sidecar=sidecar)
        if outcome == "not_found":
            summary.not_found.append(position)
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
    flush()
    return summary


def upsert(
    conn: sqlite3.Connection,
    item: UpsertItem,
    now: str,
    create_params: tuple[Any, ...] | None = None,
    *,
    sidecar: str | None = None,
) -> UpsertOutcome:
    """Apply one sidecar snapshot idempotently: insert-if-new, then changed fields only,
    then the metrics merge patch; refresh last_seen_at to the item's seen_at either way.
    A snapshot ``overtaken`` by a newer one of its source changes no field (unchanged)."""
    seen = seen_instant(item.seen_at, now)
    snapshot = item_snapshot(item)
    if item.create is not None and create_params is None:
        create_params = insert_params(item.create, now, seen, sidecar)
    inserted = create_params is not None and insert_row(conn, create_params)
    if _create_only(item):
        if not inserted:
            touch(conn, item.event_id, seen, sidecar)
        return "inserted" if inserted else "unchanged"
    changes = item.update.changes() if item.update is not None else {}
    stored = conn.execute(
        f"SELECT {', '.join((*KEPT, *changes))} FROM agent_runs WHERE event_id = ?",
        (item.event_id,),
    ).fetchone()
    if stored is None:
        return "not_found"
    if overtaken(snapshot, stored[3], stored[4]):
        touch(conn, item.event_id, seen, sidecar)
        return "unchanged"
    diff = upsert_diff(stored, changes, item.metrics_patch)
    if diff:
        update_run(conn, item.event_id, diff, now, seen=seen, sidecar=sidecar, snapshot=snapshot)
    else:
        touch(conn, item.event_id, seen, sidecar, snapshot)
    if inserted:
        return "inserted"
    return "updated" if diff else "unchanged"


# ---- reads ---------------------------------------------------------------------------


def _text(value: Any) -> Any:
    """A BLOB's bytes as text (JSON has no bytes), undecodable bytes replaced."""
    return value.decode("utf-8", "replace") if type(value) is bytes else value


def row_to_run(row: Sequence[Any]) -> dict[str, Any]:
    """A stored row as the API returns it: JSON columns parsed, objects kept objects.
    Columns after RUN_COLUMNS (a list query's row id) are not part of the run."""
    run = dict(zip(RUN_COLUMNS, row[: len(RUN_COLUMNS)], strict=True))
    if any(type(value) is bytes for value in row):  # a BLOB: only another writer's
        run = {key: _text(value) for key, value in run.items()}
    for column in RUN_JSON_COLUMNS:
        raw = run[column]
        if isinstance(raw, str):
            try:
                run[column] = orjson.loads(raw)
            except orjson.JSONDecodeError:
                run[column] = None
    return run


def get_run(conn: sqlite3.Connection, event_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {_SELECT_COLUMNS} FROM agent_runs WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else row_to_run(row)


def index_key(query: RunQuery) -> tuple[tuple[str, ...], bool]:
    """The key of ``LIST_INDEXES`` (and ``LATE_INDEXES``) serving the query's equality
    filters, and whether the query is a merge of one range per status (filters without
    status, served by the index with it)."""
    equalities = [column for column in EQUALITY_FILTERS if getattr(query, column) is not None]
    merge = bool(equalities) and query.status is None
    if merge:
        equalities.append("status")
    return tuple(equalities), merge


def _terms(terms: Sequence[tuple[str, str, Any]]) -> tuple[list[str], list[Any]]:
    """``column operator ?`` for each term whose value is set, and those values."""
    clauses = [f"{column} {operator} ?" for column, operator, value in terms if value is not None]
    return clauses, [value for _, _, value in terms if value is not None]


def filter_terms(query: RunQuery | StatsQuery) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of the equality and created_at filters the list and the stats
    share, and their parameters (a start_time window is each one's own)."""
    return _terms(
        (
            ("agent_name", "=", query.agent_name),
            ("job_type", "=", query.job_type),
            ("status", "=", query.status),
            ("created_at", "<", query.created_before),
            ("created_at", ">", query.created_after),
        )
    )


def _window_terms(query: RunQuery) -> tuple[list[str], list[Any]]:
    """The start_time bounds of a list query (each arm of a window applies them)."""
    return _terms(
        (
            ("start_time", ">=", query.start_time_from),
            ("start_time", "<=", query.start_time_to),
        )
    )


def _filters(query: RunQuery, after: Position | None) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a list query's filters and cursor, and their parameters."""
    clauses, params = filter_terms(query)
    window_clauses, window_params = _window_terms(query)
    clauses += window_clauses
    params += window_params
    if after is not None:
        clauses.append("(created_at, id) < (?, ?)")
        params.extend((after.created_at, after.row_id))
    return clauses, params


#: The rank of each upper bound on created_at at an equal value: the tightest first.
_UPPER_RANK = {"created_at < ?": 0, "(created_at, id) < (?, ?)": 1, "created_at <= ?": 2}
#: The same for lower bounds: the strict one is the tighter.
_LOWER_RANK = {"created_at > ?": 0, "created_at >= ?": 1}


def _list_range(
    query: RunQuery, after: Position | None, created: Sequence[tuple[str, str]]
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a list arm: the equality and start_time filters, then only
    the tightest lower and upper bound on created_at among created_after/before, the
    cursor and ``created`` (a window's created_at range for its near arm, the bound
    above it for the far arm of a window bounded above only). The others are implied by
    them, and SQLite searches its index by one bound a side: given two, it may range over
    the looser one (the whole created_after span, or every page before a cursor) and
    filter by the other."""
    clauses, params = _terms(
        (
            ("agent_name", "=", query.agent_name),
            ("job_type", "=", query.job_type),
            ("status", "=", query.status),
        )
    )
    window_clauses, window_params = _window_terms(query)
    clauses += window_clauses
    params += window_params
    lower: list[tuple[str, list[Any]]] = []
    upper: list[tuple[str, list[Any]]] = []
    if query.created_after is not None:
        lower.append(("created_at > ?", [query.created_after]))
    if query.created_before is not None:
        upper.append(("created_at < ?", [query.created_before]))
    if after is not None:
        upper.append(("(created_at, id) < (?, ?)", [after.created_at, after.row_id]))
    for clause, value in created:
        (lower if ">" in clause else upper).append((clause, [value]))
    if lower:  # the greatest value; at an equal one, the strict bound
        clause, values = max(lower, key=lambda bound: (bound[1][0], -_LOWER_RANK[bound[0]]))
        clauses.append(clause)
        params.extend(values)
    if upper:
        clause, values = min(upper, key=lambda bound: (bound[1][0], _UPPER_RANK[bound[0]]))
        clauses.append(clause)
        params.extend(values)
    return clauses, params


#: An overdue-runs query (``stale.overdue_ids_sql``) and its parameters.
Overdue = tuple[str, list[Any]]


def stale_query_sql(
    query: RunQuery, after: Position | None, overdue: Overdue, columns: str = _SELECT_COLUMNS
) -> tuple[str, list[Any]]:
    """The SELECT of ``?stale=true``: the overdue runs (a few index ranges over running
    runs only, see ``stale``), then each run by its row id (CROSS JOIN keeps that order
    of loops), the other filters applied to those rows, sorted in the list order."""
    clauses, params = _filters(query, after)
    ids, overdue_params = overdue
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {columns}, agent_runs.id FROM (SELECT id AS overdue_id FROM ({ids})) AS o"
        f" CROSS JOIN agent_runs ON agent_runs.id = o.overdue_id{where}"
        " ORDER BY created_at DESC, agent_runs.id DESC LIMIT ? OFFSET ?"
    )
    return sql, [*overdue_params, *params, query.limit + 1, query.offset]


#: One list query's ranges of its index: a status term and value each, or one range.
StatusRanges = list[tuple[list[str], list[Any]]]


def _late_arm(
    query: RunQuery,
    after: Position | None,
    columns: str,
    index: str,
    ranges: StatusRanges,
    *,
    early: bool = False,
) -> tuple[str, list[Any]]:
    """A window's far arm: the ids of its late runs created outside its created_at range,
    from the late index of its equality filters alone, sorted (only the rows that can be
    in the page are then read).

    One index range per status, as the list arms have, under one sort. Not an IN list of
    statuses: on SQLite 3.40.1 that returned a late run started after a start_time_to
    bound (agent+job, after ANALYZE), caught by the brute-force walk of
    tests/server/test_query_plans.py, which would catch it again. ``early`` reads an
    ``EARLY_INDEXES`` index (its WHERE added: implied by the window's, see ``window``)."""
    clauses, params = _filters(query, after)
    outside, outside_params = window.outside_range(query)
    late_terms = (window.LATE, window.EARLY) if early else (window.LATE,)
    reads = " UNION ALL ".join(
        f"SELECT id, created_at FROM agent_runs INDEXED BY {index}"
        f" WHERE {' AND '.join((*clauses, *status_terms, outside, *late_terms))}"
        for status_terms, _ in ranges
    )
    late = f"SELECT id FROM ({reads}) ORDER BY created_at DESC, id DESC LIMIT ?"
    values = [
        value for _, status_params in ranges for value in (*params, *status_params, *outside_params)
    ]
    return (
        f"SELECT {columns}, id FROM agent_runs WHERE id IN ({late})",
        [*values, query.limit + 1 + query.offset],
    )


def _ranges(
    query: RunQuery,
    after: Position | None,
    columns: str,
    index: str,
    ranges: StatusRanges,
    created: Sequence[tuple[str, str]],
    *,
    late: bool = False,
) -> list[tuple[str, list[Any]]]:
    """One SELECT per status range of ``index``, each read newest first within the
    tightest created_at bounds (``_list_range``); ``late`` adds the late indexes' WHERE."""
    listed, listed_params = _list_range(query, after, created)
    select = f"SELECT {columns}, id FROM agent_runs INDEXED BY {index}"
    arms = []
    for status_terms, status_params in ranges:
        where = " AND ".join((*listed, *status_terms, *([window.LATE] if late else [])))
        arms.append(
            (f"{select} WHERE {where}" if where else select, [*listed_params, *status_params])
        )
    return arms


def query_sql(
    query: RunQuery,
    after: Position | None = None,
    columns: str = _SELECT_COLUMNS,
    *,
    late_newest_first: bool = False,
    early_indexes: bool = True,
) -> tuple[str, list[Any]]:
    """The SELECT for a list query, pinned to the index that serves it.

    ``INDEXED BY`` names the index whose leading columns are the equality filters: the
    plan never depends on planner statistics, which on a server that started on an empty
    file say nothing about the table (the planner then serves agent+job from the job
    index, reading every run of that job). Without a status filter, agent_name and
    job_type are served by their index with status: one SELECT per status, each a range
    newest first, joined by ``UNION ALL`` under the ORDER BY, which SQLite runs as a merge
    of co-routines that stops at the page (no sort, and no run of another agent or job is
    read). A start_time window adds its created_at range to those arms, and one arm for
    its late runs created outside that range, from the late index of the same equality
    filters (``LATE_INDEXES``; one range per status under one sort; see ``window``).
    With ``late_newest_first`` (``window.late_newest_first`` decides), a window bounded
    above only reads them newest first instead, from the late index by created_at
    (``LATE_CREATED_INDEXES``): one more range per status in the merge. A window bounded
    below only reads only the late runs created before they started
    (``EARLY_INDEXES``), unless ``early_indexes`` is false (a file without them).
    Each arm searches its index by the tightest created_at bound of each side
    (``_list_range``).

    ``columns`` is the select list (``run_json.JSON_COLUMNS`` renders each row as JSON);
    it must include ``created_at``. Rows carry their ``id`` last (for the next cursor) and one row more than the
    page is fetched, so the caller knows whether another page follows.
    ``after`` starts the page strictly after a cursor's position (keyset paging).
    """
    key, merge = index_key(query)
    # Without a status filter, each arm is repeated once per status (a range of its own).
    ranges: StatusRanges = (
        [(["status = ?"], [status]) for status in CANONICAL_STATUSES] if merge else [([], [])]
    )
    arms = _ranges(query, after, columns, LIST_INDEXES[key], ranges, window.created_range(query))
    if late_newest_first and window.bounded_above_only(query):
        # Newest first from the late index by created_at: merged, it stops at the page.
        far = [window.above_range(query)]
        arms += _ranges(query, after, columns, LATE_CREATED_INDEXES[key], ranges, far, late=True)
    elif early_indexes and window.bounded_below_only(query):
        arms.append(_late_arm(query, after, columns, EARLY_INDEXES[key], ranges, early=True))
    elif window.has_window(query):
        arms.append(_late_arm(query, after, columns, LATE_INDEXES[key], ranges))
    body = " UNION ALL ".join(sql for sql, _ in arms)
    sql = f"{body} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    return sql, [*(value for _, values in arms for value in values), query.limit + 1, query.offset]


@dataclass(frozen=True)
class Page:
    runs: list[dict[str, Any]]
    #: Where the next page starts; None on the last page.
    next_position: Position | None


def _fetch(
    conn: sqlite3.Connection,
    query: RunQuery,
    after: Position | None,
    columns: str,
    overdue: Overdue | None = None,
) -> list[Any]:
    """The page's rows, plus one if another page follows (one statement: one snapshot).
    ``overdue`` serves ``stale=true`` (required with it)."""
    if query.stale is not None:
        if overdue is None:
            raise ValueError("a stale=true query needs the overdue-runs query")
        return conn.execute(*stale_query_sql(query, after, overdue, columns)).fetchall()
    return list_rows(conn, query, after, columns)


def list_rows(
    conn: sqlite3.Connection, query: RunQuery, after: Position | None, columns: str
) -> list[Any]:
    """Run a list query (``query_sql``) with its far arm chosen for this file: newest
    first where ``window.late_newest_first`` says so, and by start_time on a file without
    migration 13's early indexes (a tool reading it before the server upgraded it)."""
    newest_first = window.late_newest_first(conn, query)
    try:
        return conn.execute(
            *query_sql(query, after, columns, late_newest_first=newest_first)
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if not (window.bounded_below_only(query) and window.missing_index(exc)):
            raise
    return conn.execute(
        *query_sql(query, after, columns, late_newest_first=newest_first, early_indexes=False)
    ).fetchall()


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every statement inside sees the same database."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _next_position(rows: list[Any], limit: int, created_at: int) -> Position | None:
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return Position(str(last[created_at]), int(last[-1]))


def query_runs(
    conn: sqlite3.Connection,
    query: RunQuery,
    after: Position | None = None,
    overdue: Overdue | None = None,
) -> Page:
    """A page of runs as dicts (the Python rendering; see ``query_page_json``)."""
    rows = _fetch(conn, query, after, _SELECT_COLUMNS, overdue)
    return Page(
        [row_to_run(row) for row in rows[: query.limit]],
        _next_position(rows, query.limit, _CREATED_AT),
    )


def cost_shape(query: RunQuery) -> tuple[object, ...]:
    """What a list read's cost depends on, beyond the page itself: which filters it has,
    its start_time window (its width decides the plan), the page size and how deep an
    offset goes. Reads of one shape cost about the same (see ``Reader.run``)."""
    filters = tuple(column for column in EQUALITY_FILTERS if getattr(query, column) is not None)
    created = (query.created_before is not None, query.created_after is not None)
    return (
        filters,
        created,
        query.stale,
        query.start_time_from,
        query.start_time_to,
        query.limit,
        query.offset.bit_length(),
    )


@dataclass(frozen=True)
class JsonPage:
    #: The page as the API answers it: a JSON array of runs with their URLs.
    body: bytes
    next_position: Position | None


def query_page_json(
    conn: sqlite3.Connection,
    query: RunQuery,
    after: Position | None = None,
    overdue: Overdue | None = None,
) -> JsonPage:
    """A page of runs as JSON bytes, rendered by SQLite where it renders them exactly
    as the Python way does (see ``run_json``), by ``row_to_run`` otherwise."""
    if not run_json.renders_like_orjson():
        page = query_runs(conn, query, after, overdue)
        body = b",".join(run_json.python_rendering(run) for run in page.runs)
        return JsonPage(b"[" + body + b"]", page.next_position)

    def fallback(row_id: int) -> bytes:
        row = conn.execute(
            f"SELECT {_SELECT_COLUMNS} FROM agent_runs WHERE id = ?", (row_id,)
        ).fetchone()
        return run_json.python_rendering(row_to_run(row))

    # One statement is one snapshot: a page of exact rows needs no transaction of its own.
    rows = _fetch(conn, query, after, run_json.JSON_COLUMNS, overdue)
    if run_json.all_exact(rows[: query.limit]):  # the row past the page is not rendered
        body = run_json.render_rows(rows[: query.limit], fallback)
    else:
        with snapshot(conn):  # an inexact row is read again: the same version of it
            rows = _fetch(conn, query, after, run_json.JSON_COLUMNS, overdue)
            body = run_json.render_rows(rows[: query.limit], fallback)
    return JsonPage(body, _next_position(rows, query.limit, run_json.CREATED_AT))
