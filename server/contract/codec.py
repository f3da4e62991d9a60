"""JSON in and out, through orjson, with the limits both daemons enforce.

Size is capped by the HTTP layer (413); this module caps nesting depth, so a
pathological body is a 400 rather than deep recursion anywhere downstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from server.contract.errors import MalformedJson, ValidationFailed

DEFAULT_MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(raw: bytes | bytearray | str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON; raise MalformedJson for bad syntax or nesting deeper than max_depth."""
    if not raw:
        raise ValidationFailed(
            [{"loc": ["body"], "msg": "Field required: a JSON body is needed", "type": "missing"}]
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"malformed JSON: {exc}") from exc
    # Depth never exceeds the count of opening brackets (those inside strings included):
    # only a body with more of them than the limit is walked (one C pass, not a Python one).
    brackets = (
        raw.count("{") + raw.count("[")
        if isinstance(raw, str)
        else (raw.count(b"{") + raw.count(b"["))
    )
    if brackets > max_depth and nesting_depth(value, limit=max_depth) > max_depth:
        raise MalformedJson(f"JSON nested deeper than {max_depth} levels")
    return value


def nesting_depth(value: Any, *, limit: int) -> int:
    """Depth of nested arrays/objects, counting stops once it passes limit.

    Walks with one iterator per open container, so the walk costs memory in
    the depth, not in the number of elements (a flat array of millions of
    items must not cost millions of stack entries).
    """
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 1
    stack = [iter(_children(value))]
    while stack:
        for child in stack[-1]:
            if isinstance(child, (dict, list)):
                stack.append(iter(_children(child)))
                deepest = max(deepest, len(stack))
                if deepest > limit:
                    return deepest
                break
        else:
            stack.pop()
    return deepest


def _children(node: dict[Any, Any] | list[Any]) -> Iterable[Any]:
    return node.values() if isinstance(node, dict) else node


def dumps(value: Any) -> bytes:
    """Serialise to JSON bytes (non-str dict keys allowed, as orjson permits)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def dumps_text(value: Any) -> str:
    """Serialise to a JSON string, for storage in a TEXT column."""
    return dumps(value).decode()


def embed(serialised: bytes) -> orjson.Fragment:
    """JSON already serialised, to be placed as is inside a value given to ``dumps``."""
    return orjson.Fragment(serialised)


def dumps_key(key: str) -> bytes:
    """One object key as JSON, never failing: a string orjson refuses (a lone surrogate,
    which nothing validated should ever carry) is written with U+FFFD in its place."""
    try:
        return orjson.dumps(key)
    except orjson.JSONEncodeError:
        return orjson.dumps(_SURROGATE.sub("\ufffd", key))
