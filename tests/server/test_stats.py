"""GET /api/v1/stats over HTTP: figures, grouping, filters, windows, bad parameters."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from server.contract.stats import StatsAnswer
from server.storage import stats as stats_storage

DAY1 = "2026-03-01"
DAY2 = "2026-03-02"


def at(day: str, hhmm: str) -> str:
    return f"{day}T{hhmm}:00Z"


async def seed(api: Any, new_run: Any, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs = [new_run(**spec) for spec in specs]
    reply = await api.post("/api/v1/runs/batch", json=runs)
    assert reply.body["inserted"] == len(runs), reply.body
    return runs


async def stats(api: Any, **params: str) -> dict[str, Any]:
    reply = await api.get("/api/v1/stats", params=params)
    assert reply.status == 200, reply.body
    StatsAnswer.model_validate(reply.body)  # the documented shape
    return dict(reply.body)


def by_key(answer: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(group["key"].values()): group for group in answer["groups"]}


FLEET = [
    # job a, day 1: three finished, one running
    {
        "job_type": "a",
        "start_time": at(DAY1, "01:00"),
        "status": "success",
        "duration_ms": 100,
        "items_discovered": 10,
        "items_succeeded": 9,
        "items_failed": 1,
    },
    {"job_type": "a", "start_time": at(DAY1, "02:00"), "status": "success", "duration_ms": 50},
    {
        "job_type": "a",
        "start_time": at(DAY1, "03:00"),
        "status": "failure",
        "duration_ms": 10,
        "items_discovered": 5,
    },
    {"job_type": "a", "start_time": at(DAY1, "23:59"), "status": "running"},
    # job b, day 2, another agent
    {
        "job_type": "b",
        "agent_name": "other",
        "start_time": at(DAY2, "00:00"),
        "status": "timeout",
        "duration_ms": 7,
    },
]


async def test_empty_database_has_no_groups(api):
    """No runs: no groups, for every grouping and the overall one."""
    for group_by in ("", "job_type", "agent_name,day", "hour", "status"):
        answer = await stats(api, group_by=group_by)
        assert answer["groups"] == []
    answer = await stats(api, start_time_from=at(DAY1, "00:00"), start_time_to=at(DAY2, "00:00"))
    assert answer["groups"] == []


async def test_overall_group_figures(api, new_run):
    """No group_by: one group with every figure computed from the runs."""
    await seed(api, new_run, FLEET)
    answer = await stats(api)
    assert answer["group_by"] == []
    (group,) = answer["groups"]
    assert group["key"] == {}
    assert group["runs"] == 5
    assert group["by_status"] == {
        "running": 1,
        "success": 2,
        "failure": 1,
        "partial": 0,
        "timeout": 1,
        "cancelled": 0,
    }
    assert group["success_rate"] == 0.5  # 2 successes of 4 finished runs
    # durations 7, 10, 50, 100 (exact below 128 ms); the running run has none
    assert group["duration_ms"] == {"count": 4, "p50": 10, "p95": 100, "max": 100}
    assert group["items"] == {"discovered": 15, "succeeded": 9, "failed": 1}
    assert group["first_start"] == "2026-03-01T01:00:00.000000+00:00"
    assert group["last_start"] == "2026-03-02T00:00:00.000000+00:00"
    assert "histogram" in answer["percentiles"]


async def test_group_by_job_type_and_day(api, new_run):
    """job_type,day: one group per pair present, keyed by both, in key order."""
    await seed(api, new_run, FLEET)
    answer = await stats(api, group_by="job_type,day")
    assert answer["group_by"] == ["job_type", "day"]
    groups = by_key(answer)
    assert list(groups) == [("a", DAY1), ("b", DAY2)]
    assert groups[("a", DAY1)]["runs"] == 4
    assert groups[("a", DAY1)]["key"] == {"job_type": "a", "day": DAY1}
    assert groups[("b", DAY2)]["by_status"]["timeout"] == 1
    assert groups[("b", DAY2)]["success_rate"] == 0.0


async def test_group_by_agent_hour_and_status(api, new_run):
    """agent_name, hour and status groupings (hours keyed as UTC instants)."""
    await seed(api, new_run, FLEET)
    agents = by_key(await stats(api, group_by="agent_name"))
    assert {key: group["runs"] for key, group in agents.items()} == {
        ("other",): 1,
        ("test-agent",): 4,
    }
    hours = by_key(await stats(api, group_by="hour", job_type="a"))
    assert list(hours) == [
        ("2026-03-01T01:00:00+00:00",),
        ("2026-03-01T02:00:00+00:00",),
        ("2026-03-01T03:00:00+00:00",),
        ("2026-03-01T23:00:00+00:00",),
    ]
    statuses = by_key(await stats(api, group_by="status"))
    assert {key: group["runs"] for key, group in statuses.items()} == {
        ("failure",): 1,
        ("running",): 1,
        ("success",): 2,
        ("timeout",): 1,
    }
    assert statuses[("running",)]["success_rate"] is None  # no finished run in it


async def test_time_zones_are_utc(api, new_run):
    """A run started at 23:30 on day 1 in UTC-5 belongs to day 2 UTC, hour 04."""
    await seed(api, new_run, [{"start_time": "2026-03-01T23:30:00-05:00", "status": "success"}])
    (group,) = (await stats(api, group_by="day,job_type"))["groups"]
    assert group["key"]["day"] == DAY2
    (group,) = (await stats(api, group_by="hour"))["groups"]
    assert group["key"]["hour"] == "2026-03-02T04:00:00+00:00"


async def test_repeated_group_by_is_one_list(api, new_run):
    """?group_by=job_type&group_by=day answers as ?group_by=job_type,day."""
    await seed(api, new_run, FLEET)
    reply = await api.get("/api/v1/stats?group_by=job_type&group_by=day")
    assert reply.status == 200
    assert reply.body == await stats(api, group_by="job_type,day")


@pytest.mark.parametrize(
    "query",
    [
        "group_by=nope",
        "group_by=job_type,,day",
        "group_by=,",
        "group_by=job_type,job_type",
        "group_by=job_type&group_by=job_type",
        "group_by=day,hour",
        "group_by=JOB_TYPE",
        "group_by=job_type%00",
        "status=bogus",
        "start_time_from=2026-03-02T00:00:00Z&start_time_to=2026-03-01T00:00:00Z",
        "created_after=2026-03-02T00:00:00Z&created_before=2026-03-01T00:00:00Z",
        "start_time_from=2026-03-01T00:00:00",  # naive: no timezone
        "start_time_to=yesterday",
        "created_before=2026-13-01T00:00:00Z",
    ],
)
async def test_bad_parameters_are_422_json(api, new_run, query):
    """Each bad parameter: 422 with the usual body naming the query parameter."""
    await seed(api, new_run, FLEET[:1])
    reply = await api.get(f"/api/v1/stats?{query}")
    assert reply.status == 422, reply.body
    assert reply.body["error"] == "validation_error"
    assert reply.body["detail"][0]["loc"][0] == "query"


async def test_empty_values_mean_no_filter(api, new_run):
    """`group_by=` and `status=` are absent filters, as the list treats them."""
    await seed(api, new_run, FLEET)
    assert await stats(api, group_by="", status="") == await stats(api)


@pytest.mark.parametrize(
    "hostile",
    [
        "'; DROP TABLE agent_runs; --",
        "a' OR '1'='1",
        "%",
        "_",
        "\u202e\u0301🙂",
        "x" * 5000,
        "run_stats_daily",
    ],
)
async def test_hostile_filter_strings_match_nothing_and_change_nothing(api, new_run, hostile):
    """Filters are bound values: a hostile string matches no run and harms nothing."""
    await seed(api, new_run, FLEET)
    for name in ("agent_name", "job_type"):
        for group_by in ("", "job_type,day", "agent_name"):
            answer = await stats(api, **{name: hostile, "group_by": group_by})
            assert answer["groups"] == []
    assert (await stats(api))["groups"][0]["runs"] == 5


async def test_window_bounds_are_inclusive_and_on_start_time(api, new_run):
    """start_time_from/to include runs starting exactly on them; others are left out."""
    await seed(api, new_run, FLEET)
    answer = await stats(api, start_time_from=at(DAY1, "02:00"), start_time_to=at(DAY1, "23:59"))
    (group,) = answer["groups"]
    assert group["runs"] == 3
    assert group["first_start"].startswith("2026-03-01T02:00")
    assert answer["filters"]["start_time_from"] == "2026-03-01T02:00:00.000000+00:00"


async def test_huge_window_equals_no_window(api, new_run):
    """A window from year 1 to 9999 is every run, with the rollups' edges handled."""
    await seed(api, new_run, FLEET)
    wide = await stats(
        api,
        group_by="job_type,day",
        start_time_from="0001-01-01T00:00:00Z",
        start_time_to="9999-12-31T23:59:59.999999Z",
    )
    plain = await stats(api, group_by="job_type,day")
    assert wide["groups"] == plain["groups"]


async def test_created_filters_and_status_alias(api, new_run):
    """created_after/before and a status alias filter like the list does."""
    await seed(api, new_run, FLEET)
    answer = await stats(api, status="failed")  # alias of failure
    assert answer["groups"][0]["runs"] == 1
    assert answer["filters"]["status"] == "failure"
    answer = await stats(api, created_after="2000-01-01T00:00:00Z", group_by="status")
    assert sum(group["runs"] for group in answer["groups"]) == 5
    answer = await stats(api, created_before="2000-01-01T00:00:00Z")
    assert answer["groups"] == []


async def test_a_run_changing_status_moves_between_groups(api, new_run):
    """success -> failure, and running -> timeout (as the reaper does), move the run."""
    runs = await seed(
        api,
        new_run,
        [
            {
                "job_type": "a",
                "start_time": at(DAY1, "05:00"),
                "status": "success",
                "duration_ms": 40,
            },
            {"job_type": "a", "start_time": at(DAY1, "06:00")},
        ],
    )
    before = by_key(await stats(api, group_by="status,job_type,day"))
    assert set(before) == {("success", "a", DAY1), ("running", "a", DAY1)}
    reply = await api.patch(f"/api/v1/runs/{runs[0]['event_id']}", json={"status": "failure"})
    assert reply.status == 200
    reply = await api.patch(
        f"/api/v1/runs/{runs[1]['event_id']}", json={"status": "timeout", "duration_ms": 90}
    )
    assert reply.status == 200
    after = by_key(await stats(api, group_by="status,job_type,day"))
    assert set(after) == {("failure", "a", DAY1), ("timeout", "a", DAY1)}
    assert after[("failure", "a", DAY1)]["duration_ms"]["max"] == 40
    assert after[("timeout", "a", DAY1)]["duration_ms"] == {
        "count": 1,
        "p50": 90,
        "p95": 90,
        "max": 90,
    }
    # the same through the hour grouping (read from the runs, not the rollups)
    hours = by_key(await stats(api, group_by="status,hour"))
    assert set(hours) == {
        ("failure", "2026-03-01T05:00:00+00:00"),
        ("timeout", "2026-03-01T06:00:00+00:00"),
    }


async def test_a_changed_job_type_or_start_moves_the_run(api, new_run):
    """A PATCH of job_type or start_time moves the run to its new group."""
    (run,) = await seed(
        api,
        new_run,
        [{"job_type": "a", "start_time": at(DAY1, "05:00"), "status": "success", "duration_ms": 9}],
    )
    reply = await api.patch(
        f"/api/v1/runs/{run['event_id']}", json={"job_type": "z", "start_time": at(DAY2, "07:00")}
    )
    assert reply.status == 200
    groups = by_key(await stats(api, group_by="job_type,day"))
    assert list(groups) == [("z", DAY2)]
    assert groups[("z", DAY2)]["first_start"] == "2026-03-02T07:00:00.000000+00:00"


async def test_deleted_runs_leave_the_stats(api, new_run, make_config):
    """Runs deleted by another writer (a prune, the sqlite3 shell) leave every grouping."""
    await seed(api, new_run, FLEET)
    path = make_config().db_path
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM agent_runs WHERE job_type = 'a' AND status != 'running'")
    groups = by_key(await stats(api, group_by="job_type,day"))
    assert {key: group["runs"] for key, group in groups.items()} == {("a", DAY1): 1, ("b", DAY2): 1}
    assert groups[("a", DAY1)]["by_status"]["running"] == 1
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM agent_runs")
    assert (await stats(api, group_by="job_type,day"))["groups"] == []
    assert (await stats(api))["groups"] == []


async def test_too_many_groups_is_422(api, new_run, monkeypatch):
    """An answer over the group limit is refused with a message, not sent huge."""
    monkeypatch.setattr(stats_storage, "MAX_GROUPS", 2)
    await seed(api, new_run, [{"agent_name": f"agent-{n}"} for n in range(3)])
    reply = await api.get("/api/v1/stats", params={"group_by": "agent_name"})
    assert reply.status == 422
    assert "groups" in reply.body["detail"][0]["msg"]
    assert (await stats(api, group_by="status"))["groups"][0]["runs"] == 3


async def test_stats_are_a_read_protected_like_the_list(make_api):
    """With reads protected, stats need the token as the list does."""
    api = await make_api(
        auth_enabled=True, auth_token="s3cret-token-value", auth_protect_reads=True
    )
    reply = await api.get("/api/v1/stats")
    assert reply.status == 401
    reply = await api.get("/api/v1/stats", headers={"Authorization": "Bearer s3cret-token-value"})
    assert reply.status == 200


async def test_a_run_without_duration_counts_as_a_run_not_a_duration(api, new_run):
    """duration_ms null (stored 0) or absent: counted in runs and statuses, left out of
    the duration figures, which are null when no run has one."""
    await seed(
        api,
        new_run,
        [
            {"status": "success", "duration_ms": None},
            {"status": "failure"},
            {"status": "running", "duration_ms": 500},  # a running run's is not final
        ],
    )
    (group,) = (await stats(api))["groups"]
    assert group["runs"] == 3
    assert group["duration_ms"] == {"count": 0, "p50": None, "p95": None, "max": None}
    reply = await api.patch(f"/api/v1/runs/{new_run()['event_id']}", json={"duration_ms": None})
    assert reply.status == 422  # a stored run's duration can never become null


async def test_the_stale_filter_counts_only_overdue_runs(make_api, new_run):
    """``stale=true`` is one of the list's filters: stats over it count the runs the list
    gives (overdue, still running), never every run (a filter silently dropped)."""
    api = await make_api(reaper_interval_s=3600)
    await seed(
        api,
        new_run,
        [
            {"job_type": "a", "heartbeat_timeout_s": 1},
            {"job_type": "a", "heartbeat_timeout_s": 1, "agent_name": "other"},
            {"job_type": "b", "heartbeat_timeout_s": 1},
            {"job_type": "a", "heartbeat_timeout_s": 3600},
            {"job_type": "a", "status": "success", "duration_ms": 5},
        ],
    )
    await asyncio.sleep(1.1)
    listed = await api.list(stale="true")
    assert len(listed) == 3
    groups = by_key(await stats(api, stale="true", group_by="job_type"))
    assert {key: group["runs"] for key, group in groups.items()} == {("a",): 2, ("b",): 1}
    assert groups[("a",)]["by_status"]["running"] == 2
    answer = await stats(api, stale="true", agent_name="other")
    assert answer["groups"][0]["runs"] == 1
    assert answer["filters"]["stale"] == "true"
    reply = await api.get("/api/v1/stats", params={"stale": "false"})
    assert reply.status == 422, reply.body
