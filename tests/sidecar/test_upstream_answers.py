"""Only this server's answers move the queue: a 2xx is delivery only when it is the batch
answer and its counts add up; a 4xx splits or dead-letters only when it is the server's
error JSON. Anything else - another service, a proxy, a server without mode=upsert - is
retried with back-off and shown on /health, and nothing is acknowledged or lost."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from sidecar_helpers import FakeUpstream, answer, make_run, proxy, wait_until

from spoold.upstream.answers import batch_answer_problem, is_server_error

FOREIGN: dict[str, tuple[int, bytes, str]] = {
    "200 {ok: true}": (200, b'{"ok": true}', "application/json"),
    "200 html": (200, b"<html><body>Welcome to nginx!</body></html>", "text/html"),
    "200 empty": (200, b"", "application/json"),
    "200 counts do not add up": (
        200,
        b'{"inserted": 0, "updated": 0, "duplicates": 0, "errors": [], "total": 0}',
        "application/json",
    ),
    "422 non-server json": (
        422,
        b'{"detail": [{"loc": ["query", "mode"], "msg": "unexpected value", "type": "enum"}]}',
        "application/json",
    ),
    "422 the server's own, about the query": (
        422,
        b'{"detail": [{"loc": ["query", "mode"], "msg": "mode must be \'insert\' or '
        b'\'upsert\'", "type": "enum"}], "error": "validation_error"}',
        "application/json",
    ),
    "400 text": (400, b"Bad Request", "text/plain"),
    "413 html from a proxy": (
        413,
        b"<html><head><title>413 Request Entity Too Large</title></head></html>",
        "text/html",
    ),
    "400 json with a foreign error code": (
        400,
        b'{"detail": "nope", "error": "not_one_of_ours"}',
        "application/json",
    ),
}


def foreign_service(
    status: int, body: bytes, content_type: str
) -> tuple[web.Application, list[str]]:
    """Some other HTTP service (or a proxy) where the server should be, and what it saw."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        await request.read()
        seen.append(f"{request.method} {request.path}")
        return web.Response(body=body, status=status, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    return app, seen


@pytest.mark.parametrize("name", list(FOREIGN))
async def test_a_foreign_answer_acks_nothing_then_the_real_server_gets_everything(
    name, aiohttp_server, make_sidecar, start_central
):
    status, body, content_type = FOREIGN[name]
    app, seen = foreign_service(status, body, content_type)
    foreign = await aiohttp_server(app)
    port = foreign.port
    sidecar = await make_sidecar(f"http://127.0.0.1:{port}")
    runs = [make_run() for _ in range(3)]
    for run in runs:
        await sidecar.create(run)
        patched = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"status": "success"})
        assert patched.status == 200

    async def retried() -> bool:
        return sum(1 for line in seen if line.startswith("POST")) >= 3

    await wait_until(retried, "spoold to retry the foreign answer")
    health = await sidecar.health()
    assert health["status"] == "unhealthy", health
    assert any("unexpected answer" in reason for reason in health["reasons"]), health["reasons"]
    assert health["spool"]["depth"] == 6
    assert health["spool"]["dead_letters"] == 0
    assert health["counters"]["forwarded"] == 0
    assert health["counters"]["dead_lettered"] == 0
    await foreign.close()
    central = await start_central(port=port)
    health = await sidecar.wait_drained()
    assert health["counters"]["forwarded"] == 6
    assert health["spool"]["dead_letters"] == 0
    assert health["status"] == "ok", health
    for run in runs:
        assert (await central.api.run(run["event_id"]))["status"] == "success"


async def test_a_per_item_error_answer_whose_counts_add_up_still_dead_letters_that_item(
    fake: FakeUpstream, make_sidecar, central
):
    """The real server's answer shape with an item error is honoured (regression guard)."""
    run = make_run()
    refused = {
        "inserted": 0,
        "updated": 0,
        "duplicates": 0,
        "errors": [{"index": 0, "event_id": run["event_id"], "message": "refused"}],
        "total": 1,
    }
    fake.script(answer(200, refused))
    sidecar = await make_sidecar(fake.url)
    await sidecar.create(run)
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 1
    assert health["status"] == "degraded"


async def test_a_400_from_the_server_itself_still_isolates_the_bad_item(
    fake: FakeUpstream, make_sidecar, central
):
    """The server's own error JSON (malformed_json) for a batch: split until it stands alone."""
    good, bad = make_run(), make_run()

    async def refuse_bad(up: FakeUpstream, request: web.Request, raw: bytes) -> Any:
        if any(item["event_id"] == bad["event_id"] for item in orjson.loads(raw)):
            return web.json_response(
                {"detail": "JSON nested deeper than 32 levels", "error": "malformed_json"},
                status=400,
            )
        return await proxy(up, request, raw)

    fake.batch_default = refuse_bad
    sidecar = await make_sidecar(fake.url, upstream_timeout_s=3.0)
    await sidecar.post("/api/v1/runs/batch", json=[good, bad])
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 1
    assert (await central.api.get(f"/api/v1/runs/{good['event_id']}")).status == 200


# ---- the classification itself ------------------------------------------------------------


def _answer(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inserted": 1, "updated": 1, "duplicates": 0, "errors": [], "total": 2}
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("body", "items", "problem"),
    [
        (_answer(), 2, None),
        (_answer(errors=[{"index": 1, "event_id": "x", "message": "m"}], updated=0), 2, None),
        (_answer(total=3), 2, "total"),
        (_answer(inserted=2), 2, "add up"),
        (_answer(inserted=-1, updated=3), 2, "inserted"),
        (_answer(inserted=True), 2, "inserted"),
        (_answer(errors=[{"index": 5, "message": "m"}], updated=0), 2, "index"),
        (_answer(errors=[{"index": 0, "message": "m"}, {"index": 0, "message": "m"}]), 2, "add up"),
        (_answer(errors="none"), 2, "errors"),
        ({"ok": True}, 2, "inserted"),
        ([], 2, "object"),
        (None, 2, "object"),
    ],
)
def test_batch_answer_problem(body, items, problem):
    found = batch_answer_problem(body, items)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found, found


@pytest.mark.parametrize(
    ("status", "body", "ours"),
    [
        (413, {"detail": "request body too large", "error": "payload_too_large"}, True),
        (400, {"detail": "JSON nested deeper", "error": "malformed_json"}, True),
        (422, {"detail": [{"loc": ["body"], "msg": "m"}], "error": "validation_error"}, True),
        (413, {"detail": "too large"}, False),
        (400, {"detail": "x", "error": "payload_too_large"}, False),
        (422, {"detail": [{"loc": ["body"], "msg": "m", "type": "t"}]}, False),
        (400, "Bad Request", False),
        (400, None, False),
    ],
)
def test_is_server_error(status, body, ours):
    assert is_server_error(status, body) is ours


async def test_a_foreign_404_for_a_run_lookup_queues_the_update_instead_of_refusing_it(
    aiohttp_server, make_sidecar, start_central
):
    """Only the server's own 404 means "no such run": a proxy's 404 page for the look-up
    leaves the update queued (202), and it is applied once the real server answers."""
    run = make_run()
    first = await start_central()
    await first.api.create(run)
    await first.stop()
    app, _ = foreign_service(404, b"<html>404 Not Found</html>", "text/html")
    foreign = await aiohttp_server(app)
    port = foreign.port
    sidecar = await make_sidecar(f"http://127.0.0.1:{port}")
    reply = await sidecar.patch(f"/api/v1/runs/{run['event_id']}", json={"items_failed": 4})
    assert reply.status == 202, reply.body
    assert reply.body["queued"] is True
    await foreign.close()
    central = await start_central(port=port)  # same database: the run is there
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    assert (await central.api.run(run["event_id"]))["items_failed"] == 4
