"""Sidecar presence: when each sidecar was last heard from, and how old its queue is.

Recorded in the same transaction as the batch that carried it (``X-Spoold-Id`` and
``X-Spoold-Queued-Since``), so the reaper never sees a batch's runs without the
presence that came with them (``server.storage.stale`` reads both).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

#: A sidecar's id, as the contract spells it (spoold makes a uuid4 hex).
SIDECAR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Presence:
    sidecar_id: str
    #: The oldest operation still in its spool when it sent the batch; None: empty.
    queued_since: str | None


def record(conn: sqlite3.Connection, presence: Presence, now: str) -> None:
    """Note that the sidecar was heard from now (inside the batch's transaction)."""
    conn.execute(
        "INSERT INTO sidecars (sidecar_id, last_contact_at, queued_since) VALUES (?, ?, ?)"
        " ON CONFLICT(sidecar_id) DO UPDATE SET"
        " last_contact_at = max(last_contact_at, excluded.last_contact_at),"
        " queued_since = excluded.queued_since",
        (presence.sidecar_id, now, presence.queued_since),
    )
