"""start_time windows over runs recorded late (migration 11's late indexes carry status):
a PATCH moves a late run between the status ranges of every filtered window, and a
fleet where most runs are late answers every filter combination like brute force."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def window_of(start: datetime) -> dict[str, str]:
    return {
        "start_time_from": stamp(start - timedelta(hours=1)),
        "start_time_to": stamp(start + timedelta(hours=1)),
    }


async def test_a_patched_late_run_leaves_its_old_status_range(api: Any, new_run: Any) -> None:
    """Recorded two days after it started (late: the far arm), then finished: the window
    filtered by its new status finds it, by its old status no longer, and every filter
    set that matches it finds it exactly once."""
    started = datetime.now(UTC) - timedelta(days=2)
    run = new_run(agent_name="late-agent", job_type="late-job", status="running")
    run["start_time"] = stamp(started)
    await api.create(run)
    window = window_of(started)
    assert [r["event_id"] for r in await api.list(status="running", **window)] == [run["event_id"]]
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "success"})
    assert reply.status == 200, reply.body
    for filters in (
        {"status": "success"},
        {"agent_name": "late-agent"},
        {"agent_name": "late-agent", "status": "success"},
        {"job_type": "late-job", "status": "success"},
        {"agent_name": "late-agent", "job_type": "late-job"},
        {"agent_name": "late-agent", "job_type": "late-job", "status": "success"},
        {"start_time_to": window["start_time_to"], "agent_name": "late-agent"},
    ):
        query = {**window, **filters}
        assert [r["event_id"] for r in await api.list(**query)] == [run["event_id"]], filters
    for filters in (
        {"status": "running"},
        {"agent_name": "late-agent", "status": "running"},
        {"agent_name": "late-agent", "job_type": "late-job", "status": "running"},
        {"agent_name": "another-agent"},
    ):
        assert await api.list(**window, **filters) == [], filters


async def test_a_mostly_late_fleet_answers_every_combination(api: Any, new_run: Any) -> None:
    """Two runs in three recorded hours to days after they started (a fleet that reports
    runs when they end), the rest as they start; some late ones PATCHed afterwards. Every
    equality set with three kinds of window, walked with the cursor, answers exactly the
    brute-force set, newest first."""
    rng = random.Random(11)
    now = datetime.now(UTC)
    runs = []
    for i in range(300):
        start = now - timedelta(days=3) + timedelta(minutes=14 * i)
        if rng.random() < 2 / 3:
            start -= timedelta(hours=rng.choice((1, 5, 30, 60)))
        run = new_run(
            agent_name=rng.choice(("a", "b", "c")),
            job_type=rng.choice(("j1", "j2")),
            status=rng.choice(STATUSES),
        )
        run["start_time"] = stamp(start)
        runs.append(run)
    for begin in range(0, len(runs), 100):
        reply = await api.post("/api/v1/runs/batch", json=runs[begin : begin + 100])
        assert reply.status == 200, reply.body
        assert reply.body["inserted"] == 100, reply.body
    for run in rng.sample(runs, 60):
        run["status"] = rng.choice(STATUSES[1:])
        reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"status": run["status"]})
        assert reply.status == 200, reply.body
    stored = {r["event_id"]: r for r in await api.list(limit=1000)}
    assert len(stored) == len(runs)
    order = {run["event_id"]: position for position, run in enumerate(runs)}  # id order
    middle = now - timedelta(days=2)
    windows = [
        window_of(middle),
        {"start_time_to": stamp(middle)},
        {"start_time_from": stamp(middle), "start_time_to": stamp(now)},
    ]
    values = {"agent_name": "b", "job_type": "j1", "status": "success"}
    for size in range(4):
        for columns in itertools.combinations(values, size):
            for window in windows:
                query = {**{column: values[column] for column in columns}, **window}
                expected = sorted(
                    (
                        run
                        for run in stored.values()
                        if all(run[column] == values[column] for column in columns)
                        and window.get("start_time_from", "") <= run["start_time"]
                        and run["start_time"] <= window.get("start_time_to", "~")
                    ),
                    key=lambda run: (run["created_at"], order[run["event_id"]]),
                    reverse=True,
                )
                walked = await walk(api, {**query, "limit": "7"})
                assert walked == [run["event_id"] for run in expected], query


async def walk(api: Any, params: dict[str, str]) -> list[str]:
    seen: list[str] = []
    query = dict(params)
    for _ in range(200):
        reply = await api.get("/api/v1/runs", params=query)
        assert reply.status == 200, reply.body
        seen += [run["event_id"] for run in reply.body]
        cursor = reply.headers.get("X-Next-Cursor")
        if cursor is None:
            return seen
        query = {**params, "cursor": cursor}
    raise AssertionError("walk did not end")
