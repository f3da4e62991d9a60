"""A page rendered by SQLite (``run_json``) is byte for byte the Python rendering
(``row_to_run`` + ``with_urls`` + orjson), for hostile and foreign rows too."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.contract.codec import dumps, dumps_text
from server.contract.fields import CANONICAL_STATUSES
from server.contract.models import RunQuery
from server.contract.run_record import RUN_COUNTER_COLUMNS, RUN_JSON_COLUMNS, with_urls
from server.storage import run_json, runs
from server.storage.connection import open_reader
from server.storage.cursor import Position
from server.storage.runs import _INSERT_COLUMNS, _INSERT_SQL, query_page_json, query_runs
from server.storage.schema import migrate

ROWS = 1500
AGENTS = ("a", "b", "ünï", "c\"'\\")
JOBS = ("j1", "j2")
TEXTS = (
    "",
    "plain",
    "é€😀",
    "\u2028\u2029",
    'quote" back\\ slash/',
    "".join(chr(code) for code in range(0x20)) + "\x7f",
    "x" * 3000,
    "<script>&amp;",
)
REPOS = (
    None,
    "",
    "https://github.com/o/r",
    "git@github.com:o/r.git",
    "https://gitlab.com/g/s/p",
    "https://bitbucket.org/o/r/",
    "https://git.example.com/o/r",
    "not a repo",
    "https://github.com.evil.example/o/r",
)
COMMITS = (None, "", "ABCDEF0123456789", "deadbeef", "v1.2/../x?y#z%", ".", "héllo", "a b")
JSONS: tuple[Any, ...] = (
    None,
    {},
    [],
    {"a": {}},
    {"nested": {"list": [1, 2.5, -0.0, 1e300, True, None, "é\n"]}},
    {"big": 2**63 - 1, "neg": -(2**63)},
    "just a string",
    0,
    {"k" * 10: "v" * 5000},
)
#: Stored text our server never writes (a foreign writer, an old import): the Python
#: rendering parses it, so SQLite must not splice it as it is.
FOREIGN_JSON = ('{"a": 1}', " {}", "not json", "[1,2", "7", '{"a":1}\n')
#: Minified foreign text SQLite splices as stored: the same JSON value, other bytes.
FOREIGN_EQUIVALENT = ('{"a":"\\u00e9"}', '{"a":1E5}', '{"a":1,"a":2}', '["\\/"]')


#: Migration 6's columns (staleness).
_STALENESS_COLUMNS = ("heartbeat_timeout_s", "last_seen_at", "sidecar_id")


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def hostile_rows(
    rng: random.Random, foreign: tuple[str, ...] = FOREIGN_JSON
) -> Iterator[tuple[Any, ...]]:
    origin = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(ROWS):
        created = origin + timedelta(seconds=i // 3)  # ties in created_at
        row: dict[str, Any] = {column: None for column in _INSERT_COLUMNS}
        for column in _INSERT_COLUMNS:
            if column in _STALENESS_COLUMNS:
                continue  # drawn apart (below): the other columns' draws stay as they were
            if column in RUN_COUNTER_COLUMNS:
                row[column] = rng.choice((0, 1, 2**63 - 1, rng.randrange(10**6)))
            elif column in RUN_JSON_COLUMNS:
                value = rng.choice(JSONS)
                row[column] = None if value is None else dumps_text(value)
            else:
                row[column] = rng.choice((None, *TEXTS))
        row.update(
            event_id=f"e{i:05d}-{rng.choice(TEXTS)[:20]}",
            run_id=rng.choice(TEXTS),
            agent_name=rng.choice(AGENTS),
            job_type=rng.choice(JOBS),
            status=rng.choice(CANONICAL_STATUSES),
            start_time=stamp(created - timedelta(seconds=rng.randrange(100))),
            git_repo=rng.choice(REPOS),
            git_commit_hash=rng.choice(COMMITS),
            created_at=stamp(created),
            updated_at=rng.choice((None, stamp(created))),
        )
        apart = random.Random(i)
        row.update(
            heartbeat_timeout_s=apart.choice((None, 1, 600, 2**63 - 1, 1.5, "x", "")),
            last_seen_at=apart.choice((None, stamp(created), "garbage")),
            sidecar_id=apart.choice((None, "s1")),
        )
        if rng.random() < 0.03:  # foreign data the contract would refuse
            column = rng.choice(RUN_JSON_COLUMNS)
            row[column] = rng.choice(foreign)
        if rng.random() < 0.02:
            # reals, text (a number in a sum: 0) and a sum that overflows
            row[rng.choice(RUN_COUNTER_COLUMNS)] = rng.choice((1.5, 1e20, "abc", "", 2**63 - 1))
        yield tuple(row[column] for column in _INSERT_COLUMNS)


def filled(path: Path, foreign: tuple[str, ...]) -> sqlite3.Connection:
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    migrate(writer)
    writer.execute("BEGIN")
    writer.executemany(_INSERT_SQL, list(hostile_rows(random.Random(10), foreign)))
    writer.execute("COMMIT")
    writer.close()
    return open_reader(path, busy_timeout_ms=2000)


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    reader = filled(tmp_path_factory.mktemp("run_json") / "runs.sqlite", FOREIGN_JSON)
    yield reader
    reader.close()


def test_minified_foreign_json_is_the_same_value(tmp_path: Path) -> None:
    """Foreign JSON text already minified is spliced as stored: other bytes than the
    Python rendering (which re-encodes it), the same parsed answer."""
    reader = filled(tmp_path / "foreign.sqlite", FOREIGN_EQUIVALENT)
    try:
        query = RunQuery(limit=1000)
        fast = query_page_json(reader, query).body
        assert orjson.loads(fast) == orjson.loads(python_page(reader, query, None))
        assert b'"\\u00e9"' in fast  # it was there to compare
    finally:
        reader.close()


def python_page(conn: sqlite3.Connection, query: RunQuery, after: Position | None) -> bytes:
    """The answer as the handler rendered it before run_json."""
    return dumps([with_urls(run) for run in query_runs(conn, query, after).runs])


QUERIES: tuple[dict[str, Any], ...] = (
    {},
    {"limit": 1000},
    {"agent_name": "ünï"},
    {"agent_name": "c\"'\\", "status": "failure"},
    {"job_type": "j2", "status": "running"},
    {"agent_name": "a", "job_type": "j1"},
    {"status": "cancelled", "limit": 7, "offset": 3},
    {"created_after": "2026-01-01T00:01:00+00:00", "created_before": "2026-01-01T00:03:00+00:00"},
    {"start_time_from": "2026-01-01T00:02:00+00:00", "start_time_to": "2026-01-01T00:04:00+00:00"},
    {"agent_name": "nobody"},
)


def test_this_sqlite_renders_like_orjson() -> None:
    """Else every test below would compare the Python way with itself."""
    assert run_json.renders_like_orjson()


@pytest.mark.parametrize("params", QUERIES, ids=[str(index) for index in range(len(QUERIES))])
def test_pages_are_the_python_rendering_byte_for_byte(
    conn: sqlite3.Connection, params: dict[str, Any]
) -> None:
    query = RunQuery.model_validate({"limit": 100, **params})
    after: Position | None = None
    for _ in range(ROWS // query.limit + 2):  # walk every page by cursor
        page = query_page_json(conn, query, after)
        assert page.body == python_page(conn, query, after)
        assert page.next_position == query_runs(conn, query, after).next_position
        after = page.next_position
        if after is None or query.offset:
            break
    else:
        pytest.fail("the walk did not end")


def test_rows_cover_every_case(conn: sqlite3.Connection) -> None:
    """The data holds what the comparison is about (so it cannot pass vacuously)."""
    body = orjson.loads(query_page_json(conn, RunQuery(limit=1000)).body)
    seen_json = {dumps_text(run["metrics_json"]) for run in body}
    assert {"{}", "[]", "null", '"just a string"', '{"a":1}', "7"} <= seen_json
    assert {run["status"] for run in body} == set(CANONICAL_STATUSES)
    assert any(isinstance(run[column], float) for run in body for column in RUN_COUNTER_COLUMNS)
    counters = [run[column] for run in body for column in RUN_COUNTER_COLUMNS]
    assert {"abc", "", 2**63 - 1} <= {value for value in counters if not isinstance(value, float)}
    assert {run["commit_url"] for run in body} >= {
        None,
        "https://github.com/o/r/commit/abcdef0123456789",
        "https://github.com/o/r/commit/v1.2%2F..%2Fx%3Fy%23z%25",
    }


def test_a_sqlite_without_json_functions_gets_the_python_rendering(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = RunQuery(limit=200, status="success")
    fast = query_page_json(conn, query).body
    monkeypatch.setattr(run_json, "renders_like_orjson", lambda: False)
    monkeypatch.setattr(runs.run_json, "JSON_COLUMNS", "no_such_function(1)")  # never used
    assert query_page_json(conn, query).body == fast == python_page(conn, query, None)


def test_url_suffix_is_computed_once_per_distinct_value(conn: sqlite3.Connection) -> None:
    run_json.url_suffix.cache_clear()
    query_page_json(conn, RunQuery(limit=1000))
    info = run_json.url_suffix.cache_info()
    assert info.currsize <= len(REPOS) * len(COMMITS)
    assert info.hits >= 1000 - info.currsize - 1


@pytest.mark.parametrize("params", QUERIES, ids=[str(index) for index in range(len(QUERIES))])
def test_rendering_does_not_change_the_plan(
    conn: sqlite3.Connection, params: dict[str, Any]
) -> None:
    """The select list is all that differs: same index, same merge, no sort added."""
    query = RunQuery.model_validate({"limit": 100, **params})

    def plan(columns: str) -> list[str]:
        sql, values = runs.query_sql(query, columns=columns)
        return [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", values)]

    assert plan(run_json.JSON_COLUMNS) == plan(runs._SELECT_COLUMNS)
