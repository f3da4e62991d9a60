"""Heartbeats folded into upsert snapshots: what travels is what the agent did, in order.

A small model of the server's upsert (the contract in the issue: create if new, update
with "running never replaces a terminal status", then ``metrics_patch`` as an RFC 7396
merge patch) checks that applying the coalesced items gives the same run as applying
every operation one by one, for random interleavings of creates, updates and heartbeats.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from server.contract import mergepatch
from server.contract.fields import TERMINAL_STATUSES
from server.contract.models import HeartbeatBody
from spoold.forward.coalesce import coalesce, expand, lone, pack
from spoold.forward.limits import UpstreamLimits
from spoold.spool.operations import heartbeat_op, update_op

EVENT = "run-1"


def at(second: int) -> str:
    return f"2026-01-12T10:{second // 60:02d}:{second % 60:02d}.000000+00:00"


def beat(
    second: int, progress: dict[str, Any] | None = None, event_id: str = EVENT
) -> dict[str, Any]:
    return heartbeat_op(event_id, HeartbeatBody(progress=progress), at(second))


def update(second: int, **changes: Any) -> dict[str, Any]:
    return update_op(EVENT, changes, at(second))


def create(second: int, **fields: Any) -> dict[str, Any]:
    body = {"event_id": EVENT, "run_id": "r", "agent_name": "a", "job_type": "j", **fields}
    body.setdefault("status", "running")
    return {"kind": "create", "event_id": EVENT, "body": body, "accepted_at": at(second)}


# ---- a model of the server ---------------------------------------------------------


def _set_fields(run: dict[str, Any], changes: dict[str, Any]) -> None:
    changes = dict(changes)
    if changes.get("status") == "running" and run["status"] in TERMINAL_STATUSES:
        del changes["status"]
    run.update(changes)


def apply_op(runs: dict[str, dict[str, Any]], op: dict[str, Any]) -> None:
    """One operation as the server's own endpoints apply it."""
    run = runs.get(op["event_id"])
    if op["kind"] == "create":
        if run is None:
            runs[op["event_id"]] = dict(op["body"])
        return
    if run is None:
        return
    if op["kind"] == "heartbeat":
        progress = op["body"].get("progress")
        if progress and run["status"] not in TERMINAL_STATUSES:
            run["metrics_json"] = mergepatch.apply(run.get("metrics_json") or {}, progress)
        return
    _set_fields(run, op["body"])


def apply_item(runs: dict[str, dict[str, Any]], item: dict[str, Any], *, guarded: bool) -> None:
    """One upsert item; ``guarded``: the server ignores metrics_patch for a finished run."""
    if "create" in item and item["event_id"] not in runs:
        runs[item["event_id"]] = dict(item["create"])
    run = runs.get(item["event_id"])
    if run is None:
        return
    if "update" in item:
        _set_fields(run, item["update"])
    patch = item.get("metrics_patch")
    if patch is not None and not (guarded and run["status"] in TERMINAL_STATUSES):
        run["metrics_json"] = mergepatch.apply(run.get("metrics_json") or {}, patch)


def items_of(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Through JSON, as they travel.
    return [orjson.loads(orjson.dumps(s.upsert_item())) for s in coalesce(ops)]


# ---- the cases the issue names -----------------------------------------------------


def test_a_heartbeat_after_a_terminal_update_does_not_revive_or_change_the_run() -> None:
    ops = [create(0), update(1, status="success"), beat(2, {"pct": 100}), beat(3)]
    [item] = items_of(ops)
    assert item["update"] == {"status": "success"}
    assert "metrics_patch" not in item
    assert "heartbeat" not in item
    assert item["seen_at"] == at(3)


def test_a_heartbeat_flood_of_one_run_travels_as_one_item_with_the_newest_time() -> None:
    ops = [beat(second, {"pct": second, "stage": {"n": second}}) for second in range(1000)]
    snapshots = coalesce(ops)
    assert len(snapshots) == 1
    item = snapshots[0].upsert_item()
    assert item == {
        "event_id": EVENT,
        "metrics_patch": {"pct": 999, "stage": {"n": 999}},
        "heartbeat": True,
        "seen_at": at(999),
    }
    assert snapshots[0].operations == 1000  # all of them are settled by the one item


def test_a_bare_heartbeat_is_an_alive_only_item() -> None:
    assert items_of([beat(5)]) == [{"event_id": EVENT, "heartbeat": True, "seen_at": at(5)}]


def test_every_snapshot_carries_the_newest_operations_time() -> None:
    items = items_of([create(1), update(4, items_succeeded=1), update(2, items_failed=1)])
    assert items[0]["seen_at"] == at(4)  # the newest, whatever the spool order
    assert "heartbeat" not in items[0]


def test_an_update_setting_metrics_json_drops_the_patches_before_it() -> None:
    [item] = items_of([beat(1, {"a": 1}), update(2, metrics_json={"b": 2})])
    assert item["update"] == {"metrics_json": {"b": 2}}
    assert "metrics_patch" not in item
    assert "heartbeat" not in item


def test_a_heartbeat_after_metrics_json_is_folded_into_it() -> None:
    [item] = items_of(
        [update(1, metrics_json={"a": 1, "b": {"c": 1}}), beat(2, {"b": {"c": None, "d": 2}})]
    )
    assert item["update"]["metrics_json"] == {"a": 1, "b": {"d": 2}}
    assert "metrics_patch" not in item


def test_a_terminal_update_after_pending_progress_goes_after_it() -> None:
    items = items_of([create(0), beat(1, {"pct": 50}), update(2, status="failure")])
    assert [item.get("metrics_patch") for item in items] == [{"pct": 50}, None]
    assert items[1]["update"] == {"status": "failure"}
    for guarded in (True, False):
        runs: dict[str, dict[str, Any]] = {}
        for item in items:
            apply_item(runs, item, guarded=guarded)
        assert runs[EVENT]["metrics_json"] == {"pct": 50}
        assert runs[EVENT]["status"] == "failure"


def test_patches_no_merge_patch_can_compose_travel_apart_in_order() -> None:
    ops = [beat(1, {"a": None}), beat(2, {"a": {"b": 1}}), beat(3, {"c": 1})]
    items = items_of(ops)
    assert [item["metrics_patch"] for item in items] == [{"a": None}, {"a": {"b": 1}, "c": 1}]
    runs = {EVENT: {"status": "running", "metrics_json": {"a": {"old": 1}}}}
    for item in items:
        apply_item(runs, item, guarded=True)
    assert runs[EVENT]["metrics_json"] == {"a": {"b": 1}, "c": 1}


def test_a_lone_heartbeat_is_sendable_alone_and_checked_at_the_door() -> None:
    op = beat(1, {"blob": "x" * 2000})
    item = lone(op).upsert_item()
    assert item["heartbeat"] is True
    assert item["metrics_patch"] == {"blob": "x" * 2000}
    with pytest.raises(Exception, match="too large"):
        UpstreamLimits(1024, 32).check(op)
    UpstreamLimits(4096, 32).check(op)


def test_a_snapshot_too_large_alone_is_resent_as_its_operations_heartbeats_included() -> None:
    ops = [create(0, metrics_json={"s": "x" * 600})] + [
        beat(second, {f"k{second}": "y" * 300}) for second in range(1, 4)
    ]
    batches = pack(coalesce(ops), ops, 1100)
    sent = [item for _, body in batches for item in orjson.loads(body)]
    assert len(sent) == 4  # expanded: the create, then each heartbeat alone
    assert all(len(body) <= 1100 for _, body in batches)
    assert [item.get("heartbeat", False) for item in sent] == [False, True, True, True]
    assert [len(s.positions) for s in expand(coalesce(ops)[0], ops)] == [1, 1, 1, 1]


# ---- random interleavings against the model ------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if roll < 0.25:
        return None
    if roll < 0.55 or depth >= 2:
        return rng.randint(0, 3)
    return {rng.choice("xyz"): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 2))}


#: Objects under the keys heartbeats patch: a patch that merges where it should replace shows.
BASE = {"a": {"x": 1, "y": 2}, "b": {"z": {"x": 0}}, "c": 3}


def _random_ops(rng: random.Random) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    second = 0
    if rng.random() < 0.7:
        ops.append(create(second, metrics_json=BASE) if rng.random() < 0.5 else create(second))
    for _ in range(rng.randint(1, 12)):
        second += 1
        roll = rng.random()
        if roll < 0.55:
            progress = {rng.choice("abc"): _random_value(rng) for _ in range(rng.randint(0, 2))}
            ops.append(beat(second, progress or None))
        elif roll < 0.75:
            ops.append(update(second, status=rng.choice(["running", "success", "failure"])))
        elif roll < 0.9:
            ops.append(update(second, metrics_json={**BASE, "m": _random_value(rng)}))
        else:
            ops.append(update(second, items_succeeded=second))
    return ops


@pytest.mark.parametrize("guarded", [True, False])
def test_coalesced_items_do_what_the_operations_did(guarded: bool) -> None:
    rng = random.Random(7)
    for _ in range(3000):
        ops = _random_ops(rng)
        start = {EVENT: {"status": "running", "metrics_json": BASE}}
        if ops[0]["kind"] == "create":
            start = {}
        one_by_one = orjson.loads(orjson.dumps(start))
        for op in ops:
            apply_op(one_by_one, op)
        folded = orjson.loads(orjson.dumps(start))
        items = items_of(ops)
        for item in items:
            apply_item(folded, item, guarded=guarded)
        assert folded == one_by_one, (ops, items)
        assert items[-1]["seen_at"] == max(op["accepted_at"] for op in ops)
        assert sum(s.operations for s in coalesce(ops)) == len(ops)


def test_a_replayed_heartbeat_keeps_only_the_progress_still_current() -> None:
    from spoold.cli.replay import latest_to_check, still_current
    from spoold.state.runs_index import KnownRun

    letter = beat(1, {"pct": 10, "stage": "fetch"})
    latest = {"metrics_json": {"pct": 90, "stage": "fetch"}}  # a newer heartbeat moved pct
    assert still_current(letter, latest) == {**letter, "body": {"progress": {"stage": "fetch"}}}
    assert still_current(letter, {"metrics_json": {"pct": 10, "stage": "fetch"}}) == letter
    assert still_current(letter, {"metrics_json": {"pct": 90}}) is None  # superseded
    assert still_current(beat(2), {"metrics_json": {}}) is None  # a bare "alive" is long past
    shrunk = KnownRun(EVENT, {"run_id": "r"}, True, 0, complete=False)
    assert latest_to_check(letter, shrunk) is None  # cannot say: left unless forced
    assert latest_to_check(beat(3), shrunk) == {"run_id": "r"}
