"""spoold's lifecycle under faults: SIGTERM with requests in flight and the server down,
and a corrupt spool file at start-up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from daemons import free_port
from procs import (
    Answer,
    Blackhole,
    Reaper,
    RunLedger,
    call,
    create_body,
    health,
    log_events,
    new_event_id,
    post_json,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SHUTDOWN_DEADLINE_S = 2.0
QUICK_STOP = {"SPOOLD_SHUTDOWN_DEADLINE_S": "0.3"}


async def _creates_until_refused(
    base: str, ledger: list[RunLedger], answers: list[tuple[str, Answer]], stop: asyncio.Event
) -> None:
    """Back-to-back creates on fresh connections until spoold stops answering."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(10_000):
            if stop.is_set():
                return
            event_id = new_event_id()
            answer = await call(http, "POST", f"{base}/api/v1/runs", create_body(event_id))
            answers.append((event_id, answer))
            if answer.ok:
                ledger.append(RunLedger(event_id, create_acked=True))
            elif answer.status is None:
                return


async def test_sigterm_with_requests_in_flight_and_the_server_down(
    tmp_path: Path, reaper: Reaper
) -> None:
    """SIGTERM while updates wait on a hung server and creates stream in: spoold exits 0 within
    the shutdown deadline + 1 s, every request it read got a definite answer (2xx or 503),
    and everything acknowledged is delivered after the next start."""
    db = tmp_path / "server.sqlite"
    spool_dir = tmp_path / "spool"
    # Runs the server knows but this sidecar does not: updating them needs a server look-up.
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    known_upstream = [new_event_id() for _ in range(4)]
    for event_id in known_upstream:
        assert post_json(f"{server.url}/api/v1/runs", create_body(event_id))[0] == 201
    assert server.stop() == 0

    ledger: list[RunLedger] = []
    with Blackhole() as hung:  # the server host is up but its process hangs
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=hung.url,
            spool_dir=spool_dir,
            env={"SPOOLD_SHUTDOWN_DEADLINE_S": str(SHUTDOWN_DEADLINE_S)},
        )
        answers: list[tuple[str, Answer]] = []
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            lookups = [
                asyncio.create_task(
                    call(
                        http,
                        "PATCH",
                        f"{spoold.url}/api/v1/runs/{event_id}",
                        {"items_succeeded": 5, "status": "success"},
                    )
                )
                for event_id in known_upstream
            ]
            creators = [
                asyncio.create_task(_creates_until_refused(spoold.url, ledger, answers, stop))
                for _ in range(4)
            ]
            await asyncio.sleep(0.4)  # the look-ups are now waiting on the hung server
            assert not any(task.done() for task in lookups)
            signalled = time.monotonic()
            os.kill(spoold.process.pid, signal.SIGTERM)
            try:
                returncode = await asyncio.to_thread(spoold.process.wait, SHUTDOWN_DEADLINE_S + 10)
            except subprocess.TimeoutExpired:
                returncode = None
            took = time.monotonic() - signalled
            stop.set()
            lookup_answers = await asyncio.wait_for(asyncio.gather(*lookups), 10)
            await asyncio.wait_for(asyncio.gather(*creators), 10)

    print(f"\n[sigterm] exit {returncode} after {took:.2f}s")
    print(f"[sigterm] in-flight look-up PATCHes: {[a.status for a in lookup_answers]}")
    outcomes: dict[str, int] = {}
    for _, answer in answers:
        key = str(answer.status) if answer.status else ("refused" if not answer.sent else "reset")
        outcomes[key] = outcomes.get(key, 0) + 1
    print(f"[sigterm] creates around the signal: {outcomes}")
    assert returncode == 0, spoold.log()[-3000:]
    assert took <= SHUTDOWN_DEADLINE_S + 1.0
    for answer in lookup_answers:
        assert answer.status in (202, 503), answer  # never a reset for a request being served
    assert {status for _, a in answers if (status := a.status) is not None} <= {201, 503}
    unanswered = {event_id for event_id, answer in answers if answer.status is None}
    acked_lookups = [
        RunLedger(event_id, items_acked=5, items_sent=5, status_acked="success")
        for event_id, answer in zip(known_upstream, lookup_answers, strict=True)
        if answer.ok
    ]
    stopped = [e for e in log_events(spoold) if e.get("event") == "spoold_stopped"]
    assert stopped, "no shutdown summary line"
    assert stopped[-1]["left_in_spool"] == len(ledger) + len(acked_lookups)

    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=server.url, spool_dir=spool_dir
    )
    await asyncio.to_thread(wait_drained, spoold, timeout_s=30)
    rows = server_rows(db)
    result = tally([*ledger, *acked_lookups], rows)
    print(f"[sigterm] acked={result.acked} delivered={result.delivered} lost={result.lost}")
    assert result.problems == []
    assert result.lost == 0
    # Whatever spoold committed, it answered: no unanswered create was spooled.
    assert not unanswered & set(rows)


def _spool_then_corrupt(
    reaper: Reaper,
    workdir: Path,
    spool_dir: Path,
    upstream: str,
    corrupt: object,
    creates: int,
) -> list[str]:
    """Spool some creates with the server down, stop spoold, corrupt its spool file."""
    spoold = start_spoold(
        reaper, workdir, port=free_port(), upstream=upstream, spool_dir=spool_dir, env=QUICK_STOP
    )
    event_ids = [new_event_id() for _ in range(creates)]
    for event_id in event_ids:
        assert post_json(f"{spoold.url}/api/v1/runs", create_body(event_id))[0] == 201
    assert spoold.stop() == 0
    assert callable(corrupt)
    corrupt(spool_dir / "spool.db")
    return event_ids


def _garbage_whole_file(path: Path) -> None:
    path.write_bytes(os.urandom(16_384))


def _garbage_after_the_header(path: Path) -> None:
    """Keep SQLite's 100-byte header and first page; trash every later page."""
    data = path.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536
    path.write_bytes(data[:page] + os.urandom(max(len(data) - page, 4 * page)))


@pytest.mark.parametrize(
    "corrupt", [_garbage_whole_file, _garbage_after_the_header], ids=["garbage", "torn-pages"]
)
def test_corrupt_spool_is_renamed_aside_and_spoold_accepts(
    tmp_path: Path, reaper: Reaper, corrupt: object
) -> None:
    """Garbage written into the stopped spool's SQLite file: spoold starts, renames the file
    aside, logs spool_corrupt_renamed (JSON), and accepts writes."""
    spool_dir = tmp_path / "spool"
    upstream = f"http://127.0.0.1:{free_port()}"  # down: the writes stay in the spool
    _spool_then_corrupt(reaper, tmp_path, spool_dir, upstream, corrupt, 20)
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=upstream, spool_dir=spool_dir, env=QUICK_STOP
    )
    status, body = post_json(f"{spoold.url}/api/v1/runs", create_body(new_event_id()))
    assert (status, body["status"]) == (201, "created")
    assert spoold.process.poll() is None
    assert spoold.stop() == 0
    renamed = [e for e in log_events(spoold) if e.get("event") == "spool_corrupt_renamed"]
    assert len(renamed) == 1, spoold.log()[-3000:]
    assert renamed[0]["level"] == "warning"
    moved = Path(renamed[0]["renamed_to"])
    assert moved.exists()
    assert moved.name.startswith("spool.db.corrupt-")
    assert (spool_dir / "spool.db").exists()  # a fresh spool took its place


async def test_runs_lost_with_a_corrupt_spool_can_be_sent_again(
    tmp_path: Path, reaper: Reaper
) -> None:
    """After the corrupt spool was set aside, an agent re-sending a run it had sent before
    gets it delivered (its create is not answered 'duplicate' from stale local state)."""
    spool_dir = tmp_path / "spool"
    server_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}"
    lost = _spool_then_corrupt(reaper, tmp_path, spool_dir, upstream, _garbage_whole_file, 3)
    server = start_server(reaper, tmp_path, port=server_port, db=tmp_path / "server.sqlite")
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=upstream, spool_dir=spool_dir, env=QUICK_STOP
    )
    status, body = post_json(f"{spoold.url}/api/v1/runs", create_body(lost[0]))
    print(f"\n[corrupt] re-sent create answered {status} {body}")
    await asyncio.to_thread(wait_drained, spoold, timeout_s=15, counters_add_up=False)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{spoold.url}/api/v1/runs/{lost[1]}") as response,
    ):
        print(
            f"[corrupt] GET of a lost run: {response.status} from "
            f"{response.headers.get('X-Spoold-Source', 'the server')}"
        )
    assert (status, body["status"]) == (201, "created")
    assert response.headers.get("X-Spoold-Source") is None, "answered from stale local state"
    assert server_rows(tmp_path / "server.sqlite").keys() >= {lost[0]}, "the re-sent run"
    assert server.process.poll() is None
    counters = health(spoold)["counters"]
    print(f"[corrupt] counters after the drain: {counters}")
    assert counters["quarantined"] == 3  # the three creates in the renamed file
    assert counters["accepted"] == (
        counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
    )
    assert spoold.stop() == 0
    lost_lines = [e for e in log_events(spoold) if e.get("event") == "spool_operations_lost"]
    assert [line["operations"] for line in lost_lines] == [3], spoold.log()[-3000:]
