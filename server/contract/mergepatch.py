"""RFC 7396 JSON merge patches: applying one, and composing two into one where possible.

Heartbeats carry ``progress`` as a merge patch of the run's ``metrics_json``; the
drainer folds the heartbeats of one run into one patch. Composition is not closed:
a patch that removes a key (or sets it to a non-object) followed by one that sets
that key to an object means "replace with exactly this object", which no merge
patch can say (an object value always merges). ``compose`` says so (None), and the
caller sends the two patches apart.
"""

from __future__ import annotations

from typing import Any


def apply(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied (RFC 7396, section 2); neither is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


def compose(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any] | None:
    """One patch with the effect of ``first`` then ``second`` on any target; None if no
    merge patch has that effect."""
    result = dict(first)
    for key, value in second.items():
        if not isinstance(value, dict) or key not in first:
            result[key] = value
            continue
        before = first[key]
        if not isinstance(before, dict):  # removed or replaced, then merged into: not expressible
            return None
        inner = compose(before, value)
        if inner is None:
            return None
        result[key] = inner
    return result
