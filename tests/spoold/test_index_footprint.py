"""The runs index is bounded by the backlog, not by throughput: a delivered run keeps only
what the answers need (run_id, whether its create was seen), and settled runs are forgotten
oldest first once the index passes its byte bound (pending runs never)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from spoold.cli.replay import latest_to_check
from spoold.state.runs_index import RunsIndex


def _create(i: int, metrics_bytes: int = 0) -> dict[str, Any]:
    event_id = f"ev-{i}"
    body: dict[str, Any] = {
        "event_id": event_id,
        "run_id": f"run-{i}",
        "agent_name": "a",
        "job_type": "j",
        "start_time": "2026-01-12T10:30:00Z",
    }
    if metrics_bytes:
        body["metrics_json"] = {"blob": "m" * metrics_bytes}
    return {"kind": "create", "event_id": event_id, "body": body}


def _update(i: int, **fields: Any) -> dict[str, Any]:
    return {"kind": "update", "event_id": f"ev-{i}", "body": fields}


def _accept(index: RunsIndex, *ops: dict[str, Any]) -> list[tuple[str, str | None]]:
    index.begin()
    try:
        results = [index.record(op, verified=False) for op in ops]
        index.add_counter("accepted", len(ops))
        index.commit()
    except BaseException:
        index.rollback()
        raise
    return results


def _footprint(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_delivered_runs_with_large_metrics_do_not_grow_the_index(tmp_path: Path) -> None:
    """Rounds of 60 runs with 40 KB metrics each, created then delivered: after the first
    rounds the file (+ its WAL) stops growing; it grew ~2.4 MB a round before."""
    path = tmp_path / "runs-index.sqlite"
    index = RunsIndex(path, synchronous="FULL")
    sizes = []
    for round_no in range(12):
        ops = [_create(round_no * 1000 + i, metrics_bytes=40_000) for i in range(60)]
        _accept(index, *ops)
        index.settle({op["event_id"]: 1 for op in ops}, {})
        sizes.append(_footprint(path))
    index.close()
    assert sizes[-1] - sizes[3] < 512 * 1024, sizes
    assert sizes[-1] < 12 * 1024 * 1024, sizes


def test_a_settled_run_keeps_only_what_the_answers_need(tmp_path: Path) -> None:
    """A delivered run: duplicate create answers ``duplicate`` with its run_id, an update
    gets the right run_id, and its snapshot holds nothing else."""
    index = RunsIndex(tmp_path / "i.sqlite")
    _accept(index, _create(1, metrics_bytes=10_000))
    index.settle({"ev-1": 1}, {})
    known = index.get("ev-1")
    assert known is not None
    assert (known.snapshot, known.complete, known.has_create, known.pending) == (
        {"run_id": "run-1"},
        False,
        True,
        0,
    )
    assert _accept(index, _create(1)) == [("duplicate", "run-1")]
    assert _accept(index, _update(1, status="success")) == [("accepted", "run-1")]
    known = index.get("ev-1")
    assert known is not None
    assert not known.complete
    assert known.pending == 1
    assert known.snapshot == {"run_id": "run-1", "status": "success"}
    index.settle({"ev-1": 1}, {})
    assert index.counters()["forwarded"] == 2
    index.close()


def test_a_pending_run_keeps_its_whole_snapshot(tmp_path: Path) -> None:
    """Read-your-writes: until every operation of the run has left the queue, the index
    holds its full accepted state."""
    index = RunsIndex(tmp_path / "i.sqlite")
    _accept(index, _create(1, metrics_bytes=100), _update(1, status="success"))
    index.settle({"ev-1": 1}, {})  # the create delivered, the update still queued
    known = index.get("ev-1")
    assert known is not None
    assert known.complete
    assert known.pending == 1
    assert known.snapshot["metrics_json"] == {"blob": "m" * 100}
    assert known.snapshot["status"] == "success"
    index.close()


def test_a_run_with_dead_letters_keeps_its_snapshot_for_replay(tmp_path: Path) -> None:
    """A dead-lettered operation: replay needs the run's latest state to drop what newer
    operations overtook, so the run is not shrunk, not even after a later delivery."""
    index = RunsIndex(tmp_path / "i.sqlite")
    _accept(index, _create(1), _update(1, status="running", items_succeeded=1))
    index.settle({"ev-1": 1}, {"ev-1": 1})
    _accept(index, _update(1, status="success"))
    index.settle({"ev-1": 1}, {})
    known = index.get("ev-1")
    assert known is not None
    assert known.complete
    assert known.snapshot["status"] == "success"
    assert known.snapshot["agent_name"] == "a"
    letter = _update(1, status="running", items_succeeded=1)
    assert latest_to_check(letter, known) == known.snapshot
    index.close()


def test_replay_treats_a_shrunk_snapshot_that_misses_the_letters_fields_as_unverified(
    tmp_path: Path,
) -> None:
    """A run shrunk before the letter's fields were recorded (an index from before this
    rule): its state for those fields is unknown, so the letter is unverified (kept unless
    forced), as for a pruned run; a letter whose fields it holds is checked as before."""
    index = RunsIndex(tmp_path / "i.sqlite")
    _accept(index, _create(1))
    index.settle({"ev-1": 1}, {})
    known = index.get("ev-1")
    assert known is not None
    assert latest_to_check(_update(1, status="running"), known) is None
    assert latest_to_check(_update(1, run_id="run-1"), known) == {"run_id": "run-1"}
    index.close()


def _six_thousand_delivered(index: RunsIndex) -> RunsIndex:
    """ev-0..ev-5999 accepted and delivered, a thousand at a time, oldest first."""
    for start in range(0, 6000, 1000):
        ops = [_create(i) for i in range(start, start + 1000)]
        _accept(index, *ops)
        index.settle({op["event_id"]: 1 for op in ops}, {})
        time.sleep(0.01)  # distinct touched_at per thousand
    return index


def test_the_byte_bound_forgets_oldest_settled_runs_never_pending_ones(tmp_path: Path) -> None:
    """Past ``max_bytes`` the oldest settled runs go first; every pending run stays."""
    index = _six_thousand_delivered(RunsIndex(tmp_path / "i.sqlite"))
    pending = [_create(i, metrics_bytes=200) for i in range(10_000, 10_200)]
    _accept(index, *pending)
    before = index.used_bytes()
    bound = before // 2
    removed = index.prune(keep_s=86_400, max_bytes=bound)
    assert removed > 0
    assert index.used_bytes() <= bound
    assert all(index.get(op["event_id"]) is not None for op in pending)
    assert index.get("ev-0") is None  # oldest first
    assert index.get("ev-5999") is not None
    index.close()


def test_the_byte_bound_is_over_delivered_runs_with_the_backlog_allowed_besides(
    tmp_path: Path,
) -> None:
    """A backlog whose rows alone pass ``max_bytes`` forgets no delivered run the bound has
    room for; past the bound (plus the backlog's share) the oldest settled go first."""
    index = _six_thousand_delivered(RunsIndex(tmp_path / "i.sqlite"))
    settled_bytes = index.used_bytes()
    pending = [_create(i, metrics_bytes=2_000) for i in range(10_000, 10_400)]
    _accept(index, *pending)
    backlog_bytes = sum(len(orjson.dumps(op)) for op in pending)  # what the spool holds
    bound = settled_bytes + settled_bytes // 10
    assert index.used_bytes() > bound  # the backlog's rows push the index past the bound

    assert index.prune(keep_s=86_400, max_bytes=bound, backlog_bytes=backlog_bytes) == 0
    assert index.known_count() == 6000 + len(pending)

    # No room beyond the backlog's share: the oldest delivered runs go, the newest and
    # every pending one stay.
    removed = index.prune(keep_s=86_400, max_bytes=1, backlog_bytes=backlog_bytes)
    assert 0 < removed < 6000
    assert index.get("ev-0") is None
    assert index.get("ev-5999") is not None
    assert all(index.get(op["event_id"]) is not None for op in pending)

    # What the backlog used to cost: counted against the bound, it has every delivered
    # run forgotten.
    assert index.prune(keep_s=86_400, max_bytes=bound, backlog_bytes=0) > 0
    assert index.get("ev-5999") is None
    assert all(index.get(op["event_id"]) is not None for op in pending)
    index.close()


def test_an_index_from_before_shrinks_its_settled_runs_when_opened(tmp_path: Path) -> None:
    """An index written by an older spoold (full snapshots of delivered runs, no new
    columns) is upgraded when opened: settled runs shrink, pending ones are kept whole."""
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE runs (event_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL,"
        " has_create INTEGER NOT NULL, pending INTEGER NOT NULL DEFAULT 0,"
        " touched_at REAL NOT NULL)"
    )
    for i, pending in ((1, 0), (2, 1)):
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, 1, ?, ?)",
            (f"ev-{i}", orjson.dumps(_create(i, 500)["body"]).decode(), pending, time.time()),
        )
    conn.commit()
    conn.close()
    index = RunsIndex(path)
    settled, queued = index.get("ev-1"), index.get("ev-2")
    assert settled is not None
    assert settled.snapshot == {"run_id": "run-1"}
    assert queued is not None
    assert queued.complete
    assert "metrics_json" in queued.snapshot
    assert _accept(index, _create(1)) == [("duplicate", "run-1")]
    index.close()


def test_runs_a_recount_finds_settled_are_shrunk_too(tmp_path: Path) -> None:
    """An index that lost its settles (an old copy put back): the recount from the spool
    finds the run no longer queued, and it shrinks like any delivered run."""
    index = RunsIndex(tmp_path / "i.sqlite")
    _accept(index, _create(1, metrics_bytes=1000), _create(2, metrics_bytes=1000))
    index.recount_pending([[_create(2)]], left_queue=1)
    settled, queued = index.get("ev-1"), index.get("ev-2")
    assert settled is not None
    assert (settled.snapshot, settled.complete, settled.pending) == ({"run_id": "run-1"}, False, 0)
    assert queued is not None
    assert queued.complete
    assert queued.pending == 1
    index.close()


def test_the_byte_bound_holds_whatever_the_settle_rate(tmp_path: Path) -> None:
    """More runs settled between two passes than a pass forgets by age (``max_rows``, a
    tenth of what one settles here): each pass still brings the index within its bound
    (the byte pass was capped at ten times ``max_rows``, so a host settling faster than
    ~1,700 runs/s grew past SPOOLD_INDEX_MAX_MB without end)."""
    index = RunsIndex(tmp_path / "i.sqlite")
    bound = 0
    for minute in range(4):
        ops = [_create(minute * 10_000 + i, metrics_bytes=300) for i in range(1500)]
        _accept(index, *ops)
        index.settle({op["event_id"]: 1 for op in ops}, {})
        if minute == 0:
            bound = index.used_bytes()  # about one "minute" of settled runs
            continue
        index.prune(keep_s=86_400, max_bytes=bound, max_rows=10)
        assert index.used_bytes() <= bound, minute
        assert index.get(f"ev-{minute * 10_000 + 1499}") is not None  # the newest stay
    index.close()
