"""server.contract.batch.validate_batch: per-item validation that never loses or reorders."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.contract.batch import validate_batch
from server.contract.errors import PayloadTooLarge, ValidationFailed
from server.contract.models import RunCreate, UpsertItem

IDS = st.from_regex(r"[a-z0-9-]{1,30}", fullmatch=True)


@st.composite
def valid_runs(draw):
    return {
        "event_id": draw(IDS),
        "run_id": draw(IDS),
        "agent_name": draw(st.sampled_from(["a", "b.c", "agent-x"])),
        "job_type": draw(st.sampled_from(["j1", "j2"])),
        "start_time": draw(
            st.sampled_from(
                ["2026-01-12T10:30:00Z", "2026-01-12T16:00:00+05:30", "2026-01-12T10:30:00.5-01:00"]
            )
        ),
        "status": draw(st.sampled_from(["running", "failed", "completed", "partial"])),
        "items_failed": draw(st.integers(0, 2**63 - 1)),
    }


@st.composite
def invalid_items(draw):
    kind = draw(st.integers(0, 9))
    base = draw(valid_runs())
    if kind == 0:
        return draw(st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.none())))
    if kind == 1:
        del base[draw(st.sampled_from(["event_id", "run_id", "agent_name", "job_type"]))]
        return base
    if kind == 2:
        del base["start_time"]
        return base
    if kind == 3:
        return {**base, "start_time": "2026-01-12T10:30:00"}
    if kind == 4:
        return {**base, "status": "done"}
    if kind == 5:
        return {**base, "items_failed": draw(st.sampled_from([-1, 2**63, 1.5, True, "3"]))}
    if kind == 6:
        return {**base, "event_id": draw(st.sampled_from(["", "a/b", "x\n"]))}
    if kind == 7:
        return {**base, "metrics_json": [1]}
    if kind == 8:
        return {**base, "git_commit_hash": "xyz 123"}  # any revision, but one token
    return {}


ITEMS = st.lists(
    st.one_of(
        valid_runs().map(lambda run: (True, run)), invalid_items().map(lambda bad: (False, bad))
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ITEMS)
def test_every_item_is_either_valid_or_an_error_in_order(items):
    """len(valid)+len(errors)==total; errors sit exactly at the invalid positions; order kept."""
    body = [item for _, item in items]
    batch = validate_batch(body, RunCreate, max_items=1000)
    invalid_positions = [index for index, (ok, _) in enumerate(items) if not ok]
    valid_positions = [index for index, (ok, _) in enumerate(items) if ok]
    assert batch.total == len(body)
    assert len(batch.valid) + len(batch.errors) == batch.total
    assert [error.index for error in batch.errors] == invalid_positions
    assert [index for index, _ in batch.valid] == valid_positions
    for index, run in batch.valid:
        assert run.event_id == body[index]["event_id"]
    for error in batch.errors:
        item = body[error.index]
        hint = item.get("event_id") if isinstance(item, dict) else None
        assert error.event_id == (hint if isinstance(hint, str) else None)
        assert error.message


@settings(max_examples=50, deadline=None)
@given(st.lists(valid_runs(), max_size=20))
def test_valid_items_are_normalised(runs):
    """Valid items come back as models with canonical statuses and UTC instants."""
    batch = validate_batch(runs, RunCreate, max_items=1000)
    assert not batch.errors
    for _, run in batch.valid:
        assert run.status in ("running", "failure", "success", "partial")
        assert run.start_time.endswith("+00:00")


@pytest.mark.parametrize("body", [{}, None, "x", 1, {"items": []}])
def test_non_array_body_is_validation_failed(body):
    """The body itself must be an array: ValidationFailed (422)."""
    with pytest.raises(ValidationFailed) as caught:
        validate_batch(body, RunCreate, max_items=10)
    assert caught.value.status == 422


def test_too_many_items_is_payload_too_large():
    """More than max_items is PayloadTooLarge (413), before any item is validated."""
    with pytest.raises(PayloadTooLarge) as caught:
        validate_batch([None] * 11, RunCreate, max_items=10)
    assert caught.value.status == 413
    assert validate_batch([None] * 10, RunCreate, max_items=10).total == 10


def test_error_message_names_the_field():
    """A per-item message names the offending field."""
    batch = validate_batch([{"event_id": "e"}], RunCreate, max_items=10)
    [error] = batch.errors
    for field in ("run_id", "agent_name", "job_type", "start_time"):
        assert field in error.message


def test_upsert_items_validate_per_item():
    """The same per-item rules apply to upsert items."""
    body = [
        {"event_id": "a", "update": {"status": "success"}},
        {"event_id": "b"},
        {"event_id": "c", "update": {"status": "failed"}},
    ]
    batch = validate_batch(body, UpsertItem, max_items=10)
    assert [index for index, _ in batch.valid] == [0]
    assert [error.index for error in batch.errors] == [1, 2]
    assert [error.event_id for error in batch.errors] == ["b", "c"]
