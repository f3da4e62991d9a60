"""GET /api/v1/runs and GET /api/v1/runs/{event_id}: filters, bounds, ordering, paging."""

from __future__ import annotations

import pytest


def ids(runs):
    return [run["event_id"] for run in runs]


async def seed(api, new_run, specs):
    """Create one run per spec (a dict of overrides), in order; return their bodies."""
    runs = [new_run(**spec) for spec in specs]
    reply = await api.post("/api/v1/runs/batch", json=runs)
    assert reply.body["inserted"] == len(runs), reply.body
    return runs


async def test_get_single_run_is_an_object(api, new_run):
    """GET /api/v1/runs/{event_id} answers the run as an object with derived fields."""
    run = new_run()
    await api.create(run)
    reply = await api.get(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 200
    assert isinstance(reply.body, dict)
    assert reply.body["event_id"] == run["event_id"]
    assert reply.body["run_id"] == run["run_id"]
    for key in ("created_at", "updated_at", "commit_url", "repo_url", "status"):
        assert key in reply.body


async def test_get_single_unknown_is_404(api):
    """GET of an unknown event_id is a 404 JSON error."""
    reply = await api.get("/api/v1/runs/does-not-exist")
    assert reply.status == 404
    assert reply.body["error"] == "not_found"


async def test_get_single_overlong_event_id_is_404(api):
    """An event_id longer than any stored one is simply not found."""
    reply = await api.get("/api/v1/runs/" + "x" * 400)
    assert reply.status == 404


async def test_list_returns_array_of_runs_with_same_shape_as_single(api, new_run):
    """The list answers an array whose items equal the single-run objects."""
    runs = await seed(api, new_run, [{}, {}])
    listed = await api.list()
    assert isinstance(listed, list)
    assert sorted(ids(listed)) == sorted(ids(runs))
    for item in listed:
        assert item == await api.run(item["event_id"])


async def test_list_empty_database(api):
    """No runs: an empty array."""
    assert await api.list() == []


async def test_list_orders_by_created_at_desc_as_instants(api, new_run):
    """Ordering is created_at DESC by instant, whatever offset created_at was given in."""
    runs = await seed(
        api,
        new_run,
        [
            {"created_at": "2026-01-12T10:30:00+05:30"},  # 05:00Z
            {"created_at": "2026-01-12T06:00:00Z"},  # 06:00Z
            {"created_at": "2026-01-12T04:00:00-03:00"},  # 07:00Z
            {"created_at": "2026-01-12T04:30:00+00:00"},  # 04:30Z
        ],
    )
    assert ids(await api.list()) == ids([runs[2], runs[1], runs[0], runs[3]])


async def test_list_ties_on_created_at_newest_insert_first(api, new_run):
    """Runs with the same created_at come newest-inserted first (stable order)."""
    same = "2026-01-12T10:00:00Z"
    runs = await seed(api, new_run, [{"created_at": same} for _ in range(4)])
    assert ids(await api.list()) == ids(reversed(runs))


async def test_server_created_at_orders_by_arrival(api, new_run):
    """Without a client created_at, later creates come first."""
    runs = [new_run() for _ in range(3)]
    for run in runs:
        await api.create(run)
    assert ids(await api.list()) == ids(reversed(runs))


@pytest.mark.parametrize("field", ["agent_name", "job_type"])
async def test_exact_match_filters(api, new_run, field):
    """agent_name and job_type filter by exact match (no prefix or case folding)."""
    runs = await seed(
        api, new_run, [{field: "alpha"}, {field: "alpha-2"}, {field: "Alpha"}, {field: "alpha"}]
    )
    assert sorted(ids(await api.list(**{field: "alpha"}))) == sorted(ids([runs[0], runs[3]]))
    assert await api.list(**{field: "alp"}) == []


async def test_filters_combine_with_and(api, new_run):
    """Several filters together select runs matching all of them."""
    runs = await seed(
        api,
        new_run,
        [
            {"agent_name": "a", "job_type": "x", "status": "success"},
            {"agent_name": "a", "job_type": "y", "status": "success"},
            {"agent_name": "b", "job_type": "x", "status": "success"},
            {"agent_name": "a", "job_type": "x", "status": "failure"},
        ],
    )
    got = await api.list(agent_name="a", job_type="x", status="success")
    assert ids(got) == [runs[0]["event_id"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("success", "success"),
        ("completed", "success"),
        ("succeeded", "success"),
        ("failed", "failure"),
        ("failure", "failure"),
        ("running", "running"),
        ("cancelled", "cancelled"),
    ],
)
async def test_status_filter_accepts_canonical_and_aliases(api, new_run, query, expected):
    """The status filter takes canonical values and aliases (mapped to canonical)."""
    statuses = ["running", "success", "failure", "partial", "timeout", "cancelled"]
    runs = await seed(api, new_run, [{"status": status} for status in statuses])
    got = await api.list(status=query)
    assert ids(got) == [runs[statuses.index(expected)]["event_id"]]


async def test_created_before_and_after_are_exclusive(api, new_run):
    """created_before is <, created_after is > : a run exactly at the bound is excluded."""
    runs = await seed(
        api,
        new_run,
        [
            {"created_at": "2026-01-12T09:00:00Z"},
            {"created_at": "2026-01-12T10:00:00Z"},
            {"created_at": "2026-01-12T11:00:00Z"},
        ],
    )
    assert ids(await api.list(created_before="2026-01-12T10:00:00Z")) == [runs[0]["event_id"]]
    assert ids(await api.list(created_after="2026-01-12T10:00:00Z")) == [runs[2]["event_id"]]
    between = await api.list(
        created_after="2026-01-12T09:00:00Z", created_before="2026-01-12T11:00:00Z"
    )
    assert ids(between) == [runs[1]["event_id"]]


async def test_start_time_from_and_to_are_inclusive(api, new_run):
    """start_time_from is >=, start_time_to is <= : runs exactly at the bounds are included."""
    runs = await seed(
        api,
        new_run,
        [
            {"start_time": "2026-01-12T09:00:00Z"},
            {"start_time": "2026-01-12T10:00:00Z"},
            {"start_time": "2026-01-12T11:00:00Z"},
        ],
    )
    got = await api.list(start_time_from="2026-01-12T10:00:00Z")
    assert sorted(ids(got)) == sorted(ids(runs[1:]))
    got = await api.list(start_time_to="2026-01-12T10:00:00Z")
    assert sorted(ids(got)) == sorted(ids(runs[:2]))
    got = await api.list(
        start_time_from="2026-01-12T10:00:00Z", start_time_to="2026-01-12T10:00:00Z"
    )
    assert ids(got) == [runs[1]["event_id"]]


@pytest.mark.parametrize(
    "spelling",
    ["2026-01-12T10:00:00Z", "2026-01-12T10:00:00+00:00", "2026-01-12T15:30:00+05:30"],
)
async def test_bounds_compare_instants_whatever_the_offset(api, new_run, spelling):
    """Z, +00:00 and +05:30 spellings of one instant give the same filter results."""
    runs = await seed(
        api,
        new_run,
        [
            {"start_time": "2026-01-12T09:59:59.999999Z", "created_at": "2026-01-12T09:59:59Z"},
            {"start_time": "2026-01-12T15:30:00+05:30", "created_at": "2026-01-12T10:00:00Z"},
            {"start_time": "2026-01-12T05:00:01-05:00", "created_at": "2026-01-12T10:00:01Z"},
        ],
    )
    assert sorted(ids(await api.list(start_time_from=spelling))) == sorted(ids(runs[1:]))
    assert sorted(ids(await api.list(start_time_to=spelling))) == sorted(ids(runs[:2]))
    assert ids(await api.list(created_before=spelling)) == [runs[0]["event_id"]]
    assert ids(await api.list(created_after=spelling)) == [runs[2]["event_id"]]


async def test_limit_default_is_100(api, new_run):
    """Without limit, at most 100 runs are returned."""
    await seed(api, new_run, [{} for _ in range(105)])
    assert len(await api.list()) == 100


async def test_limit_and_offset_page_through_in_order(api, new_run):
    """limit/offset pages are consecutive slices of the full created_at DESC order."""
    runs = await seed(
        api, new_run, [{"created_at": f"2026-01-12T10:00:{s:02d}Z"} for s in range(7)]
    )
    expected = ids(reversed(runs))
    pages = []
    for offset in range(0, 7, 3):
        pages += ids(await api.list(limit=3, offset=offset))
    assert pages == expected
    assert ids(await api.list(limit=1)) == expected[:1]
    assert await api.list(offset=7) == []
    assert await api.list(offset=10_000) == []  # the documented bound is accepted


async def test_limit_1000_is_accepted(api, new_run):
    """limit=1000 is the documented maximum and is valid."""
    await seed(api, new_run, [{}])
    assert len(await api.list(limit=1000)) == 1


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "0"),
        ("limit", "1001"),
        ("limit", "-1"),
        ("limit", "abc"),
        ("limit", "1.5"),
        ("limit", "99999999999999999999999"),
        ("offset", "-1"),
        ("offset", "x"),
        ("offset", "1e3"),
        ("offset", str(10**13)),
        ("offset", "10001"),
        ("status", "failedd"),
        ("status", "FAILURE"),
        ("created_before", "2026-01-12 10:00:00"),
        ("created_before", "2026-01-12T10:00:00"),
        ("created_after", "not-a-date"),
        ("start_time_from", "2026-01-12"),
        ("start_time_to", "2026-01-12T10:00:00 05:30"),
        ("start_time_to", "9999-12-31T23:59:59-01:00"),
    ],
)
async def test_bad_query_values_are_422_naming_the_parameter(api, param, value):
    """Bad limit, offset, status or timestamps are a 422 whose loc names the parameter."""
    reply = await api.get("/api/v1/runs", params={param: value})
    assert reply.status == 422, reply.body
    assert reply.body["detail"][0]["loc"] == ["query", param]


async def test_empty_parameter_values_mean_no_filter(api, new_run):
    """?status=&agent_name=&limit= (empty values) filter nothing, as the reference does."""
    await seed(api, new_run, [{"status": "success"}, {"status": "failure"}])
    params = dict.fromkeys(
        ("agent_name", "job_type", "status", "created_before", "start_time_to", "limit", "offset"),
        "",
    )
    reply = await api.get("/api/v1/runs", params=params)
    assert reply.status == 200
    assert len(reply.body) == 2


async def test_unknown_query_parameters_are_ignored(api, new_run):
    """Parameters the guide does not document do not break a query."""
    await seed(api, new_run, [{}])
    reply = await api.get("/api/v1/runs", params={"sort": "asc", "foo": "bar"})
    assert reply.status == 200
    assert len(reply.body) == 1


async def test_filter_values_are_data_not_sql(api, new_run):
    """Quote characters and SQL-ish text in filters are matched literally."""
    runs = await seed(api, new_run, [{"agent_name": "o'brien"}, {"agent_name": "x"}])
    assert ids(await api.list(agent_name="o'brien")) == [runs[0]["event_id"]]
    assert await api.list(agent_name="x' OR '1'='1") == []
    assert await api.list(job_type="%") == []


async def test_head_on_list_is_allowed(api):
    """HEAD on a GET route answers without a body (aiohttp's automatic HEAD)."""
    reply = await api.request("HEAD", "/api/v1/runs")
    assert reply.status == 200
