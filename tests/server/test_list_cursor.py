"""Walking GET /api/v1/runs with the keyset cursor; offset is bounded."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

NEXT = "X-Next-Cursor"


def ids(runs: list[dict[str, Any]]) -> list[str]:
    return [run["event_id"] for run in runs]


async def walk(
    api: Any, params: dict[str, str], *, between_pages: Any = None, max_pages: int = 500
) -> list[str]:
    """Every event_id the cursor walk returns, page after page."""
    seen: list[str] = []
    query = dict(params)
    for _ in range(max_pages):
        reply = await api.get("/api/v1/runs", params=query)
        assert reply.status == 200, reply.body
        assert isinstance(reply.body, list)
        seen += ids(reply.body)
        cursor = reply.headers.get(NEXT)
        if cursor is None:
            return seen
        assert len(reply.body) == int(query.get("limit", "100"))
        query = {**params, "cursor": cursor}
        if between_pages is not None:
            await between_pages()
    raise AssertionError("walk did not end")


async def seed(api: Any, new_run: Any, n: int, rng: random.Random) -> list[dict[str, Any]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    runs = []
    for _ in range(n):
        # many runs share a created_at: the walk must order them by insertion
        stamp = base + timedelta(minutes=rng.randint(0, n // 4))
        runs.append(
            new_run(
                created_at=stamp.isoformat(),
                agent_name=rng.choice(("a", "b")),
                status=rng.choice(("running", "success", "failure")),
                start_time=(base + timedelta(minutes=rng.randint(0, n))).isoformat(),
            )
        )
    for start in range(0, n, 500):
        reply = await api.post("/api/v1/runs/batch", json=runs[start : start + 500])
        assert reply.body["inserted"] == len(runs[start : start + 500])
    return runs


FILTERS: list[dict[str, str]] = [
    {},
    {"agent_name": "a"},
    {"status": "failed"},  # an alias: the cursor is bound to the normalised filter
    {"agent_name": "b", "status": "success"},
    {"created_after": "2026-01-01T00:10:00Z", "created_before": "2026-01-01T01:00:00+00:00"},
    {"start_time_from": "2026-01-01T00:20:00Z", "start_time_to": "2026-01-01T02:00:00Z"},
]


@pytest.mark.parametrize("filters", FILTERS)
async def test_cursor_walk_equals_the_full_ordered_result(api, new_run, filters):
    """Walking with the cursor returns exactly the rows of one big query, in its order."""
    await seed(api, new_run, 300, random.Random(1))
    everything = ids(await api.list(**filters, limit=1000))
    assert ids(await api.list(**filters, limit=1000)) == everything
    assert await walk(api, {**filters, "limit": "7"}) == everything


async def test_walk_with_inserts_meanwhile_neither_skips_nor_repeats(api, new_run):
    """Runs inserted while a walk is under way (before, inside and after its position)
    never make it skip or repeat a run that existed when it began."""
    rng = random.Random(2)
    await seed(api, new_run, 200, rng)
    before = set(ids(await api.list(limit=1000)))

    async def insert_some() -> None:
        batch = []
        for _ in range(5):
            stamp = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randint(-5, 60))
            batch.append(new_run(created_at=stamp.isoformat()))
        await api.post("/api/v1/runs/batch", json=batch)

    walked = await walk(api, {"limit": "9"}, between_pages=insert_some)
    assert len(walked) == len(set(walked)), "a run was returned twice"
    assert before <= set(walked), "a run that existed was skipped"


async def test_walk_with_patches_meanwhile_neither_skips_nor_repeats(api, new_run):
    """PATCHes between the pages of a filtered walk (runs leaving the filter, runs joining
    it, a body carrying another created_at) never make it repeat a run, nor skip one that
    matched all along: the walk's key, created_at, is never moved by an update."""
    rng = random.Random(4)
    await seed(api, new_run, 240, rng)
    running = ids(await api.list(status="running", limit=1000))
    others = [e for e in ids(await api.list(limit=1000)) if e not in set(running)]
    leaving = set(rng.sample(running, len(running) // 3))
    staying = [e for e in running if e not in leaving]
    joining = rng.sample(others, 20)
    created = {e: (await api.run(e))["created_at"] for e in staying[:10] + joining}
    moved_to = "2030-01-01T00:00:00Z"  # newer than every run: a walk would see it again
    queue: list[tuple[str, dict[str, Any]]] = [(e, {"status": "success"}) for e in leaving]
    queue += [(e, {"status": "running", "created_at": moved_to}) for e in joining]
    queue += [(e, {"duration_ms": 5, "created_at": moved_to}) for e in staying[:10]]
    rng.shuffle(queue)

    async def patch_some() -> None:
        for _ in range(6):
            if queue:
                event_id, body = queue.pop()
                reply = await api.patch(f"/api/v1/runs/{event_id}", json=body)
                assert reply.status == 200, reply.body

    walked = await walk(api, {"status": "running", "limit": "5"}, between_pages=patch_some)
    assert not queue, "the walk ended before every PATCH was sent"
    assert len(walked) == len(set(walked)), "a run was returned twice"
    assert set(staying) <= set(walked), "a run that matched all along was skipped"
    for event_id, stamp in created.items():
        assert (await api.run(event_id))["created_at"] == stamp


async def test_last_page_has_no_cursor(api, new_run):
    """A page that ends the result carries no X-Next-Cursor; one with more does."""
    await seed(api, new_run, 6, random.Random(3))
    full = await api.get("/api/v1/runs", params={"limit": "6"})
    assert NEXT not in full.headers
    partial = await api.get("/api/v1/runs", params={"limit": "5"})
    assert NEXT in partial.headers
    rest = await api.get("/api/v1/runs", params={"limit": "5", "cursor": partial.headers[NEXT]})
    assert len(rest.body) == 1
    assert NEXT not in rest.headers


def forged_cursors(real: str) -> list[str]:
    payload, mac = real.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    moved = base64.urlsafe_b64encode(raw.replace(b'"', b'"9', 1)).rstrip(b"=").decode()
    flipped_mac = ("A" if mac[0] != "A" else "B") + mac[1:]
    return [
        "",
        "x",
        ".",
        "..",
        "a.b.c",
        "%%%.%%%",
        "not base64!.x",
        "é.é",
        "\x00.\x00",
        real + "A",
        real[:-1],
        f"{moved}.{mac}",
        f"{payload}.{flipped_mac}",
        base64.urlsafe_b64encode(b'["2026-01-01", -1]').decode() + "." + mac,
        "A" * 600,
        real.replace(".", ""),
    ]


async def test_malformed_or_forged_cursor_is_a_422(api, new_run):
    """Any cursor the server did not issue is refused with a 422 naming `cursor`."""
    await seed(api, new_run, 5, random.Random(4))
    real = (await api.get("/api/v1/runs", params={"limit": "2"})).headers[NEXT]
    for bad in forged_cursors(real):
        reply = await api.get("/api/v1/runs", params={"limit": "2", "cursor": bad})
        if bad == "":
            assert reply.status == 200  # an empty parameter means "absent"
            continue
        assert reply.status == 422, (bad, reply.body)
        assert reply.body["detail"][0]["loc"] == ["query", "cursor"], reply.body


async def test_cursor_is_bound_to_its_filters(api, new_run):
    """A cursor sent with other filters than it was made for is refused (422)."""
    await seed(api, new_run, 20, random.Random(5))
    cursor = (await api.get("/api/v1/runs", params={"agent_name": "a", "limit": "2"})).headers[NEXT]
    other = await api.get("/api/v1/runs", params={"agent_name": "b", "cursor": cursor})
    assert other.status == 422
    none = await api.get("/api/v1/runs", params={"cursor": cursor})
    assert none.status == 422
    same = await api.get("/api/v1/runs", params={"agent_name": "a", "cursor": cursor, "limit": "9"})
    assert same.status == 200


async def test_cursor_survives_a_restart(make_api, new_run):
    """Cursors are signed with a key kept in the database: valid after a restart."""
    api = await make_api()
    await seed(api, new_run, 10, random.Random(6))
    first = await api.get("/api/v1/runs", params={"limit": "4"})
    await api.client.close()
    again = await make_api()
    rest = await again.get("/api/v1/runs", params={"limit": "100", "cursor": first.headers[NEXT]})
    assert rest.status == 200
    assert ids(first.body) + ids(rest.body) == ids(await again.list(limit=100))


async def test_cursor_and_offset_together_are_refused(api, new_run):
    """offset and cursor are two ways to page; both at once is a 422."""
    await seed(api, new_run, 5, random.Random(7))
    cursor = (await api.get("/api/v1/runs", params={"limit": "2"})).headers[NEXT]
    reply = await api.get("/api/v1/runs", params={"cursor": cursor, "offset": "1"})
    assert reply.status == 422


@pytest.mark.parametrize("offset", ["10001", "1000000", str(10**12)])
async def test_offset_beyond_the_bound_is_refused_with_a_clear_message(api, offset):
    """offset above 10,000 is a 422 that names the bound and the cursor to use instead."""
    reply = await api.get("/api/v1/runs", params={"offset": offset})
    assert reply.status == 422
    (entry,) = reply.body["detail"]
    assert entry["loc"] == ["query", "offset"]
    assert "10000" in entry["msg"]
    assert "cursor" in entry["msg"]


async def test_offset_at_the_bound_is_accepted(api, new_run):
    """offset=10000 is the largest accepted."""
    assert (await api.get("/api/v1/runs", params={"offset": "10000"})).status == 200
