"""``X-Spoold-Queued-Since`` is never later than the oldest operation spoold holds.

The server reaps a run of this sidecar when the header says everything the agent wrote
before the run's deadline has arrived: a header later than a queued operation's
``accepted_at`` lets it reap a run whose heartbeat is still in the spool. These tests
hold the spool and the accept path at their worst moments and read what the header
would say (``Presence.queued_since``, exactly what every batch post carries).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from server.contract.timestamps import format_instant
from spoold.accept.acceptor import Acceptor
from spoold.forward.presence import Presence
from spoold.spool import store as spool_store
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex


def _at(seconds_ago: float) -> str:
    return format_instant(datetime.now(UTC) - timedelta(seconds=seconds_ago))


def _create(name: str, accepted_at: str) -> dict[str, Any]:
    body = {"event_id": name, "run_id": f"r-{name}", "agent_name": "a", "job_type": "j"}
    return {"kind": "create", "event_id": name, "body": body, "accepted_at": accepted_at}


def test_a_put_while_an_ack_empties_the_spool_keeps_its_time(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ack reads the oldest live group, then publishes it: a put landing between
    the two (the accept thread) must not be hidden by the ack's "empty"."""
    spool = make_spool()
    spool.put_group([_create("first", _at(0))])
    [group] = spool.get_groups(10)
    real = spool_store.oldest_enqueued_at
    landed: list[float] = []

    def read_then_a_put_lands(side: Any) -> float | None:
        oldest = real(side)  # the spool looks empty to the ack...
        if not landed:
            spool.put_group([_create("second", _at(0))])  # ...and a put lands right now
            landed.append(time.time())
        return oldest

    monkeypatch.setattr(spool_store, "oldest_enqueued_at", read_then_a_put_lands)
    spool.ack([group])
    monkeypatch.setattr(spool_store, "oldest_enqueued_at", real)
    stats = spool.stats()
    assert stats.depth_groups == 1
    assert stats.oldest_enqueued_at is not None, "a queued group with no time: header absent"
    assert stats.oldest_enqueued_at <= landed[0]
    presence = Presence("sidecar-1", spool)
    assert presence.queued_since() is not None
    # A later put does not take the place of the group still queued.
    spool.put_group([_create("third", _at(0))])
    assert spool.stats().oldest_enqueued_at == stats.oldest_enqueued_at


async def test_an_operation_spooled_after_it_was_accepted_keeps_its_accepted_at(
    tmp_path: Path, make_spool: SpoolFactory
) -> None:
    """Between the request (``accepted_at``) and the spool's commit there is the accept
    path's group commit, a disk stall or a lookup of the run: the spool's own time is
    later. The header must say the operation's time."""
    spool, index = make_spool(), RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger())
    acceptor.start()
    accepted_at = _at(5.0)  # its request came 5 s before the commit
    try:
        await acceptor.submit(_create("late", accepted_at))
    finally:
        await acceptor.close()
        index.close()
    since = Presence("sidecar-1", spool).queued_since()
    assert since is not None
    assert since <= accepted_at, (since, accepted_at)


async def test_an_operation_waiting_for_its_commit_is_already_counted(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operation answered only once spooled is the sidecar's from its accepted_at on:
    while its commit waits (a slow disk), a batch post must not say "empty"."""
    spool, index = make_spool(), RunsIndex(tmp_path / "index.sqlite")
    acceptor = Acceptor(spool, index, Ledger())
    presence = Presence("sidecar-1", spool, accepting=acceptor.oldest_pending)
    entered, release = threading.Event(), threading.Event()
    real_put = spool.put_encoded

    def slow_put(*args: Any, **kwargs: Any) -> int:
        entered.set()
        release.wait(10)
        return real_put(*args, **kwargs)

    monkeypatch.setattr(spool, "put_encoded", slow_put)
    acceptor.start()
    accepted_at = _at(0)
    pending = asyncio.ensure_future(acceptor.submit(_create("slow", accepted_at)))
    try:
        assert await asyncio.to_thread(entered.wait, 10)
        since = presence.queued_since()
        assert since is not None, "an operation on its way into the spool: header absent"
        assert since <= accepted_at
    finally:
        release.set()
        await pending
        await acceptor.close()
        index.close()
    assert presence.queued_since() is not None  # now in the spool
    assert acceptor.oldest_pending() is None  # answered: no longer pending


def test_a_replayed_dead_letter_keeps_its_accepted_at(make_spool: SpoolFactory) -> None:
    """``spoold deadletter replay`` puts old operations back (``Spool.put_group``): the
    group's time is theirs, not the replay's."""
    spool = make_spool()
    accepted_at = _at(3600.0)
    spool.put_group([_create("letter", accepted_at)])
    since = Presence("sidecar-1", spool).queued_since()
    assert since is not None
    assert since <= accepted_at, (since, accepted_at)
