"""A batch the server refuses for its presence headers is not about its items.

The server answers a malformed ``X-Spoold-Id`` or ``X-Spoold-Queued-Since`` with its own
400 error JSON before it reads the body. Judged as a refusal of the content, the
drainer would halve the batch down to lone operations and dead-letter every one of
them (each is sent with the same headers): the whole spool emptied into the
dead-letter store by one bad header. It is retried instead, and shown on /health.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from spoold.upstream.client import classify


def _item(event_id: str) -> dict[str, Any]:
    create = {
        "event_id": event_id,
        "run_id": f"r-{event_id}",
        "agent_name": "a",
        "job_type": "j",
        "status": "running",
    }
    return {"event_id": event_id, "create": create}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Spoold-Id": "not an id!"},
        {"X-Spoold-Id": "sidecar-1", "X-Spoold-Queued-Since": "yesterday"},
    ],
)
async def test_the_servers_refusal_of_a_presence_header_is_retried_not_dead_lettered(
    api: Any, headers: dict[str, str]
) -> None:
    body = orjson.dumps([_item("e-1")])
    async with api.client.post(
        "/api/v1/runs/batch?mode=upsert",
        data=body,
        headers={**headers, "Content-Type": "application/json"},
    ) as response:
        status, raw = response.status, await response.read()
    assert status == 400, raw  # the server's own refusal, before the items
    answer = classify(status, raw, 1, None)
    assert answer.verdict == "unexpected", answer  # retried, never split nor dead-lettered
    # The same server's 400 about the body (here: JSON it cannot parse) is still
    # about the content: split, as before.
    async with api.client.post(
        "/api/v1/runs/batch?mode=upsert",
        data=b'[{"event_id": ',
        headers={"X-Spoold-Id": "sidecar-1", "Content-Type": "application/json"},
    ) as response:
        body_status, body_raw = response.status, await response.read()
    assert body_status == 400, body_raw
    assert classify(body_status, body_raw, 1, None).verdict == "split"
