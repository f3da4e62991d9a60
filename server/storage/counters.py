"""Run counts kept in memory by the writer, so /metrics never scans the table.

Counted once at start-up (one pass over an index: the only full scan), then kept
exact by the writer: ``run_deltas``' TEMP triggers record every inserted,
re-labelled or deleted row inside the group's transaction (a rolled-back savepoint
or group takes its rows with it) and hand the group's net changes to ``apply``
once COMMIT has succeeded. Whatever code path writes, the counts follow, with no
bookkeeping in it.

``recent_24h`` counts by whole minute: a run counts while its ``created_at``
minute is one of the last 1,440 minutes, the current minute included (future
instants count too, as ``created_at > now - 24h`` did). ``created_at`` is the
client's to give, so the minutes kept are bounded: one more than a day ahead of the
clock is counted with the last minute of its day, one more than a year ahead with the
last minute of its year (at most ~2 x 1,440 + 367 + 8,000 keys, whatever clients
send). Such a run counts now as it should; it leaves the window at the end of its day
(or year) plus 24 h instead of its own minute plus 24 h.

The counts assume this server is the database's only writer, as it is
designed to be; another process writing the file is seen only after a restart.
"""

from __future__ import annotations

import bisect
import heapq
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from server.contract.codec import dumps_key, loads
from server.contract.timestamps import format_instant

WINDOW_MINUTES = 24 * 60
#: created_at minutes up to this far ahead of the clock are kept exactly ...
EXACT_AHEAD = timedelta(days=1)
#: ... up to this far ahead by day, and beyond it by year.
DAILY_AHEAD = timedelta(days=366)
_MINUTE_CHARS = 16  # "2026-01-12T10:30" of the canonical created_at
#: (agent_name, status, created_at minute, change in count)
Delta = tuple[str, str, str, int]


def minute_of(moment: datetime) -> str:
    """The minute key of an instant, as the triggers cut it from created_at."""
    return format_instant(moment)[:_MINUTE_CHARS]


@dataclass(frozen=True)
class RunCounts:
    total_runs: int
    #: ``{"agent": runs, ...}`` busiest first, as /metrics shows it: JSON, because a read
    #: right after a write would otherwise rebuild a dict of every agent (most of its cost
    #: with thousands of agents) only for the answer to serialise it again.
    agents_json: bytes
    recent_24h: int
    by_status: dict[str, int]

    @property
    def agents(self) -> dict[str, int]:
        """The agents as a dict (start-up and tests; the answer embeds ``agents_json``)."""
        return dict(loads(self.agents_json))


def agents_json(busiest_first: Iterable[tuple[str, int]]) -> bytes:
    """The ``agents`` object of /metrics, from (agent, runs) pairs in answer order."""
    return _json_object(_agent_entry(agent, n) for agent, n in busiest_first)


def _json_object(entries: Iterable[bytes]) -> bytes:
    return b"{" + b",".join(entries) + b"}"


def _agent_entry(agent: str, n: int) -> bytes:
    return b"%s:%d" % (dumps_key(agent), n)


class RunCounters:
    """Thread-safe counts: the writer thread applies deltas, handlers take snapshots."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._total = 0
        self._agents: dict[str, int] = {}
        # The agents busiest first (then by name), kept sorted as counts change, and beside
        # it each one's ``"name":runs`` JSON: a read after a change joins those (one C call)
        # instead of sorting, or building a dict, per read.
        self._agent_order: list[tuple[int, str]] = []
        self._agent_entries: list[bytes] = []
        self._agents_json: bytes | None = b"{}"
        self._statuses: dict[str, int] = {}
        self._minutes: dict[str, int] = {}  # minutes still inside (or after) the window
        self._expiry: list[str] = []  # heap of the keys of _minutes
        self._window_start = ""
        self._exact_until = self._daily_until = ""
        self._recent = 0
        self._advance(self._clock())

    # ---- writer side ----------------------------------------------------------------

    def load(self, conn: sqlite3.Connection) -> None:
        """Count what is stored (start-up: one pass over the agent index, one range scan)."""
        rows = conn.execute(
            "SELECT agent_name, status, COUNT(*) FROM agent_runs GROUP BY agent_name, status"
        ).fetchall()
        recent = conn.execute(
            "SELECT substr(created_at, 1, 16), COUNT(*) FROM agent_runs "
            "WHERE created_at >= ? GROUP BY 1",
            (self._window_start,),
        ).fetchall()
        with self._lock:
            for agent, status, n in rows:
                self._add(str(agent), str(status), int(n))
            self._agent_order = sorted((-n, agent) for agent, n in self._agents.items() if n)
            self._agent_entries = [_agent_entry(agent, -n) for n, agent in self._agent_order]
            self._agents_json = None
            for minute, n in recent:
                self._add_minute(str(minute), int(n))

    def apply(self, deltas: Iterable[Delta]) -> None:
        # Netted per agent first: a finished run is -1 on its agent's ``running`` row and
        # +1 on another status of the same agent, which moves nobody in the busiest-first
        # order (two reorders per finished run: a bisect and two memmoves each).
        agents: dict[str, int] = {}
        with self._lock:
            for agent, status, minute, n in deltas:
                key, count = str(agent), int(n)
                agents[key] = agents.get(key, 0) + count
                self._total += count
                _bump(self._statuses, str(status), count)
                self._add_minute(str(minute), count)
            for agent, net in agents.items():
                if net:
                    before = self._agents.get(agent, 0)
                    _bump(self._agents, agent, net)
                    self._reorder(agent, before, before + net)

    # ---- readers --------------------------------------------------------------------

    def snapshot(self) -> RunCounts:
        """The current counts; O(agents + statuses), independent of the number of runs."""
        with self._lock:
            self._advance(self._clock())
            if self._agents_json is None:
                self._agents_json = _json_object(self._agent_entries)
            return RunCounts(self._total, self._agents_json, self._recent, dict(self._statuses))

    @property
    def window_start(self) -> str:
        """The oldest created_at minute that recent_24h counts (for tests and docs)."""
        with self._lock:
            return self._window_start

    # ---- internals (lock held) ------------------------------------------------------

    def _add(self, agent: str, status: str, n: int) -> None:
        self._total += n
        _bump(self._agents, agent, n)
        _bump(self._statuses, status, n)

    def _reorder(self, agent: str, before: int, after: int) -> None:
        """Move one agent in the busiest-first order: a bisect and a memmove, no sort."""
        entry = _agent_entry(agent, after) if after else b""  # before either list changes
        if before:
            at = bisect.bisect_left(self._agent_order, (-before, agent))
            del self._agent_order[at], self._agent_entries[at]
        if after:
            at = bisect.bisect_right(self._agent_order, (-after, agent))
            self._agent_order.insert(at, (-after, agent))
            self._agent_entries.insert(at, entry)
        self._agents_json = None

    def _add_minute(self, minute: str, n: int) -> None:
        if minute > self._exact_until:  # ahead, or the horizons are stale: no read lately
            self._advance(self._clock())
        if minute < self._window_start:
            return
        minute = self._bucket(minute)
        if minute not in self._minutes:
            heapq.heappush(self._expiry, minute)
        _bump(self._minutes, minute, n, keep_zero=True)
        self._recent += n

    def _bucket(self, minute: str) -> str:
        """The key a created_at minute is counted under: itself, its day's last minute or
        its year's (both sort after every minute they hold, so they leave the window last).

        A run's later -1 must land on the key of its +1: it does, as a stored run's
        created_at never changes (PATCH ignores it) and only retention deletes runs, long
        after their minute has left the window (a -1 there is dropped; its coarse key still
        expires within a day, or a year, of its own minute)."""
        if minute <= self._exact_until:
            return minute
        if minute <= self._daily_until:
            return minute[:10] + "T23:59"
        return minute[:4] + "-12-31T23:59"

    def _advance(self, now: datetime) -> None:
        window_start = minute_of(now - timedelta(minutes=WINDOW_MINUTES - 1))
        if window_start <= self._window_start:
            return
        self._window_start = window_start
        self._exact_until = minute_of(now + EXACT_AHEAD)
        self._daily_until = minute_of(now + DAILY_AHEAD)
        while self._expiry and self._expiry[0] < window_start:
            self._recent -= self._minutes.pop(heapq.heappop(self._expiry), 0)


def _bump(counts: dict[str, int], key: str, n: int, *, keep_zero: bool = False) -> None:
    value = counts.get(key, 0) + n
    if value or keep_zero:
        counts[key] = value
    else:
        counts.pop(key, None)
