"""Delivery at the edges: what the server would refuse is refused at spoold's door, an
oversized snapshot is re-sent as its operations, ids are percent-encoded upstream, and
proxied reads carry the caller's own credentials - each against the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from sidecar_helpers import FakeUpstream, make_run

import spoold.forward.read as read_module
from server.contract.codec import nesting_depth
from spoold.forward.coalesce import WIDEST_ORIGIN, coalesce, encode_batch, pack

CAP = 4096  # a small server body cap (bytes), so the edges are cheap to reach


async def recorder(aiohttp_server: Any, target: str) -> FakeUpstream:
    """A proxy in front of the real server that records every request spoold sends."""
    upstream = FakeUpstream(target=target)
    server = await aiohttp_server(upstream.app())
    upstream.url = f"http://127.0.0.1:{server.port}"
    return upstream


def nested(levels: int) -> dict[str, Any]:
    """A JSON object nested ``levels`` deep ({} is one level)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def widest(item: dict[str, Any]) -> dict[str, Any]:
    """The item with its source and sequence at their widest, as the door judges it."""
    return {**item, "source": WIDEST_ORIGIN.source, "sequence": WIDEST_ORIGIN.sequences[0]}


def envelope_bytes(event_id: str, kind: str, body: dict[str, Any]) -> int:
    """Size of the one-item upsert batch the server may receive for this operation (with
    its ``seen_at``, a canonical instant: always 32 characters; and its source and
    sequence at their widest: the real ones may be shorter, never longer)."""
    seen_at = "2026-01-12T10:30:00.000000+00:00"
    return len(orjson.dumps([widest({"event_id": event_id, kind: body, "seen_at": seen_at})]))


async def counters(sidecar: Any) -> dict[str, int]:
    return dict((await sidecar.health())["counters"])


# ---- item 1: refused at the edge, exactly where the server would refuse -------------------


@pytest.mark.parametrize("envelope_depth", [32, 33, 34, 35])
@pytest.mark.parametrize("route", ["create", "patch", "batch"])
async def test_depth_is_judged_as_the_server_will_see_it_inside_the_envelope(
    route, envelope_depth, central, make_sidecar
):
    """The server allows 32 levels; the batch envelope adds 2 levels to a POST/PATCH body
    (1 to a batch body). Up to the limit: accepted and delivered; beyond: 400 malformed_json
    at once, nothing spooled - never acknowledged and then dead-lettered."""
    sidecar = await make_sidecar(central.url)
    existing = make_run()
    await sidecar.create(existing)
    await sidecar.wait_drained()
    before = await counters(sidecar)
    run = make_run()
    if route == "create":
        body: Any = {**run, "metrics_json": nested(envelope_depth - 3)}
        assert nesting_depth(body, limit=99) == envelope_depth - 2
        reply = await sidecar.post("/api/v1/runs", json=body)
        target, ok = run["event_id"], 201
    elif route == "patch":
        body = {"metrics_json": nested(envelope_depth - 3)}
        assert nesting_depth(body, limit=99) == envelope_depth - 2
        reply = await sidecar.patch(f"/api/v1/runs/{existing['event_id']}", json=body)
        target, ok = existing["event_id"], 200
    else:
        body = [{**run, "metrics_json": nested(envelope_depth - 3)}]
        assert nesting_depth(body, limit=99) == envelope_depth - 1
        reply = await sidecar.post("/api/v1/runs/batch", json=body)
        target, ok = run["event_id"], 200
    if envelope_depth <= 32:
        assert reply.status == ok, reply.body
        health = await sidecar.wait_drained()
        assert health["spool"]["dead_letters"] == 0
        stored = await central.api.run(target)
        assert stored["metrics_json"] == nested(envelope_depth - 3)
        return
    assert reply.status == 400, reply.body
    assert reply.body["error"] == "malformed_json", reply.body
    assert await counters(sidecar) == before  # nothing accepted, nothing spooled
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    if route != "patch":
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 404


async def test_the_depth_limit_comes_from_the_upstream_setting(start_central, make_sidecar):
    """SPOOLD_UPSTREAM_MAX_JSON_DEPTH mirrors TELEMETRY_MAX_JSON_DEPTH: with both at 12,
    a create nested 10 deep (12 in the envelope) passes and 11 deep is refused."""
    central = await start_central(max_json_depth=12)
    sidecar = await make_sidecar(central.url, upstream_max_json_depth=12)
    fits, too_deep = make_run(metrics_json=nested(9)), make_run(metrics_json=nested(10))
    assert nesting_depth(fits, limit=99) == 10
    await sidecar.create(fits)
    refused = await sidecar.post("/api/v1/runs", json=too_deep)
    assert refused.status == 400
    assert refused.body["error"] == "malformed_json"
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    assert (await central.api.run(fits["event_id"]))["metrics_json"] == nested(9)


async def test_an_update_exactly_at_the_body_cap_passes_and_one_byte_more_is_413(
    start_central, make_sidecar
):
    """The upstream body cap is judged on the enveloped operation, to the byte."""
    central = await start_central(max_body_bytes=CAP)
    sidecar = await make_sidecar(central.url, upstream_max_body_bytes=CAP)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    event_id = run["event_id"]
    pad = CAP - envelope_bytes(event_id, "update", {"metrics_json": {"pad": ""}})
    at_cap = {"metrics_json": {"pad": "x" * pad}}
    over = {"metrics_json": {"pad": "y" * (pad + 1)}}
    assert envelope_bytes(event_id, "update", at_cap) == CAP
    before = await counters(sidecar)
    refused = await sidecar.patch(f"/api/v1/runs/{event_id}", json=over)
    assert refused.status == 413, refused.body
    assert refused.body["error"] == "payload_too_large"
    assert await counters(sidecar) == before
    accepted = await sidecar.patch(f"/api/v1/runs/{event_id}", json=at_cap)
    assert accepted.status == 200, accepted.body
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    assert (await central.api.run(event_id))["metrics_json"] == at_cap["metrics_json"]


async def test_a_create_is_refused_exactly_where_its_envelope_passes_the_cap(
    start_central, make_sidecar, aiohttp_server
):
    """The largest create spoold accepts arrives in an envelope of exactly the cap; one more
    byte is 413. Every accepted create reaches the server; nothing is dead-lettered."""
    central = await start_central(max_body_bytes=CAP)
    upstream = await recorder(aiohttp_server, central.url)
    sidecar = await make_sidecar(upstream.url, upstream_max_body_bytes=CAP)
    accepted: dict[int, str] = {}

    async def accepts(pad: int) -> bool:
        run = make_run(input_summary="p" * pad)
        reply = await sidecar.post("/api/v1/runs", json=run)
        assert reply.status in (201, 413), reply.body
        if reply.status == 413:
            assert reply.body["error"] == "payload_too_large"
            return False
        accepted[pad] = run["event_id"]
        return True

    low, high = 0, CAP  # accepts(low) and not accepts(high): found in ~12 probes
    assert await accepts(low)
    assert not await accepts(high)
    for _ in range(20):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        if await accepts(middle):
            low = middle
        else:
            high = middle
    assert high == low + 1
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    for event_id in accepted.values():
        assert (await central.api.get(f"/api/v1/runs/{event_id}")).status == 200
    [item] = upstream.items_sent(accepted[low])
    assert len(orjson.dumps([widest(item)])) == CAP
    assert len(orjson.dumps([item])) <= CAP


async def test_a_batch_with_one_item_the_server_would_refuse_is_refused_whole(
    start_central, make_sidecar
):
    """POST /api/v1/runs/batch: one item too large once enveloped makes it 413, nothing kept."""
    central = await start_central(max_body_bytes=CAP)
    sidecar = await make_sidecar(central.url, upstream_max_body_bytes=CAP)
    small = make_run()
    big = make_run(input_summary="b" * CAP)
    reply = await sidecar.post("/api/v1/runs/batch", json=[small, big])
    assert reply.status == 413, reply.body
    assert reply.body["error"] == "payload_too_large"
    assert (await counters(sidecar))["accepted"] == 0
    assert (await sidecar.get(f"/api/v1/runs/{small['event_id']}")).status == 404


# ---- item 2: an oversized snapshot is re-sent as its operations, in order -----------------


async def prefill_big_run(
    make_sidecar: Any, dead_url: str, **settings: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """While the server is down: a run whose create and three updates fold into one
    snapshot larger than CAP (each alone well under it), and a small neighbour run."""
    sidecar = await make_sidecar(dead_url, **settings)
    big, small = make_run(input_summary="c" * 1500), make_run()
    updates = [
        {"output_summary": "o" * 1500, "items_succeeded": 1},
        {"error_details": "d" * 1500, "items_succeeded": 2},
        {"error_summary": "e" * 1500, "items_succeeded": 3, "status": "failure"},
    ]
    await sidecar.create(big)
    await sidecar.create(small)
    for update in updates:
        reply = await sidecar.patch(f"/api/v1/runs/{big['event_id']}", json=update)
        assert reply.status == 200, reply.body
    reply = await sidecar.patch(f"/api/v1/runs/{small['event_id']}", json={"status": "success"})
    assert reply.status == 200
    await sidecar.close()
    return big, small


def assert_in_order(upstream: FakeUpstream, event_id: str) -> None:
    """The run's create arrived first; its updates arrived in the order they were accepted."""
    items = upstream.items_sent(event_id)
    assert "create" in items[0], items[0].keys()
    counts = [item["update"]["items_succeeded"] for item in items if "update" in item]
    assert counts == sorted(counts), counts


async def test_a_snapshot_the_server_refuses_as_too_large_is_resent_as_its_operations(
    start_central, make_sidecar, aiohttp_server, dead_url
):
    """spoold thinks the server takes 5 MiB, the server takes 4 KiB: the coalesced snapshot
    draws 413, is re-sent as its four operations in order, and nothing is dead-lettered."""
    big, small = await prefill_big_run(make_sidecar, dead_url)
    central = await start_central(max_body_bytes=CAP)
    upstream = await recorder(aiohttp_server, central.url)
    sidecar = await make_sidecar(upstream.url)
    health = await sidecar.wait_drained()
    assert any(batch.answered == 413 for batch in upstream.batches)
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 6
    assert health["counters"]["dead_lettered"] == 0
    stored = await central.api.run(big["event_id"])
    assert (stored["items_succeeded"], stored["status"]) == (3, "failure")
    assert (len(stored["output_summary"]), len(stored["error_details"])) == (1500, 1500)
    assert len(stored["error_summary"]) == 1500
    assert (await central.api.run(small["event_id"]))["status"] == "success"
    assert_in_order(upstream, big["event_id"])


async def test_batches_are_bounded_in_bytes_under_the_upstream_cap(
    start_central, make_sidecar, aiohttp_server, dead_url
):
    """With the cap configured, no batch is ever over it: nothing draws 413 at all."""
    big, _ = await prefill_big_run(make_sidecar, dead_url, upstream_max_body_bytes=CAP)
    central = await start_central(max_body_bytes=CAP)
    upstream = await recorder(aiohttp_server, central.url)
    sidecar = await make_sidecar(upstream.url, upstream_max_body_bytes=CAP)
    health = await sidecar.wait_drained()
    assert [batch.answered for batch in upstream.batches] == [200] * len(upstream.batches)
    assert all(len(orjson.dumps(batch.body)) <= CAP for batch in upstream.batches)
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 6
    stored = await central.api.run(big["event_id"])
    assert (stored["items_succeeded"], stored["status"]) == (3, "failure")
    assert_in_order(upstream, big["event_id"])


async def test_drain_rounds_stay_within_the_admission_bytes_when_the_server_takes_more(
    start_central, make_sidecar, aiohttp_server, dead_url
):
    """A server that takes large batches (SPOOLD_UPSTREAM_MAX_BODY_BYTES raised to match it)
    must not make spoold decode rounds larger than the bytes it admits at its door
    (SPOOLD_MAX_INFLIGHT_BYTES, the memory budget the unit's MemoryMax is sized for):
    every batch is within that budget, and everything arrives."""
    budget = 64 * 1024
    settings = {
        "max_body_bytes": 16 * 1024,
        "max_inflight_bytes": budget,
        "upstream_max_body_bytes": 4 * 1024 * 1024,
    }
    sidecar = await make_sidecar(dead_url, **settings)
    runs = [make_run(error_details="x" * 12_000) for _ in range(24)]  # ~290 KB in all
    for run in runs:
        assert (await sidecar.create(run)).status == 201
    await sidecar.close()
    central = await start_central(max_body_bytes=4 * 1024 * 1024)
    upstream = await recorder(aiohttp_server, central.url)
    sidecar = await make_sidecar(upstream.url, **settings)
    health = await sidecar.wait_drained()
    assert health["counters"]["forwarded"] == len(runs)
    sizes = [len(orjson.dumps(batch.body)) for batch in upstream.batches]
    assert len(sizes) > 1
    assert max(sizes) <= budget, sizes
    for run in runs:
        assert (await central.api.run(run["event_id"]))["error_details"] == "x" * 12_000


async def test_only_the_lone_operation_the_server_rejects_is_dead_lettered(
    start_central, make_sidecar, aiohttp_server, dead_url
):
    """A server with a lower cap than spoold believes: the one update too large for it is
    dead-lettered alone; the run's create and its other updates all arrive."""
    sidecar = await make_sidecar(dead_url)
    run = make_run()
    event_id = run["event_id"]
    await sidecar.create(run)
    for update in (
        {"items_succeeded": 1},
        {"output_summary": "h" * (2 * CAP)},
        {"items_succeeded": 3, "status": "success"},
    ):
        assert (await sidecar.patch(f"/api/v1/runs/{event_id}", json=update)).status == 200
    await sidecar.close()
    central = await start_central(max_body_bytes=CAP)
    upstream = await recorder(aiohttp_server, central.url)
    sidecar = await make_sidecar(upstream.url)
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 1
    assert health["counters"]["dead_lettered"] == 1
    assert health["counters"]["forwarded"] == 3
    stored = await central.api.run(event_id)
    assert (stored["items_succeeded"], stored["status"]) == (3, "success")
    assert stored["output_summary"] is None


# ---- item 4: ids are percent-encoded in every upstream path ------------------------------

HOSTILE_IDS = [
    "pre?q=1",
    "pre",
    "frag#x",
    "frag",
    "100%",
    "a%2Fb",
    "%41",
    "A",
    "with space",
    "ünï日本",
]


async def test_hostile_ids_read_and_update_the_right_run(central, make_sidecar, tmp_path: Path):
    """Ids with ?, #, %, %2F, spaces and unicode: reads through spoold get the right run;
    a spoold that never saw the run looks it up, applies the update and dead-letters nothing."""
    writer = await make_sidecar(central.url)
    for event_id in HOSTILE_IDS:
        await writer.create(
            make_run(
                event_id=event_id,
                run_id=f"run of {event_id}",
                git_repo="https://github.com/o/r",
                git_commit_hash="abcdef1",
            )
        )
    await writer.wait_drained()
    fresh = await make_sidecar(central.url, spool_dir=tmp_path / "fresh-spool")
    for event_id in HOSTILE_IDS:
        path = f"/api/v1/runs/{quote(event_id, safe='')}"
        got = await fresh.get(path)
        assert got.status == 200, (event_id, got.body)
        assert (got.body["event_id"], got.body["run_id"]) == (event_id, f"run of {event_id}")
        for kind in ("commit-url", "repo-url"):
            url_answer = await fresh.get(f"{path}/{kind}")
            assert url_answer.status == 200, (event_id, kind, url_answer.body)
            assert url_answer.body["event_id"] == event_id
        patched = await fresh.patch(path, json={"items_failed": 7, "status": "failure"})
        assert patched.status == 200, (event_id, patched.body)
        associated = await fresh.post(
            f"{path}/associate-commit",
            json={"commit_hash": "1234567abcdef", "commit_source": "manual"},
        )
        assert associated.status == 200, (event_id, associated.body)
        assert associated.body["run_id"] == f"run of {event_id}"
    health = await fresh.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    for event_id in HOSTILE_IDS:
        stored = await central.api.run(quote(event_id, safe=""))
        assert stored["event_id"] == event_id
        assert (stored["items_failed"], stored["status"]) == (7, "failure")
        assert stored["git_commit_hash"] == "1234567abcdef"


async def test_an_update_for_an_unknown_hostile_id_is_404_not_another_runs(
    central, make_sidecar, tmp_path: Path
):
    """PATCH for 'only-this?x=1' when only 'only-this' exists: the lookup must not find it."""
    sidecar = await make_sidecar(central.url)
    await sidecar.create(make_run(event_id="only-this"))
    await sidecar.wait_drained()
    fresh = await make_sidecar(central.url, spool_dir=tmp_path / "fresh-spool")
    path = f"/api/v1/runs/{quote('only-this?x=1', safe='')}"
    reply = await fresh.patch(path, json={"items_failed": 1})
    assert reply.status == 404, reply.body
    reply = await fresh.post(
        f"{path}/associate-commit", json={"commit_hash": "1234567", "commit_source": "manual"}
    )
    assert reply.status == 404, reply.body
    assert (await fresh.get(path)).status == 404
    assert (await central.api.run("only-this"))["items_failed"] == 0


# ---- item 5: reads carry the caller's credentials, never the fleet token -------------------

FLEET_TOKEN = "fleet-token-for-writes"


@pytest.mark.parametrize(
    "path", ["/api/v1/runs/{id}", "/api/v1/runs/{id}/commit-url", "/api/v1/runs?limit=5"]
)
async def test_reads_through_spoold_need_the_callers_own_token(start_central, make_sidecar, path):
    """With reads protected on the server, spoold's fleet token opens no reads: without a
    token 401, with a wrong one 401, with the right one 200. Writes still get through."""
    central = await start_central(
        auth_enabled=True, auth_token=FLEET_TOKEN, auth_protect_reads=True
    )
    sidecar = await make_sidecar(central.url, upstream_token=FLEET_TOKEN)
    run = make_run(git_repo="https://github.com/o/r", git_commit_hash="abcdef1")
    await sidecar.create(run)  # the caller sends no token: spoold delivers with its own
    health = await sidecar.wait_drained()
    assert health["counters"]["forwarded"] == 1
    url = path.format(id=run["event_id"])
    anonymous = await sidecar.get(url)
    assert anonymous.status == 401, anonymous.body
    wrong = await sidecar.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status == 401, wrong.body
    allowed = await sidecar.get(url, headers={"Authorization": f"Bearer {FLEET_TOKEN}"})
    assert allowed.status == 200, allowed.body


async def test_the_fleet_token_still_serves_the_lookup_a_write_needs(
    start_central, make_sidecar, tmp_path: Path
):
    """A PATCH for a run this spoold never saw, from a caller without a token: the existence
    look-up is part of delivering a write, so it uses the fleet token and the update lands."""
    central = await start_central(
        auth_enabled=True, auth_token=FLEET_TOKEN, auth_protect_reads=True
    )
    first = await make_sidecar(central.url, upstream_token=FLEET_TOKEN)
    run = make_run()
    await first.create(run)
    await first.wait_drained()
    fresh = await make_sidecar(
        central.url, upstream_token=FLEET_TOKEN, spool_dir=tmp_path / "fresh-spool"
    )
    reply = await fresh.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 2})
    assert reply.status == 200, reply.body
    assert (await fresh.wait_drained())["spool"]["dead_letters"] == 0
    headers = {"Authorization": f"Bearer {FLEET_TOKEN}"}
    stored = await central.api.get(f"/api/v1/runs/{run['event_id']}", headers=headers)
    assert stored.body["items_failed"] == 2


# ---- packing, as pure code ----------------------------------------------------------------


def test_pack_keeps_order_and_every_batch_under_the_cap():
    """Bodies are exactly the batches' encodings, each within the cap; a snapshot too
    large alone is split into its operations, create first, updates in order."""
    ops: list[dict[str, Any]] = []
    for run in range(6):
        event_id = f"run-{run}"
        ops.append({"kind": "create", "event_id": event_id, "body": {"pad": "c" * 300 * run}})
        for step in range(3):
            ops.append(
                {"kind": "update", "event_id": event_id, "body": {f"f{step}": "u" * 200 * run}}
            )
    cap = 1500
    batches = pack(coalesce(ops), ops, cap)
    sent_positions: list[int] = []
    for members, body in batches:
        assert body == encode_batch(members)
        assert len(body) <= cap or len(members) == 1
        sent_positions.extend(position for member in members for position in member.positions)
    assert sorted(sent_positions) == list(range(len(ops)))  # every operation, once
    for run in range(6):
        mine = [p for p in sent_positions if ops[p]["event_id"] == f"run-{run}"]
        assert mine == sorted(mine)  # a run's operations in the order they were accepted
    assert any(len(members) == 1 and members[0].operations == 1 for members, _ in batches)


# ---- a failed read of a round strands nothing -----------------------------------------


async def test_a_round_that_fails_after_its_read_gives_its_groups_back(
    central, make_sidecar, monkeypatch: pytest.MonkeyPatch
):
    """If preparing a round fails once its groups are taken (here: packing raises), the
    groups go back to the spool: the failure shows on /health, then everything arrives
    without a restart."""
    real_pack = read_module.pack
    failures = {"left": 3}

    def flaky_pack(*args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("injected packing failure")
        return real_pack(*args, **kwargs)

    monkeypatch.setattr(read_module, "pack", flaky_pack)
    sidecar = await make_sidecar(central.url)
    runs = [make_run() for _ in range(3)]
    for run in runs:
        await sidecar.create(run)
    health = await sidecar.wait_drained()
    assert failures["left"] == 0
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 3
    for run in runs:
        assert (await central.api.get(f"/api/v1/runs/{run['event_id']}")).status == 200
