"""Spool: items are handed out only up to the publish watermark."""

from __future__ import annotations

from pathlib import Path

from spool_helpers import SpoolFactory, all_seqs, op

from spoold.spool.codec import encode_op


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
