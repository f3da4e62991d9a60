"""spoold's heartbeat endpoint and what travels: the stale-runs contract on the wire.

The sidecar runs for real (its spool, its drainer); upstream is a recording stand-in
that speaks the contract (``recording_upstream``), so the outgoing items and headers
are checked exactly, whatever the server in this tree knows.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from recording_upstream import RecordingUpstream
from sidecar_helpers import make_run, wait_until

from server.contract.timestamps import normalize_timestamp
from spoold.identity import SIDECAR_ID_FILE

ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@pytest.fixture
async def recorder(aiohttp_server: Any) -> RecordingUpstream:
    upstream = RecordingUpstream()
    server = await aiohttp_server(upstream.app())
    upstream.url = f"http://127.0.0.1:{server.port}"
    return upstream


async def beat(sidecar: Any, event_id: str, body: Any = None, raw: bytes | None = None) -> Any:
    """POST a heartbeat; a 204 has no body, so it is checked here rather than by Api."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    async with sidecar.client.post(
        f"/api/v1/runs/{event_id}/heartbeat", data=data, headers=headers
    ) as response:
        text = await response.read()
        return response.status, text


async def counters(sidecar: Any) -> dict[str, int]:
    return dict((await sidecar.health())["counters"])


# ---- the endpoint ----------------------------------------------------------------------


async def test_a_heartbeat_is_204_empty_durable_and_travels_with_its_time(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    before = time.time()
    status, text = await beat(sidecar, run["event_id"])
    assert (status, text) == (204, b"")
    status, text = await beat(sidecar, run["event_id"], raw=b" \r\n")  # whitespace: bare
    assert (status, text) == (204, b"")
    status, text = await beat(sidecar, run["event_id"], {"progress": {"pct": 10}})
    assert (status, text) == (204, b"")
    await sidecar.wait_drained()
    items = recorder.items(run["event_id"])
    assert items[0]["create"]["event_id"] == run["event_id"]
    assert "heartbeat" not in items[0]
    assert items[0]["seen_at"]
    last = items[-1]
    assert last["heartbeat"] is True
    assert last["metrics_patch"] == {"pct": 10}
    assert "create" not in last
    assert "update" not in last
    seen = normalize_timestamp(last["seen_at"])
    assert seen == last["seen_at"]  # canonical, like created_at
    assert before - 1 <= _unix(seen) <= time.time() + 1
    counts = await counters(sidecar)
    assert counts["accepted"] == 4
    assert counts["forwarded"] == 4


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"progress": 5}, 422, "validation_error"),
        ({"progress": [1]}, 422, "validation_error"),
        ({"progress": "not json"}, 422, "validation_error"),
        ({"progress": '{"a": 1}'}, 422, "validation_error"),  # an object, not JSON text
        ({"progress": None, "extra": 1}, 422, "validation_error"),
        ({"status": "running"}, 422, "validation_error"),
        ([], 422, "validation_error"),
        (None, 400, "malformed_json"),  # raw b"{" below
    ],
)
async def test_bad_heartbeats_are_refused_and_spool_nothing(
    make_sidecar: Any, recorder: RecordingUpstream, body: Any, status: int, error: str
) -> None:
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    raw = b"{" if body is None else None
    got, text = await beat(sidecar, run["event_id"], body, raw=raw)
    assert got == status, text
    answer = orjson.loads(text)
    assert answer["error"] == error
    assert "detail" in answer
    assert (await counters(sidecar))["accepted"] == 1


async def test_a_huge_progress_gets_the_servers_413_at_the_door(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url, upstream_max_body_bytes=4096)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    status, text = await beat(sidecar, run["event_id"], {"progress": {"blob": "x" * 5000}})
    assert status == 413, text
    assert b'"payload_too_large"' in text
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    status, text = await beat(sidecar, run["event_id"], {"progress": deep})
    assert status in (400, 422), text
    assert (await counters(sidecar))["accepted"] == 1
    # Just under the cap once wrapped: accepted, and the lone item fits the server's cap.
    status, _ = await beat(sidecar, run["event_id"], {"progress": {"blob": "x" * 3700}})
    assert status == 204
    await sidecar.wait_drained()
    assert all(len(orjson.dumps(b.body)) <= 4096 for b in recorder.delivered())


async def test_an_unknown_run_is_404_when_the_server_says_so(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    status, text = await beat(sidecar, "never-created")
    assert status == 404, text
    assert b'"not_found"' in text
    assert (await counters(sidecar))["accepted"] == 0


async def test_an_unknown_run_during_an_outage_is_queued_202_and_delivered_later(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    recorder.known.add("made-elsewhere")
    recorder.down = True
    sidecar = await make_sidecar(recorder.url)
    status, text = await beat(sidecar, "made-elsewhere", {"progress": {"n": 1}})
    assert status == 202, text
    answer = orjson.loads(text)
    assert answer["queued"] is True
    assert answer["event_id"] == "made-elsewhere"
    recorder.down = False
    await sidecar.wait_drained()
    [item] = recorder.items("made-elsewhere")
    assert item["heartbeat"] is True
    assert item["metrics_patch"] == {"n": 1}


# ---- folding on the wire ---------------------------------------------------------------


async def test_a_heartbeat_flood_during_an_outage_travels_as_one_item_with_its_own_time(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    recorder.down = True
    for n in range(300):
        status, _ = await beat(sidecar, run["event_id"], {"progress": {"n": n}})
        assert status == 204
    last_accepted = time.time()
    # The round read while the flood began is being retried: a restart reads them all as
    # one round, folded into one item that keeps the agent's time, not the delivery's.
    await sidecar.close()
    await asyncio.sleep(0.3)
    recorder.down = False
    sidecar = await make_sidecar(recorder.url)
    await sidecar.wait_drained()
    items = [item for item in recorder.items(run["event_id"]) if "create" not in item]
    assert len(items) == 1, items
    assert items[0]["metrics_patch"] == {"n": 299}
    seen = _unix(items[0]["seen_at"])
    [delivery] = [b for b in recorder.delivered() if items[0] in b.body]
    assert seen <= last_accepted + 0.05
    assert delivery.wall - seen >= 0.3
    counts = await counters(sidecar)
    assert counts["accepted"] == 301
    assert counts["forwarded"] == 301


async def test_heartbeats_during_a_live_outage_fold_per_round(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    recorder.down = True
    for n in range(200):
        status, _ = await beat(sidecar, run["event_id"], {"progress": {"n": n}})
        assert status == 204
    recorder.down = False
    await sidecar.wait_drained()
    items = [item for item in recorder.items(run["event_id"]) if "create" not in item]
    assert 1 <= len(items) <= 3, items  # the round retried through the outage, the rest
    assert items[-1]["metrics_patch"] == {"n": 199}
    for batch in recorder.delivered():
        assert sum(item["event_id"] == run["event_id"] for item in batch.body) <= 1
    assert (await counters(sidecar))["forwarded"] == 201


async def test_terminal_then_heartbeat_does_not_revive_on_the_wire(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    recorder.down = True
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "success"})
    assert reply.status == 200
    status, _ = await beat(sidecar, run["event_id"], {"progress": {"late": True}})
    assert status == 204
    # Restarted: the three operations are read as one round (in a live outage the round
    # being retried may hold only the first; then the server's own rule applies: a
    # heartbeat item never revives a finished run, nor changes it).
    await sidecar.close()
    recorder.down = False
    sidecar = await make_sidecar(recorder.url)
    await sidecar.wait_drained()
    [item] = recorder.items(run["event_id"])
    assert item["update"] == {"status": "success"}, item
    assert "metrics_patch" not in item
    assert "heartbeat" not in item


# ---- presence headers ------------------------------------------------------------------


async def test_every_batch_carries_the_sidecar_id_and_the_spools_oldest_time(
    make_sidecar: Any, recorder: RecordingUpstream, spool_dir: Path
) -> None:
    recorder.down = True
    sidecar = await make_sidecar(recorder.url)
    first, second = make_run(), make_run()
    await sidecar.create(first)
    await asyncio.sleep(0.01)
    await sidecar.create(second)
    await wait_until(lambda: _at_least(recorder, 2), "batches to be tried during the outage")
    sidecar_id = (await asyncio.to_thread((spool_dir / SIDECAR_ID_FILE).read_text)).strip()
    assert re.fullmatch(r"[0-9a-f]{32}", sidecar_id)
    tried = list(recorder.batches)
    presence = (await sidecar.health())["presence"]
    assert presence["sidecar_id"] == sidecar_id
    assert presence["sidecar_id_persisted"] is True
    assert presence["queued_since"] == tried[-1].headers["X-Spoold-Queued-Since"]
    # Restarted during the outage: the same id, and the same oldest time.
    await sidecar.close()
    sidecar = await make_sidecar(recorder.url)
    await wait_until(lambda: _at_least(recorder, len(tried) + 2), "batches after the restart")
    recorder.down = False
    await sidecar.wait_drained()
    oldest = recorder.items(first["event_id"])[0]["seen_at"]  # its create's accepted_at
    assert oldest < recorder.items(second["event_id"])[0]["seen_at"]
    for batch in recorder.batches:
        assert batch.headers["X-Spoold-Id"] == sidecar_id
        if batch.body:
            assert batch.headers["X-Spoold-Queued-Since"] == oldest, batch.body
    # Drained: a later batch says the spool is empty (no header).
    run = make_run()
    await sidecar.create(run)
    await sidecar.wait_drained()
    last = [b for b in recorder.batches if b.body and b.body[0]["event_id"] == run["event_id"]]
    assert (
        last[-1].headers["X-Spoold-Queued-Since"] == recorder.items(run["event_id"])[0]["seen_at"]
    )


async def test_an_idle_sidecar_sends_presence_batches_with_an_empty_spool(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url, presence_interval_s=0.2)
    await wait_until(lambda: _at_least(recorder, 2), "presence batches", timeout_s=10)
    for batch in recorder.batches:
        assert batch.body == []
        assert batch.query == {"mode": "upsert"}
        assert ID_RE.fullmatch(batch.headers["X-Spoold-Id"])
        assert "X-Spoold-Queued-Since" not in batch.headers
    assert (await counters(sidecar))["accepted"] == 0


async def test_a_busy_sidecar_sends_no_presence_batch(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url, presence_interval_s=1.0)
    for _ in range(8):
        await sidecar.create(make_run())
        await asyncio.sleep(0.1)
    await sidecar.wait_drained()
    assert not [b for b in recorder.batches if b.body == []]


async def test_a_corrupt_sidecar_id_file_is_replaced_and_never_sent(
    make_sidecar: Any, recorder: RecordingUpstream, spool_dir: Path
) -> None:
    await asyncio.to_thread(_plant, spool_dir / SIDECAR_ID_FILE, b"abc\r\nX-Injected: 1\r\n")
    sidecar = await make_sidecar(recorder.url)
    await sidecar.create(make_run())
    await sidecar.wait_drained()
    sent = {b.headers["X-Spoold-Id"] for b in recorder.batches}
    assert len(sent) == 1
    assert ID_RE.fullmatch(sent.pop() or "")
    assert all("X-Injected" not in b.headers for b in recorder.batches)
    kept = await asyncio.to_thread((spool_dir / SIDECAR_ID_FILE).read_text)
    assert re.fullmatch(r"[0-9a-f]{32}\n", kept)


# ---- reads -----------------------------------------------------------------------------


async def test_the_list_passes_stale_through(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    reply = await sidecar.get("/api/v1/runs", params={"stale": "true", "agent_name": "a"})
    assert reply.status == 200
    [read] = [r for r in recorder.requests if r.path == "/api/v1/runs"]
    assert read.query == {"stale": "true", "agent_name": "a"}


async def test_spoolds_openapi_document_has_the_heartbeat(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    document = (await sidecar.get("/openapi.json")).body
    op = document["paths"]["/api/v1/runs/{event_id}/heartbeat"]["post"]
    assert {"202", "204", "404", "413", "422"} <= set(op["responses"])
    assert "HeartbeatBody" in document["components"]["schemas"]


# ---- helpers ---------------------------------------------------------------------------


async def _at_least(recorder: RecordingUpstream, n: int) -> bool:
    return len(recorder.batches) >= n


def _plant(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)


def _unix(instant: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(instant).timestamp()


# ---- the presence beacon's answers -----------------------------------------------------


@pytest.mark.parametrize("trouble", ["foreign", "down", "wrong-total"])
async def test_only_the_servers_own_answer_to_a_presence_batch_is_contact(
    recorder: RecordingUpstream, trouble: str
) -> None:
    import aiohttp

    from spoold.forward.presence import PresenceBeacon
    from spoold.upstream.client import UpstreamClient

    async with aiohttp.ClientSession() as session:
        client = UpstreamClient(
            session,
            recorder.url,
            token=None,
            batch_timeout_s=2,
            lookup_timeout_s=2,
            presence=lambda: {"X-Spoold-Id": "test-sidecar"},
        )
        beacon = PresenceBeacon(client, 30)
        assert await beacon.send_once()
        assert client.last_contact is not None
        client.last_contact = None
        if trouble == "foreign":
            recorder.foreign = True
        elif trouble == "down":
            recorder.down = True
        else:
            recorder._apply = lambda items: {  # type: ignore[method-assign]
                "inserted": 0,
                "updated": 0,
                "duplicates": 0,
                "errors": [],
                "total": 1,
            }
        assert not await beacon.send_once()
        assert client.last_contact is None
        assert beacon.stats.failed == 1
        assert beacon.stats.answered == 1
        assert beacon.due_in() > 0  # start-up counts: never a tight loop
    assert [b.headers["X-Spoold-Id"] for b in recorder.batches] == ["test-sidecar"] * 2


async def test_heartbeats_are_counted_in_spoolds_metrics_like_other_writes(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    sidecar = await make_sidecar(recorder.url)
    run = make_run()
    await sidecar.create(run)
    for _ in range(3):
        assert (await beat(sidecar, run["event_id"]))[0] == 204
    assert (await beat(sidecar, run["event_id"], {"progress": 1}))[0] == 422
    await sidecar.wait_drained()
    async with sidecar.client.get("/metrics", headers={"Accept": "text/plain"}) as response:
        text = (await response.read()).decode()
    beats = (
        'spoold_http_requests_total{method="POST",'
        'route="/api/v1/runs/{event_id}/heartbeat",status="204"} 3.0'
    )
    assert beats in text, text
    assert re.search(r"spoold_accepted(_total)? 4\.0", text), text
    assert re.search(r"spoold_forwarded(_total)? 4\.0", text), text
    assert re.search(r'spoold_\w*rejected\w*{reason="invalid"} 1\.0', text), text


async def test_a_queued_runs_progress_is_read_back_from_spoold(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    recorder.down = True
    sidecar = await make_sidecar(recorder.url)
    run = make_run(metrics_json={"pct": 0, "stage": {"name": "fetch", "tries": 1}})
    await sidecar.create(run)
    status, _ = await beat(
        sidecar, run["event_id"], {"progress": {"pct": 40, "stage": {"tries": None}}}
    )
    assert status == 204
    reply = await sidecar.get(f"/api/v1/runs/{run['event_id']}")
    assert reply.status == 200
    assert reply.body["metrics_json"] == {"pct": 40, "stage": {"name": "fetch"}}
    assert "progress" not in reply.body


async def test_a_write_that_waited_for_its_lookup_is_not_older_than_the_header(
    make_sidecar: Any, recorder: RecordingUpstream
) -> None:
    """A heartbeat of a run spoold does not know waits for the server's answer; writes
    accepted meanwhile are spooled before it. Stamped at its request, it would sit in
    the spool older than ``X-Spoold-Queued-Since`` (read from the oldest group): the
    server could reap its run while it is queued."""
    recorder.known.add("made-elsewhere")
    recorder.batches_down = True
    recorder.lookup_delay_s = 0.5
    sidecar = await make_sidecar(recorder.url)
    slow = asyncio.ensure_future(beat(sidecar, "made-elsewhere", {"progress": {"n": 1}}))
    await asyncio.sleep(0.1)  # its lookup is on the way
    others = [make_run() for _ in range(3)]
    for run in others:
        await sidecar.create(run)
    assert (await slow)[0] == 204

    async def others_tried() -> bool:
        first = others[0]["event_id"]
        return any(b.body and b.body[0]["event_id"] == first for b in recorder.batches)

    await wait_until(others_tried, "the others to be tried")
    told = (await sidecar.health())["presence"]["queued_since"]
    headers = [b.headers.get("X-Spoold-Queued-Since") for b in recorder.batches if b.body]
    recorder.batches_down = False
    await sidecar.wait_drained()
    [item] = recorder.items("made-elsewhere")
    assert told is not None
    assert told <= item["seen_at"], (told, item["seen_at"])
    assert all(h is not None and h <= item["seen_at"] for h in headers), headers
    for run in others:
        assert recorder.items(run["event_id"])[0]["seen_at"] >= told
