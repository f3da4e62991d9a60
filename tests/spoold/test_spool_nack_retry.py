"""Spool: a failed nack can be retried without stranding groups; the publish watermark."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import SpoolFactory, all_seqs, op

from spoold.spool import Spool, SpoolWriteError
from spoold.spool.codec import encode_op


class FailingOnce:
    """Wraps persist-queue's ``nack``: the ``fail_at``-th call (1-based) raises."""

    def __init__(self, real: Callable[..., Any], fail_at: int) -> None:
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise sqlite3.OperationalError("database is locked")
        return self.real(*args, **kwargs)


def put_singles(spool: Spool, n: int) -> None:
    for seq in range(n):
        spool.put_group([op(seq)])


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_failed_nack_keeps_groups_in_flight_until_retried(
    fail_at: int, make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups whose nack was not committed stay in flight (not lost, not handed out twice);
    retrying the nack returns every group, in FIFO order."""
    spool = make_spool()
    put_singles(spool, 4)
    got = spool.get_groups(3)  # exactly full: no group is held back
    assert [g.ops[0]["seq"] for g in got] == [0, 1, 2]
    flaky = FailingOnce(spool._queue.nack, fail_at)
    monkeypatch.setattr(spool._queue, "nack", flaky)

    with pytest.raises(SpoolWriteError, match="nack failed"):
        spool.nack(got)

    assert spool.stats().inflight_groups == 3 - (fail_at - 1)  # from the failed one on
    spool.nack(got)
    assert spool.stats().inflight_groups == 0
    assert all_seqs(spool) == [0, 1, 2, 3]


def test_retried_nack_returns_the_held_back_group_too(
    make_spool: SpoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry with the groups the caller got (as the drainer retries) also gives back the
    group get_groups held back, so nothing is stranded in flight and FIFO holds."""
    spool = make_spool()
    for k in range(4):
        spool.put_group([op(2 * k), op(2 * k + 1)])
    got = spool.get_groups(3)  # the second group does not fit: got from the queue, held back
    assert [g.id for g in got] == [1]
    monkeypatch.setattr(spool._queue, "nack", FailingOnce(spool._queue.nack, 1))
    with pytest.raises(SpoolWriteError):
        spool.nack(got)

    spool.nack(got)

    assert spool.stats().inflight_groups == 0
    assert all_seqs(spool) == list(range(8))


def test_unpublished_items_wait_for_publish(make_spool: SpoolFactory) -> None:
    """put_encoded(publish=False) is durable at once but handed out only up to the id
    given to publish, in FIFO order."""
    spool = make_spool()
    first = spool.put_encoded([encode_op(op(0))], publish=False)
    second = spool.put_encoded([encode_op(op(1)), encode_op(op(2))], publish=False)
    assert second > first > 0
    assert spool.stats().depth_ops == 3
    assert spool.get_groups(100) == []

    spool.publish(first)
    assert [g.id for g in spool.get_groups(100)] == [first]
    assert spool.get_groups(100) == []

    spool.publish(second)
    assert [o["seq"] for g in spool.get_groups(100) for o in g.ops] == [1, 2]


def test_restart_publishes_what_was_spooled(spool_dir: Path, make_spool: SpoolFactory) -> None:
    """The watermark is not persisted: after a restart (recovery has folded them into the
    index first) unpublished items are handed out."""
    spool = make_spool()
    spool.put_encoded([encode_op(op(0))], publish=False)
    assert spool.get_groups(100) == []
    spool.close()
    assert all_seqs(make_spool()) == [0]
