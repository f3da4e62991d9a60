"""All SQL that reads and writes runs. Functions take a connection; callers own threads.

Write functions run inside the writer's group transaction (see ``writer``);
read functions run on read-only connections (see ``reader``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

import orjson

from server.contract.codec import dumps_text
from server.contract.fields import CANONICAL_STATUSES, TERMINAL_STATUSES
from server.contract.models import RunCreate, RunQuery, UpsertItem
from server.storage import run_json, window
from server.storage.cursor import Position
from server.storage.schema import (
    EQUALITY_FILTERS,
    LIST_INDEXES,
    RUN_COLUMNS,
    RUN_DATA_COLUMNS,
    RUN_JSON_COLUMNS,
)

_INSERT_COLUMNS = ("event_id", *RUN_DATA_COLUMNS, "created_at", "updated_at")
_INSERT_SQL = (
    f"INSERT INTO agent_runs ({', '.join(_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _INSERT_COLUMNS)}) "
    "ON CONFLICT(event_id) DO NOTHING"
)
_SELECT_COLUMNS = ", ".join(RUN_COLUMNS)
_CREATED_AT = RUN_COLUMNS.index("created_at")

UpsertOutcome = Literal["inserted", "updated", "unchanged", "not_found"]


def _db_value(column: str, value: Any) -> Any:
    if column in RUN_JSON_COLUMNS and value is not None:
        return dumps_text(value)
    return value


_DATA_VALUES = attrgetter(*RUN_DATA_COLUMNS)
_JSON_POSITIONS = tuple(
    i for i, column in enumerate(RUN_DATA_COLUMNS) if column in RUN_JSON_COLUMNS
)


def insert_params(run: RunCreate, now: str) -> tuple[Any, ...]:
    """The INSERT parameters of a validated run; created_at defaults to now.

    Every column read in one ``attrgetter`` call: this runs per row of every batch, on
    the event loop, while the writer inserts the previous batch."""
    values = list(_DATA_VALUES(run))
    for position in _JSON_POSITIONS:
        if values[position] is not None:
            values[position] = dumps_text(values[position])
    return (run.event_id, *values, run.created_at or now, now)


def insert_run(conn: sqlite3.Connection, run: RunCreate, now: str) -> bool:
    """Insert one run; False if its event_id already exists (idempotent create)."""
    return insert_row(conn, insert_params(run, now))


def insert_row(conn: sqlite3.Connection, params: tuple[Any, ...]) -> bool:
    """Insert prepared parameters (built off the writer thread); False for a duplicate."""
    return conn.execute(_INSERT_SQL, params).rowcount == 1


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert prepared rows in one statement; return how many were new."""
    # rowcount, not total_changes: the latter also counts the rows of TEMP triggers.
    return max(conn.executemany(_INSERT_SQL, rows).rowcount, 0)


def update_run(
    conn: sqlite3.Connection, event_id: str, changes: dict[str, Any], now: str
) -> str | None:
    """Set the given columns; return the run_id, or None if the run does not exist."""
    assignments = ", ".join(f"{column} = ?" for column in changes)
    params = [_db_value(column, value) for column, value in changes.items()]
    row = conn.execute(
        f"UPDATE agent_runs SET {assignments}, updated_at = ? WHERE event_id = ? RETURNING run_id",
        (*params, now, event_id),
    ).fetchone()
    return None if row is None else str(row[0])


@dataclass
class UpsertSummary:
    """What a batch of snapshots did; ``not_found`` holds the positions of updates for
    runs that neither exist nor were created in the batch."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    not_found: list[int] = field(default_factory=list)


def upsert_many(
    conn: sqlite3.Connection,
    items: Sequence[UpsertItem],
    create_params: Sequence[tuple[Any, ...] | None],
    now: str,
) -> UpsertSummary:
    """Apply snapshots in order. Runs of consecutive create-only snapshots (a sidecar's
    backlog of new runs) go in one ``executemany``, as a plain batch insert does."""
    summary = UpsertSummary()
    pending: list[tuple[Any, ...]] = []

    def flush() -> None:
        inserted = insert_rows(conn, pending)
        summary.inserted += inserted
        summary.unchanged += len(pending) - inserted
        pending.clear()

    for position, (item, params) in enumerate(zip(items, create_params, strict=True)):
        if item.update is None and params is not None:
            pending.append(params)
            continue
        flush()
        outcome = upsert(conn, item, now, params)
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
) -> UpsertOutcome:
    """Apply one sidecar snapshot idempotently: insert-if-new, then changed fields only."""
    if item.create is not None and create_params is None:
        create_params = insert_params(item.create, now)
    inserted = create_params is not None and insert_row(conn, create_params)
    if item.update is None:
        return "inserted" if inserted else "unchanged"
    changes = item.update.changes()
    stored = conn.execute(
        f"SELECT {', '.join(('status', *changes))} FROM agent_runs WHERE event_id = ?",
        (item.event_id,),
    ).fetchone()
    if stored is None:
        return "not_found"
    current_status, current = stored[0], dict(zip(changes, stored[1:], strict=True))
    if changes.get("status") == "running" and current_status in TERMINAL_STATUSES:
        del changes["status"]
    diff = {
        column: value
        for column, value in changes.items()
        if _db_value(column, value) != current[column]
    }
    if diff:
        update_run(conn, item.event_id, diff, now)
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


def list_index(query: RunQuery) -> tuple[str, bool]:
    """The index serving the query's equality filters, and whether the query is a merge
    of one range per status (filters without status, served by the index with it)."""
    equalities = [column for column in EQUALITY_FILTERS if getattr(query, column) is not None]
    merge = bool(equalities) and query.status is None
    if merge:
        equalities.append("status")
    return LIST_INDEXES[tuple(equalities)], merge


def query_sql(
    query: RunQuery,
    after: Position | None = None,
    columns: str = _SELECT_COLUMNS,
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
    its late runs created outside that range (see ``window``).

    ``columns`` is the select list (``run_json.JSON_COLUMNS`` renders each row as JSON);
    it must include ``created_at``. Rows carry their ``id`` last (for the next cursor) and one row more than the
    page is fetched, so the caller knows whether another page follows.
    ``after`` starts the page strictly after a cursor's position (keyset paging).
    """
    clauses: list[str] = []
    params: list[Any] = []
    for column, operator, value in (
        ("agent_name", "=", query.agent_name),
        ("job_type", "=", query.job_type),
        ("status", "=", query.status),
        ("created_at", "<", query.created_before),
        ("created_at", ">", query.created_after),
        ("start_time", ">=", query.start_time_from),
        ("start_time", "<=", query.start_time_to),
    ):
        if value is not None:
            clauses.append(f"{column} {operator} ?")
            params.append(value)
    if after is not None:
        clauses.append("(created_at, id) < (?, ?)")
        params.extend((after.created_at, after.row_id))
    arms: list[tuple[str, list[Any]]] = []
    windowed = window.has_window(query)
    listed, listed_params = clauses, params
    if windowed:
        bounds = window.created_range(query)
        listed = [*clauses, *(clause for clause, _ in bounds)]
        listed_params = [*params, *(value for _, value in bounds)]
    index, merge = list_index(query)
    select = f"SELECT {columns}, id FROM agent_runs INDEXED BY {index}"
    if merge:
        where = " AND ".join((*listed, "status = ?"))
        arms += [
            (f"{select} WHERE {where}", [*listed_params, status]) for status in CANONICAL_STATUSES
        ]
    else:
        arms.append((f"{select} WHERE {' AND '.join(listed)}" if listed else select, listed_params))
    if windowed:  # sorted by ids alone: only the rows that can be in the page are read
        outside, outside_params = window.outside_range(query)
        late = (
            f"SELECT id FROM agent_runs INDEXED BY {window.LATE_START_INDEX}"
            f" WHERE {' AND '.join((*clauses, outside, window.LATE))}"
            " ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        arms.append(
            (
                f"SELECT {columns}, id FROM agent_runs WHERE id IN ({late})",
                [*params, *outside_params, query.limit + 1 + query.offset],
            )
        )
    body = " UNION ALL ".join(sql for sql, _ in arms)
    sql = f"{body} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
    return sql, [*(value for _, values in arms for value in values), query.limit + 1, query.offset]


@dataclass(frozen=True)
class Page:
    runs: list[dict[str, Any]]
    #: Where the next page starts; None on the last page.
    next_position: Position | None


def _fetch(
    conn: sqlite3.Connection, query: RunQuery, after: Position | None, columns: str
) -> list[Any]:
    """The page's rows, plus one if another page follows (one statement: one snapshot)."""
    return conn.execute(*query_sql(query, after, columns)).fetchall()


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


def query_runs(conn: sqlite3.Connection, query: RunQuery, after: Position | None = None) -> Page:
    """A page of runs as dicts (the Python rendering; see ``query_page_json``)."""
    rows = _fetch(conn, query, after, _SELECT_COLUMNS)
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
    conn: sqlite3.Connection, query: RunQuery, after: Position | None = None
) -> JsonPage:
    """A page of runs as JSON bytes, rendered by SQLite where it renders them exactly
    as the Python way does (see ``run_json``), by ``row_to_run`` otherwise."""
    if not run_json.renders_like_orjson():
        page = query_runs(conn, query, after)
        body = b",".join(run_json.python_rendering(run) for run in page.runs)
        return JsonPage(b"[" + body + b"]", page.next_position)

    def fallback(row_id: int) -> bytes:
        row = conn.execute(
            f"SELECT {_SELECT_COLUMNS} FROM agent_runs WHERE id = ?", (row_id,)
        ).fetchone()
        return run_json.python_rendering(row_to_run(row))

    with snapshot(conn):  # an inexact row is read again: the same version of it
        rows = _fetch(conn, query, after, run_json.JSON_COLUMNS)
        body = run_json.render_rows(rows[: query.limit], fallback)
    return JsonPage(body, _next_position(rows, query.limit, run_json.CREATED_AT))


def distinct_values(
    conn: sqlite3.Connection, column: Literal["agent_name", "job_type"]
) -> list[str]:
    """Distinct values by a loose index scan: one index seek per value, not per row."""
    sql = (
        f"WITH RECURSIVE seen(v) AS ("
        f" SELECT MIN({column}) FROM agent_runs"
        f" UNION ALL"
        f" SELECT (SELECT MIN({column}) FROM agent_runs WHERE {column} > seen.v)"
        f" FROM seen WHERE seen.v IS NOT NULL"
        f") SELECT v FROM seen WHERE v IS NOT NULL"
    )
    return [str(row[0]) for row in conn.execute(sql)]


def new_distinct(known: set[str], values: Iterable[str]) -> bool:
    """Record values into known; True if any was not known before."""
    added = False
    for value in values:
        if value not in known:
            known.add(value)
            added = True
    return added
