"""Every list query is served by an index that reads only runs matching its equality
filters, newest first with no sort, whatever the planner statistics say.

The database has a real fleet's skew (2,000 agents with Zipf-like popularity, 20 job
types, statuses 85% success / 8% failure / 3% running / rest spread). Plans are checked
twice: on a server that started on the empty file and grew (its start-up ANALYZE saw no
rows) and after ANALYZE. Every query's answer is also compared with a brute-force
filter of the same rows, so a plan test never hides a wrong answer.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunCreate, RunQuery
from server.contract.run_record import RUN_COLUMNS
from server.storage import window
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.database import Database, StorageSettings
from server.storage.runs import (
    _INSERT_COLUMNS,
    _INSERT_SQL,
    PreparedInsert,
    index_key,
    insert_params,
    list_rows,
    prepare_insert,
    query_page_json,
    query_runs,
    query_sql,
    stale_query_sql,
)
from server.storage.schema import (
    EARLY_INDEXES,
    EQUALITY_FILTERS,
    LATE_CREATED_INDEXES,
    LATE_INDEXES,
    LATE_START_INDEX,
    LIST_INDEXES,
    PROMPT_LAG_S,
    PROMPT_RUN_SQL,
)
from server.storage.stale import _REAP_SQL, StalePolicy, overdue_ids_sql, reapable_ids_sql

RUNS = 8000
#: The early indexes' WHERE, as a far arm writes it.
EARLY_WHERE = f"{window.LATE} AND {window.EARLY}"
AGENTS = [f"agent-{i:04d}" for i in range(2000)]
JOBS = [f"job-{i:02d}" for i in range(20)]
STATUSES = ("success", "failure", "running", "partial", "timeout", "cancelled")
STATUS_WEIGHTS = (85, 8, 3, 2, 1, 1)
ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)  # RUNS runs over ~28 days
#: The busiest agent and job, and the commonest status: the worst case for a bad plan.
AGENT, JOB, STATUS = AGENTS[0], JOBS[0], "success"


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def skewed_rows(rng: random.Random) -> list[tuple[Any, ...]]:
    agent_weights = [(k + 1) ** -0.8 for k in range(len(AGENTS))]
    agents = rng.choices(AGENTS, weights=agent_weights, k=RUNS)
    statuses = rng.choices(STATUSES, weights=STATUS_WEIGHTS, k=RUNS)
    rows = []
    for i in range(RUNS):
        created = ORIGIN + STEP * i
        # Most runs are recorded as they start; some arrive late (a sidecar's backlog).
        late = timedelta(days=rng.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 3)))
        start = created - late - timedelta(seconds=rng.randrange(60))
        # A few duplicate created_at values: the order falls back to insertion order (id).
        if i % 97 == 1:
            created -= STEP
        rows.append(
            (f"e{i}", "r", agents[i], rng.choice(JOBS), statuses[i], stamp(start), stamp(created))
        )
    return rows


#: Where the server's INSERT takes each field of a test row (its text kept as it is).
_ROW_COLUMNS = (
    "event_id",
    "run_id",
    "agent_name",
    "job_type",
    "status",
    "start_time",
    "created_at",
)
_PLACEHOLDER = RunCreate.model_validate(
    {
        "event_id": "x",
        "run_id": "r",
        "agent_name": "a",
        "job_type": "j",
        "start_time": "2026-01-01T00:00:00Z",
    }
)


def insert(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """The rows through the server's own INSERT (it sets the late flag), every other
    column as a minimal run has it; start_time and created_at verbatim, odd text too."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        template = list(insert_params(_PLACEHOLDER, "2026-01-01T00:00:00.000000+00:00"))
        params = []
        for row in rows:
            for column, value in zip(_ROW_COLUMNS, row, strict=True):
                template[_INSERT_COLUMNS.index(column)] = value
            template[_INSERT_COLUMNS.index("updated_at")] = row[-1]
            template[_INSERT_COLUMNS.index("last_seen_at")] = row[-1]
            params.append(tuple(template))
        conn.execute("BEGIN")
        conn.executemany(_INSERT_SQL, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def start_server_database(path: Path) -> None:
    """What a server does at start (migrate, ANALYZE), on this file; then stop it."""
    db = Database.open(StorageSettings(path=path, reader_threads=1))
    asyncio.run(db.close())


def stat_rows(conn: sqlite3.Connection) -> int:
    return int(
        conn.execute("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'agent_runs'").fetchone()[0]
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, ...]]]:
    """A server database that started empty and grew to RUNS skewed runs."""
    path = tmp_path_factory.mktemp("plans") / "plans.sqlite"
    start_server_database(path)
    rows = skewed_rows(random.Random(10))
    insert(path, rows)
    return path, rows


@pytest.fixture(scope="module", params=["grown from empty", "after ANALYZE"])
def conn(
    request: pytest.FixtureRequest, fleet: tuple[Path, list[tuple[Any, ...]]]
) -> Iterator[sqlite3.Connection]:
    """A reader connection as the server's, with the statistics of each phase."""
    path, _ = fleet
    if request.param == "after ANALYZE":
        start_server_database(path)  # a restart: the server's own ANALYZE on the full file
    reader = open_reader(path, busy_timeout_ms=1000)
    # The phase is real: the empty file's ANALYZE left no statistics for the runs table.
    assert (stat_rows(reader) > 0) == (request.param == "after ANALYZE")
    yield reader
    reader.close()


# ---- the combinations ------------------------------------------------------------------

EQUALITY_SETS = [
    combo for size in range(4) for combo in itertools.combinations(EQUALITY_FILTERS, size)
]
EQUALITY_VALUES = {"agent_name": AGENT, "job_type": JOB, "status": STATUS}
#: Wide: thousands of runs in the start_time window; narrow or recent: a few hours of
#: runs. Every window holds late runs (recorded 3 days after they started) too.
TIME_BOUNDS: dict[str, dict[str, str]] = {
    "none": {},
    "created_before": {"created_before": stamp(ORIGIN + timedelta(days=20))},
    "created_after": {"created_after": stamp(ORIGIN + timedelta(days=5))},
    "created_both": {
        "created_after": stamp(ORIGIN + timedelta(days=5)),
        "created_before": stamp(ORIGIN + timedelta(days=20)),
    },
    "start_from_wide": {"start_time_from": stamp(ORIGIN + timedelta(days=3))},
    "start_to_wide": {"start_time_to": stamp(ORIGIN + timedelta(days=25))},
    "start_both_wide": {
        "start_time_from": stamp(ORIGIN + timedelta(days=2)),
        "start_time_to": stamp(ORIGIN + timedelta(days=26)),
    },
    "start_both_narrow": {
        "start_time_from": stamp(ORIGIN + timedelta(days=20)),
        "start_time_to": stamp(ORIGIN + timedelta(days=20, hours=6)),
    },
    "start_to_narrow": {"start_time_to": stamp(ORIGIN + timedelta(hours=6))},
    "start_both_recent": {
        "start_time_from": stamp(ORIGIN + STEP * RUNS - timedelta(hours=6)),
        "start_time_to": stamp(ORIGIN + STEP * RUNS - timedelta(hours=1)),
    },
    "everything_wide": {
        "created_after": stamp(ORIGIN + timedelta(days=1)),
        "created_before": stamp(ORIGIN + timedelta(days=27)),
        "start_time_from": stamp(ORIGIN + timedelta(days=2)),
        "start_time_to": stamp(ORIGIN + timedelta(days=26)),
    },
}
COMBINATIONS = [
    pytest.param(equalities, bounds, id=f"{'+'.join(equalities) or 'no-equality'}-{bounds}")
    for equalities in EQUALITY_SETS
    for bounds in TIME_BOUNDS
]
CURSOR = Position(stamp(ORIGIN + timedelta(days=18)), RUNS // 2)


def make_query(equalities: tuple[str, ...], bounds: str, limit: int = 100) -> RunQuery:
    return RunQuery.model_validate(
        {
            **{column: EQUALITY_VALUES[column] for column in equalities},
            **TIME_BOUNDS[bounds],
            "limit": limit,
        }
    )


def plan(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[str]:
    return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def expected_ids(
    rows: list[tuple[Any, ...]], query: RunQuery, after: Position | None = None
) -> list[int]:
    """The brute-force answer: every matching row id, newest first (ids start at 1)."""
    matched = []
    for row_id, (_, _, agent, job, status, start, created) in enumerate(rows, start=1):
        if (
            query.agent_name not in (None, agent)
            or query.job_type not in (None, job)
            or query.status not in (None, status)
            or (query.created_before is not None and not created < query.created_before)
            or (query.created_after is not None and not created > query.created_after)
            or (query.start_time_from is not None and not start >= query.start_time_from)
            or (query.start_time_to is not None and not start <= query.start_time_to)
            or (after is not None and not (created, row_id) < (after.created_at, after.row_id))
        ):
            continue
        matched.append((created, row_id))
    return [row_id for _, row_id in sorted(matched, reverse=True)]


# ---- plans -----------------------------------------------------------------------------


#: The steps of the late arm's compound of one range per status (no status filter).
_LATE_COMPOUND = (
    "CO-ROUTINE",
    "COMPOUND QUERY",
    "LEFT-MOST SUBQUERY",
    "UNION ALL",
    "SCAN (subquery",
)


def late_arm_steps(text: list[str]) -> list[str]:
    """The steps of a windowed plan that read its late runs: the ids of the window's late
    runs from a late partial index alone (one range per status without a status filter),
    sorted (they are few), then those rows by id."""
    return [
        step
        for step in text
        if any(name in step for name in (*LATE_INDEXES.values(), *EARLY_INDEXES.values()))
        or step.startswith(("LIST SUBQUERY", "USE TEMP B-TREE", *_LATE_COMPOUND))
        or step == "SEARCH agent_runs USING INTEGER PRIMARY KEY (rowid=?)"
    ]


@pytest.mark.parametrize("with_cursor", [False, True], ids=["first-page", "cursor-page"])
@pytest.mark.parametrize(("equalities", "bounds"), COMBINATIONS)
def test_every_combination_reads_only_matching_runs(
    conn: sqlite3.Connection,
    equalities: tuple[str, ...],
    bounds: str,
    with_cursor: bool,
) -> None:
    """The index whose leading columns are the equality filters is searched by them (a
    cursor, a created_at bound or a start_time window's created_at range narrows the same
    range) and walked newest first: no table scan, no sort, no other index. Without a
    status filter: one such range per status, merged. A start_time window adds an arm for
    its late runs: the late partial index with the same equality columns searched by them
    and the window (one range per status without a status filter), index only (no row of
    another agent, job or status is read), the ids sorted, then the rows. A window bounded
    below only reads the early indexes instead (runs created before they started)."""
    query = make_query(equalities, bounds)
    after = CURSOR if with_cursor else None
    text = plan(conn, *query_sql(query, after))
    windowed = query.start_time_from is not None or query.start_time_to is not None
    late = late_arm_steps(text)
    key = (*equalities, "status") if equalities and "status" not in equalities else equalities
    if windowed:
        far = EARLY_INDEXES[key] if window.bounded_below_only(query) else LATE_INDEXES[key]
        searched = [step for step in late if far in step]
        keys = "".join(f"{column}=? AND " for column in key)
        ranges = len(CANONICAL_STATUSES) if key != equalities else 1
        assert len(searched) == ranges, text
        for step in searched:
            assert step.startswith(
                f"SEARCH agent_runs USING COVERING INDEX {far} ({keys}start_time"
            ), text
        rest = sorted(step for step in late if step not in searched)
        compound = ["COMPOUND QUERY", "LEFT-MOST SUBQUERY", *["UNION ALL"] * (ranges - 1)]
        expected = [
            "SEARCH agent_runs USING INTEGER PRIMARY KEY (rowid=?)",
            *["USE TEMP B-TREE FOR ORDER BY"] * 2,
            *(compound if ranges > 1 else []),
        ]
        subqueries = [
            step for step in rest if step.startswith(("LIST SUBQUERY", "CO-ROUTINE", "SCAN ("))
        ]
        assert [step for step in rest if step not in subqueries] == sorted(expected), text
        assert len(subqueries) == (3 if ranges > 1 else 1), text  # LIST, CO-ROUTINE, SCAN
        text = [step for step in text if step not in late]
        # The list arms merge with the late arm: one more merge step of its own.
        text.remove("MERGE (UNION ALL)")
        text.remove("LEFT")
        text.remove("RIGHT")
    else:
        assert late == [], text
    served, merge = index_key(query)
    assert served == key
    index = LIST_INDEXES[served]
    assert not any("TEMP B-TREE" in step or step == "SCAN agent_runs" for step in text), text
    ranged = with_cursor or windowed or bounds.startswith("created")
    if merge:
        # One range per status of the index with status, merged newest first.
        searches = [step for step in text if step.startswith("SEARCH")]
        assert len(searches) == len(CANONICAL_STATUSES), text
        assert {step for step in text if not step.startswith("SEARCH")} <= {
            "MERGE (UNION ALL)",
            "LEFT",
            "RIGHT",
        }, text
        keys = " AND ".join(f"{column}=?" for column in (*equalities, "status"))
        for step in searches:
            assert step.startswith(f"SEARCH agent_runs USING INDEX {index} ({keys}"), text
            assert "created_at" in step or not ranged, text
        assert index == LIST_INDEXES[(*equalities, "status")]
        return
    assert len(text) == 1, text
    step = text[0]
    assert index == LIST_INDEXES[equalities]
    if equalities or ranged:
        keys = " AND ".join(f"{column}=?" for column in equalities)
        assert step.startswith(f"SEARCH agent_runs USING INDEX {index} ({keys}"), text
    else:
        # No equality filter and no created_at range: every run matches; walk the
        # ordering index from the newest end and stop at the page.
        assert step == f"SCAN agent_runs USING INDEX {index}", text
    if ranged:
        assert "created_at" in step, text


def vm_steps(conn: sqlite3.Connection, sql: str, params: list[Any]) -> tuple[int, int]:
    """(SQLite VM instructions, rows returned) of running sql to the end."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 1)
    return steps, len(rows)


@pytest.mark.parametrize(
    "equalities",
    [("agent_name", "status"), ("agent_name",), ("agent_name", "job_type"), ("job_type",)],
)
def test_the_walk_reads_no_other_agents_runs(
    conn: sqlite3.Connection, equalities: tuple[str, ...]
) -> None:
    """Measured by SQLite's own instruction count: walking every match costs per run
    what an unfiltered page costs per run (where every row read is returned), a per-status
    merge a little more. Pinned to the status index, as the old plan of the guide's headline
    query was, it costs more than twice as much: it reads every success of every agent."""
    query = make_query(equalities, "none", limit=1000)
    sql, params = query_sql(query)
    steps, returned = vm_steps(conn, sql, params)
    assert returned > 10
    base_steps, base_rows = vm_steps(conn, *query_sql(make_query((), "none", limit=returned - 1)))
    assert base_rows == returned
    # A merge moves each row through a co-routine (about 1.6x the instructions per row)
    # and seeks once per status (a few hundred instructions each).
    allowed = (
        2.0 * base_steps + 300 * len(CANONICAL_STATUSES)
        if index_key(query)[1]
        else 1.5 * base_steps
    )
    assert steps < allowed, (steps, base_steps)
    if equalities == ("agent_name", "status"):
        old_sql = sql.replace(LIST_INDEXES[equalities], LIST_INDEXES[("status",)])
        old_steps, old_returned = vm_steps(conn, old_sql, params)
        assert old_returned == returned
        assert old_steps > 2 * steps, (old_steps, steps)


def test_status_ranges_cover_every_run(conn: sqlite3.Connection) -> None:
    """A merge reads one range per canonical status; the table's CHECK constraint
    admits exactly those, so the ranges hold every run."""
    table_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'agent_runs'").fetchone()
    check = table_sql[0].split("CHECK (status IN (")[1].split(")")[0]
    assert check.replace("'", "").split(",") == list(CANONICAL_STATUSES)


def test_every_list_index_exists_with_its_columns(conn: sqlite3.Connection) -> None:
    """Each index query_sql names leads with its equality filters, then the list order."""
    assert set(LIST_INDEXES.values()) >= {
        LIST_INDEXES[index_key(make_query(equalities, "none"))[0]] for equalities in EQUALITY_SETS
    }
    for equalities, index in LIST_INDEXES.items():
        columns = [row[2] for row in conn.execute(f"PRAGMA index_info({index})")]
        assert columns == [*equalities, "created_at", "id"], index


# ---- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("equalities", "bounds"), COMBINATIONS)
def test_every_combination_answers_like_brute_force(
    conn: sqlite3.Connection,
    fleet: tuple[Path, list[tuple[Any, ...]]],
    equalities: tuple[str, ...],
    bounds: str,
) -> None:
    """Walking every page with the cursor returns exactly the brute-force answer, in
    order; so do the first page, an offset page and a page after a fixed cursor."""
    _, rows = fleet
    query = make_query(equalities, bounds, limit=400)
    everything = expected_ids(rows, query)
    walked: list[int] = []
    after = None
    for _ in range(RUNS // 400 + 2):
        page = query_runs(conn, query, after)
        walked += [int(run["event_id"][1:]) + 1 for run in page.runs]
        after = page.next_position
        if after is None:
            break
    assert walked == everything
    first = query_runs(conn, make_query(equalities, bounds, limit=7), None)
    assert [int(run["event_id"][1:]) + 1 for run in first.runs] == everything[:7]
    offset = RunQuery.model_validate({**make_query(equalities, bounds).model_dump(), "offset": 5})
    page = query_runs(conn, offset.model_copy(update={"limit": 9}))
    assert [int(run["event_id"][1:]) + 1 for run in page.runs] == everything[5:14]
    page = query_runs(conn, make_query(equalities, bounds, limit=50), CURSOR)
    assert [int(run["event_id"][1:]) + 1 for run in page.runs] == expected_ids(rows, query, CURSOR)[
        :50
    ]


def test_the_skew_is_real(fleet: tuple[Path, list[tuple[Any, ...]]]) -> None:
    """The data has the shape the plans must survive (else the test proves little)."""
    _, rows = fleet
    statuses = [row[4] for row in rows]
    assert 0.80 < statuses.count("success") / RUNS < 0.90
    assert len({row[2] for row in rows}) > 1000
    busiest = sum(1 for row in rows if row[2] == AGENT)
    assert busiest > 20 * RUNS / len(AGENTS)
    # Both kinds of start_time window occur: the narrow ones hold late runs too.
    narrow = make_query((), "start_both_narrow")
    late = [
        row
        for row in rows
        if narrow.start_time_from <= row[5] <= narrow.start_time_to
        and row[6] > narrow.start_time_to
    ]
    assert late


def late_in_window(rows: list[tuple[Any, ...]], query: RunQuery) -> int:
    """The late runs of the query's window that match its equality filters."""
    low, high = query.start_time_from or "", query.start_time_to or "~"
    return sum(
        1
        for _, _, agent, job, status, start, created in rows
        if query.agent_name in (None, agent)
        and query.job_type in (None, job)
        and query.status in (None, status)
        and low <= start <= high
        and abs(datetime.fromisoformat(created) - datetime.fromisoformat(start))
        > timedelta(seconds=PROMPT_LAG_S)
    )


def page_steps(conn: sqlite3.Connection, query: RunQuery, after: Position | None = None) -> int:
    """SQLite VM instructions of one page as the server reads it (JSON rendering)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        page = query_page_json(conn, query, after)
    finally:
        conn.set_progress_handler(None, 1)
    assert page.body.startswith(b"[")
    return steps


@pytest.mark.parametrize("equalities", [(), ("status",), ("agent_name",), ("job_type", "status")])
@pytest.mark.parametrize("bounds", [b for b in TIME_BOUNDS if b.startswith(("start", "every"))])
def test_a_window_page_reads_the_page_and_the_windows_late_runs(
    conn: sqlite3.Connection,
    fleet: tuple[Path, list[tuple[Any, ...]]],
    equalities: tuple[str, ...],
    bounds: str,
) -> None:
    """Measured by SQLite's own instruction count: a page of a start_time window costs
    what the same page without the window costs, plus a few instructions per late run
    of the window (an index-only read). It never reads the window's other runs to plan
    (the old plan counted up to 20,001 of them for every page) nor walks the runs
    recorded after the window."""
    query = make_query(equalities, bounds)
    plain = make_query(equalities, "none")
    allowed = 3 * page_steps(conn, plain) + 25 * late_in_window(fleet[1], query)
    assert page_steps(conn, query) < allowed


@pytest.mark.parametrize("equalities", [(), ("status",), ("agent_name",)])
def test_the_index_range_is_the_tightest_created_at_bound(
    conn: sqlite3.Connection, equalities: tuple[str, ...]
) -> None:
    """A created_after/created_before that spans the whole history adds nothing to a
    narrow window's page, nor to a deep cursor page: the index is searched by the
    tightest bound of each side, not by whichever SQLite picks of two."""
    narrow = make_query(equalities, "start_both_narrow")
    wide = RunQuery.model_validate(
        {
            **narrow.model_dump(exclude_none=True),
            "created_after": stamp(ORIGIN - timedelta(days=1)),
            "created_before": stamp(ORIGIN + timedelta(days=400)),
        }
    )
    assert page_steps(conn, wide) < 1.2 * page_steps(conn, narrow) + 200
    deep = Position(stamp(ORIGIN + timedelta(days=3)), RUNS)  # most of the history above it
    plain = make_query(equalities, "none")
    bounded = make_query(equalities, "created_before")
    assert page_steps(conn, bounded, deep) < 1.2 * page_steps(conn, plain, deep) + 200


ODD_INSTANTS = [
    # (start_time, created_at, late?): around the lag, clock skew, text not canonical
    ("2026-01-10T12:00:00.000000+00:00", "2026-01-10T12:10:00.000000+00:00", False),
    ("2026-01-10T12:00:00.000000+00:00", "2026-01-10T12:10:00.001000+00:00", True),
    ("2026-01-10T12:00:00.000000+00:00", "2026-01-10T11:50:00.000000+00:00", False),
    ("2026-01-10T12:00:00.000000+00:00", "2026-01-10T11:49:59.000000+00:00", True),
    ("2026-01-10T12:00:00Z", "2026-01-10T12:00:01.000000+00:00", True),
    ("2026-01-10 12:00:00.000000+00:00", "2026-01-10T12:00:01.000000+00:00", True),
    ("2026-02-30T12:00:00.000000+00:00", "2026-03-02T12:00:01.000000+00:00", True),
    ("2026-01-10T12:00:00.000000+00:00", "2026-01-10T12:00:01.000000+05:00", True),
    ("not a time", "2026-01-10T12:00:01.000000+00:00", True),
    ("2026-01-10T23:59:59.000000+00:00", "2026-01-11T00:05:00.000000+00:00", False),
]


EQUALITY_WALKS: list[tuple[str, ...]] = [(), ("agent_name",), ("agent_name", "status")]


def test_every_run_is_prompt_or_late_and_windows_find_them_all(tmp_path: Path) -> None:
    """The two arms split the runs exactly: odd text (another writer's: not the canonical
    form, an impossible date, an offset) is late, and so is a run recorded more than the
    lag after or before it started. Windows around them, bounded on both sides or on
    one, answer like brute force."""
    path = tmp_path / "odd.sqlite"
    start_server_database(path)
    rows = skewed_rows(random.Random(5))[:600]
    odd = [
        (f"odd{i}", "r", AGENT, JOB, STATUS, start, created)
        for i, (start, created, _) in enumerate(ODD_INSTANTS)
    ]
    insert(path, rows + odd)
    reader = open_reader(path, busy_timeout_ms=1000)
    try:
        late = {
            str(row[0])
            for row in reader.execute(
                f"SELECT event_id FROM agent_runs INDEXED BY {LATE_START_INDEX} WHERE {window.LATE}"
            )
        }
        prompt = {
            str(row[0])
            for row in reader.execute(f"SELECT event_id FROM agent_runs WHERE {PROMPT_RUN_SQL}")
        }
        assert not late & prompt
        assert len(late) + len(prompt) == len(rows) + len(odd)
        assert {name for name, *_ in odd if name in late} == {
            f"odd{i}" for i, (*_, is_late) in enumerate(ODD_INSTANTS) if is_late
        }
        everything = rows + odd
        for low, high in [
            ("2026-01-10T11:59:00.000000+00:00", "2026-01-10T12:00:00.000000+00:00"),
            ("2026-01-10T12:00:00.000000+00:00", "2026-01-11T00:00:00.000000+00:00"),
            ("2026-01-10T00:00:00.000000+00:00", "2026-01-10T23:59:59.000000+00:00"),
            ("2026-02-28T00:00:00.000000+00:00", "2026-03-01T00:00:00.000000+00:00"),
            ("2025-12-31T00:00:00.000000+00:00", "2026-01-02T00:00:00.000000+00:00"),
        ]:
            bounds = itertools.product([low, None], [high, None], EQUALITY_WALKS)
            for start_from, start_to, equalities in bounds:
                if start_from is None and start_to is None:
                    continue
                query = RunQuery.model_validate(
                    {
                        **{column: EQUALITY_VALUES[column] for column in equalities},
                        "start_time_from": start_from,
                        "start_time_to": start_to,
                        "limit": 3,
                    }
                )
                walked: list[str] = []
                after = None
                for _ in range(len(everything)):
                    page = query_runs(reader, query, after)
                    walked += [run["event_id"] for run in page.runs]
                    after = page.next_position
                    if after is None:
                        break
                expected = [everything[i - 1][0] for i in expected_ids(everything, query)]
                assert walked == expected, (start_from, start_to, equalities)
    finally:
        reader.close()


#: The prompt predicate as migration 8 first indexed it: the server's INSERT and migration
#: 11's trigger evaluate
#: the same text (over NEW) to keep the ``late`` column. A different predicate needs a
#: migration of its own (every stored flag would be recomputed).
MIGRATION_8_PROMPT = (
    "coalesce(strftime('%Y-%m-%dT%H:%M:%S', start_time, '+0 seconds')"
    " = substr(start_time, 1, 19)"
    " AND substr(start_time, 20) GLOB '.[0-9][0-9][0-9][0-9][0-9][0-9]+00:00'"
    " AND strftime('%Y-%m-%dT%H:%M:%S', created_at, '+0 seconds') = substr(created_at, 1, 19)"
    " AND substr(created_at, 20) GLOB '.[0-9][0-9][0-9][0-9][0-9][0-9]+00:00'"
    " AND abs(round((julianday(created_at) - julianday(start_time)) * 86400000)) <= 600000, 0)"
)


def test_the_late_predicate_is_frozen(conn: sqlite3.Connection) -> None:
    """The server's INSERT and the trigger keep ``late`` with migration 8's predicate;
    the late indexes are partial on the queries' own filter, word for word (else SQLite
    answers "no query solution" to their INDEXED BY)."""
    assert PROMPT_RUN_SQL == MIGRATION_8_PROMPT
    over_new = MIGRATION_8_PROMPT.replace("start_time", "NEW.start_time").replace(
        "created_at", "NEW.created_at"
    )
    (trigger,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'trg_runs_late%'"
    ).fetchall()
    assert f"SET late = (NOT {over_new})" in trigger[0]
    # The INSERT names start_time and created_at again by their parameters' numbers.
    numbers = [_INSERT_COLUMNS.index(column) + 1 for column in ("start_time", "created_at")]
    over_params = MIGRATION_8_PROMPT.replace("start_time", f"?{numbers[0]}").replace(
        "created_at", f"?{numbers[1]}"
    )
    assert _INSERT_SQL.endswith(f", (NOT {over_params})) ON CONFLICT(event_id) DO NOTHING")
    for name in LATE_INDEXES.values():
        stored = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        assert stored[0].endswith(f" WHERE {window.LATE}"), name
    assert (
        conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'idx_runs_start_created'"
        ).fetchone()[0]
        == 1  # kept: the stats' reads of raw runs walk it (``stats``)
    )


def test_the_late_flag_follows_every_write(tmp_path: Path) -> None:
    """The server's INSERT (with NULL literals or not) sets the flag to the predicate;
    an UPDATE of start_time or created_at, or of ``late`` itself, recomputes it."""
    path = tmp_path / "flag.sqlite"
    start_server_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for i, (start, created, _) in enumerate(ODD_INSTANTS):
            run = RunCreate.model_validate(
                {
                    "event_id": f"odd{i}",
                    "run_id": "r",
                    "agent_name": AGENT,
                    "job_type": JOB,
                    "start_time": "2026-01-10T12:00:00Z",
                }
            )
            params = list(insert_params(run, created))
            params[_INSERT_COLUMNS.index("start_time")] = start  # foreign text too
            insert = (
                prepare_insert(tuple(params))
                if i % 2
                else PreparedInsert(_INSERT_SQL, tuple(params))
            )
            assert conn.execute(insert.sql, insert.values).rowcount == 1

        def disagreeing() -> int:
            return int(
                conn.execute(
                    f"SELECT count(*) FROM agent_runs WHERE late IS NOT (NOT {PROMPT_RUN_SQL})"
                ).fetchone()[0]
            )

        assert disagreeing() == 0
        assert sorted(
            name for (name,) in conn.execute("SELECT event_id FROM agent_runs WHERE late = 1")
        ) == sorted(f"odd{i}" for i, (*_, late) in enumerate(ODD_INSTANTS) if late)
        # A PATCH of start_time makes a prompt run late and a late one prompt.
        conn.execute(
            "UPDATE agent_runs SET start_time = '2020-01-01T00:00:00.000000+00:00'"
            " WHERE event_id = 'odd0'"
        )
        conn.execute("UPDATE agent_runs SET start_time = created_at WHERE event_id = 'odd1'")
        conn.execute("UPDATE agent_runs SET late = 1 - late")  # a hand edit: undone
        conn.execute("UPDATE agent_runs SET status = 'failure', late = 0 WHERE late = 1")
        assert disagreeing() == 0
        flags = dict(conn.execute("SELECT event_id, late FROM agent_runs"))
        assert (flags["odd0"], flags["odd1"]) == (1, 0)
    finally:
        conn.close()


# ---- stale runs (the reaper and ?stale=true) ---------------------------------------------

STALE_POLICY = StalePolicy(default_s=86_400, by_job=((JOBS[0], 3600), (JOBS[1], 0)))
STALE_INDEXES = {"idx_runs_running_deadline", "idx_runs_running_job_seen"}
#: Scans of no table: the constant row seeding the job types' loose index scan, and its
#: rows (one per job type with a running run, each found by one index seek).
CTE_SCANS = ("SCAN CONSTANT ROW", "SCAN jobs")


def _stale_plans(sql: list[str]) -> None:
    """Every read of the runs table is one of the reaper's partial indexes (over running
    runs only) or a row-id lookup: no scan, and no walk of every running run."""
    for line in sql:
        if line in CTE_SCANS:
            continue
        if "agent_runs" in line or line.startswith(("SCAN", "SEARCH r ")):
            assert not line.startswith("SCAN"), line
            assert any(index in line for index in STALE_INDEXES) or "PRIMARY KEY" in line, line


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"agent_name": AGENT},
        {"job_type": JOB, "status": "running"},
        {"created_after": "2026-01-10T00:00:00Z"},
    ],
)
def test_stale_lists_and_the_reaper_read_only_overdue_candidates(
    conn: sqlite3.Connection, filters: dict[str, str]
) -> None:
    now = ORIGIN + STEP * RUNS
    overdue = overdue_ids_sql(STALE_POLICY, now)
    query = RunQuery.model_validate({"stale": "true", **filters})
    sql, params = stale_query_sql(query, CURSOR, overdue)
    lines = plan(conn, sql, params)
    _stale_plans(lines)
    # own deadline, one configured job, and the default: the first job type, the next
    # one (the recursive step), then each one's range
    assert [line.split(" (")[0] for line in lines if "idx_runs_running" in line] == [
        "SEARCH agent_runs USING INDEX idx_runs_running_deadline",
        "SEARCH agent_runs USING INDEX idx_runs_running_job_seen",
        *["SEARCH agent_runs USING INDEX idx_runs_running_job_seen"] * 3,
    ]
    _stale_plans(plan(conn, *reapable_ids_sql(STALE_POLICY, now, 200)))
    select, select_params = reapable_ids_sql(STALE_POLICY, now, 200)
    update = _REAP_SQL.format(ids=select)
    _stale_plans(plan(conn, update, ["x"] * _REAP_SQL.count("?") + select_params))


def test_stale_answers_like_brute_force(
    fleet: tuple[Path, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """On a copy where every run was last seen at its creation, some with allowances of
    their own: ``stale=true`` is exactly the running runs past their allowance."""
    source, rows = fleet
    path = tmp_path / "stale.sqlite"
    copy = sqlite3.connect(source)
    try:
        copy.execute(f"VACUUM INTO '{path}'")
    finally:
        copy.close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute(
        "UPDATE agent_runs SET last_seen_at = created_at,"
        " heartbeat_timeout_s = CASE WHEN id % 7 = 0 THEN 60 WHEN id % 11 = 0 THEN 5000000"
        " END"
    )
    writer.close()
    now = ORIGIN + STEP * RUNS
    allowance = dict(STALE_POLICY.by_job)
    expected = []
    for row_id, (_, _, _, job, status, _, created) in enumerate(rows, start=1):
        own = 60 if row_id % 7 == 0 else 5000000 if row_id % 11 == 0 else None
        seconds = own if own is not None else allowance.get(job, STALE_POLICY.default_s)
        if status != "running" or not seconds:
            continue
        if (now - datetime.fromisoformat(created)).total_seconds() > seconds:
            expected.append((created, row_id))
    expected_page = [row_id for _, row_id in sorted(expected, reverse=True)][:1000]
    reader = open_reader(path, busy_timeout_ms=1000)
    try:
        overdue = overdue_ids_sql(STALE_POLICY, now)
        got = query_runs(reader, RunQuery(stale="true", limit=1000), None, overdue)
        ids = {run["event_id"]: int(run["event_id"][1:]) + 1 for run in got.runs}
        assert [ids[run["event_id"]] for run in got.runs] == expected_page
        assert 20 < len(expected_page) < 1000
    finally:
        reader.close()


# ---- windows bounded above only: late runs newest first (migration 12) -------------------

ABOVE_ONLY = [bounds for bounds in TIME_BOUNDS if bounds.startswith("start_to")]


@pytest.mark.parametrize("with_cursor", [False, True], ids=["first-page", "cursor-page"])
@pytest.mark.parametrize("bounds", ABOVE_ONLY)
@pytest.mark.parametrize("equalities", EQUALITY_SETS)
def test_a_window_bounded_above_only_reads_its_late_runs_newest_first(
    conn: sqlite3.Connection, equalities: tuple[str, ...], bounds: str, with_cursor: bool
) -> None:
    """Read newest first, the far arm is one more range per status of the late index by
    created_at with the same equality columns, searched by them and from the bound's
    created_at up, merged with the list ranges: no sort, no subquery, no other index."""
    query = make_query(equalities, bounds)
    after = CURSOR if with_cursor else None
    text = plan(conn, *query_sql(query, after, late_newest_first=True))
    key, merge = index_key(query)
    ranges = len(CANONICAL_STATUSES) if merge else 1
    keys = "".join(f"{column}=? AND " for column in key)
    late = [step for step in text if LATE_CREATED_INDEXES[key] in step]
    listed = [step for step in text if LIST_INDEXES[key] in step]
    assert len(late) == ranges, text
    assert len(listed) == ranges, text
    for step in late:
        index = LATE_CREATED_INDEXES[key]
        assert step.startswith(f"SEARCH agent_runs USING INDEX {index} ({keys}created_at>?"), text
    for step in listed:
        assert step.startswith(f"SEARCH agent_runs USING INDEX {LIST_INDEXES[key]} ({keys}"), text
    assert set(text) - {*late, *listed} == {"MERGE (UNION ALL)", "LEFT", "RIGHT"}, text


@pytest.mark.parametrize("newest_first", [False, True], ids=["by-start", "newest-first"])
@pytest.mark.parametrize("bounds", ABOVE_ONLY)
@pytest.mark.parametrize("equalities", EQUALITY_SETS)
def test_both_far_arms_answer_like_brute_force(
    conn: sqlite3.Connection,
    fleet: tuple[Path, list[tuple[Any, ...]]],
    equalities: tuple[str, ...],
    bounds: str,
    newest_first: bool,
) -> None:
    """Whichever way the far arm reads, a cursor walk and an offset page are the
    brute-force answer: the choice is a plan, never a different result."""
    _, rows = fleet
    query = make_query(equalities, bounds, limit=300)
    walked: list[int] = []
    after = None
    for _ in range(RUNS // 300 + 2):
        sql, params = query_sql(query, after, late_newest_first=newest_first)
        page = conn.execute(sql, params).fetchall()
        walked += [int(row[0][1:]) + 1 for row in page[: query.limit]]
        if len(page) <= query.limit:
            break
        last = page[query.limit - 1]
        after = Position(str(last[RUN_COLUMNS.index("created_at")]), int(last[-1]))
    assert walked == expected_ids(rows, query)
    offset = query.model_copy(update={"offset": 250, "limit": 20})
    page = conn.execute(*query_sql(offset, None, late_newest_first=newest_first)).fetchall()
    assert [int(row[0][1:]) + 1 for row in page[:20]] == expected_ids(rows, query)[250:270]


def test_the_far_arm_is_chosen_by_where_the_bound_sits_in_the_history(
    conn: sqlite3.Connection,
) -> None:
    """Newest first when the bound is nearer the newest late run's creation than the oldest
    one's start (few late runs created since), by start_time otherwise (few started
    before it); choosing reads a few index entries, not the table."""
    near_the_end = make_query((), "start_to_wide")  # 25 of ~28 days
    near_the_start = make_query((), "start_to_narrow")  # 6 hours in
    assert window.late_newest_first(conn, near_the_end)
    assert not window.late_newest_first(conn, near_the_start)
    assert not window.late_newest_first(conn, make_query((), "start_both_wide"))
    assert not window.late_newest_first(conn, make_query((), "none"))
    steps, _ = vm_steps(conn, window._ENDS_SQL, [])
    assert steps < 20 * window._OUTLIERS  # RUNS rows: a scan would be far more


@pytest.mark.parametrize("equalities", [(), ("status",), ("agent_name",), ("job_type", "status")])
def test_newest_first_reads_less_where_it_is_chosen(
    conn: sqlite3.Connection, equalities: tuple[str, ...]
) -> None:
    """Where it is chosen (the bound 25 of 28 days in), reading the late runs newest first
    reads only those created after the bound and stops at the page, where the other read
    takes every late run started before it: far less where there are many (no equality
    filter, or a status), about the same for one agent's few (its six more ranges in the
    merge cost what the late runs it skips saved)."""
    query = make_query(equalities, "start_to_wide")
    by_start, _ = vm_steps(conn, *query_sql(query, None, late_newest_first=False))
    newest, _ = vm_steps(conn, *query_sql(query, None, late_newest_first=True))
    if equalities in ((), ("status",)):
        assert newest < by_start / 2
    else:
        assert newest < by_start * 1.1


@pytest.mark.parametrize("equalities", EQUALITY_SETS)
def test_a_window_bounded_below_only_skips_the_runs_recorded_after_they_started(
    conn: sqlite3.Connection,
    fleet: tuple[Path, list[tuple[Any, ...]]],
    equalities: tuple[str, ...],
) -> None:
    """A window with ``start_time_from`` alone reads, for its far arm, only the runs
    created before they started (none in this fleet): a few VM instructions less for
    each late run of the window than the read by start_time, which took every late run
    started since the bound on every page (hundreds here; at 1M runs, thousands)."""
    query = make_query(equalities, "start_from_wide")
    early, rows = vm_steps(conn, *query_sql(query, None))
    by_start, same_rows = vm_steps(conn, *query_sql(query, None, early_indexes=False))
    assert rows == same_rows
    assert early + 2 * late_in_window(fleet[1], query) <= by_start


def test_the_choice_survives_outliers_and_an_old_file(
    tmp_path: Path, fleet: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    """A run with a clock from 1970 and one from 2099 (a client's, or foreign text)
    change neither choice: the history's ends are read past a few runs at each end. A
    file without migration 12's and 13's indexes (a tool that reads it before the server
    upgraded it) reads by start_time instead of failing, and answers alike."""
    path = tmp_path / "outliers.sqlite"
    path.write_bytes(fleet[0].read_bytes())
    writer = sqlite3.connect(path, isolation_level=None)
    outliers = [  # late runs: started in 1970, and recorded in 2099 days after they started
        ("1970-01-01T00:00:00.000000+00:00", stamp(ORIGIN)),
        ("2099-01-01T00:00:00.000000+00:00", "2099-01-05T00:00:00.000000+00:00"),
    ]
    for number, (start, created) in enumerate(outliers * 4):
        payload = {"event_id": f"x{number}", "run_id": "r", "agent_name": AGENT}
        payload |= {"job_type": JOB, "status": STATUS, "start_time": start}
        writer.execute(_INSERT_SQL, insert_params(RunCreate.model_validate(payload), created))
    conn = open_reader(path, busy_timeout_ms=1000)
    try:
        flags = "SELECT count(*) FROM agent_runs WHERE event_id LIKE 'x%' AND late = 1"
        assert conn.execute(flags).fetchone()[0] == 8
        assert window.late_newest_first(conn, make_query((), "start_to_wide"))
        assert not window.late_newest_first(conn, make_query((), "start_to_narrow"))
    finally:
        conn.close()
    expected = {}
    conn = open_reader(path, busy_timeout_ms=1000)
    try:
        for bounds in ("start_to_wide", "start_from_wide"):
            expected[bounds] = query_runs(conn, make_query((), bounds, limit=5)).runs
    finally:
        conn.close()
    for name in (*LATE_CREATED_INDEXES.values(), *EARLY_INDEXES.values()):
        writer.execute(f"DROP INDEX {name}")
    writer.close()
    conn = open_reader(path, busy_timeout_ms=1000)
    try:
        assert not window.late_newest_first(conn, make_query((), "start_to_wide"))
        for bounds in ("start_to_wide", "start_from_wide"):
            page = query_runs(conn, make_query((), bounds, limit=5))
            assert page.runs == expected[bounds]
            assert len(page.runs) == 5
    finally:
        conn.close()


@pytest.mark.parametrize("bounds", ["start_to_wide", "start_from_wide"])
def test_an_interrupted_read_is_not_taken_for_an_old_file(
    conn: sqlite3.Connection, bounds: str
) -> None:
    """The reader's budget interrupts a read with an OperationalError too: the far arm's
    choice and its fallback for a file without the new indexes let it through (taken
    for a missing index, the page would be read again, in full, with no budget). The
    budget interrupts once, as the reader's does: the statements run show no second
    read of the page."""
    statements: list[str] = []
    interrupts = [1]

    def interrupt_once() -> int:
        return interrupts.pop() if interrupts else 0

    conn.set_trace_callback(statements.append)
    conn.set_progress_handler(interrupt_once, 1)
    try:
        # Bounded above only, the choice's read is the one interrupted; else the page's.
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            list_rows(conn, make_query((), bounds), None, "created_at")
    finally:
        conn.set_progress_handler(None, 1)
        conn.set_trace_callback(None)
    assert len(statements) == 1, statements


def test_served_pages_read_the_early_indexes(
    conn: sqlite3.Connection, fleet: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    """The reads the server makes (a page, an export's chunks) use the early indexes for
    a window bounded below only, not only ``query_sql`` when asked."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        for equalities in EQUALITY_SETS:
            statements.clear()
            key = (
                (*equalities, "status") if "status" not in equalities and equalities else equalities
            )
            query_page_json(conn, make_query(equalities, "start_from_wide"))
            assert any(EARLY_INDEXES[key] in sql for sql in statements), statements
    finally:
        conn.set_trace_callback(None)


@pytest.mark.parametrize("side", ["start_time_to", "start_time_from"])
def test_runs_on_the_arms_boundary_are_read_once_either_way(tmp_path: Path, side: str) -> None:
    """Runs created exactly at the far arm's bound (a window's bound plus, or minus, the
    lag and a second), a microsecond either side, in the lag beside the bound, started on
    it or a second either side, prompt, late or created before they started, foreign text
    too: a cursor walk with every created_after/before at those same instants returns
    each matching run once, whichever far arm reads (the fleet above never puts a run
    there: ``>=`` for ``>`` in the far arm, or no margin, passed every test before this
    one). ``start_time_to`` alone: newest first or by start_time; ``start_time_from``
    alone: from the early indexes or, as on a file without them, by start_time."""
    bound = datetime(2026, 3, 1, 12, tzinfo=UTC)
    sign = 1 if side == "start_time_to" else -1
    edge = bound + sign * timedelta(seconds=PROMPT_LAG_S + 1)
    instants = [
        edge,
        edge - timedelta(microseconds=1),
        edge + timedelta(microseconds=1),
        bound,
        bound + timedelta(seconds=1),
        bound - timedelta(seconds=1),
        bound + sign * timedelta(seconds=PROMPT_LAG_S),
        bound + sign * timedelta(seconds=PROMPT_LAG_S, microseconds=500),
        bound - timedelta(days=1),
        bound + timedelta(days=1),
    ]
    texts = [stamp(moment) for moment in instants]
    foreign = ["2026-03-01T12:00:00Z", "2026-03-01 12:10:01", "2026-03-01 11:49:59", "garbage"]
    rows = []
    for number, (start, created) in enumerate(itertools.product(texts + foreign, repeat=2)):
        status = ("success", "failure")[number % 2]
        rows.append((f"e{number}", "r", AGENTS[number % 3], JOBS[0], status, start, created))
    path = tmp_path / "edges.sqlite"
    start_server_database(path)
    insert(path, rows)
    conn = open_reader(path, busy_timeout_ms=1000)
    created_at = RUN_COLUMNS.index("created_at")
    # The early arm has runs to find, and each early index holds only the late runs
    # created, as text, before they started (a looser WHERE would hold more).
    early = conn.execute(
        f"SELECT count(*) FROM agent_runs NOT INDEXED WHERE {EARLY_WHERE}"
    ).fetchone()[0]
    assert early > 50
    for name in EARLY_INDEXES.values():
        held = f"SELECT count(*) FROM agent_runs INDEXED BY {name} WHERE {EARLY_WHERE}"
        assert conn.execute(held).fetchone()[0] == early
        definition = "SELECT sql FROM sqlite_master WHERE name = ?"
        assert conn.execute(definition, (name,)).fetchone()[0].endswith(f" WHERE {EARLY_WHERE}")
    choices = (
        [{"late_newest_first": False}, {"late_newest_first": True}]
        if side == "start_time_to"
        else [{"early_indexes": True}, {"early_indexes": False}]
    )
    try:
        for filters in ({}, {"status": "failure"}, {"agent_name": AGENTS[1]}):
            for created_after, created_before in itertools.product([None, *texts[:3]], repeat=2):
                query = RunQuery.model_validate(
                    {
                        **filters,
                        side: stamp(bound),
                        "created_after": created_after,
                        "created_before": created_before,
                        "limit": 4,
                    }
                )
                expected = expected_ids(rows, query)
                for choice in choices:
                    walked: list[int] = []
                    after = None
                    for _ in range(len(rows)):
                        sql, params = query_sql(query, after, **choice)
                        page = conn.execute(sql, params).fetchall()
                        walked += [int(row[0][1:]) + 1 for row in page[:4]]
                        if len(page) <= 4:
                            break
                        after = Position(str(page[3][created_at]), int(page[3][-1]))
                    assert walked == expected, (filters, created_after, created_before, choice)
    finally:
        conn.close()
