"""One thread that commits in groups and answers each item's asyncio future: group commit.

Both daemons' writers run on it: the server's ``Writer`` (SQLite transactions) and
spoold's ``Acceptor`` (the spool put and the runs index). What is common lives here:

- the hand-over: ``submit`` queues an item on its event loop; once per loop iteration
  the items submitted in it travel to the thread together (one wake-up, not one per
  item), and the thread is woken once as many wait as it hopes for;
- the groups: every item waiting (at most ``max_group``), plus those arriving within
  ``window_s`` until as many wait as the previous group held (window 0: only what is
  already waiting, no added latency when idle);
- the answers: a group's answers travel with ONE ``call_soon_threadsafe`` per event
  loop; a future already done (its caller was cancelled) is skipped, a closed loop is
  passed over (nobody waits there any more);
- supervision: a group whose ``commit`` raises an ``Exception`` is answered with what
  ``failed`` returns and the next group goes on; anything else that escapes ends the
  thread, and then every item waiting, and every later one, is answered at once with
  ``refusal`` (never left hanging), ``died`` says why;
- ``close``: answer everything already submitted, then end the thread (with a timeout).

What each daemon commits, and how it counts, logs and recovers, is its ``GroupWork``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

#: An item's answer: (result, None), or (None, the error its caller is raised).
Answer = tuple[ResultT | None, BaseException | None]


class GroupWork(ABC, Generic[ItemT, ResultT]):
    """What a daemon's writer does with a group; everything but ``commit`` is optional.

    Every method is called on the worker's thread, except ``refusal`` and ``closing``
    (also on an event loop, for a submit that comes too late). ``failed`` and ``died``
    are called while their error is being handled (``log.exception`` shows it).
    """

    @abstractmethod
    def commit(self, group: list[ItemT]) -> Sequence[Answer[ResultT]]:
        """Commit a group; one answer per item, in order. Raising an ``Exception`` fails
        this group only (``failed``); anything else ends the thread."""

    @abstractmethod
    def failed(self, group: list[ItemT], error: Exception) -> BaseException:
        """``commit`` raised: undo what it half did; the error every item is answered with."""

    @abstractmethod
    def refusal(self, died: BaseException | None) -> BaseException:
        """A fresh error for an item answered because the thread is gone (``died``: what
        ended it; None after ``close``)."""

    @abstractmethod
    def closing(self) -> BaseException:
        """A fresh error for an item submitted after ``close``."""

    def wait_s(self) -> float | None:
        """How long to wait for an item before ``idle`` (None: as long as it takes)."""
        return None

    def idle(self) -> None:
        """``wait_s`` passed with nothing submitted."""

    def after_group(self, waiting: bool) -> None:
        """A group was answered; ``waiting``: items are already waiting for the next."""

    def started(self) -> None:
        """First thing on the thread."""

    def finish(self) -> None:
        """``close`` was called and every item is committed: the last work of the thread."""

    def died(self, error: BaseException) -> None:
        """``error`` escaped and ends the thread (log it); ``refusal`` answers what waits."""

    def exited(self) -> None:
        """Last thing on the thread, once every item has been answered (release resources)."""


#: An item submitted, with where its answer goes: (item, its future, the future's loop).
#: A tuple, not a class: it is made for every write, and a tuple costs a tenth as much.
_Entry = tuple[ItemT, "asyncio.Future[ResultT]", asyncio.AbstractEventLoop]
#: An answer on its way to a future: (future, result, error).
_Settle = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _apply(answers: list[_Settle]) -> None:
    """On the event loop: resolve the futures of one group's items."""
    for future, result, error in answers:
        if future.done():  # cancelled: its caller went away
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _answer(entries: list[_Entry[Any, Any]], answers: Iterable[Answer[Any]]) -> None:
    """Answer a group with ONE wake-up of each event loop its items wait on.

    One ``call_soon_threadsafe`` per item (a wake-up of the loop each: its self-pipe, or
    uvloop's async handle) cost a noticeable share of a write's CPU; a group's answers
    travel together.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Settle]] = {}
    for (_, future, loop), (result, error) in zip(entries, answers, strict=True):
        by_loop.setdefault(loop, []).append((future, result, error))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # its event loop is already closed
            loop.call_soon_threadsafe(_apply, batch)


class GroupCommit(Generic[ItemT, ResultT]):
    """``await worker.submit(item)`` resolves once ``work.commit`` answered item's group."""

    def __init__(
        self,
        work: GroupWork[ItemT, ResultT],
        *,
        name: str,
        max_group: int = 512,
        window_s: float = 0.0,
    ) -> None:
        self._work = work
        self._max_group = max_group
        self._window_s = window_s
        #: Close a group without waiting once this many items are in it: the size of the
        #: last group. Under steady load every waiting client is in by then, and waiting
        #: out the window would only add latency; when load drops, it shrinks.
        self._enough = 1
        #: The hand-over: items waiting for the thread, appended under ``_arrived``'s lock.
        #: Once the thread has ended (``_ended`` set under it), nothing more is appended, so
        #: no item can wait for a thread that is gone.
        self._arrived = threading.Condition(threading.Lock())
        self._incoming: list[_Entry[ItemT, ResultT]] = []
        #: Items submitted during the current iteration of each event loop (``_hand_over``).
        self._batches: dict[asyncio.AbstractEventLoop, list[_Entry[ItemT, ResultT]]] = {}
        #: The thread is woken once this many items wait (1 while it is idle, the group
        #: size it hopes for during the window, never while it commits: it looks at
        #: ``_incoming`` again when it is done). One wake-up per group, not per item.
        self._wake_at = 1
        self._stopping = False
        self._closed = False
        self._ended: BaseException | None = None
        self._died: BaseException | None = None
        self._group: list[_Entry[ItemT, ResultT]] = []  # being committed: answered if we die
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def died(self) -> BaseException | None:
        """What ended the thread unexpectedly (kept after ``close``); None while it serves
        and once it ended normally."""
        return self._died

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue item for the next group; its future holds the answer.

        Raises ``work.closing()`` after ``close``, ``work.refusal(...)`` once the thread is
        gone. Cancelling the future only skips its answer: the item is committed with its
        group all the same.
        """
        if self._closed:
            raise self._work.closing()
        if self._ended is not None:
            raise self._work.refusal(self._died)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        batch = self._batches.setdefault(loop, [])
        batch.append((item, future, loop))
        if len(batch) == 1:
            loop.call_soon(self._hand_over, loop)
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, once per iteration: pass the items submitted in it to the thread.

        Waking the thread once per item (a futex wake and a GIL hand-off each) cost a
        noticeable share of a write's CPU; the items one loop iteration made travel
        together.
        """
        batch = self._batches.pop(loop, None)
        if not batch:
            return
        with self._arrived:
            ended = self._ended
            if ended is None:
                self._incoming += batch
                if len(self._incoming) >= self._wake_at:
                    self._arrived.notify()
                return
        _apply([(future, None, ended) for _, future, _ in batch])

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Answer everything already submitted, then end the thread; whether it ended
        within ``timeout_s``. Later submits raise ``work.closing()``."""
        loop = asyncio.get_running_loop()
        if not self._closed:
            self._closed = True
            self._hand_over(loop)  # what was submitted before close, in this iteration
            with self._arrived:
                self._stopping = True
                self._arrived.notify()
            if self._thread.ident is None:  # never started: it finishes what was submitted
                self._thread.start()
        await loop.run_in_executor(None, self._thread.join, timeout_s)
        return not self._thread.is_alive()

    # ---- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        """The thread's body; whatever ends it, every item waiting is answered."""
        died: BaseException | None = None
        try:
            self._work.started()
            self._serve()
            self._work.finish()
        except BaseException as exc:  # supervised: recorded, answered, reported
            died = exc
            with contextlib.suppress(Exception):
                self._work.died(exc)
        finally:
            try:
                ended = self._work.refusal(died)
            except BaseException:  # never leave an item waiting for want of an error
                ended = RuntimeError("the group commit thread has stopped")
            with self._arrived:
                self._died = died
                self._ended = ended
                waiting = [*self._group, *self._incoming]  # nothing is appended any more
                self._incoming = []
                self._group = []
            _answer(waiting, [(None, ended)] * len(waiting))
            self._work.exited()

    def _serve(self) -> None:
        while True:  # until _next_group says stop
            group = self._next_group()
            if group is None:
                return
            if not group:
                self._work.idle()
                continue
            self._enough = len(group)
            self._commit(group)
            # Answered: let go of the group before waiting for the next one. A large body
            # decoded costs ~20-35 times its bytes; kept alive here until the next item,
            # it would meet that item's (admission counts only bodies in flight).
            del group
            self._work.after_group(bool(self._incoming))

    def _next_group(self) -> list[_Entry[ItemT, ResultT]] | None:
        """The next group: every item waiting (at most ``max_group``), plus those arriving
        within the window until as many wait as the last group held. [] when
        ``wait_s`` passed with nothing waiting; None once closing with nothing left."""
        with self._arrived:
            self._wake_at = 1
            if not self._incoming:
                if self._stopping:
                    return None
                self._arrived.wait(self._work.wait_s())
                if not self._incoming:
                    return None if self._stopping else []
            if self._window_s > 0:
                self._wake_at = self._enough
                deadline = time.monotonic() + self._window_s
                for _ in range(self._max_group):  # bounded: each wait ends by the deadline
                    remaining = deadline - time.monotonic()
                    if len(self._incoming) >= self._enough or remaining <= 0 or self._stopping:
                        break
                    self._arrived.wait(remaining)
            self._wake_at = 1 << 62  # busy: the thread looks at _incoming when it is done
            group = self._incoming[: self._max_group]
            del self._incoming[: self._max_group]
            self._group = group
            return group

    def _commit(self, group: list[_Entry[ItemT, ResultT]]) -> None:
        """Commit one group and answer it; an ``Exception`` fails this group only."""
        items = [item for item, _, _ in group]
        try:
            answers = self._work.commit(items)
            if len(answers) != len(group):
                raise RuntimeError(f"{len(answers)} answers for a group of {len(group)}")
        except Exception as exc:  # one failing group must not stop the others
            error = self._work.failed(items, exc)
            answers = [(None, error)] * len(group)
        del items
        _answer(group, answers)
        self._group = []
