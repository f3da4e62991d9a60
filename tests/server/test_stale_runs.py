"""Stale runs (issue 11, the contract in stale_protocol): last_seen_at, the heartbeat,
the upsert items' seen_at / metrics_patch / heartbeat, sidecar presence, the reaper's
rule, late updates, ``stale=true`` and the reaped counts.

The reaper's background task is given an hour between passes here; each test runs a
pass itself (``reap_pass``, the task's own function), so what is reaped when is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from server.contract.codec import dumps
from server.contract.models import RunQuery
from server.contract.run_record import with_urls
from server.http.runs import DATABASE
from server.reaper import reap_pass
from server.storage.connection import open_reader
from server.storage.database import Database
from server.storage.runs import query_page_json, query_runs
from server.storage.stale import REAP_BATCH, overdue_ids_sql
from tests.conftest import Api
from tests.server.test_run_json_stored import assert_consistent
from tests.stored_rows import fetch, is_postgres

UPSERT = "/api/v1/runs/batch?mode=upsert"
BATCH = "/api/v1/runs/batch"
MakeApi = Callable[..., Awaitable[Api]]


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


async def quiet_api(make_api: MakeApi, **overrides: Any) -> Api:
    """The app with the background reaper idle (a pass at start, then an hour)."""
    api = await make_api(reaper_interval_s=3600, **overrides)
    await api.get("/health")
    await asyncio.sleep(0.05)  # the start-up pass, over an empty database
    return api


def database(api: Api) -> Database:
    return api.client.app[DATABASE]


async def row(api: Api, event_id: str, *columns: str) -> tuple[Any, ...]:
    """Stored columns of a run, read on a connection of its own (either backend)."""
    found = await fetch(
        api, f"SELECT {', '.join(columns)} FROM agent_runs WHERE event_id = ?", event_id
    )
    assert len(found) == 1, event_id
    return found[0]


def assert_run_json_exact(api: Api) -> None:
    """SQLite keeps each run's JSON object stored (run_json, migration 5): it must equal
    the Python rendering after every write. PostgreSQL stores none (it renders the
    columns when read), so there is nothing to compare there."""
    if is_postgres(api):
        return
    conn = open_reader(database(api).settings.path, busy_timeout_ms=2000)
    try:
        assert_consistent(conn, all_exact=True)
    finally:
        conn.close()


def heartbeat_path(event_id: str) -> str:
    return f"/api/v1/runs/{event_id}/heartbeat"


async def overdue_sidecar_run(
    api: Api, new_run: Callable[..., dict[str, Any]], sidecar: str, queued_since: str | None
) -> dict[str, Any]:
    """A run its agent last wrote an hour ago (allowance 600 s), delivered now by a sidecar
    that says its spool still holds operations since ``queued_since``."""
    run = new_run(heartbeat_timeout_s=600)
    headers = {"X-Spoold-Id": sidecar, "X-Spoold-Queued-Since": queued_since or ""}
    reply = await api.post(
        UPSERT,
        json=[{"event_id": run["event_id"], "create": run, "seen_at": ago(3600)}],
        headers=headers,
    )
    assert reply.status == 200, reply.body
    assert reply.body["inserted"] == 1, reply.body
    return run


# ---- last_seen_at ----------------------------------------------------------------------


async def test_every_write_refreshes_last_seen_at_and_it_is_answered(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    """Set on create, moved forward by PATCH, associate-commit, a heartbeat and an upsert
    item; answered by GET and the list, bytes identical to the Python rendering."""
    run = new_run(heartbeat_timeout_s=90)
    await api.create(run)
    event_id = run["event_id"]
    seen = [(await api.run(event_id))["last_seen_at"]]
    assert (await api.run(event_id))["heartbeat_timeout_s"] == 90
    writes = [
        lambda: api.patch(f"/api/v1/runs/{event_id}", json={"items_succeeded": 1}),
        lambda: api.post(
            f"/api/v1/runs/{event_id}/associate-commit",
            json={"commit_hash": "abcdef1", "commit_source": "ci"},
        ),
        lambda: api.post(heartbeat_path(event_id)),
        lambda: api.post(UPSERT, json=[{"event_id": event_id, "heartbeat": True}]),
        lambda: api.post(UPSERT, json=[{"event_id": event_id, "update": {"items_failed": 2}}]),
    ]
    for write in writes:
        await asyncio.sleep(0.002)
        reply = await write()
        assert reply.status in (200, 204), reply.body
        seen.append((await api.run(event_id))["last_seen_at"])
    assert seen == sorted(seen), seen
    assert len(set(seen)) == len(seen), seen
    listed = await api.list(agent_name=run["agent_name"])
    assert [r["last_seen_at"] for r in listed] == [seen[-1]]
    assert_run_json_exact(api)


@pytest.mark.parametrize("value", [0, -1, 2_592_001, "600", 1.5, True, [600], {"s": 1}])
async def test_a_bad_heartbeat_timeout_is_refused_everywhere(
    api: Api, new_run: Callable[..., dict[str, Any]], value: Any
) -> None:
    """422 on create and PATCH; an item error in a batch and an upsert; nothing stored."""
    bad = new_run(heartbeat_timeout_s=value)
    reply = await api.post("/api/v1/runs", json=bad)
    assert reply.status == 422
    assert "heartbeat_timeout_s" in orjson.dumps(reply.body).decode()
    run = new_run()
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json={"heartbeat_timeout_s": value})
    assert reply.status == 422
    assert await api.run(run["event_id"]) == before
    reply = await api.post(BATCH, json=[bad])
    assert (reply.body["inserted"], len(reply.body["errors"])) == (0, 1)
    reply = await api.post(
        UPSERT,
        json=[
            {"event_id": bad["event_id"], "create": bad},
            {"event_id": run["event_id"], "update": {"heartbeat_timeout_s": value}},
        ],
    )
    assert [error["index"] for error in reply.body["errors"]] == [0, 1]
    assert (await api.get(f"/api/v1/runs/{bad['event_id']}")).status == 404
    assert await api.run(run["event_id"]) == before


async def test_heartbeat_timeout_bounds_and_clearing(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    """1 and 30 days are accepted; PATCH null goes back to the defaults."""
    low, high = new_run(heartbeat_timeout_s=1), new_run(heartbeat_timeout_s=2_592_000)
    await api.create(low)
    await api.create(high)
    assert (await api.run(high["event_id"]))["heartbeat_timeout_s"] == 2_592_000
    reply = await api.patch(f"/api/v1/runs/{low['event_id']}", json={"heartbeat_timeout_s": None})
    assert reply.status == 200
    assert (await api.run(low["event_id"]))["heartbeat_timeout_s"] is None


# ---- the heartbeat endpoint -----------------------------------------------------------


async def test_a_bare_heartbeat_changes_nothing_but_last_seen_at(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run = new_run(metrics_json={"a": 1})
    await api.create(run)
    before = await api.run(run["event_id"])
    await asyncio.sleep(0.002)
    async with api.client.post(heartbeat_path(run["event_id"])) as response:  # no body at all
        assert response.status == 204
        assert await response.read() == b""
    after = await api.run(run["event_id"])
    assert after.pop("last_seen_at") > before.pop("last_seen_at")
    assert after == before  # updated_at too: no data changed


async def test_heartbeat_progress_is_an_rfc7396_merge_patch(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run = new_run(metrics_json={"a": 1, "b": {"c": 2, "keep": True}, "list": [1, 2]})
    bare = new_run()  # metrics_json null: patched from {}
    await api.create(run)
    await api.create(bare)
    before = await api.run(run["event_id"])
    progress = {"b": {"c": None, "d": 3}, "list": [9], "new": {"x": None}, "a": None}
    reply = await api.post(heartbeat_path(run["event_id"]), json={"progress": progress})
    assert reply.status == 204
    after = await api.run(run["event_id"])
    assert after["metrics_json"] == {"b": {"keep": True, "d": 3}, "list": [9], "new": {}}
    assert after["updated_at"] > before["updated_at"]  # data changed: updated_at moves
    reply = await api.post(heartbeat_path(bare["event_id"]), json={"progress": {"p": 0.5}})
    assert reply.status == 204
    assert (await api.run(bare["event_id"]))["metrics_json"] == {"p": 0.5}
    reply = await api.post(heartbeat_path(bare["event_id"]), json={"progress": None})
    assert reply.status == 204
    assert (await api.run(bare["event_id"]))["metrics_json"] == {"p": 0.5}


async def test_a_heartbeat_to_an_unknown_run_is_404(api: Api) -> None:
    reply = await api.post(heartbeat_path("no-such-run"), json={"progress": {"a": 1}})
    assert reply.status == 404
    assert reply.body["error"] == "not_found"
    assert "no-such-run" in reply.body["detail"]


@pytest.mark.parametrize("status", ["success", "failure", "partial", "timeout", "cancelled"])
async def test_a_heartbeat_to_a_finished_run_changes_nothing(
    api: Api, new_run: Callable[..., dict[str, Any]], status: str
) -> None:
    run = new_run(status=status, metrics_json={"a": 1})
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.post(heartbeat_path(run["event_id"]), json={"progress": {"a": 2}})
    assert reply.status == 204
    assert await api.run(run["event_id"]) == before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[]", 422),
        (b'"progress"', 422),
        (b"null", 422),
        (b'{"progress": [1]}', 422),
        (b'{"progress": "{}"}', 422),
        (b'{"progress": 3}', 422),
        (b'{"progress": {}, "status": "success"}', 422),
        (b'{"progress": {', 400),
        (b'{"progress": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", 400),
        (b'{"progress": {"big": "' + b"x" * 3000 + b'"}}', 413),
    ],
)
async def test_a_bad_heartbeat_body_is_refused_and_changes_nothing(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], body: bytes, status: int
) -> None:
    api = await make_api(max_body_bytes=2048)
    run = new_run(metrics_json={"a": 1})
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.post(heartbeat_path(run["event_id"]), data=body)
    assert reply.status == status, reply.body
    assert reply.body["error"]
    assert await api.run(run["event_id"]) == before


async def test_progress_that_would_grow_metrics_past_the_body_limit_is_413(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    """Each heartbeat fits the body limit, but their merge must not grow without bound."""
    api = await make_api(max_body_bytes=4096)
    run = new_run()
    await api.create(run)
    answers = []
    for i in range(10):
        reply = await api.post(
            heartbeat_path(run["event_id"]), json={"progress": {f"k{i}": "v" * 1000}}
        )
        answers.append(reply.status)
        if reply.status != 204:
            assert reply.body["error"] == "payload_too_large"
            break
    assert answers[:3] == [204] * 3, answers
    assert answers[-1] == 413, answers
    stored = (await api.run(run["event_id"]))["metrics_json"]
    assert len(orjson.dumps(stored)) <= 4096
    assert len(stored) == len(answers) - 1  # the refused one changed nothing


# ---- upsert items: seen_at, metrics_patch, heartbeat --------------------------------------


async def test_seen_at_in_the_future_is_clamped_to_the_server_clock(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    """A fast agent clock must not keep a run alive: never past the server's now."""
    run = new_run()
    future = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    reply = await api.post(
        UPSERT, json=[{"event_id": run["event_id"], "create": run, "seen_at": future}]
    )
    assert reply.body["inserted"] == 1
    after = datetime.now(UTC)
    assert parse((await api.run(run["event_id"]))["last_seen_at"]) <= after
    reply = await api.post(
        UPSERT, json=[{"event_id": run["event_id"], "heartbeat": True, "seen_at": future}]
    )
    assert reply.body["errors"] == []
    assert parse((await api.run(run["event_id"]))["last_seen_at"]) <= datetime.now(UTC)


async def test_seen_at_never_moves_last_seen_at_backwards(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run = new_run()
    await api.create(run)
    before = (await api.run(run["event_id"]))["last_seen_at"]
    for seen_at in (ago(3600), "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z"):
        reply = await api.post(
            UPSERT,
            json=[{"event_id": run["event_id"], "update": {"items_failed": 1}, "seen_at": seen_at}],
        )
        assert reply.body["errors"] == []
        assert (await api.run(run["event_id"]))["last_seen_at"] == before


async def test_seen_at_from_the_past_is_the_agents_time_on_a_new_run(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    """A run first delivered after an outage is judged on when its agent wrote it."""
    run = new_run()
    seen_at = ago(7200)
    await api.post(UPSERT, json=[{"event_id": run["event_id"], "create": run, "seen_at": seen_at}])
    assert parse((await api.run(run["event_id"]))["last_seen_at"]) == parse(seen_at)


@pytest.mark.parametrize(
    "seen_at", ["yesterday", "2026-01-12T10:30:00", "", 1700000000, None, "2026-13-01T00:00:00Z"]
)
async def test_a_malformed_seen_at_is_an_item_error_and_applies_nothing(
    api: Api, new_run: Callable[..., dict[str, Any]], seen_at: Any
) -> None:
    run, other = new_run(), new_run()
    await api.create(run)
    before = await api.run(run["event_id"])
    item: dict[str, Any] = {"event_id": run["event_id"], "update": {"items_failed": 5}}
    item["seen_at"] = seen_at
    reply = await api.post(UPSERT, json=[item, {"event_id": other["event_id"], "create": other}])
    if seen_at is None:  # null is "absent": the server's clock
        assert reply.body["errors"] == []
        return
    assert [error["index"] for error in reply.body["errors"]] == [0]
    assert "seen_at" in reply.body["errors"][0]["message"]
    assert reply.body["inserted"] == 1  # the other item is applied
    assert await api.run(run["event_id"]) == before


async def test_upsert_heartbeat_and_metrics_patch_items(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run = new_run(metrics_json={"a": 1, "b": 2})
    unknown = new_run()
    await api.create(run)
    reply = await api.post(
        UPSERT,
        json=[
            {"event_id": run["event_id"], "metrics_patch": {"b": None, "c": 3}},
            {"event_id": unknown["event_id"], "heartbeat": True},
            {"event_id": unknown["event_id"], "metrics_patch": {"x": 1}},
            {"event_id": run["event_id"]},
            {"event_id": run["event_id"], "heartbeat": False},
        ],
    )
    assert reply.body["updated"] == 1
    errors = {error["index"]: error["message"] for error in reply.body["errors"]}
    assert set(errors) == {1, 2, 3, 4}
    assert "Run not found" in errors[1]
    assert "Run not found" in errors[2]
    assert "heartbeat" in errors[3]
    assert (await api.run(run["event_id"]))["metrics_json"] == {"a": 1, "c": 3}


async def test_a_metrics_patch_folded_with_the_final_update_is_kept_a_late_one_is_not(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    """The patch applies after the item's update (even one that finishes the run); a patch
    arriving for a run already finished is a late heartbeat: nothing changes."""
    run = new_run(metrics_json={"a": 1})
    await api.create(run)
    reply = await api.post(
        UPSERT,
        json=[
            {
                "event_id": run["event_id"],
                "update": {"status": "success", "metrics_json": {"final": True}},
                "metrics_patch": {"pct": 100},
            }
        ],
    )
    assert reply.body["updated"] == 1
    assert (await api.run(run["event_id"]))["metrics_json"] == {"final": True, "pct": 100}
    before = await api.run(run["event_id"])
    reply = await api.post(UPSERT, json=[{"event_id": run["event_id"], "metrics_patch": {"p": 1}}])
    assert (reply.body["updated"], reply.body["duplicates"]) == (0, 1)
    after = await api.run(run["event_id"])
    assert after.pop("last_seen_at") >= before.pop("last_seen_at")
    assert after == before


# ---- sidecar presence headers --------------------------------------------------------------


async def sidecars(api: Api) -> list[tuple[Any, ...]]:
    return await fetch(
        api, "SELECT sidecar_id, last_contact_at, queued_since FROM sidecars ORDER BY sidecar_id"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Spoold-Id": ""},
        {"X-Spoold-Id": " "},
        {"X-Spoold-Id": "a b"},
        {"X-Spoold-Id": "x" * 65},
        {"X-Spoold-Id": "../etc"},
        {"X-Spoold-Id": "caf\u00e9".encode().decode("latin-1")},
        {"X-Spoold-Id": "id;DROP TABLE sidecars"},
        {"X-Spoold-Id": "ok", "X-Spoold-Queued-Since": "yesterday"},
        {"X-Spoold-Id": "ok", "X-Spoold-Queued-Since": "2026-01-12T10:30:00"},
        {"X-Spoold-Id": "ok", "X-Spoold-Queued-Since": "9" * 100},
    ],
)
@pytest.mark.parametrize("mode", ["upsert", "insert"])
async def test_hostile_presence_headers_are_400_and_nothing_is_applied(
    api: Api, new_run: Callable[..., dict[str, Any]], headers: dict[str, str], mode: str
) -> None:
    run = new_run()
    body = [{"event_id": run["event_id"], "create": run}] if mode == "upsert" else [run]
    reply = await api.post(f"{BATCH}?mode={mode}", json=body, headers=headers)
    assert reply.status == 400, reply.body
    assert reply.body["error"] == "bad_request"
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 404
    assert await sidecars(api) == []


async def test_a_repeated_sidecar_id_header_is_400(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run = new_run()
    async with api.client.post(
        UPSERT,
        data=orjson.dumps([{"event_id": run["event_id"], "create": run}]),
        headers=[("X-Spoold-Id", "a"), ("X-Spoold-Id", "b")],
    ) as response:
        assert response.status == 400
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 404
    assert await sidecars(api) == []


async def test_presence_is_recorded_with_the_batch_and_runs_carry_the_sidecar(
    api: Api, new_run: Callable[..., dict[str, Any]]
) -> None:
    run, inserted = new_run(), new_run()
    since = "2026-01-12T10:30:00Z"
    reply = await api.post(
        UPSERT,
        json=[{"event_id": run["event_id"], "create": run}],
        headers={"X-Spoold-Id": "side-1", "X-Spoold-Queued-Since": since},
    )
    assert reply.status == 200
    ((sidecar_id, contact, queued),) = await sidecars(api)
    assert (sidecar_id, queued) == ("side-1", "2026-01-12T10:30:00.000000+00:00")
    assert await row(api, run["event_id"], "sidecar_id") == ("side-1",)
    assert "sidecar_id" not in await api.run(run["event_id"])  # bookkeeping, not answered
    # a presence batch: `[]`, an empty queue
    await asyncio.sleep(0.002)
    reply = await api.post(UPSERT, json=[], headers={"X-Spoold-Id": "side-1"})
    assert reply.body == {"inserted": 0, "updated": 0, "duplicates": 0, "errors": [], "total": 0}
    ((_, later, queued),) = await sidecars(api)
    assert later > contact
    assert queued is None
    # insert mode too
    reply = await api.post(BATCH, json=[inserted], headers={"X-Spoold-Id": "side-2"})
    assert reply.body["inserted"] == 1
    assert await row(api, inserted["event_id"], "sidecar_id") == ("side-2",)
    # a direct write: the run is no longer the sidecar's
    await api.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 1})
    assert await row(api, run["event_id"], "sidecar_id") == (None,)


async def test_presence_of_a_batch_whose_items_are_all_invalid_is_still_recorded(
    api: Api,
) -> None:
    reply = await api.post(UPSERT, json=[{"event_id": "x"}], headers={"X-Spoold-Id": "s"})
    assert reply.status == 200
    assert len(reply.body["errors"]) == 1
    assert [s[0] for s in await sidecars(api)] == ["s"]


# ---- the reaper's rule -----------------------------------------------------------------


async def test_an_overdue_direct_run_is_reaped_with_its_reason(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)
    run = new_run(heartbeat_timeout_s=1, start_time=ago(10), context_json={"host": "h"})
    fresh = new_run(heartbeat_timeout_s=600)
    done = new_run(heartbeat_timeout_s=1, status="success")
    for each in (run, fresh, done):
        await api.create(each)
    assert await reap_pass(database(api)) == 0  # not yet overdue
    await asyncio.sleep(1.1)
    assert await reap_pass(database(api)) == 1
    reaped = await api.run(run["event_id"])
    assert reaped["status"] == "timeout"
    assert reaped["end_time"] == reaped["last_seen_at"]
    expected_ms = (parse(reaped["end_time"]) - parse(reaped["start_time"])) / timedelta(
        milliseconds=1
    )
    assert abs(reaped["duration_ms"] - expected_ms) <= 1
    assert reaped["error_summary"] in ("no update for 1 s", "no update for 2 s")
    assert reaped["context_json"]["host"] == "h"
    (reaped_at,) = await row(api, run["event_id"], "reaped_at")
    assert reaped["context_json"]["reaped_at"] == reaped_at == reaped["updated_at"]
    assert (await api.run(fresh["event_id"]))["status"] == "running"
    assert (await api.run(done["event_id"]))["status"] == "success"
    assert_run_json_exact(api)  # the reaper's writes keep SQLite's run_json exact


async def test_the_allowance_is_the_runs_own_else_its_job_types_else_the_default(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(
        make_api,
        stale_after_s=0,
        stale_after_by_job={"crawl": 1, "forever": 0, "slow": 3600},
    )

    async def make(job: str, allowance: int | None) -> str:
        run = new_run(job_type=job, heartbeat_timeout_s=allowance)
        await api.create(run)
        return str(run["event_id"])

    cases = {
        await make("crawl", None): "timeout",  # the job type's 1 s
        await make("crawl", 3600): "running",  # its own wins over the job type's
        await make("slow", 1): "timeout",  # its own, shorter, too
        await make("forever", None): "running",  # job type 0: never
        await make("other", None): "running",  # the default is 0: never
        await make("other", 1): "timeout",  # ... but its own allowance still applies
    }
    await asyncio.sleep(1.1)
    assert await reap_pass(database(api)) == 3
    for event_id, status in cases.items():
        assert (await api.run(event_id))["status"] == status, event_id


async def test_a_heartbeat_keeps_a_run_from_the_reaper(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)
    run = new_run(heartbeat_timeout_s=1)
    await api.create(run)
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert (await api.post(heartbeat_path(run["event_id"]))).status == 204
        assert await reap_pass(database(api)) == 0
    assert (await api.run(run["event_id"]))["status"] == "running"


async def test_a_run_whose_sidecar_is_in_an_outage_is_not_reaped_until_it_delivers(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    """Overdue on agent time, but its sidecar still queues operations from before the
    deadline: it waits. Once the sidecar says its queue is empty (or starts after the
    deadline), it is reaped."""
    api = await quiet_api(make_api)
    run = await overdue_sidecar_run(api, new_run, "side-a", queued_since=ago(3500))
    assert await reap_pass(database(api)) == 0
    stale = await api.list(stale="true")
    assert [r["event_id"] for r in stale] == [run["event_id"]]  # overdue, held back
    # still queued from before the deadline (seen 3600 s ago + 600 s allowance): waits
    await api.post(
        UPSERT, json=[], headers={"X-Spoold-Id": "side-a", "X-Spoold-Queued-Since": ago(3100)}
    )
    assert await reap_pass(database(api)) == 0
    # the queue now starts after the deadline: everything before it has arrived
    await api.post(
        UPSERT, json=[], headers={"X-Spoold-Id": "side-a", "X-Spoold-Queued-Since": ago(60)}
    )
    assert await reap_pass(database(api)) == 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"


async def test_an_empty_queue_after_an_outage_lets_the_reaper_judge(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)
    run = await overdue_sidecar_run(api, new_run, "side-b", queued_since=ago(3500))
    assert await reap_pass(database(api)) == 0
    await api.post(UPSERT, json=[], headers={"X-Spoold-Id": "side-b"})
    assert await reap_pass(database(api)) == 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"


async def test_a_silent_sidecar_holds_its_runs_until_it_is_lost(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    """Silent for longer than TELEMETRY_SIDECAR_PRESENCE_S: it may be queueing what the
    agent wrote (an outage), so its runs wait; silent past TELEMETRY_SIDECAR_LOST_S: the
    host is gone, and they are reaped."""
    api = await quiet_api(make_api, sidecar_presence_s=0.3, sidecar_lost_s=1.5)
    run = await overdue_sidecar_run(api, new_run, "side-c", queued_since=None)
    await asyncio.sleep(0.5)  # no longer present, not yet lost
    assert await reap_pass(database(api)) == 0
    assert (await api.run(run["event_id"]))["status"] == "running"
    await asyncio.sleep(1.2)
    assert await reap_pass(database(api)) == 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"


async def test_a_present_sidecar_with_an_empty_queue_does_not_hold_its_runs(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)
    run = await overdue_sidecar_run(api, new_run, "side-d", queued_since=None)
    assert await reap_pass(database(api)) == 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"


# ---- late updates ---------------------------------------------------------------------


async def reaped_run(api: Api, new_run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    run = new_run(heartbeat_timeout_s=1)
    await api.post(UPSERT, json=[{"event_id": run["event_id"], "create": run, "seen_at": ago(5)}])
    assert await reap_pass(database(api)) >= 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"
    return run


@pytest.mark.parametrize("via", ["patch", "upsert"])
async def test_a_late_terminal_status_replaces_the_reapers_timeout(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], via: str
) -> None:
    api = await quiet_api(make_api)
    run = await reaped_run(api, new_run)
    final = {"status": "success", "end_time": ago(0), "items_succeeded": 9}
    if via == "patch":
        reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=final)
    else:
        reply = await api.post(UPSERT, json=[{"event_id": run["event_id"], "update": final}])
    assert reply.status == 200, reply.body
    after = await api.run(run["event_id"])
    assert (after["status"], after["items_succeeded"]) == ("success", 9)
    assert after["error_summary"] is None  # the reaper's reason went with its status
    assert "reaped_at" in after["context_json"]  # the record that it was reaped stays
    assert await row(api, run["event_id"], "reaped_at") == (None,)
    metrics = await api.get("/metrics")
    assert metrics.body["stale"] == {"reaped_runs": 0, "reaped_since_start": 1}


@pytest.mark.parametrize("via", ["patch", "upsert"])
async def test_the_agents_own_late_timeout_replaces_the_reapers(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], via: str
) -> None:
    """An agent that reports ``timeout`` itself, after the reaper, is the agent's word:
    the run is no longer counted as reaped, PATCH and upsert alike."""
    api = await quiet_api(make_api)
    run = await reaped_run(api, new_run)
    final = {"status": "timeout", "error_summary": "job limit hit"}
    if via == "patch":
        reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=final)
    else:
        reply = await api.post(UPSERT, json=[{"event_id": run["event_id"], "update": final}])
    assert reply.status == 200, reply.body
    after = await api.run(run["event_id"])
    assert (after["status"], after["error_summary"]) == ("timeout", "job limit hit")
    assert await row(api, run["event_id"], "reaped_at") == (None,)
    metrics = await api.get("/metrics")
    assert metrics.body["stale"] == {"reaped_runs": 0, "reaped_since_start": 1}


@pytest.mark.parametrize("via", ["patch", "upsert"])
async def test_a_late_running_never_revives_a_reaped_run(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], via: str
) -> None:
    api = await quiet_api(make_api)
    run = await reaped_run(api, new_run)
    late = {"status": "running", "items_succeeded": 4}
    if via == "patch":
        reply = await api.patch(f"/api/v1/runs/{run['event_id']}", json=late)
    else:
        reply = await api.post(UPSERT, json=[{"event_id": run["event_id"], "update": late}])
    assert reply.status == 200, reply.body
    after = await api.run(run["event_id"])
    assert (after["status"], after["items_succeeded"]) == ("timeout", 4)
    assert (await row(api, run["event_id"], "reaped_at"))[0] is not None
    assert (await api.post(heartbeat_path(run["event_id"]))).status == 204
    assert (await api.run(run["event_id"]))["status"] == "timeout"


async def test_a_terminal_patch_racing_the_reaper_always_wins(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    """The reaper judges and marks inside the writer's transaction: whichever commits
    first, the agent's terminal status is what stays, and the counts agree."""
    api = await quiet_api(make_api)
    made = [new_run(heartbeat_timeout_s=1) for _ in range(60)]
    await api.post(
        UPSERT, json=[{"event_id": r["event_id"], "create": r, "seen_at": ago(5)} for r in made]
    )
    patches = [api.patch(f"/api/v1/runs/{r['event_id']}", json={"status": "failure"}) for r in made]
    results = await asyncio.gather(reap_pass(database(api)), *patches)
    assert all(reply.status == 200 for reply in results[1:])
    for r in made:
        assert (await api.run(r["event_id"]))["status"] == "failure"
        assert await row(api, r["event_id"], "reaped_at") == (None,)
    stale = (await api.get("/metrics")).body["stale"]
    assert stale["reaped_runs"] == 0
    assert stale["reaped_since_start"] == results[0]


# ---- batches, cost, counts ---------------------------------------------------------------


async def test_many_overdue_runs_are_reaped_in_bounded_batches(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await quiet_api(make_api, batch_max_items=5000)
    db = database(api)
    total = 2 * REAP_BATCH + 37
    made = [new_run(heartbeat_timeout_s=1) for _ in range(total)]
    await api.post(
        UPSERT, json=[{"event_id": r["event_id"], "create": r, "seen_at": ago(5)} for r in made]
    )
    batches: list[int] = []
    real = db.reap

    async def spy(limit: int) -> int:
        reaped = await real(limit)
        batches.append(reaped)
        return reaped

    monkeypatch.setattr(db, "reap", spy)
    assert await reap_pass(db) == total
    assert batches == [REAP_BATCH, REAP_BATCH, 37]
    assert (await api.get("/metrics")).body["stale"]["reaped_runs"] == total


async def test_a_pass_with_nothing_stale_never_reaches_the_writer(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing due: the pass is one read, never a write (on SQLite, not one operation of
    its writer thread; on either backend, no reap batch)."""
    api = await quiet_api(make_api)
    for _ in range(3):
        await api.create(new_run(heartbeat_timeout_s=600))
    await api.create(new_run(status="success"))
    held = await overdue_sidecar_run(api, new_run, "side-e", queued_since=ago(3500))
    db = database(api)
    batches: list[int] = []
    real = db.reap

    async def spy(limit: int) -> int:
        batches.append(limit)
        return await real(limit)

    monkeypatch.setattr(db, "reap", spy)
    operations = None if is_postgres(api) else db.writer.stats.operations
    for _ in range(5):
        assert await reap_pass(db) == 0
    assert batches == []
    if operations is not None:
        assert db.writer.stats.operations == operations
    assert (await api.run(held["event_id"]))["status"] == "running"


async def test_reaped_counts_in_metrics_and_prometheus_and_after_a_restart(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)
    for _ in range(3):
        await reaped_run(api, new_run)
    assert (await api.get("/metrics")).body["stale"] == {"reaped_runs": 3, "reaped_since_start": 3}
    async with api.client.get("/metrics", headers={"Accept": "text/plain"}) as response:
        text = await response.text()
    assert "telemetry_runs_reaped 3.0" in text
    assert "telemetry_reaper_reaped_runs_total 3.0" in text
    again = await quiet_api(make_api)  # the same file, a new server
    assert (await again.get("/metrics")).body["stale"] == {
        "reaped_runs": 3,
        "reaped_since_start": 0,
    }


# ---- GET /api/v1/runs?stale=true ---------------------------------------------------------


async def test_stale_lists_overdue_running_runs_not_yet_reaped(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api, stale_after_by_job={"crawl": 1})
    overdue = [new_run(heartbeat_timeout_s=1, agent_name=f"a{i % 2}") for i in range(5)]
    by_job = new_run(job_type="crawl")
    fresh = new_run(heartbeat_timeout_s=600)
    finished = new_run(heartbeat_timeout_s=1, status="failure")
    for run in (*overdue, by_job, fresh, finished):
        await api.create(run)
    assert await api.list(stale="true") == []
    await asyncio.sleep(1.1)
    listed = await api.list(stale="true")
    expected = [r["event_id"] for r in reversed([*overdue, by_job])]  # newest first
    assert [r["event_id"] for r in listed] == expected
    assert [r["event_id"] for r in await api.list(stale="true", agent_name="a1")] == [
        overdue[3]["event_id"],
        overdue[1]["event_id"],
    ]
    assert await api.list(stale="true", status="success") == []
    # paged with the cursor, the same runs
    first = await api.get("/api/v1/runs", params={"stale": "true", "limit": "4"})
    cursor = first.headers["X-Next-Cursor"]
    second = await api.get("/api/v1/runs", params={"stale": "true", "limit": "4", "cursor": cursor})
    assert [r["event_id"] for r in first.body + second.body] == expected
    if not is_postgres(api):  # SQLite's fast rendering (run_json) is the Python one
        conn = open_reader(database(api).settings.path, busy_timeout_ms=2000)
        try:
            query = RunQuery(stale="true", limit=100)
            overdue_sql = overdue_ids_sql(database(api).settings.stale, datetime.now(UTC))
            python = dumps([with_urls(r) for r in query_runs(conn, query, None, overdue_sql).runs])
            assert query_page_json(conn, query, None, overdue_sql).body == python
        finally:
            conn.close()
    assert await reap_pass(database(api)) == 6
    assert await api.list(stale="true") == []


@pytest.mark.parametrize("value", ["false", "1", "yes", "TRUE"])
async def test_stale_takes_only_true(api: Api, value: str) -> None:
    reply = await api.get("/api/v1/runs", params={"stale": value})
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["query", "stale"]
