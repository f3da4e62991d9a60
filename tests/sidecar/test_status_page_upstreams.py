"""With several upstreams, /health and the status page list each one: its URL (never its
credentials), its state, which one is in use, its last error."""

from __future__ import annotations

from typing import Any

from sidecar_helpers import make_run, wait_until


async def test_health_and_page_list_each_upstream_and_the_one_in_use(
    dead_url: str, central: Any, make_sidecar: Any
) -> None:
    """The preferred upstream is down: runs go to the second; both are listed, the first
    as down with its error, the second as the one in use; /health keeps its fields."""
    secret = dead_url.replace("http://", "http://fleet-user:pa55-w0rd-secret@")
    sidecar = await make_sidecar(f"{secret},{central.url}")
    run = make_run()
    await sidecar.create(run)

    async def delivered() -> bool:
        body = await sidecar.health()
        return bool(body["counters"]["forwarded"] == 1)

    await wait_until(delivered, "the run to reach the second upstream")
    body = await sidecar.health()
    upstream = body["upstream"]
    assert upstream["url"] == central.url  # the one in use
    assert upstream["reachable"] is True
    assert upstream["current"] == 1
    first, second = upstream["upstreams"]
    assert first["url"] == dead_url
    assert (first["state"], first["problem"], first["current"]) == ("down", "unreachable", False)
    assert "Cannot connect" in first["error"]
    assert (second["state"], second["current"], second["error"]) == ("up", True, None)
    assert second["last_success"] is not None
    assert body["status"] == "degraded"
    assert f"upstream 1 of 2 ({dead_url}) is down" in " ".join(body["reasons"])

    async with sidecar.client.get("/ui/", headers={"Accept": "text/html"}) as response:
        text = await response.text()
        assert response.status == 200, text[:500]
    assert "Upstreams, most preferred first" in text
    assert "yes: batches go here" in text
    assert "down: unreachable" in text
    for leak in ("pa55-w0rd-secret", "fleet-user"):
        assert leak not in text
        assert leak not in str(body)
