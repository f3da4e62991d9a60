"""spoold's door check against the server's limits, judged on the operation's batch envelope.

The check must refuse exactly what the server would refuse in the drainer's batch: the
envelope is the drainer's own (``encode_batch`` of the operation alone), its size to the
byte and its nesting depth to the level, whatever the operation holds (brackets inside
strings, empty updates, deep lists or objects, wide flat bodies).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from server.contract.codec import nesting_depth
from server.contract.errors import MalformedJson, PayloadTooLarge
from spoold.forward.coalesce import WIDEST_ORIGIN, encode_batch, lone
from spoold.forward.limits import UpstreamLimits


def nested(depth: int, leaf: Any = 1, *, kind: str = "dict") -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value} if kind == "dict" else [value]
    return value


def op(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "event_id": "e-1", "body": body, "accepted_at": "2026-01-01T00:00:00Z"}


def reference(operation: dict[str, Any], limits: UpstreamLimits) -> str | None:
    """What the server says of the drainer's batch holding only this operation (its
    source and sequence at their widest)."""
    body = encode_batch([lone(operation, 0, WIDEST_ORIGIN)])
    if len(body) > limits.max_body_bytes:
        return "413"
    depth = nesting_depth(orjson.loads(body), limit=limits.max_json_depth)
    return "400" if depth > limits.max_json_depth else None


def verdict(operation: dict[str, Any], limits: UpstreamLimits) -> str | None:
    try:
        limits.check(operation)
    except PayloadTooLarge:
        return "413"
    except MalformedJson:
        return "400"
    return None


def bodies() -> list[dict[str, Any]]:
    rng = random.Random(7)
    found: list[dict[str, Any]] = [
        {},
        {"status": "success"},
        {"metrics_json": nested(9)},
        {"metrics_json": nested(10)},
        {"metrics_json": nested(11, kind="list")},
        {"metrics_json": {"a": nested(3), "b": nested(10, kind="list")}},
        # More brackets than the limit, but inside strings: depth 3 only.
        {"error_summary": "[" * 500 + "{" * 500, "metrics_json": {"s": ']]}}"[[{{\\'}},
        # Many shallow containers: more brackets than the limit, depth 4.
        {"metrics_json": {"items": [{"v": i} for i in range(200)]}},
        {"context_json": {"esc": '\\"[', "deep": nested(8, 'x"{[')}},
        {"metrics_json": {"pad": "x" * 900}},
        {"metrics_json": {"pad": "y" * 1000}},
    ]
    for _ in range(40):
        depth = rng.randint(0, 14)
        found.append(
            {
                "status": rng.choice(["running", "success"]),
                "metrics_json": nested(
                    depth, "[{" * rng.randint(0, 20), kind=rng.choice(["dict", "list"])
                ),
                "input_summary": "p" * rng.randint(0, 1200),
            }
        )
    return found


def body_of(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "create":
        return {"event_id": "e-1", **body}
    if kind == "heartbeat":  # a heartbeat carries only progress (its metrics_patch)
        return {"progress": {key: value for key, value in body.items() if key != "status"}}
    return body


@pytest.mark.parametrize("kind", ["create", "update", "commit", "heartbeat"])
def test_the_door_check_refuses_exactly_what_the_servers_batch_would(kind: str) -> None:
    limits = UpstreamLimits(max_body_bytes=1100, max_json_depth=12)
    seen = set()
    for body in bodies():
        operation = op(kind, body_of(kind, body))
        expected = reference(operation, limits)
        assert verdict(operation, limits) == expected, body
        seen.add(expected)
    assert seen == {None, "400", "413"}  # every verdict was exercised


def test_the_size_is_judged_to_the_byte() -> None:
    operation = op("update", {"metrics_json": {"pad": ""}})
    size = len(encode_batch([lone(operation, 0, WIDEST_ORIGIN)]))
    operation["body"]["metrics_json"]["pad"] = "x" * 100
    at_cap = UpstreamLimits(max_body_bytes=size + 100, max_json_depth=32)
    assert verdict(operation, at_cap) is None
    assert verdict(operation, UpstreamLimits(size + 99, 32)) == "413"


def test_the_check_does_not_change_the_operation() -> None:
    operation = op("update", {"status": "running", "metrics_json": {"a": [1, 2]}})
    before = orjson.dumps(operation)
    UpstreamLimits(10_000, 32).check(operation)
    assert orjson.dumps(operation) == before
