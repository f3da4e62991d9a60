"""Several servers on one PostgreSQL database (three facades, three separate asyncpg
pools): idempotent creates, and upsert batches that never regress a terminal status,
never deadlock, and count each run's creation once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from server.contract.fields import TERMINAL_STATUSES
from server.contract.models import RunCreate, UpsertItem
from server.postgres import database, runs
from server.postgres.database import PostgresDatabase, PostgresSettings
from server.postgres.url import parse_url
from server.storage.connection import StorageUnavailable
from server.storage.runs import insert_params


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[PostgresDatabase]]:
    settings = PostgresSettings(url=parse_url(pg_url), pool_size=8)
    opened = list(await asyncio.gather(*(PostgresDatabase.open(settings) for _ in range(3))))
    try:
        yield opened
    finally:
        await asyncio.gather(*(db.close() for db in opened))


def _run(event_id: str, **fields: Any) -> RunCreate:
    return RunCreate.model_validate(
        {
            "event_id": event_id,
            "run_id": f"run-{event_id}",
            "agent_name": "agent",
            "job_type": "job",
            "start_time": "2026-03-01T11:00:00Z",
            **fields,
        }
    )


async def test_100_concurrent_creates_of_one_event_over_3_replicas(
    replicas: list[PostgresDatabase],
) -> None:
    run = _run("the-one")
    answers = await asyncio.gather(*(replicas[n % 3].create(run) for n in range(100)))
    assert answers.count(True) == 1
    assert answers.count(False) == 99
    async with replicas[0].pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM agent_runs") == 1


async def test_concurrent_batches_of_one_run_insert_it_once(
    replicas: list[PostgresDatabase],
) -> None:
    """Batches and upserts from three replicas race to create the same runs, in
    different orders: each run is counted inserted exactly once, nothing deadlocks."""
    ids = [f"shared-{n}" for n in range(30)]
    rng = random.Random(7)
    jobs = []
    for n in range(30):
        order = rng.sample(ids, len(ids))
        db = replicas[n % 3]
        if n % 2:
            jobs.append(db.insert_batch([_run(e) for e in order]))
        else:
            jobs.append(db.upsert_batch([UpsertItem(event_id=e, create=_run(e)) for e in order]))
    results = await asyncio.gather(*jobs)
    inserted = sum(r if isinstance(r, int) else r.inserted for r in results)
    assert inserted == len(ids)
    async with replicas[0].pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM agent_runs") == len(ids)


async def test_concurrent_upserts_never_regress_a_terminal_status(
    replicas: list[PostgresDatabase],
) -> None:
    """Three replicas apply a sidecar's snapshots to the same runs at once, each batch
    in its own order: creates, late ``running`` updates, metrics patches, and one
    terminal status per run. Once a run is seen finished it is never seen running
    again, and every run ends with its terminal status."""
    ids = [f"race-{n}" for n in range(40)]
    final = {
        event_id: random.Random(event_id).choice(sorted(TERMINAL_STATUSES)) for event_id in ids
    }
    rng = random.Random(13)
    seen_finished: set[str] = set()
    regressions: list[str] = []
    stop = asyncio.Event()

    async def watch() -> None:
        """Poll statuses all along: a finished run read back running is a regression."""
        async with replicas[2].pool.acquire() as conn:
            for _ in range(100_000):
                if stop.is_set():
                    return
                for event_id, status in await conn.fetch("SELECT event_id, status FROM agent_runs"):
                    if status in TERMINAL_STATUSES:
                        seen_finished.add(event_id)
                    elif event_id in seen_finished:
                        regressions.append(event_id)
                await asyncio.sleep(0)

    def batch() -> list[UpsertItem]:
        items = []
        for event_id in rng.sample(ids, 25):
            body: dict[str, Any] = {"event_id": event_id}
            kind = rng.random()
            if kind < 0.3:
                body["create"] = _run(event_id).model_dump(exclude_unset=True)
                body["update"] = {"status": "running", "items_discovered": rng.randrange(5)}
            elif kind < 0.55:
                body["update"] = {"status": "running", "product": f"p{rng.randrange(3)}"}
            elif kind < 0.8:
                body["metrics_patch"] = {"progress": rng.randrange(100)}
                body["heartbeat"] = True
            else:
                body["create"] = _run(event_id).model_dump(exclude_unset=True)
                body["update"] = {"status": final[event_id], "error_summary": None}
            items.append(UpsertItem.model_validate(body))
        return items

    watcher = asyncio.ensure_future(watch())
    try:
        batches = [batch() for _ in range(60)]
        await asyncio.gather(*(replicas[n % 3].upsert_batch(b) for n, b in enumerate(batches)))
        # Every run gets its terminal status at least once (a last round, also racing).
        closing = [
            [
                UpsertItem(event_id=e, create=_run(e), update={"status": final[e]})  # type: ignore[arg-type]
                for e in rng.sample(ids, len(ids))
            ]
            for _ in range(3)
        ]
        await asyncio.gather(*(replicas[n].upsert_batch(b) for n, b in enumerate(closing)))
        # and late "running" snapshots after it change nothing
        late = [
            [
                UpsertItem.model_validate({"event_id": e, "update": {"status": "running"}})
                for e in ids
            ]
            for _ in range(3)
        ]
        results = await asyncio.gather(*(replicas[n].upsert_batch(b) for n, b in enumerate(late)))
        assert all(r.updated == 0 and r.unchanged == len(ids) for r in results)
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)
    assert regressions == []
    for event_id in ids:
        run = await replicas[0].get(event_id)
        assert run is not None
        assert run["status"] == final[event_id]


async def test_batches_naming_the_same_new_agents_in_other_orders_do_not_deadlock(
    replicas: list[PostgresDatabase], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct runs, but every batch names the same new agents and job types, each in an
    order of its own: the names' tables are written by every batch, and a batch that took
    agent X then wants Y while another took Y then wants X is a deadlock, which
    PostgreSQL breaks after ``deadlock_timeout`` (1 s) by failing one batch (a 503; seen
    in CI as two 503s in the bench's first batch round). Every batch must succeed."""
    monkeypatch.setattr(database, "ROLLED_BACK_ATTEMPTS", 1)  # the lock order alone
    rng = random.Random(29)
    for round_ in range(6):
        agents = [f"fresh-agent-{round_}-{n}" for n in range(60)]
        jobs = [f"fresh-job-{round_}-{n}" for n in range(60)]
        work = []
        for n in range(6):
            names = [(rng.choice(agents), rng.choice(jobs)) for _ in range(200)]
            runs = [
                _run(f"r{round_}-b{n}-{k}", agent_name=a, job_type=j)
                for k, (a, j) in enumerate(names)
            ]
            db = replicas[n % 3]
            if n % 2:
                work.append(db.insert_batch(runs))
            else:
                items = [UpsertItem(event_id=r.event_id, create=r) for r in runs]
                work.append(db.upsert_batch(items))
        results = await asyncio.gather(*work, return_exceptions=True)
        failures = [repr(r.__cause__ or r) for r in results if isinstance(r, BaseException)]
        assert failures == [], failures
        inserted = sum(r if isinstance(r, int) else r.inserted for r in results)  # type: ignore[union-attr]
        assert inserted == 6 * 200
    async with replicas[0].pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM run_agent_names") == 6 * 60
        assert await conn.fetchval("SELECT count(*) FROM run_job_types") == 6 * 60


@pytest.mark.parametrize("attempts", [3, 1])
@pytest.mark.parametrize("kind", ["batch", "create"])
async def test_a_write_rolled_back_to_break_a_deadlock_is_run_again(
    replicas: list[PostgresDatabase],
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    attempts: int,
) -> None:
    """A real deadlock with another writer that takes the same things in the other order:
    it holds a new name, the write waits for it while holding the run (the batch: its
    run's lock; a single create: its row), then the other wants the run. PostgreSQL fails
    the write, which waited first; the write runs again once the other has ended and is
    answered as a success. With no tries left, the answer is the 503."""
    monkeypatch.setattr(database, "ROLLED_BACK_ATTEMPTS", attempts)
    run = _run(f"deadlocked-{kind}", agent_name=f"held-agent-{kind}")
    other = await asyncpg.connect(pg_url)
    try:
        holding = other.transaction()
        await holding.start()
        await other.execute("INSERT INTO run_agent_names (name) VALUES ($1)", run.agent_name)
        with capture_logs() as logs:
            if kind == "batch":
                write = asyncio.ensure_future(replicas[0].insert_batch([run]))
            else:
                write = asyncio.ensure_future(replicas[0].create(run))
            for _ in range(500):  # until the write waits for the name (at most 5 s)
                waiting = await other.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
                )
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting, "the write never waited for the name"
            # what the write holds: a cycle, broken by failing the write
            if kind == "batch":
                await other.fetchval(
                    "SELECT pg_advisory_xact_lock($1)", runs.lock_key(run.event_id)
                )
            else:
                await runs.insert_row(other, insert_params(run, "2026-03-01T11:00:00+00:00"))
            await holding.rollback()
            if attempts == 1:
                with pytest.raises(StorageUnavailable):
                    await asyncio.wait_for(write, 30)
            else:
                assert await asyncio.wait_for(write, 30) in (1, True)
    finally:
        await other.close()
    retries = [entry for entry in logs if entry["event"] == "write_rolled_back_retrying"]
    if attempts == 1:
        assert retries == []
        assert await replicas[1].get(run.event_id) is None
        return
    assert [(entry["attempt"], entry["sqlstate"]) for entry in retries] == [(1, "40P01")]
    stored = await replicas[1].get(run.event_id)
    assert stored is not None
    assert stored["agent_name"] == run.agent_name


class _RecordingConnection:
    """Records the name arrays ``note_names`` sends (the order is the point)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def fetchval(self, sql: str, names: list[str]) -> int:
        self.calls.append((sql, names))
        return 0


async def test_names_are_noted_sorted_agents_before_job_types() -> None:
    conn = _RecordingConnection()
    await runs.note_names(conn, {"b", "a", "c", "\x00nul"}, {"z", "y"})
    (agents_sql, agents), (jobs_sql, jobs) = conn.calls
    assert "run_agent_names" in agents_sql
    assert "run_job_types" in jobs_sql
    assert agents == sorted(agents)
    assert len(agents) == 4
    assert jobs == ["y", "z"]
