"""spoold's status page never shows the upstream's credentials: not in the URL it
names, nor in the last error the drainer recorded."""

from __future__ import annotations

from typing import Any

from sidecar_helpers import make_run, wait_until


async def test_credentials_in_the_upstream_url_and_the_token_are_never_shown(
    dead_url: str, make_sidecar: Any
) -> None:
    secret_url = dead_url.replace("http://", "http://fleet-user:pa55-w0rd-secret@")
    sidecar = await make_sidecar(secret_url)
    await sidecar.create(make_run())

    async def failing() -> bool:
        return (await sidecar.health())["upstream"]["reachable"] is False

    await wait_until(failing, "the upstream failure to show")
    async with sidecar.client.get("/ui/", headers={"Accept": "text/html"}) as response:
        text = await response.text()
        assert response.status == 200, text[:500]
    assert "Cannot connect" in text  # the last error is shown...
    for secret in ("pa55-w0rd-secret", "fleet-user"):
        assert secret not in text, secret  # ...without a credential
    assert dead_url.removeprefix("http://") in text
