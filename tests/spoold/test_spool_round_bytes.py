"""A drain round is bounded in spooled bytes as well as in operations: a backlog of large
operations is never loaded hundreds at a time (spoold runs under MemoryMax=512M)."""

from __future__ import annotations

from spool_helpers import SpoolFactory, all_seqs, op


def test_get_groups_stops_at_the_byte_bound_and_keeps_fifo(make_spool: SpoolFactory) -> None:
    spool = make_spool()
    for seq in range(10):
        spool.put_group([op(seq, size=10_000)])
    got = spool.get_groups(100, max_bytes=35_000)
    assert [g.ops[0]["seq"] for g in got] == [0, 1, 2]
    assert sum(g.nbytes for g in got) <= 35_000
    spool.nack(got)
    assert all_seqs(spool) == list(range(10))


def test_a_group_larger_than_the_byte_bound_still_comes_alone(make_spool: SpoolFactory) -> None:
    spool = make_spool()
    spool.put_group([op(0, size=50_000)])
    spool.put_group([op(1)])
    got = spool.get_groups(100, max_bytes=1_000)
    assert [g.ops[0]["seq"] for g in got] == [0]
    assert [g.ops[0]["seq"] for g in spool.get_groups(100, max_bytes=1_000)] == [1]


def test_without_a_byte_bound_only_operations_count(make_spool: SpoolFactory) -> None:
    spool = make_spool()
    for seq in range(5):
        spool.put_group([op(seq, size=10_000)])
    assert len(spool.get_groups(100)) == 5
