"""server.contract.codec: JSON parsing with a depth cap, and serialisation."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.contract.codec import dumps, dumps_text, loads, nesting_depth
from server.contract.errors import MalformedJson, ValidationFailed

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)


def reference_depth(value):
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES)
def test_nesting_depth_matches_a_recursive_definition(value):
    """nesting_depth counts nested containers exactly like the obvious recursion."""
    assert nesting_depth(value, limit=1000) == reference_depth(value)


@settings(max_examples=200, deadline=None)
@given(JSON_VALUES, st.integers(1, 8))
def test_loads_accepts_exactly_up_to_max_depth(value, max_depth):
    """loads returns the value when its depth is within max_depth and raises otherwise."""
    raw = json.dumps(value).encode()
    if reference_depth(value) <= max_depth:
        assert loads(raw, max_depth=max_depth) == value
    else:
        with pytest.raises(MalformedJson):
            loads(raw, max_depth=max_depth)


@settings(max_examples=100, deadline=None)
@given(JSON_VALUES)
def test_dumps_round_trips(value):
    """dumps then loads gives the value back; dumps_text is the same JSON as text."""
    assert loads(dumps(value), max_depth=1000) == value
    assert dumps_text(value) == dumps(value).decode()


@pytest.mark.parametrize("raw", [b"", ""])
def test_empty_body_is_a_missing_field(raw):
    """No body at all is a 422 "field required" (as the reference answers), not malformed JSON."""
    with pytest.raises(ValidationFailed):
        loads(raw)


@pytest.mark.parametrize("raw", [b"{", b"[1,]", b"NaN", b"\xff", b"{'a': 1}"])
def test_malformed_input_raises_malformed_json(raw):
    """Empty or invalid JSON is MalformedJson (a 400)."""
    with pytest.raises(MalformedJson) as caught:
        loads(raw)
    assert caught.value.status == 400


def test_very_deep_input_is_refused_without_recursion_error():
    """Thousands of nested arrays are refused cleanly."""
    with pytest.raises(MalformedJson):
        loads(b"[" * 100_000 + b"]" * 100_000)


def test_depth_counting_stops_early():
    """nesting_depth stops once it passes the limit (cheap on hostile input)."""
    value: list = []
    for _ in range(50):
        value = [value]
    assert nesting_depth(value, limit=5) == 6


def test_empty_object_stays_object():
    """{} serialises as {} (not null, not [])."""
    assert dumps_text({}) == "{}"
    assert loads(b"{}") == {}


def test_depth_check_costs_memory_in_depth_not_in_elements() -> None:
    """Checking a flat array of a million items allocates next to nothing (it used to build a
    stack entry per item: ~60 MiB here), so admission's bytes bound holds for large bodies."""
    flat = {"a": [[] for _ in range(1_000_000)]}
    tracemalloc.start()
    try:
        assert nesting_depth(flat, limit=32) == 3
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak
