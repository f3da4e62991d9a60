"""The reaper and a sidecar heard from *before* a run's deadline (issue 11).

A sidecar that last said "my spool is empty" before the run's deadline says nothing of
what the agent wrote after it: a partition shorter than TELEMETRY_SIDECAR_PRESENCE_S
but longer than the run's allowance holds those writes in the spool, and the run must
wait. Once the sidecar is heard from after the deadline with nothing older queued,
everything the agent wrote in time has arrived, and the run is reaped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from server.reaper import reap_pass
from tests.conftest import Api
from tests.server.test_stale_runs import UPSERT, database, quiet_api

MakeApi = Callable[..., Awaitable[Api]]


async def test_an_empty_spool_heard_before_the_deadline_does_not_let_the_reaper_judge(
    make_api: MakeApi, new_run: Callable[..., dict[str, Any]]
) -> None:
    api = await quiet_api(make_api)  # TELEMETRY_SIDECAR_PRESENCE_S: 120 s
    run = new_run(heartbeat_timeout_s=1)
    presence = {"X-Spoold-Id": "side-p"}  # no X-Spoold-Queued-Since: an empty spool
    reply = await api.post(
        UPSERT, json=[{"event_id": run["event_id"], "create": run}], headers=presence
    )
    assert reply.status == 200, reply.body
    await asyncio.sleep(1.3)  # overdue; the sidecar, present, was last heard before the deadline
    assert await reap_pass(database(api)) == 0
    assert (await api.run(run["event_id"]))["status"] == "running"
    await api.post(UPSERT, json=[], headers=presence)  # heard after the deadline, spool empty
    assert await reap_pass(database(api)) == 1
    assert (await api.run(run["event_id"]))["status"] == "timeout"
