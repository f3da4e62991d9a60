"""Cursor tokens stay what earlier releases issued: a client holding a cursor across an
upgrade keeps walking. The token's MAC and the filters it is bound to are computed here
independently (``hmac.digest`` over the documented message, pydantic's ``model_dump``)."""

from __future__ import annotations

import base64
import hmac
import itertools
import sys
import threading

import orjson
import pytest

from server.contract.models import RunQuery
from server.storage.cursor import CursorCodec, InvalidCursor, Position

KEY = bytes(range(32))

QUERIES = [
    {},
    {"agent_name": "a"},
    {"job_type": "j", "status": "failed"},  # normalised to "failure"
    {"agent_name": "é\u2028\"'", "status": "running", "limit": "5"},
    {"created_before": "2026-01-02T03:04:05Z", "created_after": "2025-01-02T03:04:05+02:00"},
    {"start_time_from": "2026-05-31T00:00:00+00:00", "start_time_to": "2026-05-31T23:59:59Z"},
    {"stale": "true", "offset": "10"},
    {"cursor": "x.y", "agent_name": "b", "job_type": "k", "status": "success"},
]


def independent_token(key: bytes, position: Position, scope: str) -> str:
    payload = orjson.dumps([position.created_at, position.row_id])
    mac = hmac.digest(key, payload + b"\0" + scope.encode("utf-8", "surrogatepass"), "sha256")

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    return f"{b64(payload)}.{b64(mac[:16])}"


@pytest.mark.parametrize("params", QUERIES)
def test_filters_are_model_dump_without_paging_key_order_included(params):
    query = RunQuery.model_validate(params)
    expected = query.model_dump(exclude={"limit", "offset", "cursor"}, exclude_none=True)
    assert query.filters() == expected
    assert list(query.filters()) == list(expected)  # the scope is its JSON: order matters
    assert orjson.dumps(query.filters()) == orjson.dumps(expected)


@pytest.mark.parametrize("params", QUERIES)
def test_token_is_the_documented_hmac_of_position_and_filters(params):
    scope = orjson.dumps(RunQuery.model_validate(params).filters()).decode()
    codec = CursorCodec(KEY)
    for position in (Position("2026-05-31T10:00:00.123456+00:00", 1), Position("", 2**63 - 1)):
        token = codec.encode(position, scope)
        assert token == independent_token(KEY, position, scope)
        assert codec.decode(token, scope) == position
        # A token made earlier (independently) decodes too.
        assert codec.decode(independent_token(KEY, position, scope), scope) == position


def test_a_token_issued_by_the_previous_release_still_walks():
    """Made by 81bb89f's code (``hmac.digest`` per token, scope from ``model_dump``), kept
    as a literal: a reordered, renamed or new filter field would change the scope."""
    query = RunQuery.model_validate(
        {
            "status": "success",
            "agent_name": "agent-7",
            "job_type": "nightly",
            "created_after": "2026-01-01T00:00:00Z",
            "limit": "50",
        }
    )
    scope = orjson.dumps(query.filters()).decode()
    assert scope == (
        '{"agent_name":"agent-7","job_type":"nightly","status":"success",'
        '"created_after":"2026-01-01T00:00:00.000000+00:00"}'
    )
    issued = "WyIyMDI2LTAzLTA0VDA1OjA2OjA3LjEyMzQ1NiswMDowMCIsNDI0MjQyXQ.qdeZCW5T-XfV-cUVez2OdA"
    position = Position("2026-03-04T05:06:07.123456+00:00", 424242)
    assert CursorCodec(KEY).decode(issued, scope) == position
    assert CursorCodec(KEY).encode(position, scope) == issued


def test_a_token_for_other_filters_or_another_key_is_refused():
    position = Position("2026-05-31T10:00:00+00:00", 7)
    token = CursorCodec(KEY).encode(position, '{"agent_name":"a"}')
    with pytest.raises(InvalidCursor):
        CursorCodec(KEY).decode(token, '{"agent_name":"b"}')
    with pytest.raises(InvalidCursor):
        CursorCodec(bytes(32)).decode(token, '{"agent_name":"a"}')


def test_one_codec_used_from_many_threads_gives_every_token_right() -> None:
    """The keyed state is shared and copied per MAC: concurrent use must not mix them.
    Threads switch as often as Python allows, and scopes are long enough (over 2 KiB)
    for the hash to run without the GIL."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    codec = CursorCodec(KEY)
    cases = [
        (
            Position(f"2026-01-01T00:00:{second:02d}+00:00", row),
            f'{{"agent_name":"{row}","job_type":"{"j" * (2048 + row)}"}}',
        )
        for second, row in itertools.product(range(20), range(1, 11))
    ]
    wrong: list[tuple[Position, str]] = []

    def work() -> None:
        for position, scope in cases * 3:
            token = codec.encode(position, scope)
            if (
                token != independent_token(KEY, position, scope)
                or codec.decode(token, scope) != position
            ):
                wrong.append((position, scope))

    threads = [threading.Thread(target=work) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(saved)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == []
