"""The group-commit worker both daemons' writers run on (``server.runtime.group_commit``),
on its own: groups and their order, supervision of a failing group, a thread that dies,
close (with items waiting, with a timeout, racing submits), cancelled callers and
closed event loops. Each test bounds its waits (``PROMPT_S``): a hang fails, never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from server.runtime.group_commit import Answer, GroupCommit, GroupWork

PROMPT_S = 5.0


class Fatal(BaseException):
    """Not an Exception: what per-group supervision cannot catch (like SystemExit)."""


class Refused(Exception):
    def __init__(self, died: BaseException | None) -> None:
        super().__init__(f"stopped ({died!r})")
        self.died = died


class Closing(Exception):
    pass


class Failed(Exception):
    pass


class Work(GroupWork[int, int]):
    """Answers item n with n * 10; records every call; can be held or made to fail."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.calls: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        #: Items whose group raises this error from commit.
        self.raise_on: dict[int, BaseException] = {}
        self.failed_groups: list[tuple[list[int], Exception]] = []
        self.waiting_after: list[bool] = []
        self.idle_s: float | None = None
        self.answers_short = False
        self.refusal_raises = False

    def commit(self, group: list[int]) -> Sequence[Answer[int]]:
        self.entered.set()
        assert self.hold.wait(PROMPT_S)
        self.groups.append(list(group))
        for item in group:
            if item in self.raise_on:
                raise self.raise_on[item]
        if self.answers_short:
            return [(item * 10, None) for item in group[1:]]
        return [(item * 10, None) if item >= 0 else (None, ValueError(item)) for item in group]

    def failed(self, group: list[int], error: Exception) -> BaseException:
        self.failed_groups.append((list(group), error))
        return Failed(str(error))

    def refusal(self, died: BaseException | None) -> BaseException:
        if self.refusal_raises:
            raise Fatal("no refusal either")
        return Refused(died)

    def closing(self) -> BaseException:
        return Closing("closing")

    def wait_s(self) -> float | None:
        return self.idle_s

    def idle(self) -> None:
        self.calls.append("idle")

    def after_group(self, waiting: bool) -> None:
        self.waiting_after.append(waiting)

    def started(self) -> None:
        self.calls.append("started")

    def finish(self) -> None:
        self.calls.append("finish")

    def died(self, error: BaseException) -> None:
        self.calls.append(f"died:{type(error).__name__}")

    def exited(self) -> None:
        self.calls.append("exited")


@pytest.fixture
def work() -> Work:
    return Work()


@pytest.fixture
async def worker(work: Work) -> AsyncIterator[GroupCommit[int, int]]:
    """A started worker with default options, closed after the test."""
    started = GroupCommit(work, name="t-worker")
    started.start()
    yield started
    await started.close(PROMPT_S)


@pytest.fixture
def thread_errors() -> Iterator[list[threading.ExceptHookArgs]]:
    """Exceptions escaping any thread (the worker must never let one out)."""
    seen: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = seen.append
    yield seen
    threading.excepthook = previous


def submit(worker: GroupCommit[int, int], work: Work, item: int) -> asyncio.Future[int]:
    """Submit item (work is the worker's, named for the reader)."""
    return worker.submit(item)


async def behind_a_held_group(
    worker: GroupCommit[int, int], work: Work, first: int, then: range | tuple[int, ...]
) -> list[Any]:
    """Submit first and hold its group's commit; submit then meanwhile (they wait for the
    thread); release, and return every outcome, first's first."""
    work.hold.clear()
    held = submit(worker, work, first)
    assert await asyncio.to_thread(work.entered.wait, PROMPT_S)  # [first] is committing
    waiting = [submit(worker, work, n) for n in then]
    await asyncio.sleep(0)  # the loop hands them over (one hand-over per iteration)
    work.hold.set()
    return await settle(held, *waiting)


async def settle(*futures: asyncio.Future[int]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), PROMPT_S)


async def test_items_waiting_while_a_group_commits_form_the_next_group_in_order(
    work: Work,
) -> None:
    worker = GroupCommit(work, name="t-group")
    worker.start()
    outcomes = await behind_a_held_group(worker, work, 0, range(1, 21))
    assert outcomes == [n * 10 for n in range(21)]
    assert work.groups == [[0], list(range(1, 21))]
    assert await worker.close()
    assert work.calls == ["started", "finish", "exited"]


async def test_a_group_never_exceeds_max_group_and_keeps_fifo_order(work: Work) -> None:
    worker = GroupCommit(work, name="t-max", max_group=7)
    worker.start()
    futures = [submit(worker, work, n) for n in range(30)]
    assert await settle(*futures) == [n * 10 for n in range(30)]
    assert all(len(group) <= 7 for group in work.groups)
    assert [item for group in work.groups for item in group] == list(range(30))
    assert work.waiting_after[0] is True  # 23 were still waiting after the first group
    await worker.close()


async def test_a_window_gathers_items_arriving_within_it(work: Work) -> None:
    """With a window the thread waits (at most window_s) for more than one item."""
    worker = GroupCommit(work, name="t-window", window_s=PROMPT_S)
    worker.start()
    futures = [submit(worker, work, n) for n in range(3)]
    assert await settle(*futures) == [0, 10, 20]
    # The last group's size is the bar: the next group closes as soon as 3 wait.
    again = [submit(worker, work, n) for n in range(3, 6)]
    assert await settle(*again) == [30, 40, 50]
    assert work.groups == [[0, 1, 2], [3, 4, 5]]
    await worker.close()


async def test_per_item_errors_are_raised_to_their_caller_only(
    work: Work, worker: GroupCommit[int, int]
) -> None:
    results = await settle(*(submit(worker, work, n) for n in (1, -2, 3)))
    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert results[2] == 30


async def test_a_failing_group_is_answered_with_failed_and_the_next_goes_on(
    work: Work, worker: GroupCommit[int, int], thread_errors: list[Any]
) -> None:
    work.raise_on[2] = RuntimeError("bug in this group")
    outcomes = await behind_a_held_group(worker, work, 0, (1, 2, 3))
    assert outcomes[0] == 0
    assert all(isinstance(o, Failed) and "bug in this group" in str(o) for o in outcomes[1:])
    assert [group for group, _ in work.failed_groups] == [[1, 2, 3]]
    assert await settle(submit(worker, work, 4)) == [40]
    assert worker.died is None
    assert thread_errors == []


async def test_a_commit_answering_too_few_items_fails_its_group_not_the_thread(
    work: Work, worker: GroupCommit[int, int]
) -> None:
    work.answers_short = True
    outcomes = await settle(submit(worker, work, 1), submit(worker, work, 2))
    assert all(isinstance(o, Failed) for o in outcomes)
    work.answers_short = False
    assert await settle(submit(worker, work, 3)) == [30]


async def test_a_dying_thread_answers_its_group_the_waiting_and_later_items_at_once(
    work: Work, worker: GroupCommit[int, int], thread_errors: list[Any]
) -> None:
    work.raise_on[0] = Fatal("thread killer")
    outcomes = await behind_a_held_group(worker, work, 0, range(1, 6))
    assert all(isinstance(o, Refused) and isinstance(o.died, Fatal) for o in outcomes)
    assert isinstance(worker.died, Fatal)
    with pytest.raises(Refused) as later:
        worker.submit(9)
    assert isinstance(later.value.died, Fatal)
    assert work.groups == [[0]]  # nothing ran after the death
    assert await worker.close()
    # Once joined: the thread answers its items before it calls exited().
    assert work.calls == ["started", "died:Fatal", "exited"]
    with pytest.raises(Closing):
        worker.submit(10)
    assert thread_errors == []


async def test_a_base_exception_from_failed_ends_the_thread_and_answers_everything(
    work: Work,
) -> None:
    class Dying(Work):
        def failed(self, group: list[int], error: Exception) -> BaseException:
            raise Fatal("failed() itself died")

    dying_work = Dying()
    dying_work.raise_on[1] = RuntimeError("group bug")
    worker = GroupCommit(dying_work, name="t-failed-dies")
    worker.start()
    outcomes = await settle(worker.submit(1), worker.submit(2))
    assert all(isinstance(o, Refused) for o in outcomes)
    assert isinstance(worker.died, Fatal)
    await worker.close()


async def test_a_refusal_that_raises_still_answers_every_waiting_item(
    work: Work, thread_errors: list[Any]
) -> None:
    worker = GroupCommit(work, name="t-refusal")
    worker.start()
    work.refusal_raises = True
    work.raise_on[0] = Fatal("killer")
    outcomes = await settle(submit(worker, work, 0), submit(worker, work, 1))
    assert all(isinstance(o, RuntimeError) for o in outcomes), outcomes
    assert isinstance(worker.died, Fatal)
    await worker.close()
    assert thread_errors == []


async def test_close_commits_what_was_submitted_then_refuses(work: Work) -> None:
    """Items submitted in the same loop iteration as close() are committed, not dropped."""
    worker = GroupCommit(work, name="t-close")
    worker.start()
    futures = [submit(worker, work, n) for n in range(50)]
    assert await worker.close()
    assert await settle(*futures) == [n * 10 for n in range(50)]
    assert work.calls[-2:] == ["finish", "exited"]
    with pytest.raises(Closing):
        worker.submit(99)
    assert worker.died is None
    assert await worker.close()  # a second close is harmless


async def test_close_before_start_finishes_what_was_submitted(work: Work) -> None:
    worker = GroupCommit(work, name="t-unstarted")
    futures = [submit(worker, work, n) for n in range(3)]
    await asyncio.sleep(0)
    assert await worker.close()
    assert await settle(*futures) == [0, 10, 20]


async def test_close_gives_up_waiting_after_its_timeout(work: Work) -> None:
    """A commit that does not end: close returns after its timeout, saying the thread
    still runs; the item is answered once the commit ends."""
    worker = GroupCommit(work, name="t-timeout")
    worker.start()
    work.hold.clear()
    stuck = submit(worker, work, 1)
    assert await asyncio.to_thread(work.entered.wait, PROMPT_S)
    assert await worker.close(timeout_s=0.05) is False
    assert not stuck.done()
    work.hold.set()
    assert await settle(stuck) == [10]
    assert await worker.close(timeout_s=PROMPT_S)


async def test_a_cancelled_caller_is_skipped_and_its_item_committed(
    work: Work, worker: GroupCommit[int, int]
) -> None:
    work.hold.clear()
    futures = [submit(worker, work, n) for n in range(4)]
    assert await asyncio.to_thread(work.entered.wait, PROMPT_S)
    futures[1].cancel()
    work.hold.set()
    outcomes = await settle(*futures)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert [outcomes[0], *outcomes[2:]] == [0, 20, 30]
    assert [item for group in work.groups for item in group] == [0, 1, 2, 3]
    assert await settle(submit(worker, work, 5)) == [50]


def test_a_loop_closed_before_its_answer_does_not_hurt_the_thread(
    work: Work, thread_errors: list[Any]
) -> None:
    """A caller's event loop is closed while its item commits: the answer is dropped
    (nobody waits there), and the thread goes on answering another loop."""
    worker = GroupCommit(work, name="t-closed-loop")
    worker.start()
    work.hold.clear()
    gone = asyncio.new_event_loop()
    try:

        async def submit_and_leave() -> None:
            worker.submit(1)

        gone.run_until_complete(submit_and_leave())
        gone.run_until_complete(asyncio.sleep(0))  # the hand-over ran
    finally:
        gone.close()
    assert work.entered.wait(PROMPT_S)
    work.hold.set()

    async def later() -> list[Any]:
        outcome = await settle(worker.submit(2))
        await worker.close()
        return outcome

    assert asyncio.run(later()) == [20]
    assert worker.died is None
    assert thread_errors == []
    assert work.groups == [[1], [2]]


def test_close_racing_submits_from_another_loop_never_leaves_one_waiting(
    work: Work, thread_errors: list[Any]
) -> None:
    """One event loop submits steadily while another closes the worker: every item is
    committed (its result) or refused (closing / refusal), none hangs, and what was
    committed is a prefix, in order."""
    worker = GroupCommit(work, name="t-race")
    worker.start()
    outcomes: list[Any] = []
    submitted = threading.Event()

    async def submitter() -> None:
        futures: list[asyncio.Future[int]] = []
        for n in range(2000):
            try:
                futures.append(worker.submit(n))
            except (Closing, Refused) as exc:
                outcomes.append(exc)
            if n == 100:
                submitted.set()
            if n % 10 == 0:  # paced (at least ~0.2 s in all), so close lands mid-stream
                await asyncio.sleep(0.001)
        outcomes.extend(await settle(*futures))

    async def closer() -> None:
        assert await asyncio.to_thread(submitted.wait, PROMPT_S)
        assert await worker.close(PROMPT_S)

    thread = threading.Thread(target=asyncio.run, args=(submitter(),))
    thread.start()
    asyncio.run(closer())
    thread.join(PROMPT_S)
    assert not thread.is_alive()
    assert len(outcomes) == 2000
    results = [o for o in outcomes if isinstance(o, int)]
    refusals = [o for o in outcomes if not isinstance(o, int)]
    assert all(isinstance(o, (Closing, Refused)) for o in refusals), refusals[:3]
    assert results == [n * 10 for n in range(len(results))]  # a prefix, in order
    assert len(results) > 90  # handed over (at n == 90) before close was called
    assert thread_errors == []


async def test_idle_runs_when_wait_s_passes_with_nothing_submitted(work: Work) -> None:
    work.idle_s = 0.01
    worker = GroupCommit(work, name="t-idle")
    worker.start()
    for _ in range(int(PROMPT_S / 0.01)):  # bounded
        if "idle" in work.calls:
            break
        await asyncio.sleep(0.01)
    assert "idle" in work.calls
    work.idle_s = None
    assert await settle(submit(worker, work, 1)) == [10]
    await worker.close()


async def test_a_group_is_answered_with_one_wakeup_per_event_loop(
    work: Work, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    wakeups: list[int] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakeups.append(len(work.groups))
        return real(callback, *args, **kwargs)

    worker = GroupCommit(work, name="t-wakeups")
    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    worker.start()
    try:
        assert await settle(*(submit(worker, work, n) for n in range(40))) == [
            n * 10 for n in range(40)
        ]
    finally:
        monkeypatch.setattr(loop, "call_soon_threadsafe", real)
        await worker.close()
    assert len(wakeups) == len(work.groups)  # one per group, not one per item
