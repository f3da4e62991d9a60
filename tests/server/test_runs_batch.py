"""POST /api/v1/runs/batch: insert mode (the guide) and upsert mode (the sidecar)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

BATCH = "/api/v1/runs/batch"
UPSERT = "/api/v1/runs/batch?mode=upsert"


async def test_batch_inserts_and_counts(api, new_run):
    """A batch of new runs answers 200 {inserted, duplicates, errors: [], total}."""
    runs = [new_run(run_id=f"run-{i}") for i in range(5)]
    reply = await api.post(BATCH, json=runs)
    assert reply.status == 200
    assert reply.body == {"inserted": 5, "duplicates": 0, "errors": [], "total": 5}
    assert len(await api.list()) == 5


async def test_batch_counts_duplicates_against_stored_and_within_batch(api, new_run):
    """Runs already stored, and repeats inside one batch, count as duplicates."""
    stored = new_run()
    await api.create(stored)
    fresh = new_run()
    reply = await api.post(BATCH, json=[stored, fresh, fresh])
    assert reply.body == {"inserted": 1, "duplicates": 2, "errors": [], "total": 3}


async def test_batch_replay_is_all_duplicates(api, new_run):
    """Sending the same batch twice inserts nothing the second time."""
    runs = [new_run() for _ in range(3)]
    await api.post(BATCH, json=runs)
    reply = await api.post(BATCH, json=runs)
    assert reply.body == {"inserted": 0, "duplicates": 3, "errors": [], "total": 3}


async def test_empty_batch(api):
    """An empty array is a valid batch with nothing in it."""
    reply = await api.post(BATCH, json=[])
    assert reply.status == 200
    assert reply.body == {"inserted": 0, "duplicates": 0, "errors": [], "total": 0}


async def test_batch_reports_bad_items_and_inserts_the_rest(api, new_run):
    """Invalid items get per-item errors (index, event_id, message) with HTTP 200."""
    good_a, good_b = new_run(), new_run()
    no_start = new_run()
    del no_start["start_time"]
    bad_status = new_run(status="nope")
    items = [good_a, no_start, "not an object", good_b, bad_status, new_run(items_failed=-3)]
    reply = await api.post(BATCH, json=items)
    assert reply.status == 200
    body = reply.body
    assert body["inserted"] == 2
    assert body["duplicates"] == 0
    assert body["total"] == 6
    assert [error["index"] for error in body["errors"]] == [1, 2, 4, 5]
    by_index = {error["index"]: error for error in body["errors"]}
    assert by_index[1]["event_id"] == no_start["event_id"]
    assert "start_time" in by_index[1]["message"]
    assert by_index[2]["event_id"] is None
    assert "status" in by_index[4]["message"]
    assert "items_failed" in by_index[5]["message"]
    assert set(by_index[1]) == {"index", "event_id", "message"}
    stored = {run["event_id"] for run in await api.list()}
    assert stored == {good_a["event_id"], good_b["event_id"]}


async def test_batch_normalises_aliases(api, new_run):
    """Status aliases in batch items are stored as canonical statuses."""
    runs = [new_run(status="failed"), new_run(status="completed"), new_run(status="succeeded")]
    await api.post(BATCH, json=runs)
    statuses = [(await api.run(run["event_id"]))["status"] for run in runs]
    assert statuses == ["failure", "success", "success"]


async def test_batch_items_are_stored_like_single_creates(api, new_run):
    """A batch item keeps git_commit_* fields, canonical timestamps and {} objects."""
    run = new_run(
        start_time="2026-01-12T16:00:00+05:30",
        git_commit_source="ci",
        git_commit_author="bot",
        metrics_json={},
    )
    await api.post(BATCH, json=[run])
    stored = await api.run(run["event_id"])
    assert stored["start_time"] == "2026-01-12T10:30:00.000000+00:00"
    assert stored["git_commit_source"] == "ci"
    assert stored["git_commit_author"] == "bot"
    assert stored["metrics_json"] == {}


@pytest.mark.parametrize("body", [{}, {"runs": []}, "x", 1, None, True])
async def test_batch_body_must_be_an_array(api, body):
    """A batch body that is not a JSON array is a 422."""
    reply = await api.post(BATCH, data=orjson.dumps(body))
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["body"]


async def test_batch_with_too_many_items_is_413(make_api, new_run):
    """More items than batch_max_items is refused whole with 413; nothing is stored."""
    api = await make_api(batch_max_items=3)
    reply = await api.post(BATCH, json=[new_run() for _ in range(4)])
    assert reply.status == 413
    assert reply.body["error"] == "payload_too_large"
    assert await api.list() == []
    ok = await api.post(BATCH, json=[new_run() for _ in range(3)])
    assert ok.body["inserted"] == 3


async def test_batch_error_event_id_hint_is_bounded(api, new_run):
    """The event_id echoed in a per-item error is at most 255 characters."""
    reply = await api.post(BATCH, json=[new_run(event_id="e" * 1000)])
    [error] = reply.body["errors"]
    assert error["event_id"] == "e" * 255


@pytest.mark.parametrize("mode", ["", "insert2", "UPSERT", "replace"])
async def test_bad_batch_mode_is_422(api, new_run, mode):
    """mode must be insert or upsert."""
    reply = await api.post(f"{BATCH}?mode={mode}", json=[new_run()])
    assert reply.status == 422
    assert reply.body["detail"][0]["loc"] == ["query", "mode"]


async def test_explicit_insert_mode_is_the_default(api, new_run):
    """?mode=insert behaves as the guide's batch."""
    reply = await api.post(f"{BATCH}?mode=insert", json=[new_run()])
    assert reply.body == {"inserted": 1, "duplicates": 0, "errors": [], "total": 1}


# ---- upsert mode ---------------------------------------------------------------------


def upsert_item(run=None, update=None, event_id=None):
    item = {"event_id": event_id or run["event_id"]}
    if run is not None:
        item["create"] = run
    if update is not None:
        item["update"] = update
    return item


async def test_upsert_inserts_new_runs_with_their_update(api, new_run):
    """A create+update for a new event_id inserts it with the update applied."""
    run = new_run()
    update = {"status": "success", "end_time": "2026-01-12T10:35:00Z", "items_succeeded": 4}
    reply = await api.post(UPSERT, json=[upsert_item(run, update)])
    assert reply.status == 200
    assert reply.body == {
        "inserted": 1,
        "updated": 0,
        "duplicates": 0,
        "errors": [],
        "total": 1,
    }
    stored = await api.run(run["event_id"])
    assert stored["status"] == "success"
    assert stored["items_succeeded"] == 4
    assert stored["end_time"] == "2026-01-12T10:35:00.000000+00:00"


async def test_upsert_updates_known_runs(api, new_run):
    """An update for a stored run applies the given fields and counts as updated."""
    run = new_run()
    await api.create(run)
    reply = await api.post(
        UPSERT, json=[upsert_item(event_id=run["event_id"], update={"items_failed": 2})]
    )
    assert reply.body == {
        "inserted": 0,
        "updated": 1,
        "duplicates": 0,
        "errors": [],
        "total": 1,
    }
    assert (await api.run(run["event_id"]))["items_failed"] == 2


async def test_upsert_create_of_known_run_is_a_duplicate(api, new_run):
    """A create-only item for a stored run changes nothing (but last_seen_at: the run was
    heard from) and counts as a duplicate."""
    run = new_run()
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.post(UPSERT, json=[upsert_item({**run, "status": "success"})])
    assert reply.body["duplicates"] == 1
    assert reply.body["inserted"] == 0
    after = await api.run(run["event_id"])
    assert after.pop("last_seen_at") > before.pop("last_seen_at")
    assert after == before


async def test_upsert_update_of_unknown_run_without_create_is_an_item_error(api, new_run):
    """An update for an unknown event_id with no create is a per-item error; others apply."""
    good = new_run()
    reply = await api.post(
        UPSERT,
        json=[
            upsert_item(good),
            upsert_item(event_id="ghost", update={"status": "success"}),
        ],
    )
    assert reply.status == 200
    assert reply.body["inserted"] == 1
    assert reply.body["total"] == 2
    [error] = reply.body["errors"]
    assert error["index"] == 1
    assert error["event_id"] == "ghost"
    assert "not found" in error["message"].lower()
    assert (await api.get("/api/v1/runs/ghost")).status == 404


@pytest.mark.parametrize("terminal", ["success", "failure", "partial", "timeout", "cancelled"])
async def test_upsert_never_replaces_terminal_status_with_running(api, new_run, terminal):
    """A stale update with status running leaves a terminal status; its other fields apply."""
    run = new_run(status=terminal)
    await api.create(run)
    reply = await api.post(
        UPSERT,
        json=[
            upsert_item(
                event_id=run["event_id"], update={"status": "running", "items_succeeded": 3}
            )
        ],
    )
    assert reply.body["errors"] == []
    stored = await api.run(run["event_id"])
    assert stored["status"] == terminal
    assert stored["items_succeeded"] == 3


async def test_upsert_only_stale_running_is_unchanged(api, new_run):
    """An update whose only field is a stale running status changes nothing."""
    run = new_run(status="success")
    await api.create(run)
    before = await api.run(run["event_id"])
    reply = await api.post(
        UPSERT, json=[upsert_item(event_id=run["event_id"], update={"status": "running"})]
    )
    assert reply.body["duplicates"] == 1
    assert reply.body["updated"] == 0
    after = await api.run(run["event_id"])
    assert after.pop("last_seen_at") >= before.pop("last_seen_at")  # heard from, only
    assert after == before


async def test_upsert_running_to_terminal_and_terminal_to_terminal_apply(api, new_run):
    """running -> success and success -> failure are both applied by upsert."""
    run = new_run()
    await api.create(run)
    for status in ("success", "failure"):
        await api.post(
            UPSERT, json=[upsert_item(event_id=run["event_id"], update={"status": status})]
        )
        assert (await api.run(run["event_id"]))["status"] == status


async def test_upsert_replay_gives_identical_rows(api, new_run):
    """Replaying the same upsert batch changes nothing, updated_at included."""
    runs = [new_run(agent_name=f"agent-{i}") for i in range(4)]
    await api.create(runs[3])
    batch = [
        upsert_item(runs[0]),
        upsert_item(
            runs[1],
            {
                "status": "success",
                "end_time": "2026-01-12T16:05:00+05:30",
                "metrics_json": {"tokens": 5, "nested": {"k": [1, 2]}},
                "context_json": {},
                "error_summary": None,
            },
        ),
        upsert_item(runs[2], {"git_commit_hash": "ABCDEF1", "items_discovered": 10}),
        upsert_item(event_id=runs[3]["event_id"], update={"status": "partial", "items_failed": 1}),
    ]
    first = await api.post(UPSERT, json=batch)
    assert first.body["inserted"] == 3
    assert first.body["updated"] == 1
    snapshot = {run["event_id"]: await api.run(run["event_id"]) for run in runs}
    await asyncio.sleep(0.002)
    again = await api.post(UPSERT, json=batch)
    assert again.body == {
        "inserted": 0,
        "updated": 0,
        "duplicates": 4,
        "errors": [],
        "total": 4,
    }
    for run in runs:  # the same state, but for when each run was last heard from
        stored, expected = await api.run(run["event_id"]), snapshot[run["event_id"]]
        assert stored.pop("last_seen_at") > expected.pop("last_seen_at")
        assert stored == expected


async def test_upsert_normalises_aliases_in_create(api, new_run):
    """A create inside an upsert item accepts aliases like a POST."""
    run = new_run(status="failed")
    await api.post(UPSERT, json=[upsert_item(run)])
    assert (await api.run(run["event_id"]))["status"] == "failure"


@pytest.mark.parametrize(
    ("item", "word"),
    [
        ({"event_id": "e1"}, "create"),
        ({"create": None, "update": {"status": "success"}}, "event_id"),
        ({"event_id": "e1", "update": {"status": "failed"}}, "status"),
        ({"event_id": "e1", "update": {"bogus": 1}}, "bogus"),
        ({"event_id": "e1", "update": {"status": None}}, "status"),
        ({"event_id": "e1", "create": {"event_id": "e1"}}, "run_id"),
        ({"event_id": "e1", "extra": 1, "update": {"items_failed": 1}}, "extra"),
        ({"event_id": "e/1", "update": {"items_failed": 1}}, "event_id"),
    ],
)
async def test_upsert_invalid_items_are_per_item_errors(api, new_run, item, word):
    """Malformed upsert items are reported with their index and a message naming the problem."""
    good = new_run()
    reply = await api.post(UPSERT, json=[upsert_item(good), item])
    assert reply.status == 200
    assert reply.body["inserted"] == 1
    [error] = reply.body["errors"]
    assert error["index"] == 1
    assert word in error["message"]


async def test_upsert_create_event_id_must_match(api, new_run):
    """create.event_id different from the item's event_id is a per-item error."""
    run = new_run()
    reply = await api.post(UPSERT, json=[upsert_item(run, event_id="other-id")])
    [error] = reply.body["errors"]
    assert error["index"] == 0
    assert error["event_id"] == "other-id"
    assert (await api.get(f"/api/v1/runs/{run['event_id']}")).status == 404


async def test_upsert_errors_are_sorted_by_index(api, new_run):
    """Validation errors and not-found errors are merged in index order."""
    items = [
        upsert_item(event_id="ghost-0", update={"items_failed": 1}),
        {"event_id": "bad-1"},
        upsert_item(new_run()),
        upsert_item(event_id="ghost-3", update={"items_failed": 1}),
        "junk",
    ]
    reply = await api.post(UPSERT, json=items)
    assert [error["index"] for error in reply.body["errors"]] == [0, 1, 3, 4]
    assert reply.body["inserted"] == 1
    assert reply.body["total"] == 5


async def test_upsert_body_must_be_an_array_and_bounded(make_api, new_run):
    """Upsert mode shares the batch limits: non-array 422, too many items 413."""
    api = await make_api(batch_max_items=2)
    reply = await api.post(UPSERT, json={"event_id": "x"})
    assert reply.status == 422
    reply = await api.post(UPSERT, json=[upsert_item(new_run()) for _ in range(3)])
    assert reply.status == 413


async def test_upsert_later_item_sees_earlier_item_of_same_batch(api, new_run):
    """Within one batch, an update after the create of the same run applies to it."""
    run = new_run()
    reply = await api.post(
        UPSERT,
        json=[
            upsert_item(run),
            upsert_item(event_id=run["event_id"], update={"status": "success"}),
            upsert_item(event_id=run["event_id"], update={"status": "running"}),
        ],
    )
    assert reply.body["errors"] == []
    assert reply.body["inserted"] == 1
    assert reply.body["updated"] == 1
    assert reply.body["duplicates"] == 1
    assert (await api.run(run["event_id"]))["status"] == "success"


async def test_upsert_mixed_batch_counts_each_item_once_in_order(api, new_run):
    """Create-only items (inserted together) interleaved with updates and a bad item: every
    item is counted once, the error keeps its index, a repeated create is a duplicate."""
    known, fresh, other, full = new_run(), new_run(), new_run(), new_run()
    await api.create(known)
    reply = await api.post(
        UPSERT,
        json=[
            upsert_item(fresh),
            upsert_item(known),
            upsert_item(event_id=new_run()["event_id"], update={"items_failed": 1}),
            upsert_item(other),
            upsert_item(fresh),
            upsert_item(full, {"status": "failure", "end_time": "2026-01-12T10:35:00Z"}),
            upsert_item(event_id=other["event_id"], update={"items_failed": 3}),
        ],
    )
    assert reply.status == 200
    assert [error["index"] for error in reply.body["errors"]] == [2]
    assert {key: reply.body[key] for key in ("inserted", "updated", "duplicates", "total")} == {
        "inserted": 3,
        "updated": 1,
        "duplicates": 2,
        "total": 7,
    }
    assert (await api.run(other["event_id"]))["items_failed"] == 3
    assert (await api.run(full["event_id"]))["status"] == "failure"


# ---- upsert staleness: (source, sequence) -------------------------------------------

SOURCE = "sidecar-a/0123456789abcdef0123456789abcdef"


def stamped(event_id, sequence, source=SOURCE, **update):
    return {"event_id": event_id, "update": update, "source": source, "sequence": sequence}


async def test_upsert_skips_a_snapshot_older_than_the_last_one_of_its_source(api, new_run):
    """A late batch's older snapshot changes no field and counts as a duplicate (so the
    sidecar that sent it takes it as delivered); an equal one re-sent is idempotent; a
    newer one applies."""
    run = new_run()
    event_id = run["event_id"]
    first = {**stamped(event_id, 10, items_succeeded=1), "create": run}
    assert (await api.post(UPSERT, json=[first])).body["inserted"] == 1
    newer = stamped(event_id, 20, items_succeeded=2, product="newer")
    assert (await api.post(UPSERT, json=[newer])).body["updated"] == 1
    at_twenty = await api.run(event_id)

    older = stamped(event_id, 15, items_succeeded=9, product="older", status="success")
    reply = await api.post(UPSERT, json=[older])
    assert reply.status == 200
    assert reply.body == {"inserted": 0, "updated": 0, "duplicates": 1, "errors": [], "total": 1}
    again = await api.run(event_id)
    assert again.pop("last_seen_at") >= at_twenty.pop("last_seen_at")  # heard from, only
    assert again == at_twenty

    reply = await api.post(UPSERT, json=[newer])  # the same snapshot re-sent
    assert reply.body["duplicates"] == 1
    same = await api.run(event_id)
    assert same["updated_at"] == at_twenty["updated_at"]
    assert same["items_succeeded"] == 2

    newest = stamped(event_id, 21, items_succeeded=3)
    assert (await api.post(UPSERT, json=[newest])).body["updated"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 3
    # ... and the older one within one batch, after the newer: skipped too
    reply = await api.post(
        UPSERT, json=[stamped(event_id, 30, items_failed=1), stamped(event_id, 29, items_failed=5)]
    )
    assert reply.body["updated"] == 1
    assert reply.body["duplicates"] == 1
    assert (await api.run(event_id))["items_failed"] == 1


async def test_upsert_applies_snapshots_of_another_source_or_of_none(api, new_run):
    """Sequences are compared within one source only: another source's snapshot, or one
    without a source (another client, an older sidecar), is applied as before."""
    run = new_run()
    event_id = run["event_id"]
    await api.post(UPSERT, json=[{**stamped(event_id, 100, items_succeeded=1), "create": run}])
    other = stamped(event_id, 1, source="sidecar-b/ffff", items_succeeded=2)
    assert (await api.post(UPSERT, json=[other])).body["updated"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 2
    plain = {"event_id": event_id, "update": {"items_succeeded": 3}}
    assert (await api.post(UPSERT, json=[plain])).body["updated"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 3
    # the run now keeps sidecar-b's 1 (the plain item kept nothing): A's 50 is "another"
    back = stamped(event_id, 50, items_succeeded=4)
    assert (await api.post(UPSERT, json=[back])).body["updated"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 4
    older_b = stamped(event_id, 0, source="sidecar-b/ffff", items_succeeded=5)
    assert (await api.post(UPSERT, json=[older_b])).body["updated"] == 1


async def test_a_direct_patch_between_snapshots_keeps_the_kept_sequence(api, new_run):
    """A PATCH writes its fields and leaves the kept (source, sequence) alone: an older
    snapshot after it is still skipped, a newer one applies over it."""
    run = new_run()
    event_id = run["event_id"]
    await api.post(UPSERT, json=[{**stamped(event_id, 10, items_succeeded=1), "create": run}])
    reply = await api.patch(f"/api/v1/runs/{event_id}", json={"items_succeeded": 7})
    assert reply.status == 200, reply.body
    reply = await api.post(UPSERT, json=[stamped(event_id, 5, items_succeeded=0)])
    assert reply.body["duplicates"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 7
    reply = await api.post(UPSERT, json=[stamped(event_id, 11, status="success")])
    assert reply.body["updated"] == 1
    stored = await api.run(event_id)
    assert stored["status"] == "success"
    assert stored["items_succeeded"] == 7


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"source": SOURCE, "sequence": -1}, "sequence"),
        ({"source": SOURCE, "sequence": 2**63}, "sequence"),
        ({"source": SOURCE, "sequence": 2**64 + 5}, "sequence"),
        ({"source": SOURCE, "sequence": 10**30}, "sequence"),
        ({"source": SOURCE, "sequence": 1.5}, "sequence"),
        ({"source": SOURCE, "sequence": 1.0}, "sequence"),
        ({"source": SOURCE, "sequence": "12"}, "sequence"),
        ({"source": SOURCE, "sequence": True}, "sequence"),
        ({"source": SOURCE, "sequence": [1]}, "sequence"),
        ({"source": "", "sequence": 1}, "source"),
        ({"source": "x" * 129, "sequence": 1}, "source"),
        ({"source": "a b", "sequence": 1}, "source"),
        ({"source": "nul\x00", "sequence": 1}, "source"),
        ({"source": "trailing-newline\n", "sequence": 1}, "source"),
        ({"source": "é", "sequence": 1}, "source"),
        ({"source": 7, "sequence": 1}, "source"),
        ({"source": {"id": "a"}, "sequence": 1}, "source"),
        ({"source": SOURCE}, "go together"),
        ({"sequence": 1}, "go together"),
        ({"source": SOURCE, "sequence": None}, "go together"),
    ],
)
async def test_upsert_refuses_hostile_sources_and_sequences_per_item(api, new_run, extra, field):
    """A bad source or sequence is that item's error naming the field (the sidecar
    dead-letters just it); the batch's other items apply; never a 500."""
    good, bad = new_run(), new_run()
    reply = await api.post(
        UPSERT, json=[upsert_item(good), {**upsert_item(bad), **extra}, upsert_item(new_run())]
    )
    assert reply.status == 200, reply.body
    assert reply.body["inserted"] == 2
    [error] = reply.body["errors"]
    assert error["index"] == 1
    assert field in error["message"], error
    assert (await api.get(f"/api/v1/runs/{bad['event_id']}")).status == 404


async def test_upsert_with_the_largest_sequence_is_kept_exactly(api, new_run):
    """2^63-1 is a sequence like any other: kept and compared without overflow."""
    run = new_run()
    event_id = run["event_id"]
    top = 2**63 - 1
    await api.post(UPSERT, json=[{**stamped(event_id, top - 1, items_succeeded=1), "create": run}])
    assert (await api.post(UPSERT, json=[stamped(event_id, top, items_succeeded=2)])).body[
        "updated"
    ] == 1
    reply = await api.post(UPSERT, json=[stamped(event_id, 0, items_succeeded=3)])
    assert reply.body["duplicates"] == 1
    assert (await api.run(event_id))["items_succeeded"] == 2
