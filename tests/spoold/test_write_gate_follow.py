"""While agents write, the drainer's writes to the shared files start right after one of
the accept path's commits (``spoold.writegate``), when the accept thread's next group is
furthest away, instead of just before it - where the accept thread would wait for them.
Never for long: with no accept commit coming, or none lately, the drainer goes on."""

from __future__ import annotations

import threading
import time

import pytest

from spoold import writegate
from spoold.writegate import PutFirstLock, WriteGate

BOUND_S = 10.0  # every wait below is bounded by this (the machine may be slow)


def _yielding_write(gate: WriteGate, order: list[str], done: threading.Event) -> threading.Thread:
    def write() -> None:
        gate.acquire(urgent=False)
        order.append("drain")
        gate.release()
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_yielding_write_waits_for_the_accept_paths_next_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        writegate, "FOLLOW_WAIT_S", 60.0, raising=False
    )  # only the commit may end the wait
    gate = WriteGate()
    gate.acquire(urgent=True)  # the accept path is writing
    gate.release()
    order: list[str] = []
    done = threading.Event()
    drain = _yielding_write(gate, order, done)
    assert not done.wait(0.2)  # the file is free, but the drainer waits for the accept path
    gate.acquire(urgent=True)
    order.append("accept")
    gate.release()
    assert done.wait(BOUND_S)
    drain.join(BOUND_S)
    assert order == ["accept", "drain"]


def test_with_no_accept_commit_coming_the_drainer_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(writegate, "FOLLOW_WHILE_S", 60.0, raising=False)  # a slow machine
    monkeypatch.setattr(writegate, "FOLLOW_WHILE_S", 60.0, raising=False)  # a slow machine
    monkeypatch.setattr(writegate, "FOLLOW_WAIT_S", 0.05, raising=False)
    gate = WriteGate()
    gate.acquire(urgent=True)
    gate.release()
    order: list[str] = []
    done = threading.Event()
    started = time.monotonic()
    drain = _yielding_write(gate, order, done)
    assert done.wait(BOUND_S)
    drain.join(BOUND_S)
    assert order == ["drain"]
    assert time.monotonic() - started >= 0.05


def test_with_the_accept_path_idle_the_drainer_does_not_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Never an accept commit, or the last one long ago (agents writing now and then):
    the drainer writes at once."""
    monkeypatch.setattr(writegate, "FOLLOW_WAIT_S", 60.0, raising=False)
    gate = WriteGate()  # no accept commit ever
    order: list[str] = []
    done = threading.Event()
    drain = _yielding_write(gate, order, done)
    assert done.wait(BOUND_S)
    drain.join(BOUND_S)
    gate.acquire(urgent=True)
    gate.release()
    gate.last_urgent_release = time.monotonic() - 0.5  # as if that commit were 0.5 s ago
    drain = _yielding_write(gate, order, done := threading.Event())
    assert done.wait(BOUND_S)
    drain.join(BOUND_S)
    assert order == ["drain", "drain"]


def test_a_drain_write_on_the_spool_follows_a_put(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool's lock (persist-queue's ``tran_lock``): a mark or an ack of the drainer
    goes right after a put, not before the next one."""
    monkeypatch.setattr(writegate, "FOLLOW_WHILE_S", 60.0, raising=False)  # a slow machine
    monkeypatch.setattr(writegate, "FOLLOW_WAIT_S", 60.0, raising=False)
    lock = PutFirstLock()
    with lock.urgent(), lock:  # a put
        pass
    order: list[str] = []
    done = threading.Event()

    def ack() -> None:
        with lock:
            order.append("ack")
        done.set()

    thread = threading.Thread(target=ack)
    thread.start()
    assert not done.wait(0.2)
    with lock.urgent(), lock:
        order.append("put")
    assert done.wait(BOUND_S)
    thread.join(BOUND_S)
    assert order == ["put", "ack"]
