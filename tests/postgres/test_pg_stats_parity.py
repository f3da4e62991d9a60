"""``GET /api/v1/stats`` answers alike on SQLite (rollups kept by triggers, edge spans
read from the runs) and PostgreSQL (one aggregate over the runs): random skewed fleets
(many agents, a few statuses most of the runs, running, reaped, late-updated and
deleted runs, hostile names), every group_by shape, windows cut at every grain,
each filter; answer for answer.

Item totals are compared exactly below 2**53 (what both promise); past it each backend
adds floats in its own order, so there they are compared to 12 digits."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest
from test_pg_parity import NAMES, Pair, _run
from test_pg_parity import pair as pair

from server.contract.stats import GROUP_KEYS, StatsQuery
from server.storage import stats as stats_storage
from server.storage.stats import TooManyGroups

GROUP_BYS = [
    list(keys)
    for size in range(len(GROUP_KEYS) + 1)
    for keys in itertools.combinations(GROUP_KEYS, size)
    if not {"day", "hour"} <= set(keys)
]
WINDOWS: list[dict[str, str]] = [
    {},
    {"start_time_from": "2026-03-02T00:00:00Z"},
    {"start_time_to": "2026-03-04T23:59:59.999999Z"},
    {"start_time_from": "2026-03-01T05:30:00.5Z", "start_time_to": "2026-03-05T17:45:00Z"},
    {"start_time_from": "2026-03-03T00:00:00Z", "start_time_to": "2026-03-03T23:59:59.999999Z"},
    {"start_time_from": "2026-03-02T10:00:00Z", "start_time_to": "2026-03-02T10:59:59.999999Z"},
    {"start_time_from": "2026-03-02T10:15:00+05:30", "start_time_to": "2026-03-02T10:16:00Z"},
    {"start_time_from": "0001-01-01T00:00:00Z", "start_time_to": "9999-12-31T23:59:59.999999Z"},
]
FILTERS: list[dict[str, str]] = [
    {},
    {"job_type": "build"},
    {"status": "failed"},  # an alias
    {"status": "running"},
    {"agent_name": "agent-0"},
    {"created_after": "2026-02-15T00:00:00Z"},
    {"stale": "true"},
]
#: Few statuses hold most runs, as in a real fleet.
STATUS_WEIGHTS = {"success": 70, "running": 10, "failure": 10, "timeout": 4, "partial": 3}
BIG = 2**53


def _status(rng: random.Random) -> str:
    return rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]


def _fleet_run(rng: random.Random, event_id: str) -> Any:
    # Skewed: agent-0 has a third of the runs, 60 agents the rest.
    agent = (
        "agent-0"
        if rng.random() < 0.33
        else rng.choice((*NAMES, *(f"agent-{n}" for n in range(60))))
    )
    start = f"2026-03-0{rng.randrange(1, 7)}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00"
    start += rng.choice(("Z", ".000001Z", ".999999Z", "+05:30", "-11:00"))
    fields: dict[str, Any] = {
        "agent_name": agent,
        "job_type": rng.choice(("build", "build", "build", "test", "deploy")),
        "status": _status(rng),
        "start_time": start,
    }
    if rng.random() < 0.2:
        fields["created_at"] = "2026-02-01T00:00:00Z"
    for column in ("items_discovered", "items_succeeded", "items_failed"):
        if rng.random() < 0.5:
            fields[column] = rng.choice((0, 1, rng.randrange(1000), rng.randrange(10**6)))
    if rng.random() < 0.8:
        fields["duration_ms"] = rng.choice(
            (0, 1, 127, 128, 129, 5000, rng.randrange(1, 10**7), rng.randrange(1, 2**40))
        )
    return _run(event_id, **fields)


def _close(found: Any, expected: Any) -> bool:
    """Equal, with totals past 2**53 equal to 12 digits."""
    if isinstance(expected, dict) and isinstance(found, dict):
        return found.keys() == expected.keys() and all(
            _close(found[k], expected[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(found, list):
        return len(found) == len(expected) and all(map(_close, found, expected))
    if (
        isinstance(expected, int | float)
        and not isinstance(expected, bool)
        and abs(expected) >= BIG
    ):
        return isinstance(found, int | float) and math.isclose(found, expected, rel_tol=1e-12)
    return bool(found == expected) and type(found) is type(expected)


async def _same(pair: Pair, params: dict[str, Any]) -> list[dict[str, Any]]:
    query = StatsQuery.model_validate(params)
    expected = await pair.sqlite.stats(query)
    found = await pair.pg.stats(query)
    assert _close(found, expected), (params, found, expected)
    return expected


async def _build_fleet(pair: Pair, rng: random.Random, size: int, huge: bool) -> list[str]:
    ids = [f"ev-{n}" for n in range(size)]
    for first in range(0, size, 100):
        batch = [_fleet_run(rng, event_id) for event_id in ids[first : first + 100]]
        if huge:
            batch[0] = _run(
                batch[0].event_id, status="success", items_discovered=2**63 - 1, duration_ms=2
            )
        await pair.both(lambda db, b=batch: db.insert_batch(b))
    # Late updates: finishes, moved starts and jobs, a running that never revives.
    for event_id in rng.sample(ids, size // 5):
        changes: dict[str, Any] = {"status": _status(rng)}
        if rng.random() < 0.4:
            changes["start_time"] = f"2026-03-0{rng.randrange(1, 7)}T{rng.randrange(24):02d}:00:00Z"
        if rng.random() < 0.3:
            changes["job_type"] = rng.choice(("build", "test"))
        if rng.random() < 0.5:
            changes["duration_ms"] = rng.randrange(1, 10**6)
        await pair.both(lambda db, e=event_id, c=changes: db.update(e, dict(c)))
    # Reaped runs, then deleted ones (as retention and a prune delete them).
    for event_id in rng.sample(ids, size // 20):
        await pair.reap(event_id, "2026-03-07T00:00:00.000000+00:00")
    doomed = rng.sample(ids, size // 10)
    await pair.sqlite.writer.run(
        lambda conn: conn.executemany(
            "DELETE FROM agent_runs WHERE event_id = ?", [(e,) for e in doomed]
        )
    )
    async with pair.pg.pool.acquire() as conn:
        await conn.execute("DELETE FROM agent_runs WHERE event_id = ANY($1::text[])", doomed)
    return ids


@pytest.mark.parametrize(("seed", "huge"), [(1, False), (2, False), (3, True)])
async def test_every_shape_answers_alike_on_random_fleets(
    pair: Pair, seed: int, huge: bool
) -> None:
    rng = random.Random(seed)
    await _build_fleet(pair, rng, 600, huge)
    answered = 0
    for group_by in GROUP_BYS:
        for window in WINDOWS:
            groups = await _same(pair, {"group_by": group_by, **window})
            answered += len(groups)
    for filters, window in itertools.product(FILTERS, WINDOWS):
        for group_by in (["job_type", "day"], ["agent_name", "status"], ["hour"]):
            await _same(pair, {"group_by": group_by, **filters, **window})
    assert answered > 1000  # the fleets are not empty


async def test_too_many_groups_is_refused_alike(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _build_fleet(pair, random.Random(4), 200, False)
    monkeypatch.setattr(stats_storage, "MAX_GROUPS", 5)
    for params in ({"group_by": "agent_name"}, {"group_by": "hour,status"}):
        query = StatsQuery.model_validate(params)
        with pytest.raises(TooManyGroups):
            await pair.sqlite.stats(query)
        with pytest.raises(TooManyGroups):
            await pair.pg.stats(query)
    assert len(await _same(pair, {"group_by": "status"})) == 5
