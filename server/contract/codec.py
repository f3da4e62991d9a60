"""JSON in and out, through orjson, with the limits both daemons enforce.

Size is capped by the HTTP layer (413); this module caps nesting depth, so a
pathological body is a 400 rather than deep recursion anywhere downstream.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.contract.errors import MalformedJson, ValidationFailed

DEFAULT_MAX_DEPTH = 32


def loads(raw: bytes | str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON; raise MalformedJson for bad syntax or nesting deeper than max_depth."""
    if not raw:
        raise ValidationFailed(
            [{"loc": ["body"], "msg": "Field required: a JSON body is needed", "type": "missing"}]
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"malformed JSON: {exc}") from exc
    if nesting_depth(value, limit=max_depth) > max_depth:
        raise MalformedJson(f"JSON nested deeper than {max_depth} levels")
    return value


def nesting_depth(value: Any, *, limit: int) -> int:
    """Depth of nested arrays/objects, counting stops once it passes limit."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def dumps(value: Any) -> bytes:
    """Serialise to JSON bytes (non-str dict keys allowed, as orjson permits)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def dumps_text(value: Any) -> str:
    """Serialise to a JSON string, for storage in a TEXT column."""
    return dumps(value).decode()
