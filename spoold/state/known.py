"""How an accepted operation changes what the runs index knows of its run.

The runs index keeps the newest snapshot of each run it knows (read-your-writes: a GET
answered locally shows the writes not yet forwarded); a dead-lettered heartbeat is
replayed only for what that snapshot says is still current (``spoold.cli.replay``).
"""

from __future__ import annotations

from typing import Any

from server.contract import mergepatch
from server.contract.fields import TERMINAL_STATUSES


def fold_known(snapshot: dict[str, Any], op: dict[str, Any]) -> None:
    """Fold an operation into the runs index's snapshot of its run (read-your-writes).

    A heartbeat's progress is merged into a ``metrics_json`` the snapshot holds (from its
    create or an update); one it does not hold is the server's, and is left to it."""
    if op["kind"] != "heartbeat":
        snapshot.update(op["body"])
        return
    progress = op["body"].get("progress")
    if progress and "metrics_json" in snapshot and snapshot.get("status") not in TERMINAL_STATUSES:
        snapshot["metrics_json"] = mergepatch.apply(snapshot["metrics_json"] or {}, progress)


def heartbeat_still_current(op: dict[str, Any], latest: dict[str, Any]) -> dict[str, Any] | None:
    """A dead-lettered heartbeat, to replay: only the progress keys the run's latest
    ``metrics_json`` still agrees with (a newer write changed the others); None when
    none is left (its "alive" is long past: a replay cannot make it news)."""
    progress = op["body"].get("progress") or {}
    metrics = latest.get("metrics_json")
    if not isinstance(metrics, dict):
        return None
    kept = {k: v for k, v in progress.items() if mergepatch.apply(metrics, {k: v}) == metrics}
    if not kept:
        return None
    return op if len(kept) == len(progress) else {**op, "body": {"progress": kept}}


def heartbeat_checkable(op: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    """Whether the runs index's snapshot can say what of a heartbeat is still current."""
    return not op["body"].get("progress") or "metrics_json" in snapshot
