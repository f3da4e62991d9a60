"""The sidecar's accounting: ``accepted = forwarded + queued + dead_lettered`` at every read.

The durable counters live in the runs index and move in the same transactions
as the index rows (see ``runs_index``); the spool is a separate file with its
own commits. So that a reader never sees one side of a step without the other,
/health and /metrics read this in-memory mirror instead, which the accept
thread and the drainer move *after* their durable step, under one lock:

- accept: ``accepted`` and ``queued`` grow together once the group is in the
  spool and the index;
- drain: ``queued`` shrinks while ``forwarded`` / ``dead_lettered`` grow, once
  the settle is committed (the spool ack follows; see ``forward.record``).

At start-up it is loaded from the index and the spool's real depth (after
``recovery.reconcile``), so a restart checks the persisted counters against
what the spool actually holds rather than assuming they agree.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Counts:
    accepted: int = 0
    forwarded: int = 0
    queued: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    quarantined: int = 0

    @property
    def adds_up(self) -> bool:
        return self.accepted == self.forwarded + self.queued + self.dead_lettered


class Ledger:
    """Thread-safe counters; every change is one locked step."""

    def __init__(self, start: Counts | None = None) -> None:
        self._lock = threading.Lock()
        self._counts = start or Counts()

    def snapshot(self) -> Counts:
        with self._lock:
            return self._counts

    def accepted(self, operations: int, duplicates: int = 0) -> None:
        """Operations are durable in the spool and recorded in the index."""
        with self._lock:
            c = self._counts
            self._counts = replace(
                c,
                accepted=c.accepted + operations,
                queued=c.queued + operations,
                duplicates=c.duplicates + duplicates,
            )

    def settled(self, forwarded: int, dead_lettered: int) -> None:
        """Operations left the queue: the server has them, or the dead-letter store does."""
        with self._lock:
            c = self._counts
            self._counts = replace(
                c,
                forwarded=c.forwarded + forwarded,
                queued=c.queued - forwarded - dead_lettered,
                dead_lettered=c.dead_lettered + dead_lettered,
            )
