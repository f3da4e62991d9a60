"""What the status page shows, gathered from spoold's live objects in one pass.

Everything but the dead letters is read on the event loop from in-memory state
(the spool's counters, the ledger, the upstream status, the rate ring): no disk
I/O beyond the cached ``statvfs`` /health also uses, no lock the accept thread
holds for longer than a counter update. The dead letters are read in a worker
thread (``spoold.ui.letters``). The overall verdict is /health's own
(``spoold.http.health.assess``), so the page and the probe never disagree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from spoold import __version__
from spoold.forward.drainer import PROBE_EVERY_S
from spoold.http.health import DEGRADED_FILL, assess
from spoold.http.state import Sidecar
from spoold.spool.stats import SpoolStats
from spoold.ui import format as fmt
from spoold.ui.letters import LetterPage
from spoold.ui.rates import Counters, Rates

#: ok, warn, bad, unknown: each drawn with its own shape and word, not only its colour.
Tone = Literal["ok", "warn", "bad", "unknown"]
_VERDICT_TONES: dict[str, Tone] = {"ok": "ok", "degraded": "warn", "unhealthy": "bad"}


@dataclass(frozen=True)
class Member:
    """One upstream of SPOOLD_UPSTREAM_URL (shown when there are several)."""

    position: int  # 1-based, in preference order
    url: str
    state: str
    tone: Tone
    current: bool
    last_success: str | None
    last_failure: str | None
    error: str | None
    consecutive_failures: int


@dataclass(frozen=True)
class Upstream:
    url: str
    state: str
    tone: Tone
    last_success: str | None
    last_success_ago: str | None
    last_error: str | None
    last_error_at: str | None
    last_error_ago: str | None
    consecutive_failures: int
    in_flight_batches: int
    retries: list[tuple[str, int]]
    #: What the drainer does next, in words (retrying with which back-off, or idle).
    next_step: str
    #: Each upstream, when SPOOLD_UPSTREAM_URL lists several (else empty).
    members: list[Member]


@dataclass(frozen=True)
class Capacity:
    used: int
    capacity: int
    fill: str
    tone: Tone
    state: str
    file_bytes: int
    disk_free: int | None
    disk_floor: int
    disk_tone: Tone
    disk_state: str


@dataclass(frozen=True)
class StatusPage:
    verdict: str
    tone: Tone
    reasons: list[str]
    version: str
    uptime: str
    sidecar_id: str | None
    spool_path: str
    generated_at: str
    stats: SpoolStats
    oldest_at: str | None
    counts: Counters
    rates: Rates | None
    upstream: Upstream
    capacity: Capacity
    letters: LetterPage


def build(
    sidecar: Sidecar,
    stats: SpoolStats,
    counts: Counters,
    rates: Rates | None,
    letters: LetterPage,
    *,
    refusing: bool,
) -> StatusPage:
    """The page's data; pure but for the clock."""
    now = time.time()
    verdict, reasons = assess(sidecar, stats, letters.total or 0, refusing=refusing)
    if letters.error is not None:
        reasons = [*reasons, "the dead-letter store cannot be read; see below"]
        verdict = "degraded" if verdict == "ok" else verdict
    presence = sidecar.presence
    return StatusPage(
        verdict=verdict,
        tone=_VERDICT_TONES.get(verdict, "unknown"),
        reasons=reasons,
        version=__version__,
        uptime=fmt.duration(time.monotonic() - sidecar.started_at),
        sidecar_id=presence.sidecar_id if presence is not None else None,
        spool_path=str(sidecar.config.spool_dir),
        generated_at=fmt.instant(now) or "",
        stats=stats,
        oldest_at=fmt.instant(stats.oldest_enqueued_at),
        counts=counts,
        rates=rates,
        upstream=_upstream(sidecar, stats, now),
        capacity=_capacity(stats),
        letters=letters,
    )


def _upstream(sidecar: Sidecar, stats: SpoolStats, now: float) -> Upstream:
    status, config = sidecar.upstream, sidecar.config
    state: str
    tone: Tone
    if status.unexpected_answer is not None:
        state, tone = "answering, but not as a telemetry server", "bad"
    elif status.auth_failing:
        state, tone = "refusing our token (401/403)", "bad"
    elif status.tls_failing:
        state, tone = "TLS handshake failing", "bad"
    elif status.reachable is None:
        state, tone = "not contacted yet", "unknown"
    elif status.reachable is False:
        state, tone = "unreachable", "bad"
    elif status.consecutive_failures:
        state, tone = "reachable, answering errors", "warn"
    else:
        state, tone = "reachable", "ok"
    success_unix = status.last_success_unix
    error_unix = fmt.parse_instant(status.last_error_at)
    failures = status.consecutive_failures
    if failures and stats.depth_ops:
        ceiling = min(
            config.backoff_cap_s, config.backoff_base_s * 2 ** max(0, min(failures, 64) - 1)
        )
        next_step = (
            f"retrying: failure {failures} in a row; the next try comes "
            f"{fmt.duration(ceiling / 2)} to {fmt.duration(ceiling)} after the last "
            f"(back-off {fmt.duration(config.backoff_base_s)} doubling up to "
            f"{fmt.duration(config.backoff_cap_s)}, longer if the server sent Retry-After)"
        )
    elif stats.depth_ops:
        next_step = "forwarding the queue"
    else:
        next_step = f"nothing to send; checking the server every {fmt.duration(PROBE_EVERY_S)}"
    return Upstream(
        url=status.current_url,
        state=state,
        tone=tone,
        last_success=fmt.instant(success_unix),
        last_success_ago=_ago(success_unix, now),
        last_error=status.last_error,
        last_error_at=fmt.instant(error_unix) if error_unix is not None else status.last_error_at,
        last_error_ago=_ago(error_unix, now),
        consecutive_failures=failures,
        in_flight_batches=status.in_flight_batches,
        retries=sorted(status.retries.items()),
        next_step=next_step,
        members=_members(sidecar),
    )


_MEMBER_STATES: dict[str, tuple[str, Tone]] = {
    "up": ("answering", "ok"),
    "unknown": ("not contacted yet", "unknown"),
}


def _members(sidecar: Sidecar) -> list[Member]:
    selection = sidecar.upstream.selection
    if selection is None or not selection.several:
        return []
    current = selection.current
    members = []
    for member in selection.members:
        state, tone = _MEMBER_STATES.get(member.state, ("down", "bad"))
        if member.state == "down" and member.problem:
            state = f"down: {member.problem.replace('_', ' ')}"
        members.append(
            Member(
                position=member.index + 1,
                url=member.url,
                state=state,
                tone=tone,
                current=member.index == current,
                last_success=fmt.instant(member.last_success_unix),
                last_failure=member.last_failure,
                error=member.error,
                consecutive_failures=member.failures,
            )
        )
    return members


def _capacity(stats: SpoolStats) -> Capacity:
    capacity = max(1, stats.capacity_bytes)
    state: str
    tone: Tone
    if stats.bytes >= capacity:
        state, tone = "full: writes are refused with 503", "bad"
    elif stats.bytes >= DEGRADED_FILL * capacity:
        state, tone = f"above {int(DEGRADED_FILL * 100)} % of the cap", "warn"
    else:
        state, tone = "room to spare", "ok"
    disk_state: str
    disk_tone: Tone
    if stats.disk_free_bytes is None:
        disk_state, disk_tone = "free space unknown (statvfs failed)", "unknown"
    elif stats.disk_free_bytes < stats.min_free_disk_bytes:
        disk_state, disk_tone = "below the floor: writes are refused with 503", "bad"
    else:
        disk_state, disk_tone = "above the floor", "ok"
    return Capacity(
        used=stats.bytes,
        capacity=stats.capacity_bytes,
        fill=fmt.percent(stats.bytes, stats.capacity_bytes),
        tone=tone,
        state=state,
        file_bytes=stats.file_bytes,
        disk_free=stats.disk_free_bytes,
        disk_floor=stats.min_free_disk_bytes,
        disk_tone=disk_tone,
        disk_state=disk_state,
    )


def _ago(unix: float | None, now: float) -> str | None:
    return None if unix is None else fmt.duration(max(0.0, now - unix)) + " ago"
