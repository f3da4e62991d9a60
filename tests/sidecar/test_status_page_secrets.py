"""spoold's status page never shows the upstream's credentials: not in the URL it
names, nor in the last error the drainer recorded."""

from __future__ import annotations

from typing import Any

import pytest
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


def test_credentials_in_the_upstream_url_with_a_token_are_refused_at_start() -> None:
    """Both make aiohttp refuse every request ("Cannot combine AUTHORIZATION header with
    ... credentials encoded in URL"): spoold queued forever while its status page said
    "not contacted yet, 0 failures". The start is refused instead, naming the variable."""
    from spoold.config import ConfigError, SpooldConfig

    with pytest.raises(ConfigError) as caught:
        SpooldConfig.from_env(
            {
                "SPOOLD_UPSTREAM_URL": "http://fleet-user:s3cr3t-pw@127.0.0.1:8766",
                "SPOOLD_UPSTREAM_TOKEN": "t0ken",
            }
        )
    assert "SPOOLD_UPSTREAM_URL" in str(caught.value)
    assert "s3cr3t-pw" not in str(caught.value)  # the message does not repeat the secret
    SpooldConfig.from_env(
        {"SPOOLD_UPSTREAM_URL": "http://127.0.0.1:8766", "SPOOLD_UPSTREAM_TOKEN": "t"}
    )
