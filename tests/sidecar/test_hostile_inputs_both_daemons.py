"""Hostile text in bodies and paths gets the same clear 4xx from both daemons, never a 5xx,
and changes nothing: lone surrogates and invalid UTF-8, NUL and U+2028 in names, nesting
hidden in JSON text, numbers past 64 bits, hashes and ids made of URL syntax."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from sidecar_helpers import Api, make_run
from yarl import URL

START = '"event_id":"hostile","run_id":"r","agent_name":"a","job_type":"j",'
START += '"start_time":"2026-01-12T10:30:00Z"'


def body(extra: str = "", start: str = START) -> bytes:
    return ("{" + start + extra + "}").encode()


def json_text_field(value: str) -> bytes:
    return body(',"metrics_json":' + json.dumps(value))


HOSTILE_BODIES: dict[str, tuple[bytes, int]] = {
    "lone high surrogate in a name": (body(start=START.replace('"a"', '"\\ud800"')), 400),
    "lone low surrogate in event_id": (body(start=START.replace('"hostile"', '"\\udc00x"')), 400),
    "surrogate as an object key": (body(',"metrics_json":{"\\ud800":1}'), 400),
    "invalid UTF-8 bytes": (body().replace(b'"a"', b'"\xff\xfe"'), 400),
    "NUL in a name": (body(start=START.replace('"a"', '"a\\u0000b"')), 422),
    "U+2028 in a name": (body(start=START.replace('"j"', '"a\\u2028b"')), 422),
    "U+2029 in run_id": (body(start=START.replace('"r"', '"a\\u2029"')), 422),
    "DEL in a name": (body(start=START.replace('"a"', '"a\\u007f"')), 422),
    "C1 control in a name": (body(start=START.replace('"a"', '"a\\u0085"')), 422),
    "slash in event_id": (body(start=START.replace('"hostile"', '"a/../b"')), 422),
    "5000 levels inside JSON text": (json_text_field("[" * 5000 + "]" * 5000), 422),
    "40 levels inside JSON text": (json_text_field('{"a":' * 40 + "1" + "}" * 40), 422),
    "lone surrogate inside JSON text": (json_text_field('{"a":"\\ud800"}'), 422),
    "JSON text that is not an object": (json_text_field("null"), 422),
    "counter past 64 bits": (body(',"items_failed":123456789012345678901234567890'), 422),
    "counter as 1e400": (body(',"items_failed":1e400'), 400),
    "NaN": (body(',"duration_ms":NaN'), 400),
    "git_commit_hash with a newline": (body(',"git_commit_hash":"abc\\ndef"'), 422),
    "timestamp out of range": (body(',"end_time":"0001-01-01T00:00:00+00:01"'), 422),
    "body nested 33 levels": (b"[" * 33 + b"]" * 33, 400),
}


async def post(api: Api, raw: bytes) -> Any:
    return await api.request(
        "POST", "/api/v1/runs", data=raw, headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize("case", list(HOSTILE_BODIES))
async def test_hostile_bodies_get_the_same_4xx_from_both_daemons(central, make_sidecar, case):
    raw, expected = HOSTILE_BODIES[case]
    sidecar = await make_sidecar(central.url)
    direct, through = await post(central.api, raw), await post(sidecar, raw)
    assert (direct.status, through.status) == (expected, expected), (direct.body, through.body)
    assert direct.body == through.body  # the same decision, in the same words
    health = await sidecar.health()
    assert health["counters"]["accepted"] == 0
    assert (await central.api.get("/metrics")).body["total_runs"] == 0


HOSTILE_HASHES = [
    "refs/heads/../../etc/passwd",
    "a?b=c#frag",
    "%2e%2e%2f",
    "..",
    "\u00e9t\u00e9-r1",
]


@pytest.mark.parametrize("commit", HOSTILE_HASHES)
async def test_hostile_hashes_are_kept_and_stay_inside_their_link(central, make_sidecar, commit):
    """A hash made of URL syntax is a descriptive value: stored as sent through either
    daemon, and its link never leaves the repository's commit route."""
    sidecar = await make_sidecar(central.url)
    run = make_run(git_repo="https://github.com/o/r", git_commit_hash=commit)
    await sidecar.create(run)
    await sidecar.wait_drained()
    stored = await central.api.run(run["event_id"])
    assert stored["git_commit_hash"] == commit
    link = stored["commit_url"]
    if commit == "..":
        assert link is None  # a dot segment is resolved by browsers even when encoded
    else:
        assert link == "https://github.com/o/r/commit/" + quote(commit, safe="")


HOSTILE_IDS = ["a?b", "a#b", "a%b", "%2e%2e", "a b", "\U0001f469\u200d\U0001f4bb", "x" * 255]


@pytest.mark.parametrize("event_id", HOSTILE_IDS)
async def test_ids_made_of_url_syntax_name_their_own_run_on_both_daemons(
    central, make_sidecar, event_id
):
    """A run only the server knows, updated and read through spoold by its encoded id
    (so spoold builds the upstream URLs: the existence look-up, the proxied read): every
    answer is about this run, the update lands on it, nothing is dead-lettered."""
    sidecar = await make_sidecar(central.url)
    await central.api.create(make_run(event_id="a"))  # what a mis-encoded id would reach
    await central.api.create(make_run(event_id=event_id))
    path = "/api/v1/runs/" + quote(event_id, safe="")
    assert (await sidecar.patch(path, json={"items_failed": 3})).status == 200
    assert (await sidecar.wait_drained())["counters"]["dead_lettered"] == 0
    for api in (central.api, sidecar):
        reply = await api.get(path)
        assert reply.status == 200, reply.body
        assert (reply.body["event_id"], reply.body["items_failed"]) == (event_id, 3)
    assert (await central.api.run("a"))["items_failed"] == 0


@pytest.mark.parametrize("event_id", [".", ".."])
async def test_dot_segment_ids_leave_spoold_encoded(central, make_sidecar, event_id):
    """``quote`` leaves dots alone, and every HTTP stack between spoold and the server may
    resolve a ``.``/``..`` segment (``/api/v1/runs/..`` is ``/api/v1/``): spoold sends such
    an id as ``%2E`` escapes, which the server decodes back to the id."""
    from spoold.upstream.client import run_path

    assert run_path(event_id) == "/api/v1/runs/" + "%2E" * len(event_id)
    assert (
        run_path(event_id, "commit-url") == "/api/v1/runs/" + "%2E" * len(event_id) + "/commit-url"
    )
    await central.api.create(make_run(event_id=event_id))
    sidecar = await make_sidecar(central.url)
    async with sidecar.client.session.request(
        "PATCH",
        URL(sidecar.url + "/api/v1/runs/" + "%2E" * len(event_id), encoded=True),
        json={"items_failed": 4},
    ) as reply:
        assert reply.status == 200, await reply.text()
    assert (await sidecar.wait_drained())["counters"]["dead_lettered"] == 0
    stored_url = URL(central.url + "/api/v1/runs/" + "%2E" * len(event_id), encoded=True)
    async with central.api.client.session.get(stored_url) as stored:
        assert (await stored.json())["items_failed"] == 4
