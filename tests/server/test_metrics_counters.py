"""/metrics comes from counters the writer keeps: exact, cheap, and right after restarts."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.contract.fields import CANONICAL_STATUSES
from server.http.runs import DATABASE
from server.storage import runs
from server.storage.counters import WINDOW_MINUTES, RunCounters, minute_of
from tests.sql_trace import every_statement
from tests.stored_rows import fetch, is_postgres

AGENTS = ("alpha", "beta", "gamma", "delta")
STATUSES = ("running", *[s for s in CANONICAL_STATUSES if s != "running"])


class Rollback(Exception):
    """Raised by an operation after it wrote: its savepoint is rolled back."""


async def truth(api: Any) -> dict[str, Any]:
    """What COUNT(*) says, on a connection of its own (either backend)."""
    start = window_start(api)
    ((total,),) = await fetch(api, "SELECT COUNT(*) FROM agent_runs")
    agents = dict(
        await fetch(api, "SELECT agent_name, COUNT(*) FROM agent_runs GROUP BY agent_name")
    )
    statuses = dict(await fetch(api, "SELECT status, COUNT(*) FROM agent_runs GROUP BY status"))
    ((recent,),) = await fetch(api, "SELECT COUNT(*) FROM agent_runs WHERE created_at >= ?", start)
    return {"total_runs": total, "agents": agents, "runs_by_status": statuses, "recent": recent}


def window_start(api: Any) -> str:
    """The first minute /metrics counts in recent_24h: SQLite's writer keeps the window;
    PostgreSQL computes it when it reads (server.postgres.snapshot), as here."""
    if is_postgres(api):
        return minute_of(datetime.now(UTC) - timedelta(minutes=WINDOW_MINUTES - 1))
    return str(api.client.server.app[DATABASE].counters.window_start)


def assert_matches(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body["total_runs"] == expected["total_runs"]
    assert body["agents"] == expected["agents"]
    assert body["runs_by_status"] == expected["runs_by_status"]
    assert body["recent_24h"] == expected["recent"]


def created_at(rng: random.Random) -> str | None:
    """Now (None), well inside the 24 h window, well outside it, or in the future."""
    now = datetime.now(UTC)
    return rng.choice(
        [
            None,
            (now - timedelta(hours=rng.uniform(0.1, 23))).isoformat(),
            (now - timedelta(days=rng.uniform(2, 400))).isoformat(),
            (now + timedelta(hours=rng.uniform(1, 72))).isoformat(),
        ]
    )


def random_run(rng: random.Random, new_run: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {"agent_name": rng.choice(AGENTS)}
    if rng.random() < 0.5:
        overrides["status"] = rng.choice(STATUSES)
    stamp = created_at(rng)
    if stamp is not None:
        overrides["created_at"] = stamp
    return new_run(**overrides)


async def random_writes(api: Any, new_run: Any, seed: int, steps: int) -> None:
    """A random mix of every kind of write, concurrently, including rolled-back ones."""
    rng = random.Random(seed)
    known: list[str] = []
    database = api.client.server.app[DATABASE]

    def rolled_back(batch: list[dict[str, Any]]) -> Any:
        from server.contract.models import RunCreate
        from server.contract.timestamps import utc_now

        params = [runs.insert_params(RunCreate.model_validate(run), utc_now()) for run in batch]

        def write(conn: sqlite3.Connection) -> None:
            runs.insert_rows(conn, params)  # rows written, triggers fired ...
            conn.execute("UPDATE agent_runs SET status = 'timeout' WHERE rowid % 3 = 0")
            raise Rollback  # ... and the savepoint undone

        return database.writer.run(write)

    async def one(step: int) -> None:
        # A savepoint rolled back after writing is SQLite's writer (PostgreSQL has none).
        kinds = ("create", "duplicate", "patch", "batch", "upsert")
        kind = rng.choice(kinds if is_postgres(api) else (*kinds, "rollback"))
        # A run is known (patched, repeated) once its create is answered: sent at the same
        # time, a PATCH may be applied first (on PostgreSQL, each on its own connection).
        if kind == "create" or not known:
            run = random_run(rng, new_run)
            assert (await api.post("/api/v1/runs", json=run)).status == 201
            known.append(run["event_id"])
        elif kind == "duplicate":
            again = new_run(event_id=rng.choice(known), agent_name="never-counted")
            assert (await api.post("/api/v1/runs", json=again)).status == 201
        elif kind == "patch":
            change: dict[str, Any] = rng.choice(
                [
                    {"status": rng.choice(STATUSES)},
                    {"agent_name": rng.choice(AGENTS)},
                    {"items_succeeded": rng.randint(0, 9)},
                    {"status": rng.choice(STATUSES), "agent_name": rng.choice(AGENTS)},
                ]
            )
            assert (await api.patch(f"/api/v1/runs/{rng.choice(known)}", json=change)).status == 200
        elif kind == "batch":
            batch = [random_run(rng, new_run) for _ in range(rng.randint(1, 8))]
            batch.append(new_run(event_id=rng.choice(known)))  # one duplicate
            assert (await api.post("/api/v1/runs/batch", json=batch)).status == 200
            known.extend(run["event_id"] for run in batch[:-1])
        elif kind == "upsert":
            items: list[dict[str, Any]] = []
            fresh = []
            for _ in range(rng.randint(1, 6)):
                if rng.random() < 0.5:
                    run = random_run(rng, new_run)
                    fresh.append(run["event_id"])
                    update = {"status": rng.choice(STATUSES)} if rng.random() < 0.5 else None
                    items.append({"event_id": run["event_id"], "create": run, "update": update})
                else:
                    target = rng.choice(known)
                    items.append({"event_id": target, "update": {"status": rng.choice(STATUSES)}})
            reply = await api.post("/api/v1/runs/batch?mode=upsert", json=items)
            assert reply.status == 200, reply.body
            known.extend(fresh)
        else:
            with pytest.raises(Rollback):
                await rolled_back([random_run(rng, new_run) for _ in range(rng.randint(1, 5))])

    for start in range(0, steps, 10):
        await asyncio.gather(*(one(step) for step in range(start, min(start + 10, steps))))


async def test_metrics_equal_count_star_after_random_writes(make_api, make_config, new_run):
    """After a random concurrent mix of creates, duplicates, patches, batches, upserts and
    rolled-back savepoints, /metrics equals COUNT(*) on the file, field by field."""
    api = await make_api()
    for seed in range(3):
        await random_writes(api, new_run, seed, steps=60)
        body = (await api.get("/metrics")).body
        assert_matches(body, await truth(api))
    assert body["total_runs"] > 50


async def test_counts_survive_a_restart(make_api, make_config, new_run, aiohttp_client):
    """A restarted server counts the stored runs once at start and keeps counting exactly."""
    api = await make_api()
    await random_writes(api, new_run, seed=7, steps=40)
    before = (await api.get("/metrics")).body
    await api.client.close()
    again = await make_api()
    after = (await again.get("/metrics")).body
    for key in ("total_runs", "agents", "runs_by_status", "recent_24h"):
        assert after[key] == before[key], key
    await random_writes(again, new_run, seed=8, steps=30)
    assert_matches((await again.get("/metrics")).body, await truth(again))


async def test_agents_order_and_escapes_survive_a_restart(make_api, new_run):
    """Names JSON must escape, counted at start-up (a path of its own) rather than as they
    were written: the same agents, counts and busiest-first order after a restart."""
    names = ['q"uote', "back\\slash", "\u00e9t\u00e9", "\U0001f600", '{"x":1}', "a,b:c", "null"]
    api = await make_api()
    runs = [new_run(agent_name=name) for i, name in enumerate(names) for _ in range(i % 3 + 1)]
    assert (await api.post("/api/v1/runs/batch", json=runs)).body["inserted"] == len(runs)
    before = (await api.get("/metrics")).body["agents"]
    await api.client.close()
    again = await make_api()
    after = (await again.get("/metrics")).body["agents"]
    assert list(after.items()) == list(before.items())
    assert sorted(after) == sorted(names)
    more = [new_run(agent_name="null") for _ in range(3)]  # 1 -> 4: first, past every other
    assert (await again.post("/api/v1/runs/batch", json=more)).body["inserted"] == 3
    moved = (await again.get("/metrics")).body["agents"]
    assert list(moved) == ["null", *(name for name in after if name != "null")]
    assert moved["null"] == after["null"] + 3


async def test_metrics_runs_no_query(api, new_run, monkeypatch):
    """/metrics (JSON and Prometheus) never touches the readers: it is served from memory."""
    await api.post("/api/v1/runs/batch", json=[new_run() for _ in range(5)])
    database = api.client.server.app[DATABASE]

    async def no_reads(fn: Any) -> Any:
        raise AssertionError("/metrics ran a query")

    monkeypatch.setattr(database.reader, "run", no_reads)
    with every_statement(database, monkeypatch) as statements:
        assert (await api.get("/metrics")).body["total_runs"] == 5
        scrape = await api.client.get("/metrics", headers={"Accept": "text/plain"})
        assert scrape.status == 200
        assert "telemetry_runs_total_stored 5.0" in await scrape.text()
    assert statements == []  # neither on the writer's connection nor on any reader's


async def test_rejected_and_failed_writes_are_not_counted(api, new_run):
    """Writes the storage refuses, or that fail whole, leave the counts unchanged."""
    await api.create(new_run(agent_name="kept"))
    database = api.client.server.app[DATABASE]

    def violates(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO agent_runs (event_id, run_id, agent_name, job_type, start_time,"
            " created_at) VALUES ('x', 'r', 'ghost', 'j', 't', 't')"
        )
        conn.execute("UPDATE agent_runs SET items_failed = -1")  # CHECK fails

    with pytest.raises(Exception, match="constraints"):
        await database.writer.run(violates)
    body = (await api.get("/metrics")).body
    assert body["total_runs"] == 1
    assert body["agents"] == {"kept": 1}


def test_recent_window_expires_minute_by_minute() -> None:
    """recent_24h drops a run once its created_at minute leaves the last 1,440 minutes."""
    now = [datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)]
    counters = RunCounters(clock=lambda: now[0])
    old = minute_of(now[0] - timedelta(hours=23, minutes=59))
    future = minute_of(now[0] + timedelta(days=3))
    counters.apply([("a", "running", old, 2), ("a", "success", future, 1)])
    assert counters.snapshot().recent_24h == 3
    now[0] += timedelta(minutes=1)
    assert counters.snapshot().recent_24h == 1
    counters.apply([("a", "running", old, -1)])  # a change to a run already outside
    snapshot = counters.snapshot()
    assert (snapshot.recent_24h, snapshot.total_runs) == (1, 2)


def test_future_minutes_kept_are_bounded_whatever_clients_send() -> None:
    """created_at is the client's: 100,000 runs each at its own future minute, from one
    minute to ~8,000 years ahead, keep at most ~2 x 1,440 + 367 + 8,000 minute keys (one
    per minute would grow the server's memory with every such run), and all count now."""
    now = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    counters = RunCounters(clock=lambda: now)
    rng = random.Random(7)
    horizon = (datetime(9999, 12, 31, tzinfo=UTC) - now).total_seconds() / 60
    minutes = {
        minute_of(now + timedelta(minutes=1 + rng.random() ** 4 * horizon)) for _ in range(100_000)
    }
    counters.apply([("a", "success", minute, 1) for minute in minutes])
    assert len(minutes) > 90_000
    assert len(counters._minutes) <= 2 * WINDOW_MINUTES + 367 + 8_000
    assert counters.snapshot().recent_24h == len(minutes)
    counters.apply([("a", "success", minute, -1) for minute in minutes])  # all deleted
    assert counters.snapshot().recent_24h == 0


def test_a_run_up_to_a_day_ahead_leaves_the_window_at_its_own_minute() -> None:
    now = [datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)]
    counters = RunCounters(clock=lambda: now[0])
    ahead = now[0] + timedelta(hours=23, minutes=59)
    counters.apply([("a", "success", minute_of(ahead), 1)])
    now[0] = ahead + timedelta(minutes=WINDOW_MINUTES - 1)
    assert counters.snapshot().recent_24h == 1  # its minute is the window's first
    now[0] += timedelta(minutes=1)
    assert counters.snapshot().recent_24h == 0


@pytest.mark.parametrize(
    ("ahead", "counted_until"),
    [
        # three days ahead: counted with its day's last minute
        (timedelta(days=3, hours=-2), datetime(2026, 3, 4, 23, 59, tzinfo=UTC)),
        # two years ahead: counted with its year's last minute
        (timedelta(days=730), datetime(2028, 12, 31, 23, 59, tzinfo=UTC)),
    ],
)
def test_a_run_further_ahead_leaves_the_window_with_its_day_or_year(
    ahead: timedelta, counted_until: datetime
) -> None:
    """The documented approximation: it counts now, and until its day's (or year's) last
    minute leaves the window, never less long than its own minute would."""
    now = [datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)]
    counters = RunCounters(clock=lambda: now[0])
    counters.apply([("a", "success", minute_of(now[0] + ahead), 1)])
    assert counters.snapshot().recent_24h == 1
    now[0] = now[0] + ahead + timedelta(minutes=WINDOW_MINUTES)  # its own minute is out
    assert counters.snapshot().recent_24h == 1
    now[0] = counted_until + timedelta(minutes=WINDOW_MINUTES - 1)
    assert counters.snapshot().recent_24h == 1
    now[0] += timedelta(minutes=1)
    assert counters.snapshot().recent_24h == 0


def test_runs_written_without_a_read_for_days_are_counted_exactly() -> None:
    """The horizons move with the clock, not only when /metrics is read: a run created
    now, two days after the last read, is a run of now (its own minute), not one "two
    days ahead" of a stale horizon counted with its day's last minute."""
    now = [datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)]
    counters = RunCounters(clock=lambda: now[0])
    now[0] = datetime(2026, 3, 3, 1, 0, 30, tzinfo=UTC)  # no read since the start
    counters.apply([("a", "success", minute_of(now[0]), 1)])
    now[0] += timedelta(minutes=WINDOW_MINUTES - 1)
    assert counters.snapshot().recent_24h == 1
    now[0] += timedelta(minutes=1)
    assert counters.snapshot().recent_24h == 0  # not held until the day's end + 24 h
