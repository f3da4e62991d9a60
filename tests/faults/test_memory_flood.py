"""Memory under a flood of large bodies: the real daemons, default admission settings, many
concurrent clients each sending bodies near the body cap. The daemon's peak RSS (VmHWM)
stays under the MemoryMax of its systemd unit; every request is answered 2xx or 503 (never
a reset, never a 500); every 2xx write is stored (server) or delivered (spoold).

The bodies are the costliest JSON the contract accepts for their size (arrays of empty
arrays in ``metrics_json``: ~32 bytes of Python objects per byte), mixed with plain ones
(a long ``error_details`` string). A watchdog kills a daemon whose RSS passes twice its
MemoryMax, as the kernel would kill it at once, so a regression cannot exhaust the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemons import Daemon, free_port
from procs import (
    Reaper,
    server_rows,
    start_server,
    start_spoold_before_its_server,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
BODY_CAP = 5 * MIB  # the default *_MAX_BODY_BYTES of both daemons
BODY_SIZE = BODY_CAP - 64 * 1024
CLIENTS = 160  # 800 MiB of bodies at once
#: Clients keep sending (each at most this often) until the phase has ENOUGH_ACKED writes
#: acknowledged: how many get through in a few attempts depends on the host's speed, and
#: the memory measured must include large bodies processed and stored, not only refused.
ATTEMPTS_PER_CLIENT = 15
ENOUGH_ACKED = 16
ATTEMPT_TIMEOUT_S = 120.0
RETRY_JITTER_S = 4.0
MIN_ACKED = 8
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def memory_max(unit: str) -> int:
    """The MemoryMax= of systemd/<unit>, in bytes."""
    text = (ROOT / "systemd" / unit).read_text()
    value = text.split("\nMemoryMax=")[1].split()[0]
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    return int(float(value[:-1]) * units[value[-1]]) if value[-1] in units else int(value)


def proc_kib(pid: int, field_name: str) -> int | None:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssWatch:
    """Samples a daemon's RSS; kills it (SIGKILL, by PID) past ``kill_at`` bytes."""

    def __init__(self, daemon: Daemon, *, kill_at: int) -> None:
        self.pid = daemon.process.pid
        self.kill_at = kill_at
        self.max_sampled = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            rss = proc_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.max_sampled = max(self.max_sampled, rss * 1024)
            if rss * 1024 > self.kill_at:
                self.killed = True
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                return

    def peak(self) -> int:
        """VmHWM (the kernel's own peak) while the daemon lives, else the highest sample."""
        hwm = proc_kib(self.pid, "VmHWM")
        return max(self.max_sampled, hwm * 1024 if hwm is not None else 0)


# ---- the bodies and the clients ------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    """A create of BODY_SIZE bytes: a small head naming the run, then a large shared tail."""

    kind: str
    head: str  # holds PLACEHOLDER where the event_id goes
    tail: bytes

    def parts(self, event_id: str) -> tuple[bytes, bytes]:
        return self.head.replace(PLACEHOLDER, event_id).encode(), self.tail


def heavy_body() -> Body:
    """metrics_json of arrays of empty arrays: the most Python objects per byte of JSON."""
    head = (
        '{"event_id":"' + PLACEHOLDER + '","run_id":"flood","agent_name":"flood-agent",'
        '"job_type":"flood","start_time":"2026-01-12T10:30:00Z","metrics_json":{"a":['
    )
    end = b"]}}"
    count = (BODY_SIZE - len(head) - len(end) + 1) // 3
    tail = b"[]," * (count - 1) + b"[]" + end
    return Body("heavy", head, tail + b" " * (BODY_SIZE - len(head) - len(tail)))


def plain_body() -> Body:
    """Mostly one long error_details string."""
    head = (
        '{"event_id":"' + PLACEHOLDER + '","run_id":"flood","agent_name":"flood-agent",'
        '"job_type":"flood","start_time":"2026-01-12T10:30:00Z","error_details":"'
    )
    return Body("plain", head, b"x" * (BODY_SIZE - len(head) - 2) + b'"}')


@dataclass
class Flood:
    """What the clients saw: acknowledged event ids (by kind) and every status."""

    acked: dict[str, str] = field(default_factory=dict)  # event_id -> "heavy" | "plain"
    statuses: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def post_create(port: int, head: bytes, tail: bytes) -> tuple[int, dict[str, str]]:
    """POST one create on its own connection, writing the whole body before reading the
    answer (as most HTTP clients do): a server that resets instead of answering fails it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        size = len(head) + len(tail)
        writer.write(
            f"POST /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            f"\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode()
        )
        writer.write(head)
        view = memoryview(tail)
        for start in range(0, len(view), 256 * 1024):
            writer.write(view[start : start + 256 * 1024])
            await writer.drain()
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def flood_client(port: int, body: Body, flood: Flood, rng: random.Random) -> None:
    """Send a large create until one is acknowledged (or the flood has enough); after a
    503, wait its Retry-After plus jitter and send again. Bounded in attempts and each
    attempt in time."""
    for _ in range(ATTEMPTS_PER_CLIENT):
        if len(flood.acked) >= ENOUGH_ACKED:
            return
        event_id = str(uuid.uuid4())
        try:
            status, headers = await asyncio.wait_for(
                post_create(port, *body.parts(event_id)), ATTEMPT_TIMEOUT_S
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            flood.failures.append(f"{type(exc).__name__}: {exc}")
            return
        flood.statuses.append(status)
        if 200 <= status < 300:
            flood.acked[event_id] = body.kind
            return
        if status != 503:
            flood.failures.append(f"status {status}")
            return
        await asyncio.sleep(float(headers["retry-after"]) + rng.uniform(0, RETRY_JITTER_S))


async def run_flood(port: int, flood: Flood, seed: int) -> None:
    """CLIENTS clients at once, 3 of 4 with heavy bodies."""
    rng = random.Random(seed)
    heavy, plain = heavy_body(), plain_body()
    bodies = [plain if n % 4 == 0 else heavy for n in range(CLIENTS)]
    await asyncio.gather(*(flood_client(port, body, flood, rng) for body in bodies))


def check_answers(flood: Flood) -> None:
    assert flood.failures == [], flood.failures[:5]
    assert set(flood.statuses) <= {201, 503}, sorted(set(flood.statuses))
    assert len(flood.acked) >= MIN_ACKED, f"only {len(flood.acked)} writes acknowledged"


def check_stored(flood: Flood, db: Path) -> None:
    """Every acknowledged write is on the server, whole."""
    rows = server_rows(db)
    heavy, plain = heavy_body(), plain_body()
    heavy_len = len(b"".join(heavy.parts(PLACEHOLDER)).split(b'"metrics_json":')[1].rstrip()) - 1
    plain_len = len(json.loads(b"".join(plain.parts(PLACEHOLDER)))["error_details"])
    missing = [event_id for event_id in flood.acked if event_id not in rows]
    assert missing == [], f"{len(missing)} acknowledged writes missing"
    for event_id, kind in flood.acked.items():
        row = rows[event_id]
        if kind == "heavy":
            assert len(row["metrics_json"]) == heavy_len, event_id
        else:
            assert len(row["error_details"]) == plain_len, event_id


@contextlib.contextmanager
def watched(daemon: Daemon, limit: int) -> Iterator[RssWatch]:
    with RssWatch(daemon, kill_at=2 * limit) as watch:
        yield watch


def drained_now(spoold: Daemon) -> bool:
    with contextlib.suppress(AssertionError):
        wait_drained(spoold, timeout_s=0.1)
        return True
    return False


def report(name: str, watch: RssWatch, limit: int, flood: Flood) -> str:
    line = (
        f"{name}: peak RSS {watch.peak() / MIB:.0f} MiB, MemoryMax {limit / MIB:.0f} MiB, "
        f"{len(flood.acked)} writes acknowledged, {flood.statuses.count(503)} answered 503"
    )
    print(line)
    return line


def test_server_flooded_with_large_bodies_stays_under_memory_max(
    tmp_path: Path, reaper: Reaper
) -> None:
    """The central server under CLIENTS concurrent near-cap bodies: peak RSS < MemoryMax."""
    limit = memory_max("telemetry-server.service")
    db = tmp_path / "server.sqlite"
    server = start_server(reaper, tmp_path, port=free_port(), db=db)
    flood = Flood()
    with watched(server, limit) as watch:
        asyncio.run(run_flood(server.port, flood, seed=1))
        line = report("server", watch, limit, flood)
        assert not watch.killed, f"killed past 2 x MemoryMax; {line}"
        assert watch.peak() < limit, line
    assert server.process.poll() is None, "the server died"
    check_answers(flood)
    check_stored(flood, db)


def test_spoold_flooded_with_large_bodies_stays_under_memory_max(
    tmp_path: Path, reaper: Reaper
) -> None:
    """spoold under CLIENTS concurrent near-cap bodies with the server down, then again while
    it drains to the server: peak RSS < MemoryMax, every acknowledged write delivered."""
    limit = memory_max("spoold.service")
    db = tmp_path / "server.sqlite"
    spoold, server_port = start_spoold_before_its_server(
        reaper, tmp_path, env={"SPOOLD_MAX_SPOOL_MB": "4096"}
    )
    down, up = Flood(), Flood()
    with watched(spoold, limit) as watch:
        asyncio.run(run_flood(spoold.port, down, seed=2))
        report("spoold, server down", watch, limit, down)
        start_server(reaper, tmp_path, port=server_port, db=db)
        asyncio.run(run_flood(spoold.port, up, seed=3))
        wait_until(
            lambda: watch.killed or spoold.process.poll() is not None or drained_now(spoold),
            timeout_s=300,
            what="spoold to drain (or die)",
            interval_s=0.5,
        )
        line = report("spoold, server up", watch, limit, up)
        assert not watch.killed, f"killed past 2 x MemoryMax; {line}"
        assert watch.peak() < limit, line
    assert spoold.process.poll() is None, "spoold died"
    check_answers(down)
    check_answers(up)
    check_stored(Flood(acked={**down.acked, **up.acked}), db)
