"""Which upstream gets the next batch: the failover policy, as pure code on a clock.

``SPOOLD_UPSTREAM_URL`` may list several replicas of one central server (sharing one
database), most preferred first. The policy:

* **Preference order.** The next batch goes to the first upstream that is *up* (its last
  contact was the server's own answer) or *unknown* (not contacted yet): at start-up the
  first of the list. That one is ``current``.
* **What moves on.** Any attempt that did not get the server's own answer marks that
  upstream *down* and the same batch goes at once to the next one: connection refused or
  reset, a timeout (also after the batch was sent: a batch in doubt is re-sent, see
  below), a TLS failure, a 5xx or a 408/425/429 (with or without ``Retry-After``), a
  401/403 (that replica refuses our token: another may not), and any answer that is not
  this server's (a proxy's 200, a wrong path's 404). Only the server's own answers keep
  an upstream up: its batch answer, and its own 400/413/422 about the items (those are
  about the request, not the upstream: split and dead-lettered as with one upstream).
* **Back-off per upstream.** A down upstream gets no batch until it has answered a probe
  (``GET /health``, the server's own ``"status": "ok"``); the probe is due after a
  capped, jittered back-off (``SPOOLD_BACKOFF_BASE_S`` doubling up to
  ``SPOOLD_BACKOFF_CAP_S``, longer if it sent ``Retry-After``) that grows with its
  failures in a row, and the count is reset only by a delivered batch, so a replica whose
  ``/health`` answers while its batches fail is tried less and less often.
* **Fail-back.** When a more preferred upstream passes its probe it is *up* again and
  the next batch goes to it: the sidecar returns to the first of its list by itself.
* **All down.** With no upstream up or unknown, the next attempt goes to the one whose
  back-off ends first (ties: preference order); the drainer's own back-off paces those
  attempts, exactly as with one upstream.

One batch is with one upstream at a time (the drainer sends one batch at a time and a
failover happens after the attempt ended): no item is in flight to two upstreams at
once. A batch whose answer was lost (a timeout after sending, a connection reset) is
sent again to the next upstream; the server's upsert applies a snapshot idempotently
(``server/storage/runs.py``: creates are insert-or-ignore, updates set fields to the
values given, heartbeats' merge patches compose to the same object), so the replica
that receives it twice, or the database both share, ends in the same state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from server.contract.timestamps import format_instant, utc_now
from spoold.upstream.retry import Backoff

State = Literal["unknown", "up", "down"]


def public_url(url: str) -> str:
    """The URL without any user:password part (what /health, logs and pages show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _instant(unix: float | None) -> str | None:
    return None if unix is None else format_instant(datetime.fromtimestamp(unix, UTC))


@dataclass
class Member:
    """One upstream of the list, as the policy knows it."""

    index: int
    url: str  # without credentials
    state: State = "unknown"
    #: Attempts (batches or probes) in a row that did not get the server's own answer.
    failures: int = 0
    #: Monotonic time its back-off ends: a probe is due then.
    retry_at: float = 0.0
    #: What the last failure was (``connect``, ``timeout``, ``tls``, ``auth``,
    #: ``unexpected_answer``, ``http_5xx``...), None once it answered again.
    problem: str | None = None
    error: str | None = None
    last_success_unix: float | None = None
    last_failure: str | None = None
    probing: bool = False

    def as_json(self, *, current: bool, now: float) -> dict[str, Any]:
        return {
            "index": self.index,
            "url": self.url,
            "state": self.state,
            "current": current,
            "problem": self.problem,
            "last_success": _instant(self.last_success_unix),
            "last_failure": self.last_failure,
            "error": self.error,
            "consecutive_failures": self.failures,
            "retry_in_s": round(max(0.0, self.retry_at - now), 3) if self.state == "down" else None,
        }


class Selection:
    """The upstreams of ``SPOOLD_UPSTREAM_URL`` and the choice among them (see the module)."""

    def __init__(
        self,
        urls: Sequence[str],
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not urls:
            raise ValueError("at least one upstream URL")
        self.members = [Member(index, public_url(url)) for index, url in enumerate(urls)]
        self._backoff = backoff
        self._clock = clock
        self._rand = rand

    @property
    def several(self) -> bool:
        return len(self.members) > 1

    def order(self) -> list[int]:
        """The upstreams to try for one batch, in turn, until one gives the server's answer."""
        usable = [member.index for member in self.members if member.state != "down"]
        if usable:
            return usable
        soonest = min(self.members, key=lambda member: (member.retry_at, member.index))
        return [soonest.index]

    @property
    def current(self) -> int:
        """Where the next batch (and read) goes first."""
        return self.order()[0]

    def succeeded(self, index: int) -> None:
        """The server's own answer to a batch: up, its failures forgotten."""
        member = self.members[index]
        member.state = "up"
        member.failures = 0
        member.retry_at = 0.0
        member.problem = member.error = None
        member.last_success_unix = time.time()  # formatted when shown: this is per batch

    def failed(self, index: int, problem: str, error: str, retry_after_s: float | None) -> None:
        """No server's answer (a batch or a probe): down, its back-off one step longer."""
        member = self.members[index]
        member.state = "down"
        member.failures += 1
        wait = self._backoff.delay(member.failures, rand=self._rand)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        member.retry_at = self._clock() + wait
        member.problem = problem
        member.error = error
        member.last_failure = utc_now()

    def take_due_probes(self) -> list[int]:
        """Down upstreams whose back-off has ended and that no probe is asking yet, now
        marked as being probed (``probed`` gives the verdict). Only with several
        upstreams: a single one is retried by the drainer itself, as it always was."""
        if not self.several:
            return []
        now = self._clock()
        due = [
            member
            for member in self.members
            if member.state == "down" and member.retry_at <= now and not member.probing
        ]
        for member in due:
            member.probing = True
        return [member.index for member in due]

    def probed(self, index: int, *, healthy: bool, problem: str = "", error: str = "") -> None:
        """A probe's verdict. Healthy: up again (eligible for the next batch), its failures
        kept until a batch is delivered, so a flapping replica backs off longer each time."""
        member = self.members[index]
        member.probing = False
        if not healthy:
            self.failed(index, problem, error, None)
            return
        member.state = "up"
        member.retry_at = 0.0
        member.problem = member.error = None

    def as_json(self) -> list[dict[str, Any]]:
        now, current = self._clock(), self.current
        return [member.as_json(current=member.index == current, now=now) for member in self.members]
