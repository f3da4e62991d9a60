"""spoold started on a damaged runs index or dead-letter file: it sets the file aside,
counts it, and keeps every queued operation (real daemon, real files, real sockets)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemons import Daemon, free_port
from procs import (
    Reaper,
    RunLedger,
    call,
    create_body,
    health,
    log_events,
    new_event_id,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

QUICK_STOP = {"SPOOLD_SHUTDOWN_DEADLINE_S": "0.3"}
RUNS = 12
INDEX = "runs-index.sqlite"
DEAD_LETTERS = "deadletters.sqlite"


def _page_size(data: bytes) -> int:
    return int.from_bytes(data[16:18], "big") or 65536


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(max(path.stat().st_size, 8192)))


def _truncated(path: Path) -> None:
    """Cut the file after its first page and a half: pages the b-trees point to are gone."""
    data = path.read_bytes()
    page = _page_size(data)
    assert len(data) >= 3 * page, "the index is too small to truncate meaningfully"
    path.write_bytes(data[: page + page // 2])


def _corrupt_page(path: Path) -> None:
    """A valid SQLite file with one b-tree page (the runs table's root) overwritten."""
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    page = _page_size(bytes(data))
    data[(root - 1) * page : root * page] = b"\xa5" * page
    path.write_bytes(bytes(data))


def _not_sqlite(path: Path) -> None:
    path.write_text('{"this": "is a JSON file someone copied over the index"}\n' * 50)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage": _garbage,
    "truncated": _truncated,
    "corrupt-page": _corrupt_page,
    "not-sqlite": _not_sqlite,
}


def _damage(path: Path, how: Callable[[Path], None]) -> None:
    for side in ("-wal", "-shm"):
        assert not Path(f"{path}{side}").exists(), "spoold did not close the index cleanly"
    how(path)


async def _queue_runs(spoold: Daemon, runs: list[RunLedger]) -> None:
    """Creates and two patches per run, answered while the server is down (so queued)."""
    async with aiohttp.ClientSession() as http:
        for run in runs:
            answer = await call(
                http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id)
            )
            assert answer.status == 201, answer
            run.create_acked = True
            for k in (1, 2):
                url = f"{spoold.url}/api/v1/runs/{run.event_id}"
                answer = await call(http, "PATCH", url, {"items_succeeded": k})
                assert answer.status == 200, answer  # a known run: accepted at once
                run.items_acked = run.items_sent = k


def _prometheus(spoold: Daemon) -> str:
    request = urllib.request.Request(spoold.url + "/metrics", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _set_aside_logged(spoold: Daemon, event: str) -> dict[str, Any]:
    """The one error-level log line saying a file was set aside; the file is there."""
    lines = [e for e in log_events(spoold) if e.get("event") == event]
    assert len(lines) == 1, spoold.log()[-3000:]
    assert lines[0]["level"] == "error"
    assert Path(lines[0]["renamed_to"]).exists()
    return lines[0]


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_corrupt_index_is_set_aside_and_rebuilt_from_the_spool(
    tmp_path: Path, reaper: Reaper, damage: str
) -> None:
    """The stopped sidecar's runs index is damaged. spoold starts, renames it aside (with a
    log line and a counter in /health and Prometheus), and rebuilds it from the spool: the
    queued runs are known again (duplicate, read-your-writes, PATCH accepted at once), the
    counters add up, and once the server is up every acknowledged operation reaches it."""
    spool_dir = tmp_path / "spool"
    server_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}"  # down for now: everything stays queued
    args = {"port": free_port(), "upstream": upstream, "spool_dir": spool_dir, "env": QUICK_STOP}
    runs = [RunLedger(new_event_id()) for _ in range(RUNS)]
    spoold = start_spoold(reaper, tmp_path, **args)  # type: ignore[arg-type]
    await _queue_runs(spoold, runs)
    assert spoold.stop() == 0
    _damage(spool_dir / INDEX, DAMAGE[damage])

    spoold = start_spoold(reaper, tmp_path, **args)  # type: ignore[arg-type]

    body = health(spoold)
    assert body["storage"]["index_rebuilds"] == 1, body
    counters = body["counters"]
    assert counters["queued"] == RUNS * 3
    assert (
        counters["accepted"]
        == counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
    )
    assert 'spoold_storage_recovered_total{file="runs_index"} 1.0' in _prometheus(spoold)
    aside = sorted(spool_dir.glob(f"{INDEX}.corrupt-*"))
    assert [p.name.startswith(f"{INDEX}.corrupt-") for p in aside] == [True], aside
    async with aiohttp.ClientSession() as http:
        again = await call(http, "POST", f"{spoold.url}/api/v1/runs", create_body(runs[0].event_id))
        assert (again.status, again.body["status"]) == (201, "duplicate"), again
        url = f"{spoold.url}/api/v1/runs/{runs[1].event_id}"
        async with http.get(url) as response:
            assert response.status == 200
            assert response.headers.get("X-Spoold-Source") is not None  # read-your-writes
            assert (await response.json())["items_succeeded"] == 2
        final = {"status": "success", "end_time": "2026-01-12T10:35:00Z", "duration_ms": 9}
        answer = await call(http, "PATCH", url, final)
        assert answer.status == 200, answer  # known again: no question to the server
        runs[1].status_acked = "success"

    start_server(reaper, tmp_path, port=server_port, db=tmp_path / "server.sqlite")
    drained = await asyncio.to_thread(wait_drained, spoold, timeout_s=60)
    result = tally(runs, server_rows(tmp_path / "server.sqlite"))
    assert result.problems == []
    assert result.lost == 0
    assert drained["counters"]["forwarded"] == RUNS * 3 + 1
    assert spoold.stop() == 0
    _set_aside_logged(spoold, "runs_index_corrupt")
    rebuilt = [e for e in log_events(spoold) if e.get("event") == "runs_index_caught_up"]
    assert [e["operations"] for e in rebuilt] == [RUNS * 3]


def test_corrupt_dead_letter_file_is_set_aside_and_a_fresh_one_opened(
    tmp_path: Path, reaper: Reaper
) -> None:
    """A dead-letter file full of garbage: spoold starts, renames it aside (kept for
    inspection), logs how many letters it could not read, counts the reset, and opens a
    fresh, working store in its place."""
    spool_dir = tmp_path / "spool"
    server_port = free_port()
    args = {
        "port": free_port(),
        "upstream": f"http://127.0.0.1:{server_port}",
        "spool_dir": spool_dir,
        "env": QUICK_STOP,
    }
    spoold = start_spoold(reaper, tmp_path, **args)  # type: ignore[arg-type]
    assert spoold.stop() == 0
    garbage = os.urandom(16_384)
    (spool_dir / DEAD_LETTERS).write_bytes(garbage)

    spoold = start_spoold(reaper, tmp_path, **args)  # type: ignore[arg-type]

    body = health(spoold)
    assert body["storage"]["dead_letter_store_resets"] == 1, body
    assert body["spool"]["dead_letters"] == 0
    assert 'spoold_storage_recovered_total{file="dead_letters"} 1.0' in _prometheus(spoold)
    assert spoold.stop() == 0
    line = _set_aside_logged(spoold, "dead_letter_store_corrupt")
    assert Path(line["renamed_to"]).read_bytes() == garbage  # kept, untouched, for inspection
    assert "letters_lost" in line
    with sqlite3.connect(spool_dir / DEAD_LETTERS) as fresh:  # a working store took its place
        assert fresh.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert fresh.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)
    fresh.close()
