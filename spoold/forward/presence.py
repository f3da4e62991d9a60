"""Sidecar presence: who is sending, and how far back its spool reaches.

Every batch post carries ``X-Spoold-Id`` (``spoold.identity``) and, while anything is
spooled, ``X-Spoold-Queued-Since``: the ``accepted_at`` of the oldest operation in the
spool, the batch's own included. The server reaps a run of this sidecar only when
everything the agent wrote before the run's deadline has arrived, so the value must
never be later than the truth: it is the earliest of the oldest ``accepted_at`` in the
round being sent, the time of the oldest group still in the spool (never later than
its operations' ``accepted_at``: the accept path stamps it so, and groups are put in
the order their writes were accepted) and the oldest ``accepted_at`` of the writes on
their way into the spool (a slow commit). A group delivered but not yet acked makes it
a little early, which only makes the server wait.

When the drainer has sent nothing for ``SPOOLD_PRESENCE_INTERVAL_S`` (an empty spool,
say), ``PresenceBeacon`` sends a presence batch: ``[]`` with both headers. Its answer is
judged like any batch answer (``spoold.upstream.answers``): only the server's own
``total: 0`` answer is contact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from server.contract.timestamps import format_instant
from spoold.spool import Spool
from spoold.upstream.client import UpstreamClient

log = structlog.get_logger("spoold.presence")

SIDECAR_ID_HEADER = "X-Spoold-Id"
QUEUED_SINCE_HEADER = "X-Spoold-Queued-Since"
PRESENCE_BODY = b"[]"


def oldest_accepted_at(ops: Iterable[dict[str, Any]]) -> str | None:
    """The earliest ``accepted_at`` among ops (canonical instants sort as strings)."""
    found = [op["accepted_at"] for op in ops if isinstance(op.get("accepted_at"), str)]
    return min(found) if found else None


class Presence:
    """The headers of every batch post; the drainer sets ``round_oldest`` while it sends."""

    def __init__(
        self,
        sidecar_id: str,
        spool: Spool,
        *,
        persisted: bool = True,
        accepting: Callable[[], str | None] | None = None,
    ) -> None:
        self.sidecar_id = sidecar_id
        #: False: the id file could not be written; the id lasts this process only.
        self.persisted = persisted
        self._spool = spool
        #: The oldest accepted_at of the writes on their way into the spool (the accept
        #: path's ``Acceptor.oldest_pending``).
        self._accepting = accepting
        #: The oldest accepted_at of the round the drainer is sending, if any.
        self.round_oldest: str | None = None

    def queued_since(self) -> str | None:
        """The oldest spooled operation's time; None when the spool is empty."""
        candidates: list[str] = []
        if self.round_oldest is not None:
            candidates.append(self.round_oldest)
        accepting = self._accepting() if self._accepting is not None else None
        if accepting is not None:
            candidates.append(accepting)
        enqueued = self._spool.stats().oldest_enqueued_at
        if enqueued is not None:
            candidates.append(format_instant(datetime.fromtimestamp(enqueued, UTC)))
        return min(candidates) if candidates else None

    def as_json(self) -> dict[str, Any]:
        """For /health: the id the server knows this sidecar by, and what it is told."""
        return {
            "sidecar_id": self.sidecar_id,
            "sidecar_id_persisted": self.persisted,
            "queued_since": self.queued_since(),
        }

    def headers(self) -> dict[str, str]:
        headers = {SIDECAR_ID_HEADER: self.sidecar_id}
        since = self.queued_since()
        if since is not None:
            headers[QUEUED_SINCE_HEADER] = since
        return headers


@dataclass
class BeaconStats:
    answered: int = 0
    failed: int = 0
    last_problem: str | None = None


class PresenceBeacon:
    """Sends a presence batch whenever no batch reached the server for ``interval_s``."""

    def __init__(
        self,
        client: UpstreamClient,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._interval = interval_s
        self._clock = clock
        #: Start-up counts as contact: the drainer's first round usually tells the server
        #: sooner, and a presence batch is only for a sidecar with nothing to say.
        self._started = clock()
        self.stats = BeaconStats()

    def due_in(self) -> float:
        """Seconds until a presence batch is due (0: now)."""
        last = max(self._client.last_contact or self._started, self._started)
        return max(0.0, last + self._interval - self._clock())

    async def run(self) -> None:
        """Until cancelled (the app's lifecycle owns it)."""
        while True:
            wait = self.due_in()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not await self.send_once():
                await asyncio.sleep(self._interval)  # a failure is not retried in a tight loop

    async def send_once(self) -> bool:
        """One presence batch; True if the server itself answered it."""
        answer = await self._client.send_batch(PRESENCE_BODY, 0)
        if answer.verdict == "ok":
            self.stats.answered += 1
            self.stats.last_problem = None
            return True
        self.stats.failed += 1
        self.stats.last_problem = answer.cause or f"HTTP {answer.status}"
        if self.stats.failed in (1, 10, 100) or self.stats.failed % 1000 == 0:
            log.warning(
                "presence_not_answered", cause=self.stats.last_problem, failures=self.stats.failed
            )
        return False
