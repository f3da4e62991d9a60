"""UpstreamClient with several upstreams, over real sockets on 127.0.0.1: which answers move
a batch to the next upstream, which do not, one attempt at a time, and what the caller
(the drainer) gets back when every one failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from spoold.upstream.client import UpstreamClient
from spoold.upstream.retry import Backoff

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BATCH = b'[{"event_id": "e1", "create": {}}]'


@dataclass
class Upstream:
    """A small HTTP service on 127.0.0.1 that answers batches with ``answer`` and logs them."""

    answer: Handler
    posts: list[tuple[float, float]] = field(default_factory=list)  # (start, end) monotonic
    healthy: bool = True
    server: TestServer | None = None

    async def start(self) -> str:
        async def batch(request: web.Request) -> web.StreamResponse:
            started = time.monotonic()
            try:
                return await self.answer(request)
            finally:
                self.posts.append((started, time.monotonic()))

        async def health(_: web.Request) -> web.Response:
            if self.healthy:
                return web.json_response({"status": "ok", "version": "test"})
            return web.json_response({"status": "unhealthy"}, status=503)

        app = web.Application()
        app.router.add_post("/api/v1/runs/batch", batch)
        app.router.add_get("/health", health)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("")).rstrip("/")

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


async def accepted(request: web.Request) -> web.Response:
    items = await request.json()
    return web.json_response(
        {"inserted": len(items), "updated": 0, "duplicates": 0, "errors": [], "total": len(items)}
    )


def status(code: int, *, retry_after: str | None = None, body: object = None) -> Handler:
    async def answer(_: web.Request) -> web.Response:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return web.json_response(body or {"detail": "x"}, status=code, headers=headers)

    return answer


async def foreign(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def slow(_: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({})


@pytest.fixture
async def pair() -> Callable[
    [Handler, Handler], Awaitable[tuple[UpstreamClient, Upstream, Upstream]]
]:
    made: list[Upstream] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(first: Handler, second: Handler) -> tuple[UpstreamClient, Upstream, Upstream]:
        a, b = Upstream(first), Upstream(second)
        made.extend((a, b))
        urls = [await a.start(), await b.start()]
        session = aiohttp.ClientSession()
        sessions.append(session)
        client = UpstreamClient(
            session,
            urls,
            token=None,
            batch_timeout_s=0.5,
            lookup_timeout_s=0.5,
            backoff=Backoff(base_s=0.05, cap_s=0.2),
        )
        return client, a, b

    yield make
    for session in sessions:
        await session.close()
    for upstream in made:
        await upstream.close()


SERVER_422 = {"detail": [{"loc": ["body", 0], "msg": "bad"}], "error": "validation_error"}


@pytest.mark.parametrize(
    ("first", "moves"),
    [
        pytest.param(status(503), True, id="503"),
        pytest.param(status(503, retry_after="1"), True, id="503-retry-after"),
        pytest.param(status(500), True, id="500"),
        pytest.param(status(429, retry_after="1"), True, id="429"),
        pytest.param(status(401), True, id="401-token-refused-there"),
        pytest.param(foreign, True, id="foreign-200"),
        pytest.param(status(404), True, id="a-proxy-404"),
        pytest.param(slow, True, id="timeout-after-sending"),
        pytest.param(status(422, body=SERVER_422), False, id="the-servers-own-422"),
        pytest.param(accepted, False, id="ok"),
    ],
)
async def test_what_moves_a_batch_to_the_next_upstream(
    pair: Callable[..., Awaitable[tuple[UpstreamClient, Upstream, Upstream]]],
    first: Handler,
    moves: bool,
) -> None:
    """Everything but the server's own answer moves the same batch on, at once; the
    server's refusal of the items stays (it is about the batch, not the upstream)."""
    client, a, b = await pair(first, accepted)
    answer = await client.send_batch(BATCH, 1)
    assert len(a.posts) == 1
    if moves:
        assert answer.verdict == "ok"
        assert len(b.posts) == 1
        assert client.selection.members[0].state == "down"
        assert client.selection.current == 1
        # One attempt at a time: B got the batch only after A's attempt ended (a timed-out
        # attempt's connection is closed first; the handler may still be running).
        assert b.posts[0][0] >= a.posts[0][0]
        if first is not slow:
            assert b.posts[0][0] >= a.posts[0][1]
    else:
        assert b.posts == []
        assert client.selection.members[0].state == "up"
        assert client.selection.current == 0
        assert answer.verdict == ("split" if first is not accepted else "ok")


async def test_when_every_upstream_fails_the_soonest_retry_after_is_returned(
    pair: Callable[..., Awaitable[tuple[UpstreamClient, Upstream, Upstream]]],
) -> None:
    """Both 503: the drainer gets a retry naming the last upstream, waiting the soonest
    Retry-After either asked for (and its own back-off when one did not ask)."""
    client, _a, _b = await pair(status(503, retry_after="30"), status(503, retry_after="2"))
    answer = await client.send_batch(BATCH, 1)
    assert (answer.verdict, answer.status, answer.retry_after_s) == ("retry", 503, 2.0)
    assert answer.cause.startswith(client.selection.members[1].url)
    assert [m.state for m in client.selection.members] == ["down", "down"]
    # All down: one attempt per call, to the one whose back-off ends first (B: 2 s < 30 s).
    assert client.selection.order() == [1]
    client2, _, _ = await pair(status(503, retry_after="30"), status(503))
    answer = await client2.send_batch(BATCH, 1)
    assert answer.retry_after_s is None


async def test_a_down_upstream_is_probed_and_taken_back_only_when_healthy(
    pair: Callable[..., Awaitable[tuple[UpstreamClient, Upstream, Upstream]]],
) -> None:
    """A fails a batch and answers /health 503: it stays out; once /health is ok, the next
    batch goes to A again (fail-back), without a batch sent to find out."""
    client, a, b = await pair(status(503), accepted)
    a.healthy = False
    await client.send_batch(BATCH, 1)
    assert client.selection.current == 1
    for _ in range(100):  # bounded: back-off 0.05-0.2 s
        await asyncio.sleep(0.05)
        await client.send_batch(BATCH, 1)  # starts the due probes
    assert client.selection.current == 1
    assert len(a.posts) == 1, "no batch to a down upstream while its probe fails"
    assert client.selection.members[0].failures > 1
    a.healthy = True
    a.answer = accepted
    for _ in range(100):
        await asyncio.sleep(0.05)
        if client.selection.current == 0:
            break
        await client.send_batch(BATCH, 1)
    assert client.selection.current == 0
    before = len(b.posts)
    await client.send_batch(BATCH, 1)
    assert len(b.posts) == before
    assert len(a.posts) == 2
    await client.close()


async def test_reads_go_to_the_current_upstream_and_past_one_that_does_not_answer(
    pair: Callable[..., Awaitable[tuple[UpstreamClient, Upstream, Upstream]]],
) -> None:
    """A read is relayed from the first upstream that answers at all (any status); an
    upstream that is gone is skipped; reads never change the selection."""
    client, a, _b = await pair(accepted, accepted)
    reply = await client.probe()
    assert reply.status == 200
    assert [m.state for m in client.selection.members] == ["up", "up"]
    assert a.server is not None
    await a.server.close()  # A is gone: refused
    reply = await client.read("/health", query=None, authorization=None)
    assert reply.status == 200
    assert client.selection.current == 0  # a read does not move the batches
    async with client.stream("/health", query=None, authorization=None) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"
