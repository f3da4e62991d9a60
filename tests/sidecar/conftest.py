"""Fixtures for the sidecar tests: the real central server on a real port, a scriptable
upstream in front of it, and spoold itself (restartable on the same spool directory)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from ports import free_port
from sidecar_helpers import Api, FakeUpstream, Sidecar

from server.app import create_app as create_server_app
from server.config import ServerConfig
from spoold.app import create_app as create_sidecar_app
from spoold.config import SpooldConfig


@dataclass
class Central:
    """The real telemetry server: ``api`` talks to it directly."""

    server: TestServer
    api: Api

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        await self.api.close()
        await self.server.close()


StartCentral = Callable[..., Awaitable[Central]]
MakeSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
def start_central(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> StartCentral:
    """Start the real server (on a given port, e.g. one spoold already points at; settings
    override its ServerConfig, e.g. a small max_body_bytes)."""

    async def start(port: int | None = None, **settings: Any) -> Central:
        config = ServerConfig(
            db_path=tmp_path / "central.sqlite", synchronous="OFF", reader_threads=2, **settings
        )
        server = await aiohttp_server(create_server_app(config), port=port)
        return Central(server, Api(await aiohttp_client(server)))

    return start


@pytest.fixture
async def central(start_central: StartCentral) -> Central:
    return await start_central()


@pytest.fixture
def dead_url() -> str:
    """An upstream URL on 127.0.0.1 where nothing listens (yet)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def fake(aiohttp_server: Any, central: Central) -> FakeUpstream:
    """A scriptable upstream that proxies to the real server unless told otherwise."""
    upstream = FakeUpstream(target=central.url)
    server = await aiohttp_server(upstream.app())
    upstream.url = f"http://127.0.0.1:{server.port}"
    return upstream


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_sidecar(aiohttp_client: Any, spool_dir: Path) -> MakeSidecar:
    """Start spoold on spool_dir against upstream_url; call again after close() to restart."""

    async def make(upstream_url: str, **overrides: Any) -> Sidecar:
        values: dict[str, Any] = {
            "spool_dir": spool_dir,
            "upstream_url": upstream_url,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "min_free_disk_mb": 0,
            "shutdown_deadline_s": 0.2,
            "lookup_timeout_s": 1.0,
            "upstream_timeout_s": 3.0,
            "group_window_ms": 1.0,
        }
        values.update(overrides)
        client = await aiohttp_client(create_sidecar_app(SpooldConfig(**values)))
        return Sidecar(client)

    return make
