"""The rate limit shared by replicas on one PostgreSQL database: about ``rpm``
requests per minute per client address in total, however a load balancer spreads them.

The decision (issue 13): the token bucket of one server (burst ``rpm``, refill rpm/60
a second) whose tokens live in the database, and that replicas *lease*.

- Each client has one *pool* of tokens in an UNLOGGED table (soft state: a crash of
  PostgreSQL empties it, which only refills every budget). Every ``TICK_S`` (0.1 s) a
  background task owned by the app's lifecycle makes one call for all the clients this
  replica serves (``server.postgres.ratelimit``): it gives back what is left of each
  lease (or is charged what it spent past it), the pool refills by the database's clock
  (the one clock replicas share), and the replica takes its *share*: the pool divided
  by the replicas that served that client within ``WINDOW_S`` (at least one token when
  the pool has one). All to one replica: it leases the whole pool; round robin over
  three: a third each, and what one does not spend goes back at its next tick.
- The hot path never waits for the database but once per client and replica: a
  client new to this replica (or back after ``IDLE_S`` idle, or forgotten) waits for
  the next exchange, started at once and shared by every client new meanwhile (one
  round trip; then, while other replicas hold the client's tokens and this one got
  none, up to ``SHARE_WAIT_S`` more, for a holder's next tick to give its share back
  instead of this request being refused; a holder that has not ticked by then is as
  good as gone, and the fallback decides). Then ``decide`` spends a token of the local
  lease, or refuses.
- Every grant comes from a lease, so the total is never above the budget but by what
  a replica spends while its own report is in flight (charged at its next tick, a
  debt the refill pays). Below it: a replica killed holding a lease loses those tokens
  (refill brings them back), and a lease waits up to a tick for the replica to return
  it when traffic moves.
- Bounded: ``max_clients`` clients per replica (the least recently seen forgotten
  first, their lease given back at the next tick), at most ``MAX_REPORTS`` per call;
  in the database a pool full again is deleted (as good as none), and so are leases
  and replicas silent for ``WINDOW_S`` (``PostgresBudget.sweep``, every few seconds).
- The database down or slow (no answer for ``STALE_S``): the limit *fails open* to a
  bucket per replica (``RateLimiter``, the SQLite behaviour): a client may then get up
  to ``rpm`` from each replica, is never refused because the store is down, and never
  sees a 500. What is granted that way is not charged. Replicas must share one ``rpm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import web

from server.http.ratelimit import Decision, RateLimiter
from server.http.runs import DATABASE
from server.postgres.ratelimit import Grant, Report

log = structlog.get_logger("server.ratelimit")

#: How often a replica reports and renews its leases.
TICK_S = 0.1
#: A replica that has not served a client for this long stops counting in its share.
WINDOW_S = 1.0
#: A client not seen here for this long gives its lease back.
IDLE_S = 1.0
#: Without a successful exchange for this long, the limit fails open (per replica).
STALE_S = 1.0
#: A client's first request here waits at most this long for the replicas that hold
#: its tokens to give a share back (their next tick, ``TICK_S`` apart, later on a
#: loaded host); then the fallback decides. Below ``STALE_S``, which bounds any wait.
SHARE_WAIT_S = 0.5
#: Clients reported per call at most (the longest unreported first).
MAX_REPORTS = 500
#: How often a replica sweeps the shared tables.
SWEEP_EVERY_S = 5.0
#: Client keys longer than this are stored as a digest (bounded index entries).
MAX_KEY_BYTES = 64


class Budget(Protocol):
    async def exchange(
        self, replica: str, rpm: int, window_s: float, reports: Sequence[Report]
    ) -> tuple[int, list[Grant]]: ...

    async def sweep(self, window_s: float) -> None: ...


def client_key(client: str) -> bytes:
    """The stored key of an address: its bytes, or a digest when long."""
    raw = client.encode("utf-8", "surrogatepass")
    if len(raw) <= MAX_KEY_BYTES:
        return raw
    return b"#" + hashlib.sha256(raw).digest()


@dataclass
class _Client:
    #: Tokens this replica may still grant (negative: spent past its lease).
    lease: float
    #: The pool (and when) at the last answer: Retry-After and X-RateLimit-Reset.
    pool: float
    pool_at: float
    seen: float
    #: The part of ``lease`` that is no longer ours (given back by the report in flight).
    owed: float = 0.0
    #: Holds a lease row (or reported spending) that a release must settle.
    serving: bool = False
    #: Set until the first answer for this client: its first requests wait for it.
    pending: asyncio.Future[bool] | None = None
    reported_at: float = -math.inf
    #: ``lease`` as it was when the exchange in flight was sent (None: none in flight).
    sent: float | None = None
    sent_returned: float = 0.0
    #: The report in flight gives the lease back.
    releasing: bool = False
    #: Since when the answers left nothing here while others hold leases (None: not).
    starved_since: float | None = None


class SharedRateLimiter:
    def __init__(
        self,
        rpm: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        replica: str | None = None,
    ) -> None:
        self.rpm = rpm
        self.max_clients = max_clients
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rate = rpm / 60.0
        self._clock = clock
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()
        #: Forgotten clients whose lease or spending the next exchange settles.
        self._evicted: OrderedDict[bytes, float] = OrderedDict()
        self._fresh_until = -math.inf
        self._wake = asyncio.Event()
        self._stopping = False
        self.fallback = RateLimiter(rpm, max_clients=max_clients, clock=clock)
        self.failures = 0

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def shared(self) -> bool:
        """Whether decisions use the shared pools (else the per-replica fallback)."""
        return self._clock() <= self._fresh_until

    async def decide(self, client: str) -> Decision:
        """Spend one token of this replica's lease for client, if it has one. A client
        new here waits for the next exchange (started at once, shared by every client
        new meanwhile), never for more than ``STALE_S``: then the fallback decides."""
        now = self._clock()
        if now > self._fresh_until:
            return self.fallback.check(client)
        key = client_key(client)
        state = self._clients.pop(key, None)
        if state is None:
            state = _Client(self._evicted.pop(key, 0.0), float(self.rpm), now, now)
        self._clients[key] = state
        state.seen = now
        self._evict()
        if not state.serving:
            state.serving = True
            state.pending = asyncio.get_running_loop().create_future()
            self._wake.set()
        if state.pending is not None:
            try:
                answered = await asyncio.wait_for(asyncio.shield(state.pending), STALE_S)
            except TimeoutError:
                answered = False
            if not answered:
                return self.fallback.check(client)
            now = self._clock()
        pool = self._estimate(state, now)
        allowed = state.lease >= 1.0
        if allowed:
            state.lease -= 1.0
        left = max(0.0, state.lease)
        reset = max(0.0, self.rpm - max(0.0, pool) - left) / self._rate
        retry = 0.0 if allowed else max(TICK_S, (1.0 - pool) / self._rate)
        return Decision(allowed, self.rpm, int(left), retry, reset)

    def _estimate(self, state: _Client, now: float) -> float:
        return min(float(self.rpm), state.pool + (now - state.pool_at) * self._rate)

    def _evict(self) -> None:
        while len(self._clients) > self.max_clients:
            key, state = self._clients.popitem(last=False)
            _answer(state, False)
            if state.serving:
                self._credit(key, state.lease - state.owed)
        while len(self._evicted) > self.max_clients:
            self._evicted.popitem(last=False)

    def _credit(self, key: bytes, tokens: float) -> None:
        """Tokens (or a debt) of a client that are ours but no lease's: to its state
        if it is back, else to be settled at the next exchange."""
        state = self._clients.get(key)
        if state is not None and state.sent is None and state.serving:
            state.lease += tokens
        else:
            self._evicted[key] = self._evicted.pop(key, 0.0) + tokens

    def _reports(self, now: float) -> tuple[list[Report], list[Report]]:
        """The clients to report now, each marked as sent: (settled balances of
        forgotten clients, reports of the clients served)."""
        for key in [k for k in self._evicted if k in self._clients]:
            if self._clients[key].serving:  # back meanwhile: one report of it
                self._clients[key].lease += self._evicted.pop(key)
        forgotten = [
            Report(key, tokens, True) for key, tokens in list(self._evicted.items())[:MAX_REPORTS]
        ]
        for report in forgotten:
            del self._evicted[report.client]
        serving = sorted(  # clients waiting for their first answer first
            (s.pending is None, s.reported_at, key) for key, s in self._clients.items() if s.serving
        )
        served = []
        for _, _, key in serving[: MAX_REPORTS - len(forgotten)]:
            state = self._clients[key]
            returned = state.lease - state.owed
            state.sent, state.sent_returned = state.lease, returned
            state.owed = state.lease  # given back: none of what is left is ours now
            state.reported_at = now
            state.releasing = now - state.seen > IDLE_S
            served.append(Report(key, returned, state.releasing))
        return forgotten, served

    def _settle(self, served: Sequence[Report], grants: Sequence[Grant]) -> None:
        now = self._clock()
        answers = {grant.client: grant for grant in grants}
        for report in served:
            grant = answers.get(report.client)
            state = self._clients.get(report.client)
            if grant is None:  # not answered (cannot happen): as if it failed
                self._unsend([report])
                continue
            if state is None or state.sent is None:  # forgotten since: keep its share
                self._credit(report.client, grant.share)
                continue
            flight = state.lease - state.owed  # spent since sent (<= 0)
            state.lease, state.owed = grant.share + flight, 0.0
            state.pool, state.pool_at = grant.pool, now
            if state.releasing and now - state.seen > IDLE_S:
                state.serving = state.lease != 0.0  # a debt left is still reported
            state.sent = None
            starved = state.lease < 1.0 and grant.others >= 1.0
            if state.pending is not None and starved:
                # Other replicas lease it all: wait for their next tick to give a share
                # back (one tick is not enough when the host is loaded and theirs is late).
                if state.starved_since is None:
                    state.starved_since = now
                if now - state.starved_since < SHARE_WAIT_S:
                    continue
                state.starved_since = None
                _answer(state, False)  # the holders never ticked: as if the store were slow
                continue
            state.starved_since = None
            _answer(state, True)

    def _unsend(self, reports: Sequence[Report]) -> None:
        """An exchange failed: nothing of it was applied; keep what each client owes."""
        for report in reports:
            state = self._clients.get(report.client)
            if state is not None and state.sent is not None:
                state.owed -= state.sent_returned
                state.sent = None
                _answer(state, False)
            else:  # a forgotten client's balance, or one forgotten in flight
                self._credit(report.client, report.returned)

    async def tick(self, budget: Budget) -> bool:
        """One exchange with the shared pools; whether it succeeded."""
        forgotten, served = self._reports(self._clock())
        try:
            live, grants = await budget.exchange(
                self.replica, self.rpm, WINDOW_S, forgotten + served
            )
        except Exception as exc:  # any failure of the store: fail open, never raise
            self._unsend(forgotten + served)
            self.failures += 1
            if self._fresh_until > -math.inf:
                log.warning("rate_limit_store_unavailable", error=type(exc).__name__)
            self._fresh_until = -math.inf
            return False
        if self._clock() > self._fresh_until:
            log.info("rate_limit_shared", replicas=live, replica=self.replica)
        self._settle(served, grants)
        self._fresh_until = self._clock() + STALE_S
        return True

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self, budget: Budget) -> None:
        """Exchange every tick (or at once for a client new here) and sweep now and
        then, until ``stop``."""
        next_sweep = self._clock() + SWEEP_EVERY_S
        while not self._stopping:
            try:
                await self.tick(budget)
            except Exception:  # a bug of ours: noticed, and the limit fails open
                log.exception("rate_limit_exchange_failed")
                self._fresh_until = -math.inf
            if self._clock() >= next_sweep:
                next_sweep = self._clock() + SWEEP_EVERY_S
                with contextlib.suppress(Exception):
                    await budget.sweep(WINDOW_S)
            with contextlib.suppress(TimeoutError):  # a client new here wakes it early
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()

    async def release_all(self, budget: Budget) -> None:
        """At shutdown: give every lease back (best effort: a lost lease refills)."""
        for state in self._clients.values():
            state.seen = -math.inf
            _answer(state, False)
        forgotten, served = self._reports(self._clock())
        with contextlib.suppress(Exception):
            await budget.exchange(self.replica, self.rpm, WINDOW_S, forgotten + served)


def _answer(state: _Client, answered: bool) -> None:
    """Wake the requests waiting for a client's first answer (False: the fallback decides)."""
    if state.pending is not None:
        if not state.pending.done():
            state.pending.set_result(answered)
        state.pending = None


def shared_rate_limit_ctx(
    limiter: SharedRateLimiter,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The limiter's exchanges as a background task of the app (after the database:
    started once it is open, stopped and its leases given back before it closes)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        budget = app[DATABASE].rate_budget()
        if budget is None:  # one process: its own buckets
            yield
            return
        await limiter.tick(budget)  # serve with the shared pools from the first request
        task = asyncio.create_task(limiter.run(budget), name="shared-rate-limit")
        try:
            yield
        finally:
            limiter.stop()
            await task
            await limiter.release_all(budget)

    return ctx
