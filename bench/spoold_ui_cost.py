"""What spoold's status page (/ui/) costs on a full spool, and whether it slows the agents.

    python bench/spoold_ui_cost.py [--queued 100000] [--dead-letters 10000] [--pages 200]

Starts a real spoold (its server down, so nothing drains) on a fresh spool, fills it
with ``--queued`` creates through its batch endpoint and its dead-letter store with
``--dead-letters`` refused operations (hostile ids, long reasons), then measures, side
by side in one run:

1. server CPU per request (the daemon's utime+stime from /proc, over ``--pages``
   sequential requests) for /ui/, /ui/?before=<middle id> and /health (the baseline);
2. the latency of creates at a steady 200/s, alone and while a client fetches /ui/
   back to back (does the page hold up the accept path?).

CPU time is what the daemon spent, whatever else the machine runs; the latencies are
wall-clock and noisy on a shared machine: compare the two phases of one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from daemons import free_port, start
from server_bench import run_payload

from spoold.spool import DeadLetterStore
from spoold.state.storage import DEAD_LETTER_FILE

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def fill_dead_letters(path: Path, count: int) -> None:
    store = DeadLetterStore(path)
    try:
        for start_at in range(0, count, 1000):
            store.add_many(
                (
                    {
                        "kind": "update",
                        "event_id": f"<img src=x onerror=alert({n})>-{n}",
                        "body": {"status": "failure", "error_summary": "x" * 200},
                        "accepted_at": "2026-01-12T10:30:00Z",
                    },
                    f"Run not found: an update for an unknown event_id needs a create ({n}) "
                    + "<script>alert(1)</script> " * 10,
                    422,
                )
                for n in range(start_at, min(count, start_at + 1000))
            )
    finally:
        store.close()


async def fill_queue(http: aiohttp.ClientSession, url: str, count: int) -> float:
    rng = random.Random(7)
    now = datetime.now(UTC)
    started = time.perf_counter()
    for start_at in range(0, count, 500):
        batch = [run_payload(rng, start=now) for _ in range(min(500, count - start_at))]
        async with http.post(url + "/api/v1/runs/batch", json=batch) as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["inserted"] == len(batch), body
    return time.perf_counter() - started


async def cpu_per_request(
    http: aiohttp.ClientSession, url: str, pid: int, path: str, n: int
) -> tuple[float, float]:
    """(server CPU ms per request, median wall ms) over n sequential requests."""
    walls: list[float] = []
    before = cpu_s(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        async with http.get(url + path, headers={"Accept": "text/html"}) as response:
            await response.read()
            assert response.status == 200, (path, response.status)
        walls.append(time.perf_counter() - t0)
    spent = cpu_s(pid) - before
    walls.sort()
    return spent / n * 1e3, walls[len(walls) // 2] * 1e3


async def create_latencies(
    http: aiohttp.ClientSession, url: str, seconds: float, rate: float = 200.0
) -> list[float]:
    """Latency of creates sent on an open-loop schedule (from each one's scheduled time)."""
    rng = random.Random()
    now = datetime.now(UTC)
    latencies: list[float] = []
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []

    async def one(scheduled: float) -> None:
        async with http.post(url + "/api/v1/runs", json=run_payload(rng, start=now)) as response:
            await response.read()
            assert response.status == 201, response.status
        latencies.append(time.perf_counter() - scheduled)

    for i in range(int(seconds * rate)):
        scheduled = t0 + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return sorted(latencies)


async def hammer_page(http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> int:
    pages = 0
    while not stop.is_set():  # bounded by the phase's end
        async with http.get(url + "/ui/") as response:
            await response.read()
        pages += 1
    return pages


def q(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1e3


async def measure(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results["fill_s"] = await fill_queue(http, url, args.queued)
        async with http.get(url + "/health") as response:
            health = await response.json()
        results["queued"] = health["spool"]["depth"]
        results["dead_letters"] = health["spool"]["dead_letters"]
        await asyncio.sleep(2)  # the rate ring has samples; the fill's commits are done
        middle = args.dead_letters // 2
        for label, path in (
            ("/health", "/health"),
            ("/ui/", "/ui/"),
            (f"/ui/?before={middle}", f"/ui/?before={middle}"),
            ("/health again", "/health"),
            ("/ui/ again", "/ui/"),
        ):
            results[label] = await cpu_per_request(http, url, pid, path, args.pages)
        alone = await create_latencies(http, url, args.seconds)
        stop = asyncio.Event()
        hammer = asyncio.create_task(hammer_page(http, url, stop))
        loaded = await create_latencies(http, url, args.seconds)
        stop.set()
        results["pages_during_load"] = await hammer
        results["creates_alone"] = (q(alone, 0.5), q(alone, 0.99), len(alone))
        results["creates_with_page"] = (q(loaded, 0.5), q(loaded, 0.99), len(loaded))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--dead-letters", type=int, default=10_000)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        workdir = Path(tmp)
        spool_dir = workdir / "spool"
        spool_dir.mkdir()
        fill_dead_letters(spool_dir / DEAD_LETTER_FILE, args.dead_letters)
        port = free_port()
        env = {
            "SPOOLD_MIN_FREE_DISK_MB": "0",
            "SPOOLD_MAX_SPOOL_MB": "4096",
            "SPOOLD_LOG_LEVEL": "WARNING",
            "SPOOLD_BACKOFF_CAP_S": "5",
        }
        daemon = start(
            "spoold",
            [
                *("serve", "--port", str(port), "--spool-dir", str(spool_dir)),
                *("--upstream", f"http://127.0.0.1:{free_port()}"),
            ],
            port=port,
            workdir=workdir,
            env=env,
        )
        try:
            results = asyncio.run(measure(args, daemon.url, daemon.process.pid))
        finally:
            daemon.stop()
    print(f"spool: {results['queued']} queued operations (filled in {results['fill_s']:.1f} s), "
          f"{results['dead_letters']} dead letters")  # fmt: skip
    print(f"server CPU per request over {args.pages} sequential requests (median wall):")
    for label in ("/health", "/ui/", f"/ui/?before={args.dead_letters // 2}", "/health again",
                  "/ui/ again"):  # fmt: skip
        cpu_ms, wall_ms = results[label]
        print(f"  {label:<24} {cpu_ms:7.2f} ms CPU   ({wall_ms:6.2f} ms wall)")
    for label in ("creates_alone", "creates_with_page"):
        p50, p99, n = results[label]
        print(f"  {label:<24} p50 {p50:6.2f} ms   p99 {p99:7.2f} ms   ({n} creates at 200/s)")
    print(f"  pages served during the loaded phase: {results['pages_during_load']}")


if __name__ == "__main__":
    main()
