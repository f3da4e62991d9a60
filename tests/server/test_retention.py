"""Retention: prune deletes old finished runs only, through the writer, and keeps counts exact."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from server.config import ConfigError, ServerConfig
from server.http.runs import DATABASE
from server.storage.retention import (
    BatchSizer,
    PrunePlan,
    RetentionError,
    check_statuses,
    cut_for,
    parse_age,
    prune_pass,
)
from tests.stored_rows import fetch

PRUNE = "/api/v1/maintenance/prune"


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


async def truth(api: Any) -> dict[str, Any]:
    """The stored runs' counts by status and agent, job types and ids (either backend)."""
    statuses = dict(await fetch(api, "SELECT status, COUNT(*) FROM agent_runs GROUP BY status"))
    agents = dict(
        await fetch(api, "SELECT agent_name, COUNT(*) FROM agent_runs GROUP BY agent_name")
    )
    jobs = [r[0] for r in await fetch(api, "SELECT DISTINCT job_type FROM agent_runs ORDER BY 1")]
    ids = {r[0] for r in await fetch(api, "SELECT event_id FROM agent_runs")}
    return {"statuses": statuses, "agents": agents, "jobs": jobs, "ids": ids}


async def seed(api: Any, new_run: Any) -> dict[str, list[str]]:
    """Old finished runs, old running runs, old-created but recently ended runs, new runs."""
    groups: dict[str, list[str]] = {"old": [], "running": [], "ended_late": [], "new": []}
    for n in range(30):
        status = ("success", "failure", "partial", "timeout", "cancelled")[n % 5]
        run = new_run(
            agent_name=f"old-agent-{n % 3}",
            job_type="old-only-job" if n < 10 else "shared-job",
            status=status,
            created_at=ago(200 - n),
            end_time=ago(199 - n),
        )
        await api.create(run)
        groups["old"].append(run["event_id"])
    for n in range(5):
        run = new_run(agent_name="zombie", status="running", created_at=ago(300 + n))
        await api.create(run)
        groups["running"].append(run["event_id"])
    for n in range(4):
        run = new_run(status="success", created_at=ago(150), end_time=ago(10 + n))
        await api.create(run)
        groups["ended_late"].append(run["event_id"])
    for n in range(6):
        run = new_run(job_type="shared-job", status="success", created_at=ago(n))
        await api.create(run)
        groups["new"].append(run["event_id"])
    return groups


async def metrics(api: Any) -> dict[str, Any]:
    reply = await api.get("/metrics")
    assert reply.status == 200
    return dict(reply.body)


async def test_prune_deletes_only_old_finished_runs_and_keeps_counts_exact(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    groups = await seed(api, new_run)
    reply = await api.post(PRUNE, json={"older_than": "90d"})
    assert reply.status == 200, reply.body
    assert reply.body["deleted"] == 30
    assert sum(reply.body["by_status"].values()) == 30
    assert reply.body["dry_run"] is False
    stored = await truth(api)
    assert stored["ids"] == set(groups["running"] + groups["ended_late"] + groups["new"])
    body = await metrics(api)
    assert body["total_runs"] == len(stored["ids"])
    assert body["runs_by_status"] == stored["statuses"]
    assert body["agents"] == stored["agents"]
    assert body["retention"]["deleted_runs"] == 30
    assert body["retention"]["passes"] == 1
    meta = await api.get("/api/v1/metadata")
    assert meta.body["job_types"] == stored["jobs"]  # old-only-job is gone from metadata
    assert "old-only-job" not in meta.body["job_types"]
    assert not any(name.startswith("old-agent") for name in meta.body["agent_names"])


async def test_dry_run_changes_nothing_and_reports_what_it_would_delete(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    await seed(api, new_run)
    before = await truth(api)
    reply = await api.post(PRUNE, json={"older_than": "90d", "dry_run": True})
    assert reply.status == 200, reply.body
    assert reply.body["dry_run"] is True
    assert reply.body["deleted"] == 30
    assert reply.body["by_status"] == {s: 6 for s in check_statuses(None)}
    assert await truth(api) == before
    assert (await metrics(api))["retention"]["passes"] == 0


async def test_status_filter_deletes_only_those_statuses(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    await seed(api, new_run)
    reply = await api.post(PRUNE, json={"older_than": "90d", "statuses": ["failure", "timeout"]})
    assert reply.status == 200, reply.body
    assert reply.body["by_status"] == {"failure": 6, "timeout": 6}
    statuses = (await truth(api))["statuses"]
    assert "failure" not in statuses
    assert "timeout" not in statuses
    assert statuses["cancelled"] == 6


@pytest.mark.parametrize(
    "body",
    [
        {"older_than": "0d"},
        {"older_than": "-5d"},
        {"older_than": "90 days"},
        {"older_than": "1y"},
        {"older_than": ""},
        {"older_than": "9999999d"},
        {"older_than": 90},
        {},
        {"older_than": "90d", "statuses": ["running"]},
        {"older_than": "90d", "statuses": ["done"]},
        {"older_than": "90d", "dry_run": "maybe"},
        {"older_than": "90d", "dry_run": "no"},  # lax parsing would make it a real prune
        {"older_than": "90d", "dry_run": 0},
        {"older_than": "90d", "surprise": 1},
        {"older_than": "999999d"},  # before year 1: was a 500 (OverflowError)
        {"older_than": "999999w"},
    ],
)
async def test_bad_prune_requests_get_422_and_change_nothing(
    api: Any, new_run: Any, tmp_path: Path, body: dict[str, Any]
) -> None:
    await api.create(new_run(status="success", created_at=ago(400), end_time=ago(400)))
    before = await truth(api)
    reply = await api.post(PRUNE, json=body)
    assert reply.status == 422, reply.body
    assert reply.body["error"] == "validation_error"
    assert await truth(api) == before


async def test_a_run_made_running_again_is_never_pruned(api: Any, new_run: Any) -> None:
    """The contract lets a PATCH set status back to running: the batch's own WHERE, run in
    the writer's transaction, sees that."""
    run = new_run(status="success", created_at=ago(200), end_time=ago(200))
    await api.create(run)
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "running"})
    assert reply.status == 200, reply.body
    pruned = await api.post(PRUNE, json={"older_than": "90d"})
    assert pruned.body["deleted"] == 0
    assert (await api.run(run["event_id"]))["status"] == "running"


async def test_prune_racing_patches_never_deletes_a_running_run(api: Any, new_run: Any) -> None:
    """PATCHes flipping old runs to running while a pass runs: every run that is running
    when the pass ends still exists; every deleted run was finished."""
    runs = [new_run(status="success", created_at=ago(200), end_time=ago(200)) for _ in range(300)]
    ids = [run["event_id"] for run in runs]
    for start in range(0, 300, 100):
        reply = await api.post("/api/v1/runs/batch", json=runs[start : start + 100])
        assert reply.status == 200, reply.body
    flipped: list[str] = []

    async def flip() -> None:
        for event_id in ids[::7]:
            reply = await api.patch(f"/api/v1/runs/{event_id}", json={"status": "running"})
            if reply.status == 200:
                flipped.append(event_id)
            await asyncio.sleep(0)

    database = api.client.server.app[DATABASE]
    plan = PrunePlan(cut_for(parse_age("90d")), check_statuses(None))
    report, _ = await asyncio.gather(
        prune_pass(database.writer.run, plan, sleep=asyncio.sleep, sizer=BatchSizer(first=10)),
        flip(),
    )
    for event_id in flipped:
        assert (await api.run(event_id))["status"] == "running"
    assert report.deleted == 300 - len(flipped)
    listed = await api.list(limit=1000)
    assert {run["event_id"] for run in listed} == set(flipped)


async def test_deletes_fire_persistent_triggers_on_agent_runs(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    """Rollups kept by triggers (another module's) stay right: prune is plain DELETEs."""
    database = api.client.server.app[DATABASE]

    def install(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE deleted_log (event_id TEXT)")
        conn.execute(
            "CREATE TRIGGER log_deletes AFTER DELETE ON agent_runs "
            "BEGIN INSERT INTO deleted_log VALUES (OLD.event_id); END"
        )

    await database.writer.run(install)
    groups = await seed(api, new_run)
    await api.post(PRUNE, json={"older_than": "90d"})
    conn = sqlite3.connect(tmp_path / "t.sqlite")
    try:
        logged = {r[0] for r in conn.execute("SELECT event_id FROM deleted_log")}
    finally:
        conn.close()
    assert logged == set(groups["old"])


async def test_new_files_give_space_back_after_a_prune(
    api: Any, new_run: Any, tmp_path: Path
) -> None:
    big = "x" * 4000
    runs = [
        new_run(status="success", created_at=ago(200), end_time=ago(200), error_details=big)
        for _ in range(600)
    ]
    for start in range(0, 600, 200):
        reply = await api.post("/api/v1/runs/batch", json=runs[start : start + 200])
        assert reply.status == 200
    database = api.client.server.app[DATABASE]
    pages_before = await database.writer.run(
        lambda conn: conn.execute("PRAGMA page_count").fetchone()[0]
    )
    reply = await api.post(PRUNE, json={"older_than": "90d"})
    assert reply.body["incremental_vacuum"] is True
    assert reply.body["vacuumed_pages"] > 500
    pages_after, free = await database.writer.run(
        lambda conn: (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
        )
    )
    assert free == 0
    assert pages_after < pages_before / 4


async def test_background_retention_prunes_on_its_own(
    make_api: Any, new_run: Any, tmp_path: Path
) -> None:
    api = await make_api(retention_days=90, retention_interval_s=1)
    run = new_run(status="success", created_at=ago(200), end_time=ago(200))
    await api.create(run)
    for _ in range(100):  # bounded: the second pass comes within ~1 s
        # The pass counts its deletions once it has finished (after its vacuum
        # steps), so the row can be gone a moment before the counter moves.
        gone = not (await truth(api))["ids"]
        if gone and (await metrics(api))["retention"]["deleted_runs"] == 1:
            break
        await asyncio.sleep(0.05)
    assert (await truth(api))["ids"] == set()
    assert (await metrics(api))["retention"]["deleted_runs"] == 1


async def test_prometheus_counts_pruned_runs(api: Any, new_run: Any) -> None:
    await seed(api, new_run)
    await api.post(PRUNE, json={"older_than": "90d"})
    async with api.client.get("/metrics", headers={"Accept": "text/plain"}) as response:
        text = await response.text()
    assert 'telemetry_pruned_runs_total{status="failure"} 6.0' in text
    assert "telemetry_prune_passes_total 1.0" in text


def test_batches_adapt_to_their_measured_time() -> None:
    sizer = BatchSizer(target_s=0.02, first=200)
    sizer.observe(200, 0.08)  # too slow: halve at most
    assert sizer.rows == 100
    sizer.observe(100, 0.001)  # fast: grow by a quarter at most
    assert sizer.rows == 125
    sizer.observe(50, 5.0)  # a short window says nothing
    assert sizer.rows == 125


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90d", timedelta(days=90)),
        ("90", timedelta(days=90)),
        ("2w", timedelta(days=14)),
        ("36h", timedelta(hours=36)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_ages(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        *("", "d", "0", "0h", "1.5d", "-1d", "90m", "90 days", "1e3"),
        *("36501d", "5215w", "999999h", "\u0669\u0669d"),  # past 100 years; not ASCII digits
    ],
)
def test_bad_ages(text: str) -> None:
    with pytest.raises(RetentionError):
        parse_age(text)


@pytest.mark.parametrize(
    ("env", "ok"),
    [
        ({"TELEMETRY_RETENTION_DAYS": "90"}, True),
        ({"TELEMETRY_RETENTION_DAYS": ""}, True),
        ({"TELEMETRY_RETENTION_DAYS": "0"}, True),
        ({"TELEMETRY_RETENTION_DAYS": "-1"}, False),
        ({"TELEMETRY_RETENTION_DAYS": "90d"}, False),
        ({"TELEMETRY_RETENTION_DAYS": "1.5"}, False),
        ({"TELEMETRY_RETENTION_INTERVAL_S": "0"}, False),
        ({"TELEMETRY_RETENTION_INTERVAL_S": "abc"}, False),
    ],
)
def test_retention_settings_are_validated_at_start(env: dict[str, str], ok: bool) -> None:
    if ok:
        ServerConfig.from_env(env)
    else:
        with pytest.raises(ConfigError, match="TELEMETRY_RETENTION"):
            ServerConfig.from_env(env)


def test_retention_is_off_by_default() -> None:
    assert ServerConfig.from_env({}).retention_days == 0


def test_a_batch_reads_its_own_range_not_the_rest_of_the_old_runs(tmp_path: Path) -> None:
    """The DELETE is bounded on both sides by index range: a 10-row batch at the start of
    6,000 old runs does ~1/100 of the work of a 1,000-row batch (counted in SQLite VM
    steps, not time), so a pass stays linear in the runs it deletes."""
    from server.contract.models import RunCreate
    from server.storage import runs as stored
    from server.storage.retention import delete_batch
    from server.storage.schema import migrate

    conn = sqlite3.connect(tmp_path / "plain.sqlite", isolation_level=None)
    migrate(conn)
    now = datetime.now(UTC)
    rows = [
        stored.insert_params(
            RunCreate.model_validate(
                {
                    "event_id": f"e{i}",
                    "run_id": "r",
                    "agent_name": "a",
                    "job_type": "j",
                    "start_time": ago(300),
                    "status": "success",
                    "created_at": (now - timedelta(days=300, seconds=-i)).isoformat(),
                    "end_time": ago(300),
                }
            ),
            now.isoformat(),
        )
        for i in range(6000)
    ]
    conn.execute("BEGIN")
    stored.insert_rows(conn, rows)
    conn.execute("COMMIT")
    plan = PrunePlan(cut_for(parse_age("90d")), check_statuses(None))
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    conn.set_progress_handler(count, 100)
    work = {}
    after = None
    for limit in (10, 10, 1000):  # the second batch starts after the first (keyset)
        steps[0] = 0
        conn.execute("BEGIN IMMEDIATE")
        result = delete_batch(conn, plan, after, limit)
        conn.execute("COMMIT")
        assert sum(result.deleted.values()) == limit
        after = result.next_position
        work[limit] = steps[0]
    conn.close()
    assert work[10] * 20 < work[1000], work


def test_a_vacuum_step_never_grows_past_its_cap() -> None:
    """Cheap steps grow the next one, but never past VACUUM_MAX_PAGES: a step grown on
    cheap pages can meet expensive ones (one took 130 ms at 1M runs)."""
    from server.storage.retention import VACUUM_MAX_PAGES, VACUUM_STEP_PAGES

    steps = BatchSizer(first=VACUUM_STEP_PAGES, most=VACUUM_MAX_PAGES)
    for _ in range(50):
        steps.observe(steps.rows, 0.0001)  # every step far under the target
    assert steps.rows == VACUUM_MAX_PAGES
