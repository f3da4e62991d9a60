"""Stats stay equal to the runs they summarise after the reaper, late updates and a prune.

Each writer of issue 11 changes finished runs behind the request path (the reaper marks
runs ``timeout``, a late terminal status replaces it, a prune deletes old runs): the
rollups must follow every one. The answer of ``GET /api/v1/stats`` is compared, group by
group, with a recomputation from the raw rows (exact figures; percentiles through the
same documented histogram), over windows that read every part (days, hours, raw spans).
"""

from __future__ import annotations

import asyncio
import bisect
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from server.reaper import reap_pass
from server.storage.rollups import duration_bucket_floors
from server.storage.stats import percentiles
from tests.server.test_stale_runs import MakeApi, database, quiet_api
from tests.stored_rows import fetch

FLOORS = duration_bucket_floors()
STATUSES = ("running", "success", "failure", "partial", "timeout", "cancelled")
JOBS = ("crawl", "etl", "index")
BASE = datetime(2026, 2, 1, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


_ROWS = (
    "SELECT job_type, status, start_time, duration_ms, items_discovered, items_succeeded,"
    " items_failed FROM agent_runs"
)


async def stored_rows(api: Any) -> list[tuple[Any, ...]]:
    """The stored runs' columns the stats summarise, read on a connection of its own
    (of either backend: tests/postgres runs this test on PostgreSQL)."""
    return await fetch(api, _ROWS)


def expected(
    rows: list[tuple[Any, ...]], group_by: list[str], low: str | None, high: str | None
) -> dict[tuple[str, ...], dict[str, Any]]:
    """The stats answer recomputed from the stored runs, in Python."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for job, status, start, duration, disc, succ, fail in rows:
        if (low is not None and start < low) or (high is not None and start > high):
            continue
        named = {"job_type": job, "status": status, "day": start[:10]}
        key = tuple(named[name] for name in group_by)
        group = groups.setdefault(
            key,
            {"runs": 0, "by_status": dict.fromkeys(STATUSES, 0), "items": [0, 0, 0]}
            | {"durations": [], "first": start, "last": start},
        )
        group["runs"] += 1
        group["by_status"][status] += 1
        group["items"] = [a + b for a, b in zip(group["items"], (disc, succ, fail), strict=True)]
        group["first"], group["last"] = min(group["first"], start), max(group["last"], start)
        if status != "running" and duration is not None and duration >= 1:
            group["durations"].append(duration)
    answer = {}
    for key, group in groups.items():
        hist: dict[int, int] = {}
        for value in group["durations"]:
            floor = FLOORS[bisect.bisect_right(FLOORS, value) - 1]
            hist[floor] = hist.get(floor, 0) + 1
        longest = max(group["durations"], default=None)
        p50, p95 = percentiles(
            sorted(hist.items()), len(group["durations"]), (0.5, 0.95), longest or 0
        )
        finished = group["runs"] - group["by_status"]["running"]
        answer[key] = {
            "runs": group["runs"],
            "by_status": group["by_status"],
            "success_rate": (
                round(group["by_status"]["success"] / finished, 6) if finished else None
            ),
            "duration_ms": {
                "count": len(group["durations"]),
                "p50": p50,
                "p95": p95,
                "max": longest,
            },
            "items": dict(zip(("discovered", "succeeded", "failed"), group["items"], strict=True)),
            "first_start": group["first"],
            "last_start": group["last"],
        }
    return answer


async def test_stats_equal_the_raw_rows_after_reaper_late_updates_and_prune(
    make_api: MakeApi, new_run: Any
) -> None:
    api = await quiet_api(make_api)
    rng = random.Random(11)
    now = datetime.now(UTC)
    old, fresh, doomed = [], [], []
    for n in range(160):
        status = rng.choice(STATUSES)
        start = BASE + timedelta(minutes=rng.randrange(0, 6 * 24 * 60), seconds=rng.random())
        fields: dict[str, Any] = {
            "job_type": rng.choice(JOBS),
            "start_time": stamp(start),
            "status": status,
            "items_discovered": rng.randrange(0, 50),
            "items_succeeded": rng.randrange(0, 50),
            "items_failed": rng.randrange(0, 5),
        }
        if n % 3 == 0:  # created long ago: a prune's candidates
            fields["created_at"] = stamp(now - timedelta(days=200))
            fields["end_time"] = stamp(now - timedelta(days=199))
        if status != "running" and rng.random() < 0.8:
            fields["duration_ms"] = rng.choice((0, 1, 50, 127, 128, 5000, rng.randrange(1, 10**7)))
        if status == "running" and rng.random() < 0.6:
            fields["heartbeat_timeout_s"] = 1  # reaped below
        run = new_run(**fields)
        await api.create(run)
        (old if n % 3 == 0 else fresh).append(run["event_id"])
        if fields.get("heartbeat_timeout_s") == 1:
            doomed.append(run["event_id"])
    assert doomed
    await asyncio.sleep(1.1)
    assert await reap_pass(database(api)) == len(doomed)
    # Late updates: a terminal status replaces the reaper's timeout (with a duration and
    # a new start), a late running never revives, a finished run moves job and day.
    for index, event_id in enumerate(doomed):
        body: dict[str, Any] = (
            {"status": "success", "duration_ms": 1000 + index}
            if index % 2 == 0
            else {"status": "running", "items_succeeded": 7}
        )
        if index % 4 == 0:
            body["start_time"] = stamp(BASE + timedelta(days=3, hours=index % 24))
        reply = await api.patch(f"/api/v1/runs/{event_id}", json=body)
        assert reply.status == 200, reply.body
    for event_id in rng.sample(fresh, 20):
        reply = await api.patch(
            f"/api/v1/runs/{event_id}",
            json={
                "job_type": rng.choice(JOBS),
                "start_time": stamp(BASE + timedelta(hours=rng.randrange(0, 6 * 24))),
                "status": rng.choice(STATUSES[1:]),
                "duration_ms": rng.randrange(1, 10**6),
            },
        )
        assert reply.status == 200, reply.body
    reply = await api.post("/api/v1/maintenance/prune", json={"older_than": "90d"})
    assert reply.status == 200, reply.body
    assert reply.body["deleted"] > 0

    windows: list[tuple[str | None, str | None]] = [
        (None, None),
        (stamp(BASE + timedelta(days=1, hours=5, minutes=30)), None),
        (None, stamp(BASE + timedelta(days=4, hours=17, minutes=45))),
        (
            stamp(BASE + timedelta(days=1, hours=5, minutes=30)),
            stamp(BASE + timedelta(days=4, hours=17, minutes=45)),
        ),
        (
            stamp(BASE + timedelta(days=2)),
            stamp(BASE + timedelta(days=3) - timedelta(microseconds=1)),
        ),
    ]
    rows = await stored_rows(api)
    for group_by in (["job_type", "day"], ["status"], ["job_type", "status", "day"], []):
        for low, high in windows:
            params = {"group_by": ",".join(group_by)}
            if low is not None:
                params["start_time_from"] = low
            if high is not None:
                params["start_time_to"] = high
            reply = await api.get("/api/v1/stats", params=params)
            assert reply.status == 200, reply.body
            got = {
                tuple(group["key"][name] for name in group_by): {
                    name: value for name, value in group.items() if name != "key"
                }
                for group in reply.body["groups"]
            }
            assert got == expected(rows, group_by, low, high), (group_by, low, high)
