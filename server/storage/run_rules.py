"""What a heartbeat or an upsert item does to a stored run, decided once for both backends.

Each backend reads the run's row in its own way (SQLite in its writer's transaction,
PostgreSQL ``FOR UPDATE``), asks here what changes, and writes that. No SQL and no
connection: only the contract's rules, so the two backends cannot drift apart on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from server.contract import mergepatch
from server.contract.codec import dumps_text
from server.contract.errors import PayloadTooLarge
from server.contract.fields import TERMINAL_STATUSES
from server.contract.run_record import RUN_JSON_COLUMNS

#: What an upsert reads of the stored run, in this order, before the columns it changes.
KEPT = ("status", "metrics_json", "reaped_at", "snapshot_source", "snapshot_seq")


class MetricsTooLarge(PayloadTooLarge):
    """A merge patch would make metrics_json larger than a request may be."""


def db_value(column: str, value: Any) -> Any:
    """A column's value as stored: the JSON columns as their text."""
    if column in RUN_JSON_COLUMNS and value is not None:
        return dumps_text(value)
    return value


def stored_json(text: Any) -> Any:
    """A stored JSON column's value; unparseable text (another writer's) counts as null."""
    if isinstance(text, (str, bytes)):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
    return None


def merged_progress(stored: Any, progress: dict[str, Any] | None, most_bytes: int) -> str | None:
    """The metrics_json text a heartbeat's ``progress`` (an RFC 7396 merge patch) leaves
    on a running run, or None when it leaves the stored text as it is (updated_at moves
    only when it changed). Past ``most_bytes``: MetricsTooLarge (a 413), nothing applied."""
    if not progress:
        return None
    merged = dumps_text(mergepatch.apply(stored_json(stored), progress))
    if len(merged) > most_bytes:
        raise MetricsTooLarge(
            f"metrics_json with this progress would be {len(merged)} bytes; "
            f"at most {most_bytes} are kept"
        )
    return None if merged == stored else merged


def upsert_diff(
    stored: Sequence[Any], changes: dict[str, Any], metrics_patch: dict[str, Any] | None
) -> dict[str, Any]:
    """The columns an upsert item's update and metrics patch really change. ``stored``:
    the ``KEPT`` columns, then the stored values of ``changes``' columns in its order.
    A finished run is never made running again, and a late metrics patch leaves it be;
    the agent's own terminal status replaces the reaper's, even ``timeout`` by ``timeout``.
    ``changes`` loses a refused ``running``."""
    current_status, current = stored[0], dict(zip(changes, stored[len(KEPT) :], strict=True))
    finished = current_status in TERMINAL_STATUSES
    if changes.get("status") == "running" and finished:
        del changes["status"]
    agents_word = stored[2] is not None and changes.get("status") in TERMINAL_STATUSES
    diff = {
        column: value
        for column, value in changes.items()
        if db_value(column, value) != current[column] or (column == "status" and agents_word)
    }
    if metrics_patch is not None and not finished:  # a late heartbeat changes nothing
        base = changes["metrics_json"] if "metrics_json" in changes else stored_json(stored[1])
        merged = mergepatch.apply(base, metrics_patch)
        if dumps_text(merged) != stored[1]:
            diff["metrics_json"] = merged
    return diff
