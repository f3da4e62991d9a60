"""Item totals past SQLite's 64-bit integers (each run's counters may be as large as
SQLITE_INT_MAX) are answered as JSON numbers, never a 500: the fuzzer found
``GET /api/v1/stats?created_after=...`` answering 500 ("Integer exceeds 64-bit range")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.contract.fields import SQLITE_INT_MAX


@pytest.mark.parametrize(
    "params",
    [
        {},  # the rollups
        {"created_after": "2000-01-01T00:00:00Z"},  # the runs themselves
        {"group_by": "job_type,day"},
        {"start_time_from": "2000-01-01T00:00:00Z", "group_by": "agent_name"},
    ],
)
async def test_totals_beyond_64_bits_are_numbers_not_a_500(
    api: Any, new_run: Any, params: dict[str, str]
) -> None:
    started = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    for status in ("success", "failure", "success"):
        await api.create(
            new_run(
                status=status,
                start_time=started,
                items_discovered=SQLITE_INT_MAX,
                items_succeeded=SQLITE_INT_MAX,
                items_failed=SQLITE_INT_MAX,
            )
        )
    response = await api.client.get("/api/v1/stats", params=params)
    assert response.status == 200, await response.text()
    body = await response.json()
    items = body["groups"][0]["items"]
    assert sum(group["runs"] for group in body["groups"]) == 3
    total = sum(group["items"]["discovered"] for group in body["groups"])
    assert total >= 3 * SQLITE_INT_MAX * 0.999  # a float past 2**63: close, never wrapped
    assert items["failed"] > 0
