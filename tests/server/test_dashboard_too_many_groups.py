"""A fleet with more job types than a stats answer may hold (``MAX_GROUPS``) gets a page
that says so on every dashboard page that summarises job types, never a 500."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import ServerConfig
from server.storage import stats

HTML = {"Accept": "text/html"}


async def test_more_job_types_than_a_summary_holds_is_a_clear_page(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    make_config: Callable[..., ServerConfig],
    new_run: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await aiohttp_client(create_app(make_config(reaper_interval_s=86_400)))
    started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    runs = [new_run(job_type=f"job-{n}", status="success", start_time=started) for n in range(6)]
    async with client.post("/api/v1/runs/batch", json=runs) as reply:
        assert reply.status == 200
    monkeypatch.setattr(stats, "MAX_GROUPS", 3)
    for path in ("/ui/", "/ui/?window=7d", "/ui/jobs", "/ui/jobs?window=7d"):
        async with client.get(path, headers=HTML) as reply:
            text = await reply.text()
            assert reply.status in (200, 422), (path, reply.status, text[:500])
            if reply.status == 422:
                assert "groups" in text
                assert "Internal error" not in text
    async with client.get("/ui/", headers=HTML) as reply:
        assert reply.status == 422
