"""Helpers of the fault tests: the daemons with short backoffs, a client that keeps a
ledger of every acknowledged operation, the server's rows, and a flaky proxy.

Every wait here is bounded in iterations and in time; every daemon is stopped by
PID (``Reaper``); sockets are on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, TypeVar

import aiohttp
from daemons import STARTUP_TIMEOUT_S, Daemon, free_port, start

T = TypeVar("T")

#: Short retries so a test never waits long for the drainer.
SPOOLD_ENV: dict[str, str] = {
    "SPOOLD_BACKOFF_BASE_S": "0.05",
    "SPOOLD_BACKOFF_CAP_S": "0.5",
    "SPOOLD_SHUTDOWN_DEADLINE_S": "2",
    "SPOOLD_UPSTREAM_TIMEOUT_S": "2",
    "SPOOLD_LOOKUP_TIMEOUT_S": "1",
    "SPOOLD_MIN_FREE_DISK_MB": "0",
    "SPOOLD_LOG_LEVEL": "INFO",
}
SERVER_ENV: dict[str, str] = {
    "TELEMETRY_DB_SYNCHRONOUS": "NORMAL",
    "TELEMETRY_LOG_LEVEL": "WARNING",
    "TELEMETRY_SHUTDOWN_TIMEOUT_S": "2",
}
#: spoold's /health is 503 while the spool is full; the OpenAPI document always answers.
SPOOLD_READY_PATH = "/openapi.json"
AGENT = "fault-agent"


# ---- processes ---------------------------------------------------------------------------


class Reaper:
    """Remembers daemons and stops each one by PID (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def add(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon)
        return daemon

    def stop_all(self) -> None:
        for daemon in reversed(self.daemons):
            with contextlib.suppress(Exception):
                daemon.stop(signal.SIGTERM, timeout_s=10)


def start_server(
    reaper: Reaper,
    workdir: Path,
    *,
    port: int,
    db: Path,
    env: Mapping[str, str] | None = None,
    client_ssl: ssl.SSLContext | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Daemon:
    """The real telemetry-server (``python -m server``) on 127.0.0.1:port (HTTPS with client_ssl)."""
    return reaper.add(
        start(
            "server",
            ["--port", str(port), "--db", str(db)],
            port=port,
            workdir=workdir,
            env={**SERVER_ENV, **(env or {})},
            client_ssl=client_ssl,
            startup_timeout_s=startup_timeout_s,
        )
    )


def start_spoold(
    reaper: Reaper,
    workdir: Path,
    *,
    port: int,
    upstream: str,
    spool_dir: Path,
    env: Mapping[str, str] | None = None,
    client_ssl: ssl.SSLContext | None = None,
    module: str = "spoold",
) -> Daemon:
    """The real sidecar (``python -m spoold serve``, or a test's wrapper ``module`` of it),
    ready once it serves HTTP(S)."""
    return reaper.add(
        start(
            module,
            [
                "serve",
                "--port",
                str(port),
                "--upstream",
                upstream,
                "--spool-dir",
                str(spool_dir),
            ],
            port=port,
            workdir=workdir,
            env={**SPOOLD_ENV, **(env or {})},
            ready_path=SPOOLD_READY_PATH,
            client_ssl=client_ssl,
        )
    )


def start_spoold_before_its_server(
    reaper: Reaper, workdir: Path, *, env: Mapping[str, str] | None = None
) -> tuple[Daemon, int]:
    """spoold (spool in ``workdir/spool``) whose server is not up yet: its upstream is a free
    port kept for the server the test starts later with ``start_server(port=...)``."""
    server_port = free_port()
    spoold = start_spoold(
        reaper,
        workdir,
        port=free_port(),
        upstream=f"http://127.0.0.1:{server_port}",
        spool_dir=workdir / "spool",
        env=env,
    )
    return spoold, server_port


def spoold_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m spoold ARGS`` (operator commands) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "spoold", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, parsed (other lines are skipped)."""
    events = []
    for line in daemon.log().splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                events.append(value)
    return events


# ---- bounded waits and HTTP from synchronous code -----------------------------------------


def wait_until(
    check: Callable[[], T | None], *, timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / interval_s) + 2):
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def get_json(url: str, timeout_s: float = 2.0) -> tuple[int | None, Any]:
    """(status, parsed body) of a GET; (None, None) if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return int(exc.code), json.loads(exc.read() or b"null")
        except ValueError:
            return int(exc.code), None
    except (OSError, ValueError):
        return None, None


def post_json(url: str, body: Any, timeout_s: float = 5.0) -> tuple[int | None, Any]:
    """(status, parsed body) of a JSON POST; (None, None) if nothing answered."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), None
    except (OSError, ValueError):
        return None, None


def health(spoold: Daemon) -> dict[str, Any]:
    status, body = get_json(spoold.url + "/health")
    assert status in (200, 503), (status, body)
    assert isinstance(body, dict), body
    return body


def wait_drained(
    spoold: Daemon, *, timeout_s: float = 60.0, counters_add_up: bool = True
) -> dict[str, Any]:
    """Wait until spoold's queue is empty (and, by default, its counters add up:
    accepted = forwarded + queued + dead_lettered); return the health body."""

    def drained() -> dict[str, Any] | None:
        status, body = get_json(spoold.url + "/health")
        if status is None or not isinstance(body, dict):
            return None
        counters = body["counters"]
        settled = not counters_add_up or counters["accepted"] == (
            counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
        )
        idle = body["upstream"]["in_flight_batches"] == 0
        return body if body["spool"]["depth"] == 0 and settled and idle else None

    try:
        return wait_until(drained, timeout_s=timeout_s, what=f"spoold {spoold.url} to drain")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last /health: {get_json(spoold.url + '/health')}") from None


def server_rows(db: Path) -> dict[str, dict[str, Any]]:
    """Every stored run, by event_id, read straight from the server's SQLite file."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM agent_runs").fetchall()
    finally:
        conn.close()
    by_id = {row["event_id"]: dict(row) for row in rows}
    assert len(by_id) == len(rows), "duplicate event_id rows on the server"
    return by_id


# ---- the client and its ledger ------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one request got: a status, or why not (``sent`` False: never reached spoold)."""

    status: int | None
    body: Any = None
    error: str | None = None
    sent: bool = True
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Answer:
    """One request; connection failures become an Answer, never an exception."""
    try:
        async with http.request(method, url, json=body) as response:
            raw = await response.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw[:200]
            return Answer(response.status, parsed, retry_after=response.headers.get("Retry-After"))
    except aiohttp.ClientConnectorError as exc:
        return Answer(None, error=f"connect: {exc}", sent=False)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Answer(None, error=f"{type(exc).__name__}: {exc}")


def new_event_id() -> str:
    return str(uuid.uuid4())


def create_body(event_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "run_id": f"run-{event_id[:8]}",
        "agent_name": AGENT,
        "job_type": "fault-job",
        "start_time": "2026-01-12T10:30:00Z",
        "git_repo": "https://github.com/example/fleet",
        "items_discovered": 100,
        "host": "agent-host-1",
    }
    body.update(extra)
    return body


def commit_hash_of(event_id: str) -> str:
    return uuid.UUID(event_id).hex + "abcdef01"


@dataclass
class RunLedger:
    """One run's operations as the client saw them: what was acknowledged, what was tried."""

    event_id: str
    round: int = 0
    final: str = "success"
    create_acked: bool = False
    create_queued: bool = False
    items_acked: int = 0  # patches are monotonic: items_succeeded = 1, 2, ... k
    items_sent: int = 0
    status_acked: str | None = None
    commit_acked: str | None = None
    ambiguous: int = 0  # requests sent without an answer
    failure: str | None = None  # the request that stopped the lifecycle, and its answer

    def acked_ops(self) -> int:
        return (
            int(self.create_acked)
            + self.items_acked
            + int(self.status_acked is not None)
            + int(self.commit_acked is not None)
        )

    def delivered_ops(self, row: Mapping[str, Any] | None) -> tuple[int, list[str]]:
        """How many acknowledged operations the server's row reflects, and what is missing."""
        if row is None:
            return 0, [f"{self.event_id}: run missing"] if self.acked_ops() else []
        problems: list[str] = []
        delivered = int(self.create_acked)
        stored_items = int(row["items_succeeded"] or 0)
        delivered += min(self.items_acked, stored_items)
        if stored_items < self.items_acked:
            problems.append(f"{self.event_id}: items_succeeded {stored_items} < {self.items_acked}")
        if stored_items > max(self.items_sent, 0):
            problems.append(f"{self.event_id}: items_succeeded {stored_items} was never sent")
        if self.status_acked is not None:
            if row["status"] == self.status_acked:
                delivered += 1
            else:
                problems.append(f"{self.event_id}: status {row['status']} != {self.status_acked}")
        if self.commit_acked is not None:
            if row["git_commit_hash"] == self.commit_acked:
                delivered += 1
            else:
                problems.append(f"{self.event_id}: commit {row['git_commit_hash']} missing")
        return delivered, problems


@dataclass
class Tally:
    acked: int = 0
    delivered: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.acked - self.delivered


def tally(runs: Iterable[RunLedger], rows: Mapping[str, Mapping[str, Any]]) -> Tally:
    result = Tally()
    for run in runs:
        result.acked += run.acked_ops()
        delivered, problems = run.delivered_ops(rows.get(run.event_id))
        result.delivered += delivered
        result.problems.extend(problems)
    return result


def _failed(run: RunLedger, request: str, answer: Answer) -> bool:
    """Note why a lifecycle stopped (an answer never came: ambiguous); False."""
    run.ambiguous += answer.status is None and answer.sent
    run.failure = f"{request}: {answer.status or answer.error}"
    return False


async def lifecycle(
    http: aiohttp.ClientSession,
    base: str,
    run: RunLedger,
    *,
    patches: int = 3,
    commit: bool = True,
    pause_s: float = 0.0,
) -> bool:
    """POST -> PATCH items 1..patches (the first also says running) -> PATCH final status
    -> associate-commit; stop at the first request without a 2xx. True if all were acked."""
    answer = await call(http, "POST", f"{base}/api/v1/runs", create_body(run.event_id))
    if not answer.ok:
        return _failed(run, "POST create", answer)
    run.create_acked = True
    url = f"{base}/api/v1/runs/{run.event_id}"
    for k in range(1, patches + 1):
        if pause_s:
            await asyncio.sleep(pause_s)
        change: dict[str, Any] = {"items_succeeded": k}
        if k == 1:
            change["status"] = "running"
        run.items_sent = k
        answer = await call(http, "PATCH", url, change)
        if not answer.ok:
            return _failed(run, f"PATCH items {k}", answer)
        run.items_acked = k
    final = {
        "status": run.final,
        "end_time": "2026-01-12T10:35:00Z",
        "duration_ms": 300000,
        "output_summary": f"{run.final} after {patches} steps",
    }
    answer = await call(http, "PATCH", url, final)
    if not answer.ok:
        return _failed(run, "PATCH final", answer)
    run.status_acked = run.final
    if not commit:
        return True
    hash_ = commit_hash_of(run.event_id)
    answer = await call(
        http,
        "POST",
        f"{url}/associate-commit",
        {"commit_hash": hash_, "commit_source": "ci", "commit_author": "Fault <f@example.com>"},
    )
    if not answer.ok:
        return _failed(run, "POST associate-commit", answer)
    run.commit_acked = hash_
    return True


async def agent(
    base: str,
    ledger: list[RunLedger],
    *,
    stop: asyncio.Event,
    max_runs: int,
    round_no: int = 0,
    patches: int = 3,
    commit: bool = True,
    stop_on_failure: bool = True,
    connector_limit: int = 4,
    timeout_s: float = 10.0,
) -> None:
    """One agent: lifecycles back to back until ``stop``, ``max_runs`` or (optionally) a failure."""
    connector = aiohttp.TCPConnector(limit=connector_limit)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        for n in range(max_runs):
            if stop.is_set():
                return
            run = RunLedger(new_event_id(), round=round_no, final="success" if n % 3 else "failure")
            ledger.append(run)
            done = await lifecycle(http, base, run, patches=patches, commit=commit)
            if not done and stop_on_failure:
                return


# ---- a flaky upstream ---------------------------------------------------------------------

FAULTS = ("ok", "http_503", "http_429", "http_500", "stall", "reset", "commit_drop")


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashing peer or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _with_connection_close(head: bytes) -> bytes:
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [line for line in lines if not line.lower().startswith((b"connection:", b"keep-alive:"))]
    return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"


def _canned(status: int, reason: str, retry_after: str | None = None) -> bytes:
    body = json.dumps({"detail": f"injected {status}"}).encode()
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        headers.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of the real server that misbehaves at random.

    One request per connection. Faults: 503, 429 with Retry-After, 500, a stall past
    the client's timeout (never forwarded), a reset before forwarding, and
    commit-then-drop (forwarded, the server applied it, the answer is replaced by
    a reset). It runs its own event loop in a thread, so synchronous test code
    can use it alongside the daemons.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int,
        weights: Mapping[str, float],
        stall_s: float,
        faulty_paths: tuple[str, ...] = ("/",),
    ) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.batches_forwarded = 0
        self._rng = Random(seed)
        self._kinds = list(weights)
        self._weights = [weights[kind] for kind in self._kinds]
        self._stall_s = stall_s
        self._faulty_paths = faulty_paths
        self._faulty = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flaky-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_faulty(self, faulty: bool) -> None:
        self._faulty = faulty

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("flaky proxy did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            self._ready.set()
            loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _choose(self, path: str) -> str:
        if not self._faulty or not path.startswith(self._faulty_paths):
            return "ok"
        return self._rng.choices(self._kinds, self._weights)[0]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            path = request_line.split(" ")[1] if " " in request_line else "/"
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
            fault = self._choose(path)
            self.counts[fault] += 1
            if fault == "reset":
                _abort_with_reset(writer)
                return
            if fault == "stall":
                await asyncio.sleep(self._stall_s)
                _abort_with_reset(writer)
                return
            canned = {
                "http_503": _canned(503, "Service Unavailable"),
                "http_429": _canned(429, "Too Many Requests", retry_after="1"),
                "http_500": _canned(500, "Internal Server Error"),
            }.get(fault)
            if canned is not None:
                writer.write(canned)
                await writer.drain()
                writer.close()
                return
            response = await self._forward(head, body)
            if path.startswith("/api/v1/runs/batch"):
                self.batches_forwarded += 1
            if fault == "commit_drop":
                _abort_with_reset(writer)
                return
            writer.write(response)
            await writer.drain()
            writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.transport.abort()

    async def _forward(self, head: bytes, body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(_with_connection_close(head) + body)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()
        response_head, sep, response_body = raw.partition(b"\r\n\r\n")
        if not sep:
            raise OSError("upstream answered without a complete head")
        return _with_connection_close(response_head) + response_body


class Blackhole:
    """A port that accepts TCP connections and never answers: a hung server."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Blackhole:
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._sock.listen(128)  # never accept(): the kernel completes handshakes, nobody reads
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sock.close()
