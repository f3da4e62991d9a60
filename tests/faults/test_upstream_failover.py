"""spoold with several upstreams (``SPOOLD_UPSTREAM_URL=A,B``): failover, fail-back, and the
upstreams that are not really there - against real ``telemetry-server`` processes.

Two real servers have separate databases here (an SQLite server is one database's only
writer), so a run may sit on both after a batch in doubt was re-sent: the checks are that
every acknowledged run is on the union, in its final state wherever it is, never twice in
one database. The flapping test puts two proxies in front of ONE server instead: two
upstreams sharing one database, as replicas do, with full lifecycles and exactly one row
per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from daemons import Daemon, free_port
from procs import (
    AGENT,
    FlakyProxy,
    Reaper,
    RunLedger,
    agent,
    create_body,
    get_json,
    health,
    new_event_id,
    server_rows,
    start_server,
    start_spoold,
    tally,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.integration

#: Many small rounds, so a kill lands in the middle of the drain.
SMALL_ROUNDS = {"SPOOLD_BATCH_SIZE": "10", "SPOOLD_MAX_GROUP": "4"}


# ---- helpers ---------------------------------------------------------------------------


async def _post_runs(base: str, count: int, *, concurrency: int = 8) -> dict[str, str]:
    """POST ``count`` finished runs (one create each) to spoold; their event_id -> status,
    for those spoold acknowledged (all of them: it answers from its spool)."""
    acked: dict[str, str] = {}
    ids = [new_event_id() for _ in range(count)]

    async def worker(http: aiohttp.ClientSession, mine: list[str]) -> None:
        for event_id in mine:
            final = "success" if len(event_id) % 2 or event_id[0] < "8" else "failure"
            body = create_body(event_id, status=final, items_succeeded=7)
            async with http.post(f"{base}/api/v1/runs", json=body) as response:
                if response.status == 201:
                    acked[event_id] = final

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await asyncio.gather(*(worker(http, ids[n::concurrency]) for n in range(concurrency)))
    assert len(acked) == count, "spoold acknowledges every write from its spool"
    return acked


def post_runs(base: str, count: int) -> dict[str, str]:
    return asyncio.run(_post_runs(base, count))


def row_count(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM agent_runs").fetchone()[0])
    except sqlite3.OperationalError:  # not migrated yet
        return 0
    finally:
        conn.close()


def assert_on_the_union(acked: dict[str, str], *dbs: Path) -> list[dict[str, dict[str, Any]]]:
    """Every acknowledged run is on some server, in its final state wherever it is; no
    database holds a run twice (``server_rows`` checks) and none holds a run never sent."""
    tables = [server_rows(db) if db.exists() else {} for db in dbs]
    for event_id, final in acked.items():
        found = [table[event_id] for table in tables if event_id in table]
        assert found, f"{event_id}: acknowledged, on no server"
        for row in found:
            assert (row["status"], row["items_succeeded"]) == (final, 7), row
    for table in tables:
        assert set(table) <= set(acked), "a run nobody sent"
    return tables


def members(spoold: Daemon) -> list[dict[str, Any]]:
    upstreams: list[dict[str, Any]] = health(spoold)["upstream"]["upstreams"]
    return upstreams


def counters_settled(body: dict[str, Any], accepted: int) -> None:
    counters = body["counters"]
    assert counters["accepted"] == accepted
    assert counters["forwarded"] == accepted
    assert counters["dead_lettered"] == 0


class ForeignService:
    """Something else at an upstream URL: answers every request 200 with its own JSON
    (a misrouted proxy, another service on the port). Counts the batches posted to it."""

    def __init__(self) -> None:
        self.posts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = json.dumps({"ok": True, "service": "not-telemetry"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                outer.posts += 1
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ForeignService:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@contextlib.contextmanager
def hanging_upstream() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


# ---- kill -9 of the current upstream -------------------------------------------------------


@pytest.mark.slow
def test_kill9_of_the_current_upstream_mid_drain_fails_over_and_loses_nothing(
    tmp_path: Path, reaper: Reaper
) -> None:
    """A drains a backlog; kill -9 of A mid-drain: the rest goes to B, nothing acknowledged
    is lost, no run is twice in one database, and A shows down, B current."""
    port_a, port_b = free_port(), free_port()
    db_a, db_b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    upstreams = f"http://127.0.0.1:{port_a},http://127.0.0.1:{port_b}"

    def sidecar() -> Daemon:
        return start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=upstreams,
            spool_dir=tmp_path / "spool",
            env=SMALL_ROUNDS,
        )

    spoold = sidecar()
    acked = post_runs(spoold.url, 3000)  # both down: all of it queued
    spoold.stop()  # the backlog stays in the spool; both servers start before the drain does
    server_a = start_server(reaper, tmp_path, port=port_a, db=db_a)
    start_server(reaper, tmp_path, port=port_b, db=db_b)
    spoold = sidecar()
    wait_until(lambda: row_count(db_a) >= 200, timeout_s=60, what="A to take part of the backlog")
    server_a.stop(signal.SIGKILL)
    before = row_count(db_a)
    assert before < len(acked), "the kill came after the drain: make the backlog larger"

    body = wait_drained(spoold, timeout_s=120)
    counters_settled(body, len(acked))
    on_a, on_b = assert_on_the_union(acked, db_a, db_b)
    assert on_a, "A took part of the backlog before the kill"
    assert on_b, "B took the rest"
    both = set(on_a) & set(on_b)  # batches in doubt (A died, or timed out, before answering)
    upstream = body["upstream"]
    assert upstream["current"] == 1
    assert upstream["url"] == f"http://127.0.0.1:{port_b}"
    assert [m["state"] for m in upstream["upstreams"]] == ["down", "up"]
    assert upstream["upstreams"][0]["problem"] == "unreachable"
    assert any("upstream 1 of 2" in reason for reason in body["reasons"]), body["reasons"]
    # Proxied reads go to the upstream in use.
    some = next(iter(set(on_b) - both))
    status, run = get_json(f"{spoold.url}/api/v1/runs/{some}")
    assert (status, run["event_id"]) == (200, some)
    print(f"[failover] A took {len(on_a)}, B {len(on_b)}, both (re-sent in doubt) {len(both)}")


# ---- all down, one back, fail-back ---------------------------------------------------------


@pytest.mark.slow
def test_both_down_then_one_back_then_fail_back_to_the_preferred_one(
    tmp_path: Path, reaper: Reaper
) -> None:
    """Both down: queued, unhealthy upstream. B back: everything goes to B. A back: once its
    /health answers, spoold returns to A by itself and new runs go to A only."""
    port_a, port_b = free_port(), free_port()
    db_a, db_b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    spoold = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=f"{url_a},{url_b}",
        spool_dir=tmp_path / "spool",
    )
    first = post_runs(spoold.url, 40)
    down = wait_until(
        lambda: (body := health(spoold))["upstream"]["reachable"] is False and body,
        timeout_s=20,
        what="the upstream to show unreachable",
    )
    assert [m["state"] for m in down["upstream"]["upstreams"]] == ["down", "down"]
    assert down["spool"]["depth"] == 40

    start_server(reaper, tmp_path, port=port_b, db=db_b)
    body = wait_drained(spoold, timeout_s=60)
    assert body["upstream"]["current"] == 1
    assert set(server_rows(db_b)) == set(first)
    status, listed = get_json(f"{spoold.url}/api/v1/runs?agent_name={AGENT}&limit=100")
    assert status == 200
    assert {run["event_id"] for run in listed} == set(first)  # proxied to B, the one in use

    start_server(reaper, tmp_path, port=port_a, db=db_a)
    back = wait_until(
        lambda: (body := health(spoold))["upstream"]["current"] == 0 and body,
        timeout_s=30,
        what="spoold to return to A",
    )
    assert back["upstream"]["url"] == url_a
    assert next(m["state"] for m in back["upstream"]["upstreams"]) == "up"
    second = post_runs(spoold.url, 40)
    body = wait_drained(spoold, timeout_s=60)
    counters_settled(body, 80)
    assert set(server_rows(db_a)) == set(second), "after fail-back, new runs go to A"
    assert set(server_rows(db_b)) == set(first), "and none to B"
    assert_on_the_union({**first, **second}, db_a, db_b)
    status, listed = get_json(f"{spoold.url}/api/v1/runs?agent_name={AGENT}&limit=100")
    assert {run["event_id"] for run in listed} == set(second)  # reads follow, too
    metrics = _metrics(spoold)
    assert f'spoold_upstreams_current{{upstream="0",url="{url_a}"}} 1.0' in metrics
    assert f'spoold_upstreams_current{{upstream="1",url="{url_b}"}} 0.0' in metrics
    assert f'spoold_upstreams_up{{upstream="0",url="{url_a}"}} 1.0' in metrics


def _metrics(spoold: Daemon) -> str:
    import urllib.request

    request = urllib.request.Request(spoold.url + "/metrics", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


# ---- upstreams that are not the server -----------------------------------------------------


def test_a_foreign_200_on_the_preferred_upstream_is_never_taken_for_delivery(
    tmp_path: Path, reaper: Reaper
) -> None:
    """A answers 200 with another service's JSON: nothing is acknowledged on it, every run
    goes to B, and /health names A's problem (degraded, not silent)."""
    db_b = tmp_path / "b.sqlite"
    server_b = start_server(reaper, tmp_path, port=free_port(), db=db_b)
    with ForeignService() as foreign:
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=f"{foreign.url},{server_b.url}",
            spool_dir=tmp_path / "spool",
        )
        acked = post_runs(spoold.url, 30)
        body = wait_drained(spoold, timeout_s=60)
        assert foreign.posts >= 1, "the preferred upstream was tried first"
    counters_settled(body, 30)
    assert set(server_rows(db_b)) == set(acked)
    assert_on_the_union(acked, db_b)
    upstream = body["upstream"]
    assert upstream["current"] == 1
    assert upstream["unexpected_answer"] is None  # the service as a whole delivers
    first = upstream["upstreams"][0]
    assert (first["state"], first["problem"]) == ("down", "unexpected_answer")
    assert body["status"] == "degraded"
    assert any(foreign.url in reason for reason in body["reasons"]), body["reasons"]


def test_a_hanging_upstream_is_left_after_its_timeout(tmp_path: Path, reaper: Reaper) -> None:
    """A accepts connections and never answers: each batch it holds is re-sent to B after
    SPOOLD_UPSTREAM_TIMEOUT_S; reads go to B, the one in use."""
    db_b = tmp_path / "b.sqlite"
    server_b = start_server(reaper, tmp_path, port=free_port(), db=db_b)
    with hanging_upstream() as hanging:
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=f"{hanging},{server_b.url}",
            spool_dir=tmp_path / "spool",
            env={"SPOOLD_UPSTREAM_TIMEOUT_S": "1"},
        )
        acked = post_runs(spoold.url, 30)
        body = wait_drained(spoold, timeout_s=60)
        counters_settled(body, 30)
        assert set(server_rows(db_b)) == set(acked)
        first = body["upstream"]["upstreams"][0]
        assert (first["state"], first["problem"]) == ("down", "unreachable")
        assert body["upstream"]["current"] == 1
        some = next(iter(acked))
        status, run = get_json(f"{spoold.url}/api/v1/runs/{some}", timeout_s=10)
        assert (status, run["status"]) == (200, acked[some])


# ---- two upstreams, one database ------------------------------------------------------------

FLAP_WEIGHTS = {
    "ok": 0.45,
    "http_503": 0.10,
    "http_429": 0.05,
    "http_500": 0.05,
    "stall": 0.05,
    "reset": 0.10,
    "commit_drop": 0.20,
}


@pytest.mark.slow
async def test_flapping_replicas_of_one_database_lose_and_duplicate_nothing(
    tmp_path: Path, reaper: Reaper
) -> None:
    """Two upstreams in front of one database (proxies to one server, as replicas are),
    each failing at random (503, 429, 500, stalls, resets, commit-then-drop: a batch applied
    whose answer is lost, then re-sent to the other): full lifecycles (create, PATCHes,
    final status, commit) all arrive, one row per run, finished runs stay finished."""
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 1_000_000))
    print(f"\n[replicas] seed={seed} (FAULT_SEED to replay)")
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    with (
        FlakyProxy(server.port, seed=seed, weights=FLAP_WEIGHTS, stall_s=1.5) as proxy_a,
        FlakyProxy(server.port, seed=seed + 1, weights=FLAP_WEIGHTS, stall_s=1.5) as proxy_b,
    ):
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=f"{proxy_a.url},{proxy_b.url}",
            spool_dir=tmp_path / "spool",
            env={"SPOOLD_BATCH_SIZE": "12", "SPOOLD_UPSTREAM_TIMEOUT_S": "1"},
        )
        ledger: list[RunLedger] = []
        stop = asyncio.Event()
        for wave in range(8):
            await asyncio.gather(
                *(
                    agent(spoold.url, ledger, stop=stop, max_runs=1, round_no=wave, patches=3)
                    for _ in range(6)
                )
            )
            await asyncio.sleep(0.3)
        assert all(run.acked_ops() == 6 for run in ledger), "spoold answers locally, always"
        body = await asyncio.to_thread(wait_drained, spoold, timeout_s=120)
        applied = (proxy_a.batches_forwarded, proxy_b.batches_forwarded)
    print(f"[replicas] batches applied through A, B: {applied}")
    assert all(applied), "both upstreams took batches"
    assert body["counters"]["dead_lettered"] == 0
    rows = server_rows(db)
    result = tally(ledger, rows)
    assert result.problems == []
    assert result.lost == 0
    assert len(rows) == len(ledger)
    for run in ledger:
        assert (rows[run.event_id]["status"], rows[run.event_id]["items_succeeded"]) == (
            run.final,
            3,
        )


# ---- a batch in doubt that commits late ----------------------------------------------------


class LateReplica:
    """An upstream in front of the real server that holds the first batch setting
    ``items_succeeded`` to 1 past
    spoold's timeout and applies it afterwards anyway, as a replica whose transaction
    waited on a lock commits after its client gave up. Everything else passes at once."""

    def __init__(self, target: str, *, hold_s: float) -> None:
        self.target = target
        self.hold_s = hold_s
        self.late_applied = asyncio.Event()
        #: The server's answer to the late copy: (status, body).
        self.late_answer: tuple[int, dict[str, object]] | None = None
        self._held = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, bytes, str]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.target + request.rel_url.path_qs,
                data=body,
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as answer,
        ):
            return answer.status, await answer.read(), answer.content_type

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "POST" and b'"items_succeeded":1' in body and not self._held:
            self._held = True

            async def late() -> None:
                await asyncio.sleep(self.hold_s)
                status, raw, _ = await self._forward(request, body)
                self.late_answer = (status, json.loads(raw))
                self.late_applied.set()

            task = asyncio.create_task(late())
            self._tasks.add(task)
            await asyncio.sleep(self.hold_s * 4)  # spoold gives up long before
            return web.Response(status=504)
        status, raw, content_type = await self._forward(request, body)
        return web.Response(status=status, body=raw, content_type=content_type)


@pytest.mark.slow
async def test_a_batch_in_doubt_committed_late_by_one_replica_never_regresses_a_run(
    tmp_path: Path, reaper: Reaper
) -> None:
    """A holds the batch with items_succeeded=1 past spoold's timeout; spoold re-sends it to
    B, then items_succeeded=2 goes to B; A applies its copy afterwards. The run must end
    with items_succeeded=2, the agent's last acknowledged word: the late copy carries an
    older (source, sequence) than the one the run keeps, so the server skips it."""
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    replica = LateReplica(server.url, hold_s=2.0)
    await replica.start()
    try:
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=f"{replica.url},{server.url}",
            spool_dir=tmp_path / "spool",
            env={"SPOOLD_UPSTREAM_TIMEOUT_S": "0.5"},
        )
        event_id = new_event_id()
        async with aiohttp.ClientSession() as http:
            runs = f"{spoold.url}/api/v1/runs"
            async with http.post(runs, json=create_body(event_id)) as response:
                assert response.status == 201
            patch = {"status": "running", "items_succeeded": 1}
            async with http.patch(f"{runs}/{event_id}", json=patch) as response:
                assert response.status == 200

            def items() -> int | None:
                row = server_rows(db).get(event_id)
                return None if row is None else int(row["items_succeeded"] or 0)

            await asyncio.to_thread(
                wait_until, lambda: items() == 1, timeout_s=20, what="the re-sent batch on B"
            )
            async with http.patch(f"{runs}/{event_id}", json={"items_succeeded": 2}) as response:
                assert response.status == 200
            await asyncio.to_thread(
                wait_until, lambda: items() == 2, timeout_s=20, what="the newer snapshot"
            )
            await asyncio.wait_for(replica.late_applied.wait(), 20)
        assert items() == 2
        # The late copy is answered as a delivered batch: its run counted unchanged.
        assert replica.late_answer is not None
        status, answer = replica.late_answer
        assert status == 200, answer
        assert (answer["duplicates"], answer["updated"]) == (1, 0), answer
    finally:
        await replica.close()
