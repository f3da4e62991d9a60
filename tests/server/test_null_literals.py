"""Writes that spell their NULLs into the statement (so the sqlite3 module binds no None)
store exactly what binding them stored: every column, its value and its SQLite type, for
any set of missing fields, past the cap on statement shapes, and for PATCHes that clear
fields, with and without a sidecar."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.contract.models import RunCreate
from server.storage import runs
from server.storage.connection import open_writer
from server.storage.schema import migrate

NOW = "2026-03-01T10:00:00.000000Z"
LATER = "2026-03-01T10:05:00.000000Z"
#: Fields a create may leave out (each subset is a different statement shape).
OPTIONAL: dict[str, Any] = {
    "end_time": "2026-03-01T10:01:00Z",
    "duration_ms": 60_000,
    "items_discovered": 7,
    "items_succeeded": 5,
    "items_failed": 2,
    "error_summary": 'it\'s "quoted"; DROP TABLE agent_runs; --',
    "output_summary": "ünïcödé ✓ \x00 nul",
    "metrics_json": {"a": [1, None, {"b": "NULL"}]},
    "context_json": {},
    "git_repo": "https://github.com/o/r",
    "git_commit_hash": "a" * 40,
    "host": "NULL",
    "product": "",
}


def _db(path: Path) -> sqlite3.Connection:
    conn = open_writer(path, journal_mode="WAL", synchronous="NORMAL", busy_timeout_ms=5000)
    migrate(conn)
    return conn


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[sqlite3.Connection, sqlite3.Connection]]:
    """Two fresh databases: one written the new way, one by binding every parameter."""
    new, old = _db(tmp_path / "new.sqlite"), _db(tmp_path / "old.sqlite")
    yield new, old
    new.close()
    old.close()


def _dump(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    columns = [row[1] for row in conn.execute("PRAGMA table_info(agent_runs)")]
    typed = ", ".join(f"{c}, typeof({c})" for c in columns)
    return conn.execute(f"SELECT {typed} FROM agent_runs ORDER BY id").fetchall()


def _creates(seed: int, count: int) -> list[RunCreate]:
    rng = random.Random(seed)
    made = []
    for i in range(count):
        body: dict[str, Any] = {
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "run_id": f"run-{i}",
            "agent_name": rng.choice(["a", "b", "ä"]),
            "job_type": "crawl",
            "start_time": "2026-03-01T10:00:00Z",
            "status": rng.choice(["running", "success", "failure"]),
        }
        body.update({k: v for k, v in OPTIONAL.items() if rng.random() < 0.5})
        made.append(RunCreate.model_validate(body))
    return made


def _write_both(pair: tuple[sqlite3.Connection, sqlite3.Connection], made: list[RunCreate]) -> None:
    new, old = pair
    for run in made:
        params = runs.insert_params(run, NOW)
        for conn, insert in (
            (new, lambda c, p=params: runs.insert_row(c, runs.prepare_insert(p))),
            (old, lambda c, p=params: c.execute(runs._INSERT_SQL, p).rowcount == 1),
        ):
            conn.execute("BEGIN IMMEDIATE")
            assert insert(conn) is True
            assert insert(conn) is False  # the duplicate, answered the same
            conn.execute("COMMIT")


def test_any_set_of_missing_fields_stores_the_same_row(pair: Any) -> None:
    made = _creates(seed=7, count=60)
    _write_both(pair, made)
    new, old = pair
    assert _dump(new) == _dump(old)
    assert len(_dump(new)) == 60


def test_past_the_cap_on_shapes_it_binds_and_stores_the_same(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "_INSERT_BY_NULLS", {})
    monkeypatch.setattr(runs, "_MAX_INSERT_SHAPES", 2)
    made = _creates(seed=11, count=30)
    _write_both(pair, made)
    new, old = pair
    assert len(runs._INSERT_BY_NULLS) == 2
    assert _dump(new) == _dump(old)
    # a plain tuple (the upsert path) is prepared where it is inserted
    extra = runs.insert_params(_creates(seed=12, count=31)[30], NOW)
    assert runs.prepare_insert(extra).sql in (runs._INSERT_SQL, *runs._INSERT_BY_NULLS.values())


@pytest.mark.parametrize("sidecar", [None, "spoold-1"])
def test_a_patch_that_clears_fields_stores_what_binding_did(pair: Any, sidecar: str | None) -> None:
    made = _creates(seed=3, count=10)
    _write_both(pair, made)
    new, old = pair
    changes: dict[str, Any] = {
        "status": "failure",
        "error_summary": None,
        "metrics_json": None,
        "items_failed": 3,
        "output_summary": "NULL",
    }
    for run in made:
        new.execute("BEGIN IMMEDIATE")
        got = runs.update_run(new, run.event_id, dict(changes), LATER, sidecar=sidecar)
        new.execute("COMMIT")
        assert got == run.run_id
        # the statement as it was before: every value bound, None included
        old.execute(
            "UPDATE agent_runs SET " + runs._UNREAP + "status = ?, error_summary = ?, "
            "metrics_json = ?, items_failed = ?, output_summary = ?, updated_at = ?, "
            + runs._TOUCH
            + " WHERE event_id = ?",
            ("failure", None, None, 3, "NULL", LATER, LATER, sidecar, run.event_id),
        )
    assert _dump(new) == _dump(old)
    assert runs.update_run(new, "no-such-run", {"status": "success"}, LATER) is None


def test_a_patch_without_returning_finds_and_stores_what_update_run_does(pair: Any) -> None:
    made = _creates(seed=5, count=12)
    _write_both(pair, made)
    new, old = pair
    changes: dict[str, Any] = {"status": "success", "duration_ms": 5, "error_summary": None}
    for run in made:
        statement = runs.update_statement(run.event_id, dict(changes), LATER, returning=False)
        new.execute("BEGIN IMMEDIATE")
        assert runs.run_patch(new, statement) is True
        new.execute("COMMIT")
        assert runs.update_run(old, run.event_id, dict(changes), LATER) == run.run_id
    assert _dump(new) == _dump(old)
    missing = runs.update_statement("no-such-run", {"status": "success"}, LATER, returning=False)
    assert runs.run_patch(new, missing) is False
