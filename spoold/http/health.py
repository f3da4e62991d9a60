"""spoold's own /health: liveness that never depends on the upstream, plus the numbers
an operator needs — queue depth and age, dead letters, upstream reachability,
last successful drain, disk free — and the accounting identity
``accepted = forwarded + queued + dead_lettered``, read from the ledger in one
step (``queued`` there counts operations not yet settled; ``spool.depth`` is
what the spool file holds, which includes a round being acked).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from server.edge.responses import json_response
from spoold import __version__
from spoold.http.prometheus import SIDECAR_METRICS
from spoold.http.state import SIDECAR, Sidecar

DEGRADED_FILL = 0.8
#: A 503 for a write this recent means the sidecar is refusing writes right now.
REFUSAL_WINDOW_S = 5.0
STALE_UPSTREAM_S = 300.0

routes = web.RouteTableDef()


def assess(
    sidecar: Sidecar, stats: Any, dead_letters: int, *, refusing: bool = False
) -> tuple[str, list[str]]:
    """ok / degraded / unhealthy, with the reasons; refusing: a write got 503 just now."""
    reasons: list[str] = []
    unhealthy = False
    accept_failure = sidecar.acceptor.failure
    if accept_failure is not None:
        unhealthy = True
        reasons.append(f"accept thread stopped ({accept_failure}): writes are refused with 503")
    if sidecar.drainer.local_error is not None:
        unhealthy = True
        reasons.append(f"forwarding stalled by a local error: {sidecar.drainer.local_error}")
    capacity = max(1, stats.capacity_bytes)
    if stats.bytes >= capacity or (refusing and stats.bytes >= DEGRADED_FILL * capacity):
        unhealthy = True
        reasons.append("spool full: writes are refused with 503")
    elif stats.bytes >= DEGRADED_FILL * capacity:
        reasons.append(f"spool above {int(DEGRADED_FILL * 100)}% of capacity")
    if stats.disk_free_bytes is not None and stats.disk_free_bytes < stats.min_free_disk_bytes:
        unhealthy = True
        reasons.append("free disk below the floor: writes are refused with 503")
    upstream = sidecar.upstream
    if upstream.unexpected_answer is not None:
        unhealthy = True  # nothing can be delivered until an operator fixes the URL or proxy
        reasons.append(
            f"upstream gave an {upstream.unexpected_answer}; is SPOOLD_UPSTREAM_URL this "
            "telemetry server? Nothing is acknowledged, retrying"
        )
    elif upstream.auth_failing:
        reasons.append("upstream refuses our token (401/403); fix SPOOLD_UPSTREAM_TOKEN")
    elif upstream.tls_failing:
        reasons.append(
            f"upstream {upstream.last_error}; writes are queued, nothing is delivered: "
            "check SPOOLD_UPSTREAM_URL, SPOOLD_UPSTREAM_CA_FILE and the server's certificate"
        )
    elif upstream.reachable is False:
        reasons.append("upstream unreachable; writes are queued")
    elif upstream.consecutive_failures:
        reasons.append("upstream failing; retrying")
    reasons.extend(standby_reasons(sidecar))
    if stats.depth_ops and (stats.oldest_age_s or 0) > STALE_UPSTREAM_S:
        reasons.append(f"oldest queued operation is {int(stats.oldest_age_s)}s old")
    if dead_letters:
        reasons.append(f"{dead_letters} dead letters need an operator (spoold deadletter list)")
    if unhealthy:
        return "unhealthy", reasons
    return ("degraded" if reasons else "ok"), reasons


def standby_reasons(sidecar: Sidecar) -> list[str]:
    """With several upstreams: each one down while another is in use (degraded: one
    failure fewer before nothing is delivered). When every one is down, the reasons
    above already say so."""
    selection = sidecar.upstream.selection
    if selection is None or not selection.several:
        return []
    members = selection.members
    if all(member.state == "down" for member in members):
        return []
    current = members[selection.current]
    return [
        f"upstream {member.index + 1} of {len(members)} ({member.url}) is down "
        f"({member.problem}: {member.error}); using {current.url}"
        for member in members
        if member.state == "down"
    ]


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR]
    stats = sidecar.spool.stats()
    dead_letters = await asyncio.to_thread(sidecar.dead_letters.count)
    counts = sidecar.ledger.snapshot()
    refusing = request.app[SIDECAR_METRICS].refused_within(REFUSAL_WINDOW_S)
    status, reasons = assess(sidecar, stats, dead_letters, refusing=refusing)
    drain = sidecar.drainer.stats
    body = {
        "status": status,
        "reasons": reasons,
        "version": __version__,
        "uptime_s": round(time.monotonic() - sidecar.started_at, 3),
        "spool": {
            "depth": stats.depth_ops,
            "groups": stats.depth_groups,
            "bytes": stats.bytes,
            "capacity_bytes": stats.capacity_bytes,
            "file_bytes": stats.file_bytes,
            "oldest_age_s": stats.oldest_age_s,
            "dead_letters": dead_letters,
            "path": str(sidecar.config.spool_dir.resolve()),
        },
        "disk": {
            "free_bytes": stats.disk_free_bytes,
            "min_free_bytes": stats.min_free_disk_bytes,
        },
        "upstream": sidecar.upstream.as_json(),
        "counters": {
            "accepted": counts.accepted,
            "forwarded": counts.forwarded,
            "queued": counts.queued,
            "dead_lettered": counts.dead_lettered,
            "duplicates_answered": counts.duplicates,
            "quarantined": counts.quarantined,
        },
        # Damaged local files set aside and replaced (logged at error level when it happened).
        "storage": {
            "index_rebuilds": sidecar.recoveries.index_rebuilds,
            "dead_letter_store_resets": sidecar.recoveries.dead_letter_store_resets,
            "spool_resets": sidecar.recoveries.spool_resets,
        },
        "drain": {
            "batches": drain.batches,
            "operations_forwarded": drain.operations_forwarded,
            "duplicates_sent": drain.duplicates_sent,
            "splits": drain.splits,
            "last_batch_size": drain.last_batch_size,
            "rests_skipped": drain.rests_skipped,
        },
    }
    if sidecar.presence is not None:
        body["presence"] = sidecar.presence.as_json()
    # Always 200: the daemon is alive and answering. A liveness probe must not restart a
    # sidecar because its spool is full or the server is away; read "status" instead.
    return json_response(body)
