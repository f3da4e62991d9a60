"""The accept path when the runs index commit fails after the spool put: the item is a debt."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory

from spoold.accept import acceptor as acceptor_module
from spoold.accept.acceptor import Acceptor
from spoold.spool import Spool, SpoolClosedError, SpoolWriteError
from spoold.state.ledger import Counts, Ledger
from spoold.state.runs_index import RunsIndex


def create(name: str) -> dict[str, Any]:
    return {"kind": "create", "event_id": name, "body": {"event_id": name, "run_id": f"r-{name}"}}


class FlakyCommit:
    """Stands in for ``RunsIndex.commit``: raises while ``failures`` > 0, then commits."""

    def __init__(self, real: Callable[[], None]) -> None:
        self.real = real
        self.failures = 0
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        self.real()


@dataclass
class Parts:
    spool: Spool
    index: RunsIndex
    ledger: Ledger
    acceptor: Acceptor
    commit: FlakyCommit


@pytest.fixture
async def parts(
    tmp_path: Path, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Parts]:
    """A started Acceptor on a real spool and index whose commit can be made to fail."""
    monkeypatch.setattr(
        acceptor_module, "DEBT_RETRY_S", 30.0
    )  # no timer retry unless a test wants it
    spool, index, ledger = make_spool(), RunsIndex(tmp_path / "index.sqlite"), Ledger()
    commit = FlakyCommit(index.commit)
    monkeypatch.setattr(index, "commit", commit)
    acceptor = Acceptor(spool, index, ledger)
    acceptor.start()
    yield Parts(spool, index, ledger, acceptor, commit)
    await acceptor.close()
    index.close()


def handed_out(spool: Spool) -> list[str]:
    """event_ids of every group get_groups hands out now (not acked), in order."""
    return [op["event_id"] for group in spool.get_groups(1000) for op in group.ops]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll state the accept thread changes (it sets no event), for at most timeout_s."""
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_debt_is_answered_but_not_handed_out_until_recorded(parts: Parts) -> None:
    """A lost index commit still answers 'created' (the op is durable) but the drainer does
    not see it and the ledger does not count it until the next submit folds it in."""
    parts.commit.failures = 1
    assert (await parts.acceptor.submit(create("a"))).outcome == "created"

    assert parts.spool.stats().depth_ops == 1
    assert handed_out(parts.spool) == []
    assert parts.ledger.snapshot() == Counts()
    assert parts.index.get("a") is None
    assert parts.index.last_spooled_id() == 0

    assert (await parts.acceptor.submit(create("b"))).outcome == "created"

    assert parts.ledger.snapshot() == Counts(accepted=2, queued=2)
    assert parts.index.counters()["accepted"] == 2
    assert parts.index.last_spooled_id() == 2
    run_a = parts.index.get("a")
    assert run_a is not None
    assert (run_a.pending, run_a.has_create) == (1, True)
    assert handed_out(parts.spool) == ["a", "b"]


async def test_debt_is_folded_by_the_retry_timer(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing else arriving, the accept thread retries the debt every DEBT_RETRY_S
    and publishes it once the index can be written again."""
    monkeypatch.setattr(acceptor_module, "DEBT_RETRY_S", 0.01)
    parts.commit.failures = 1_000_000
    assert (await parts.acceptor.submit(create("a"))).outcome == "created"
    await until(lambda: parts.commit.calls >= 4)  # the put's commit, then timer retries
    assert handed_out(parts.spool) == []
    assert parts.ledger.snapshot() == Counts()

    parts.commit.failures = 0
    await until(lambda: parts.ledger.snapshot().accepted == 1)

    assert parts.ledger.snapshot() == Counts(accepted=1, queued=1)
    assert parts.index.get("a") is not None
    assert parts.index.last_spooled_id() == 1
    assert handed_out(parts.spool) == ["a"]


async def test_new_writes_are_refused_while_the_debt_cannot_be_recorded(parts: Parts) -> None:
    """While fold_spooled keeps failing, a new submit gets SpoolWriteError and nothing new
    is spooled; once the index works, the debt and the next write go through in order."""
    parts.commit.failures = 1_000_000
    assert (await parts.acceptor.submit(create("a"))).outcome == "created"

    with pytest.raises(SpoolWriteError) as refused:
        await parts.acceptor.submit(create("b"))

    assert not isinstance(refused.value, SpoolClosedError)
    assert parts.acceptor.stats.rejected_error == 1
    assert parts.spool.last_allocated_id() == 1
    assert parts.spool.stats().depth_ops == 1
    assert parts.ledger.snapshot() == Counts()

    parts.commit.failures = 0
    assert (await parts.acceptor.submit(create("c"))).outcome == "created"

    assert parts.ledger.snapshot() == Counts(accepted=2, queued=2)
    assert parts.index.get("b") is None
    assert handed_out(parts.spool) == ["a", "c"]
