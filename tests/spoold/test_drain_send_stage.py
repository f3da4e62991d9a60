"""The drain's send stage alone, against a real HTTP server on 127.0.0.1.

It passes rounds on in the order they came, hands a round on only once the record
stage is done with the previous one, moves nothing on an answer that is not the
server's (a 2xx with a wrong body), dead-letters the lone operation the server refuses,
and - stopped while a round is in flight - keeps that round for the drainer to give
back to the spool (nothing acked, nothing lost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from spool_helpers import SpoolFactory, op

from spoold.forward.drainer import Drainer
from spoold.forward.handoff import LocalFaults, Slot, StopClock, Stopped
from spoold.forward.read import ReadStage
from spoold.forward.rounds import Delivered, DrainStats, Round
from spoold.forward.send import SendStage
from spoold.spool import DeadLetterStore, Spool
from spoold.spool.writegate import WriteGate
from spoold.upstream.client import UpstreamClient
from spoold.upstream.retry import Backoff
from spoold.upstream.status import UpstreamStatus

BACKOFF = Backoff(base_s=0.01, cap_s=0.02)
Answer = Callable[[list[dict[str, Any]]], web.Response]


def server_answer(batch: list[dict[str, Any]]) -> web.Response:
    body = {
        "inserted": len(batch),
        "updated": 0,
        "duplicates": 0,
        "errors": [],
        "total": len(batch),
    }
    return web.json_response(body)


@dataclass
class Upstream:
    """A batch endpoint on 127.0.0.1 whose answers the test chooses."""

    answer: Answer = server_answer
    batches: list[list[dict[str, Any]]] = field(default_factory=list)
    hold: asyncio.Event | None = None  # set: answer; unset: the request waits
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        batch = orjson.loads(await request.read())
        self.batches.append(batch)
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        return self.answer(batch)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    served = Upstream()
    app = web.Application()
    app.router.add_post("/api/v1/runs/batch", served.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    served.url = f"http://127.0.0.1:{port}"
    try:
        yield served
    finally:
        if served.hold is not None:
            served.hold.set()
        await runner.cleanup()


@pytest.fixture
async def client(upstream: Upstream) -> AsyncIterator[UpstreamClient]:
    async with aiohttp.ClientSession() as session:
        yield UpstreamClient(
            session, upstream.url, token=None, batch_timeout_s=5.0, lookup_timeout_s=1.0
        )


@dataclass
class Pipe:
    """A send stage between two slots, with a real spool to read rounds from."""

    stage: SendStage
    inbox: Slot[Round]
    out: Slot[Delivered]
    clock: StopClock
    status: UpstreamStatus
    stats: DrainStats
    reader: ReadStage


def make_pipe(spool: Spool, client: UpstreamClient, letters: DeadLetterStore) -> Pipe:
    inbox: Slot[Round] = Slot()
    out: Slot[Delivered] = Slot()
    clock = StopClock()
    faults = LocalFaults(BACKOFF, clock)
    status = UpstreamStatus(url=client.base_url)
    stats = DrainStats()
    stage = SendStage(
        inbox, out, client, status, letters, stats, clock, faults, WriteGate(), backoff=BACKOFF
    )
    reader = ReadStage(
        spool,
        inbox,
        clock,
        faults,
        None,  # type: ignore[arg-type]  # rounds are read by hand here
        None,  # type: ignore[arg-type]
        batch_size=2,
        batch_max_bytes=1 << 20,
    )
    return Pipe(stage, inbox, out, clock, status, stats, reader)


@pytest.fixture
def letters(tmp_path: Path) -> AsyncIterator[DeadLetterStore]:
    with DeadLetterStore(tmp_path / "deadletter.db") as store:
        yield store  # type: ignore[misc]


async def test_rounds_are_sent_and_handed_on_in_order_one_record_at_a_time(
    make_spool: SpoolFactory, client: UpstreamClient, upstream: Upstream, letters: DeadLetterStore
) -> None:
    spool = make_spool()
    for i in range(6):
        spool.put_group([op(i)])
    pipe = make_pipe(spool, client, letters)
    sending = asyncio.create_task(pipe.stage.run())

    async def read() -> None:
        for _ in range(3):
            await pipe.inbox.put(pipe.reader.read_round())
        await pipe.inbox.put(None)

    reading = asyncio.create_task(read())
    handed: list[list[str]] = []
    for _ in range(3):
        delivered = await asyncio.wait_for(pipe.out.hold(), 5)
        assert delivered is not None
        handed.append(delivered.event_ids)
        await asyncio.sleep(0.05)  # the record takes a while: nothing more is handed on
        assert pipe.out.held is delivered
        pipe.out.release()
    assert await asyncio.wait_for(pipe.out.hold(), 5) is None  # the end, passed on
    pipe.out.release()
    await asyncio.wait_for(sending, 5)
    await asyncio.wait_for(reading, 5)
    assert handed == [["ev-0", "ev-1"], ["ev-2", "ev-3"], ["ev-4", "ev-5"]]
    sent = [item["event_id"] for batch in upstream.batches for item in batch]
    assert sent == [f"ev-{i}" for i in range(6)]
    assert pipe.stats.batches == 3


async def test_a_2xx_with_a_wrong_body_moves_nothing(
    make_spool: SpoolFactory, client: UpstreamClient, upstream: Upstream, letters: DeadLetterStore
) -> None:
    """200 {"ok": true} (another service at the upstream URL): retried, /health says so,
    and the round is handed on only once the server's own answer comes."""
    upstream.answer = lambda batch: web.json_response({"ok": True, "total": len(batch)})
    spool = make_spool()
    spool.put_group([op(1), op(2)])
    pipe = make_pipe(spool, client, letters)
    sending = asyncio.create_task(pipe.stage.run())
    await pipe.inbox.put(pipe.reader.read_round())
    for _ in range(200):  # bounded: a few retries come within a second
        if len(upstream.batches) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(upstream.batches) >= 3
    assert pipe.out.empty, "a wrong 2xx body handed the round on as delivered"
    assert pipe.status.unexpected_answer is not None
    assert pipe.stats.batches == 0
    upstream.answer = server_answer
    delivered = await asyncio.wait_for(pipe.out.hold(), 5)
    assert delivered is not None
    assert delivered.event_ids == ["ev-1", "ev-2"]
    assert delivered.dead == frozenset()
    assert pipe.status.unexpected_answer is None
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)


async def test_the_lone_operation_the_server_refuses_is_dead_lettered(
    make_spool: SpoolFactory, client: UpstreamClient, upstream: Upstream, letters: DeadLetterStore
) -> None:
    def refuse_ev_2(batch: list[dict[str, Any]]) -> web.Response:
        if any(item["event_id"] == "ev-2" for item in batch):
            error = {"detail": "bad field", "error": "validation_error"}
            return web.json_response(error, status=422)
        return server_answer(batch)

    upstream.answer = refuse_ev_2
    spool = make_spool()
    spool.put_group([op(1), op(2), op(3)])
    pipe = make_pipe(spool, client, letters)
    pipe.reader._batch_size = 10  # one round of three
    sending = asyncio.create_task(pipe.stage.run())
    await pipe.inbox.put(pipe.reader.read_round())
    delivered = await asyncio.wait_for(pipe.out.hold(), 5)
    assert delivered is not None
    assert delivered.dead == frozenset({1})
    assert [letter.op["event_id"] for letter in letters.list()] == ["ev-2"]
    assert pipe.stats.dead_lettered == 1
    assert pipe.stats.dead_lettered_by_reason == {"item_refused": 1}
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)


async def test_stopped_while_a_round_is_in_flight_the_stage_keeps_it(
    make_spool: SpoolFactory, client: UpstreamClient, upstream: Upstream, letters: DeadLetterStore
) -> None:
    upstream.hold = asyncio.Event()  # the server never answers
    spool = make_spool()
    spool.put_group([op(1)])
    pipe = make_pipe(spool, client, letters)
    sending = asyncio.create_task(pipe.stage.run())
    round_ = pipe.reader.read_round()
    await pipe.inbox.put(round_)
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    pipe.clock.stop_by(0.2)
    with pytest.raises(Stopped):
        await asyncio.wait_for(sending, 5)
    assert pipe.stage.holding is round_  # for the drainer to give back
    assert pipe.out.empty
    assert pipe.status.in_flight_batches == 0


@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_a_round_in_flight_at_shutdown_goes_back_to_the_spool(
    make_spool: SpoolFactory,
    client: UpstreamClient,
    upstream: Upstream,
    letters: DeadLetterStore,
    how: str,
) -> None:
    """The whole drainer, stopped by its deadline or cancelled (the app's last resort)
    while the server holds its batch: the round and the one read ahead are back in the
    spool, in FIFO order, nothing acked; the drainer ends within a bounded time."""
    upstream.hold = asyncio.Event()
    spool = make_spool()
    for i in range(4):
        spool.put_group([op(i)])
    index = SimpleNamespace(gate=WriteGate())  # nothing is recorded in this test
    drainer = Drainer(
        spool,
        letters,
        index,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        client,
        UpstreamStatus(url=client.base_url),
        batch_size=2,
        batch_max_bytes=1 << 20,
        backoff=BACKOFF,
    )
    task = asyncio.create_task(drainer.run())
    await asyncio.wait_for(upstream.arrived.wait(), 5)
    for _ in range(200):  # the next round is read ahead meanwhile (bounded)
        if drainer._to_send.held is not None:
            break
        await asyncio.sleep(0.01)
    assert drainer._to_send.held is not None
    started = time.monotonic()
    if how == "deadline":
        drainer.stop_by(0.2)
        await asyncio.wait_for(task, 5)
    else:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled()
    assert time.monotonic() - started < 3
    assert [item["event_id"] for item in upstream.batches[0]] == ["ev-0", "ev-1"]
    assert spool.stats().depth_ops == 4  # nothing acked
    again = spool.get_groups(10)
    assert [o["seq"] for g in again for o in g.ops] == [0, 1, 2, 3]
