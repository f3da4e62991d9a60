"""The export through spoold: the server's stream relayed chunk by chunk, errors as they are."""

from __future__ import annotations

from typing import Any

import orjson
from sidecar_helpers import make_run

EXPORT = "/api/v1/runs/export"


async def test_export_through_spoold_is_the_servers_stream(central: Any, make_sidecar: Any) -> None:
    runs = [make_run(error_details="z" * 500, item_name=f'a,"b"\n{n}') for n in range(3000)]
    for start in range(0, 3000, 1000):
        reply = await central.api.post("/api/v1/runs/batch", json=runs[start : start + 1000])
        assert reply.status == 200
    sidecar = await make_sidecar(central.url)
    for fmt in ("ndjson", "csv"):
        async with central.api.client.get(EXPORT, params={"format": fmt}) as direct:
            expected = await direct.read()
        async with sidecar.client.get(EXPORT, params={"format": fmt}) as relayed:
            assert relayed.status == 200
            # streamed, not buffered: chunked, with no length known up front
            assert "Content-Length" not in relayed.headers
            assert relayed.headers["Transfer-Encoding"] == "chunked"
            assert relayed.headers["Content-Type"] == direct.headers["Content-Type"]
            assert relayed.headers["Content-Disposition"] == f'attachment; filename="runs.{fmt}"'
            body = await relayed.read()
        assert body == expected


async def test_filters_and_errors_are_relayed(central: Any, make_sidecar: Any) -> None:
    await central.api.create(make_run(agent_name="only-me"))
    await central.api.create(make_run(agent_name="someone-else"))
    sidecar = await make_sidecar(central.url)
    async with sidecar.client.get(EXPORT, params={"agent_name": "only-me"}) as relayed:
        lines = (await relayed.read()).splitlines()
    assert [orjson.loads(line)["agent_name"] for line in lines] == ["only-me"]
    bad = await sidecar.get(EXPORT, params={"format": "xml"})
    assert bad.status == 422
    assert bad.body["error"] == "validation_error"


async def test_export_with_the_server_down_is_503(dead_url: str, make_sidecar: Any) -> None:
    sidecar = await make_sidecar(dead_url)
    reply = await sidecar.get(EXPORT)
    assert reply.status == 503
    assert "Retry-After" in reply.headers
