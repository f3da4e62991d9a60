"""The same operations on the SQLite backend and on the PostgreSQL one give the same
answers: every write's result, every run read back (as dicts and as the API's JSON
bytes), every list page of a set of filters, and whole cursor walks.

Both backends read one fake clock (``utc_now`` advanced a microsecond per call; each
operation reads it once on either side), so server-set instants match too. Row ids may
differ (a PostgreSQL sequence skips the values of refused duplicates): only their order
is compared, through the pages.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.contract.models import RunCreate, RunQuery, RunUpdate, UpsertItem
from server.contract.timestamps import format_instant
from server.postgres import database as pg_database
from server.postgres.database import PostgresDatabase
from server.storage import database as sqlite_database
from server.storage.cursor import Position
from server.storage.database import Database
from server.storage.run_rules import MetricsTooLarge
from server.storage.sidecars import Presence

#: Strings the API accepts in free-text fields, at their most hostile.
HOSTILE = (
    "plain",
    "",
    "nul\x00inside",
    "\x00",
    "\uffffstarts with the marker",
    "\uffff",
    "quote ' double \" back \\ slash",
    "?",
    "%s %d %% $1 :name",
    "'; DROP TABLE agent_runs; --",
    "emoji 🚀👩‍💻 ✓ é 中文",
    "\u2028line\u2029sep",
    "x" * 10_000,
    "🚀" * 2_500,
)
#: Identifiers the API accepts (no controls, no '/').
NAMES = ("agent-a", "agent b", "üñí", "🚀agent", "\uffffmarked", "a'b?%c", "A", "a")
STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")


class Clock:
    """utc_now for one backend: a fixed instant advanced a microsecond per call."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> str:
        self.moment += timedelta(microseconds=1)
        return format_instant(self.moment)


class Pair:
    """The two backends, driven in lock step."""

    def __init__(self, sqlite: Database, pg: PostgresDatabase) -> None:
        self.sqlite, self.pg = sqlite, pg

    async def both(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        expected = await call(self.sqlite)
        found = await call(self.pg)
        assert found == expected
        return expected

    async def reap(self, event_id: str, instant: str) -> None:
        """What the reaper does to a run (``stale.reap_batch``), on both: timeout, its
        reason, reaped_at (the PostgreSQL reaper is not written yet)."""
        sql = "UPDATE agent_runs SET status = 'timeout', error_summary = 'reaped: stale',"
        await self.sqlite.writer.run(
            lambda conn: conn.execute(
                sql + " reaped_at = ? WHERE event_id = ?", (instant, event_id)
            )
        )
        async with self.pg.pool.acquire() as conn:
            await conn.execute(sql + " reaped_at = $1 WHERE event_id = $2", instant, event_id)

    async def same_runs(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            await self.both(lambda db, e=event_id: db.get(e))

    async def same_pages(self, query: RunQuery) -> int:
        """Walk every page of the query on both by their own cursors; the runs seen."""
        after: dict[str, Position | None] = {"sqlite": None, "pg": None}
        seen = 0
        for _ in range(10_000):
            expected = await self.sqlite.query_json(query, after["sqlite"])
            found = await self.pg.query_json(query, after["pg"])
            assert found.body == expected.body
            rows = await self.sqlite.query(query, after["sqlite"])
            assert (await self.pg.query(query, after["pg"])).runs == rows.runs
            seen += len(rows.runs)
            if expected.next_position is None:
                assert found.next_position is None
                return seen
            assert found.next_position is not None
            assert found.next_position.created_at == expected.next_position.created_at
            after = {"sqlite": expected.next_position, "pg": found.next_position}
        raise AssertionError("walk did not end")


@pytest.fixture
def pair(sqlitedb: Database, pgdb: PostgresDatabase, monkeypatch: pytest.MonkeyPatch) -> Pair:
    monkeypatch.setattr(sqlite_database, "utc_now", Clock())
    monkeypatch.setattr(pg_database, "utc_now", Clock())
    return Pair(sqlitedb, pgdb)


def _run(event_id: str, **fields: Any) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"run-{event_id}",
            "agent_name": "agent-a",
            "job_type": "job",
            "start_time": "2026-03-01T11:00:00Z",
            **fields,
        }
    )


def _update(**fields: Any) -> RunUpdate:
    return RunUpdate.model_validate(fields)


async def test_create_duplicate_get_and_update(pair: Pair) -> None:
    assert await pair.both(lambda db: db.create(_run("e1", product="p"))) is True
    assert await pair.both(lambda db: db.create(_run("e1", product="other"))) is False
    assert await pair.both(lambda db: db.get("e1")) is not None
    assert await pair.both(lambda db: db.get("missing")) is None
    changes = {"status": "success", "items_discovered": 3, "metrics_json": {"a": {}, "b": [1]}}
    assert await pair.both(lambda db: db.update("e1", dict(changes))) == "run-e1"
    assert await pair.both(lambda db: db.update("missing", {"status": "failure"})) is None
    await pair.both(lambda db: db.update("e1", {"end_time": None, "context_json": None}))
    await pair.same_runs(["e1"])


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:20]))
async def test_hostile_text_round_trips_in_every_kind_of_write(pair: Pair, value: str) -> None:
    fields = {
        "error_details": value,
        "git_branch": value,
        "host": value,
        "metrics_json": {value: value, "nested": {"k": [value]}},
        "context_json": {"v": value},
    }
    await pair.both(lambda db: db.create(_run("direct", **fields)))
    await pair.both(lambda db: db.insert_batch([_run("batched", **fields)]))
    await pair.both(
        lambda db: db.upsert_batch(
            [UpsertItem(event_id="upserted", create=_run("upserted", **fields))]
        )
    )
    await pair.both(lambda db: db.create(_run("patched")))
    await pair.both(lambda db: db.update("patched", dict(fields)))
    # Replaying the same values is unchanged on both (the stored text compares equal).
    item = UpsertItem(event_id="patched", update=_update(**fields))
    assert (await pair.both(lambda db: db.upsert_batch([item]))).unchanged == 1
    await pair.same_runs(["direct", "batched", "upserted", "patched"])
    assert await pair.same_pages(RunQuery(limit=3)) == 4


@pytest.mark.parametrize("name", [*NAMES, "nul\x00name", "\x00", "%", "_", "a%", "\uffff"])
async def test_equality_filters_match_exactly_what_sqlite_matches(pair: Pair, name: str) -> None:
    for index, agent in enumerate(NAMES):
        await pair.both(
            lambda db, i=index, a=agent: db.create(_run(f"f{i}", agent_name=a, job_type=a))
        )
    for query in (RunQuery(agent_name=name), RunQuery(job_type=name, status="running")):
        await pair.same_pages(query)
    assert await pair.both(lambda db: db.get(name)) is None


async def test_upsert_rules_terminal_status_reaped_runs_and_merge_patches(pair: Pair) -> None:
    await pair.both(lambda db: db.create(_run("u1", metrics_json={"keep": 1})))
    await pair.both(lambda db: db.create(_run("u2")))
    steps = [
        [UpsertItem(event_id="u1", update=_update(status="success"))],
        # a late running never replaces a terminal status; a late heartbeat changes nothing
        [UpsertItem(event_id="u1", update=_update(status="running"), metrics_patch={"x": 1})],
        [UpsertItem(event_id="u2", metrics_patch={"a": {"b": 1}, "gone": None})],
        [UpsertItem(event_id="u2", metrics_patch={"a": {"b": None, "c": 2}}, heartbeat=True)],
        [UpsertItem(event_id="u2", update=_update(metrics_json={"r": 1}), metrics_patch={"p": 2})],
        [UpsertItem(event_id="nope", update=_update(status="failure"))],
        [UpsertItem(event_id="nope", heartbeat=True)],
        [
            UpsertItem(event_id="u3", create=_run("u3"), update=_update(items_failed=2)),
            UpsertItem(event_id="u3", update=_update(status="partial")),
            UpsertItem(event_id="u3", create=_run("u3", product="ignored")),
            UpsertItem(event_id="u4", create=_run("u4")),
            UpsertItem(event_id="u4", create=_run("u4")),
        ],
        [],
    ]
    for items in steps:
        await pair.both(lambda db, i=items: db.upsert_batch(i))
    # seen_at moves last_seen_at forward only, never past the server's clock
    for seen in ("2026-03-01T11:30:00Z", "2026-03-01T11:00:00Z", "2099-01-01T00:00:00Z"):
        item = UpsertItem.model_validate({"event_id": "u2", "heartbeat": True, "seen_at": seen})
        await pair.both(lambda db, i=item: db.upsert_batch([i]))
    await pair.same_runs(["u1", "u2", "u3", "u4", "nope"])
    # The reaper's timeout: a late running never revives it; the agent's own terminal
    # status replaces it and drops the reaper's reason unless it gives its own.
    for event_id in ("r1", "r2", "r3", "r4"):
        await pair.both(lambda db, e=event_id: db.create(_run(e)))
        await pair.reap(event_id, "2026-03-01T12:30:00.000000+00:00")
    await pair.both(lambda db: db.update("r1", {"status": "running", "product": "p"}))
    await pair.both(lambda db: db.update("r2", {"status": "success"}))
    await pair.both(lambda db: db.update("r3", {"status": "failure", "error_summary": "own"}))
    timeout_again = UpsertItem(event_id="r4", update=_update(status="timeout"))
    assert (await pair.both(lambda db: db.upsert_batch([timeout_again]))).updated == 1
    await pair.same_runs(["r1", "r2", "r3", "r4"])


async def test_batches_count_duplicates_within_and_against_stored_runs(pair: Pair) -> None:
    await pair.both(lambda db: db.create(_run("b0")))
    batch = [_run("b1"), _run("b0"), _run("b2"), _run("b1", product="second"), _run("b3")]
    assert await pair.both(lambda db: db.insert_batch(batch)) == 3
    assert await pair.both(lambda db: db.insert_batch(batch)) == 0
    assert await pair.both(lambda db: db.insert_batch([])) == 0
    presence = Presence("sidecar-1", "2026-03-01T10:00:00Z")
    assert await pair.both(lambda db: db.insert_batch([_run("b4")], presence)) == 1
    summary = await pair.both(
        lambda db: db.upsert_batch([UpsertItem(event_id="b4", create=_run("b4"))], presence)
    )
    assert summary.unchanged == 1
    await pair.same_runs(["b0", "b1", "b2", "b3", "b4"])
    # insertion order breaks created_at ties: the pages agree on it
    assert await pair.same_pages(RunQuery(limit=2)) == 5


def _random_fields(rng: random.Random) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for column in ("product", "error_details", "git_repo", "git_commit_hash", "host"):
        if rng.random() < 0.4:
            fields[column] = (
                rng.choice(("abc1234", "DEADBEEF99"))
                if column == "git_commit_hash"
                else rng.choice((*HOSTILE[:12], "https://github.com/o/r.git"))
            )
    for column in ("items_discovered", "items_succeeded", "duration_ms"):
        if rng.random() < 0.3:
            fields[column] = rng.choice((0, 1, 2**63 - 1, rng.randrange(1000)))
    if rng.random() < 0.3:
        fields["metrics_json"] = {rng.choice(("a", "b", "\x00")): rng.choice((1, "x", {}, [None]))}
    if rng.random() < 0.2:
        fields["heartbeat_timeout_s"] = rng.randrange(1, 10_000)
    return fields


def _random_create(rng: random.Random, event_id: str) -> RunCreate:
    created = rng.choice((None, None, "2026-02-01T00:00:00Z", "2026-03-01T12:00:00.000003+00:00"))
    extra = {"created_at": created} if created else {}
    start = f"2026-0{rng.randrange(1, 4)}-1{rng.randrange(10)}T0{rng.randrange(10)}:00:00+05:30"
    return _run(
        event_id,
        agent_name=rng.choice(NAMES[:4]),
        job_type=rng.choice(("build", "test")),
        status=rng.choice(STATUSES),
        start_time=start,
        **extra,
        **_random_fields(rng),
    )


def _random_update(rng: random.Random) -> dict[str, Any]:
    fields = _random_fields(rng)
    if rng.random() < 0.6:
        fields["status"] = rng.choice(STATUSES)
    if rng.random() < 0.2:
        fields["error_details"] = None
    return fields or {"product": "touched"}


@pytest.mark.parametrize("seed", range(6))
async def test_random_operation_sequences_answer_alike(pair: Pair, seed: int) -> None:
    rng = random.Random(seed)
    ids = [f"ev-{seed}-{n}" for n in range(40)]
    for _ in range(120):
        kind = rng.random()
        if kind < 0.25:
            run = _random_create(rng, rng.choice(ids))  # built once: both get the same
            await pair.both(lambda db, r=run: db.create(r))
        elif kind < 0.45:
            event_id, changes = rng.choice(ids), _random_update(rng)
            await pair.both(lambda db, e=event_id, c=changes: db.update(e, dict(c)))
        elif kind < 0.6:
            batch = [_random_create(rng, rng.choice(ids)) for _ in range(rng.randrange(1, 8))]
            await pair.both(lambda db, b=batch: db.insert_batch(b))
        else:
            items = []
            for _ in range(rng.randrange(1, 10)):
                event_id = rng.choice(ids)
                body: dict[str, Any] = {"event_id": event_id}
                if rng.random() < 0.5:
                    body["create"] = _random_create(rng, event_id).model_dump(exclude_unset=True)
                if rng.random() < 0.6 or len(body) == 1:
                    body["update"] = _random_update(rng)
                if rng.random() < 0.3:
                    body["metrics_patch"] = {"p": rng.choice((1, None, {"q": 2}))}
                if rng.random() < 0.2:
                    body["seen_at"] = "2026-03-01T12:00:00.000050+00:00"
                items.append(UpsertItem.model_validate(body))
            await pair.both(lambda db, i=items: db.upsert_batch(i))
    await pair.same_runs(ids)
    queries = [
        RunQuery(limit=7),
        RunQuery(limit=1000),
        RunQuery(agent_name=NAMES[0], limit=3),
        RunQuery(job_type="test", status="success", limit=2),
        RunQuery(agent_name=NAMES[1], job_type="build", limit=5),
        RunQuery(status="failed", limit=4),  # an alias
        RunQuery(created_after="2026-02-15T00:00:00Z", limit=6),
        RunQuery(created_before="2026-03-01T12:00:00.000003+00:00", limit=6),
        RunQuery(start_time_from="2026-02-10T00:00:00Z", start_time_to="2026-02-19T23:00:00Z"),
        RunQuery(start_time_from="2026-03-10T00:00:00+05:30", limit=2),
        RunQuery(offset=3, limit=5),
    ]
    for query in queries:
        await pair.same_pages(query)


async def test_heartbeats_merge_progress_and_never_revive(pair: Pair) -> None:
    await pair.both(lambda db: db.create(_run("h", metrics_json={"a": 1, "keep": [1]})))
    assert await pair.both(lambda db: db.heartbeat("missing", None)) == "not_found"
    for progress in (None, {}, {"a": None, "b": {"c": "\x00"}}, {"b": {"c": "\x00"}}, {"z": [1]}):
        assert await pair.both(lambda db, p=progress: db.heartbeat("h", p)) == "applied"
        await pair.same_runs(["h"])
    huge = {"blob": "x" * (5 * 1024 * 1024)}
    for db in (pair.sqlite, pair.pg):
        with pytest.raises(MetricsTooLarge):
            await db.heartbeat("h", huge)
    await pair.both(lambda db: db.update("h", {"status": "success"}))
    assert await pair.both(lambda db: db.heartbeat("h", {"late": 1})) == "finished"
    await pair.same_runs(["h"])
