"""The write answers both daemons build (``server.contract.answers``) are the documented
response models, key for key and in the models' order."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from server.contract import answers
from server.contract.models import (
    AssociateResponse,
    BatchItemError,
    BatchResponse,
    CreateResponse,
    DuplicateResponse,
    UpdateResponse,
)


def _as_documented(model: type[BaseModel], body: dict[str, Any]) -> None:
    assert model.model_validate(body).model_dump() == body
    assert list(body) == list(model.model_fields)


def test_create_and_duplicate_answers_are_the_documented_ones() -> None:
    """201 created / duplicate, with the duplicate's fixed message."""
    _as_documented(CreateResponse, answers.created("e-1", "r-1"))
    _as_documented(DuplicateResponse, answers.duplicate("e-1"))
    assert answers.duplicate("e-1")["message"] == "Event already exists (idempotent)"


def test_a_patch_answer_lists_fields_in_request_order() -> None:
    """fields_updated keeps the order the PATCH gave its fields in (not sorted)."""
    body = answers.updated("e-1", {"status": 1, "end_time": 2, "agent_name": 3})
    _as_documented(UpdateResponse, body)
    assert body["fields_updated"] == ["status", "end_time", "agent_name"]


def test_an_association_answer_is_the_documented_one() -> None:
    """associate-commit's 200 answer."""
    _as_documented(AssociateResponse, answers.associated("e-1", "r-1", "a" * 40))


def test_a_batch_answer_counts_duplicates_among_the_valid_items() -> None:
    """duplicates = valid items that were not new; invalid items are errors, not duplicates."""
    error = BatchItemError(index=3, event_id=None, message="bad")
    body = answers.batch_inserted(2, 5, [error], 6)
    _as_documented(BatchResponse, body)
    assert (body["inserted"], body["duplicates"], body["total"]) == (2, 3, 6)
    assert body["errors"] == [{"index": 3, "event_id": None, "message": "bad"}]
