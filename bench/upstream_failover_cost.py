"""What the failover layer costs spoold per batch, and how long a failover takes.

Runs against an in-process HTTP server on 127.0.0.1 answering like the telemetry
server's batch endpoint (so only the client side is measured):

* CPU per ``send_batch`` (this process's CPU time, which includes the tiny server):
  ``Endpoint`` alone vs ``UpstreamClient`` over one URL vs over two URLs (the first
  healthy), interleaved in rounds in one run so machine noise hits all three alike;
* a failover: the first upstream refuses connections (nothing listens), the batch goes to
  the second in the same call - wall time of that call vs a call with no failover.

    python bench/upstream_failover_cost.py [--batches 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import time

import aiohttp
import structlog
from aiohttp import web

from spoold.upstream.client import UpstreamClient
from spoold.upstream.endpoint import Endpoint
from spoold.upstream.retry import Backoff

BODY = b'[{"event_id": "bench", "create": {}}]'


async def batch(_: web.Request) -> web.Response:
    return web.json_response(
        {"inserted": 1, "updated": 0, "duplicates": 0, "errors": [], "total": 1}
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def cpu_per_batch(sender: Endpoint | UpstreamClient, batches: int) -> float:
    started = time.process_time()
    for _ in range(batches):
        answer = await sender.send_batch(BODY, 1)
        assert answer.verdict == "ok", answer
    return (time.process_time() - started) / batches * 1e6


async def main(batches: int, rounds: int) -> None:
    app = web.Application()
    app.router.add_post("/api/v1/runs/batch", batch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    options = {"token": None, "batch_timeout_s": 10.0, "lookup_timeout_s": 2.0}
    try:
        async with aiohttp.ClientSession() as session:
            senders: dict[str, Endpoint | UpstreamClient] = {
                "Endpoint (no failover layer)": Endpoint(session, url, **options),  # type: ignore[arg-type]
                "UpstreamClient, 1 URL": UpstreamClient(session, url, **options),  # type: ignore[arg-type]
                "UpstreamClient, 2 URLs": UpstreamClient(session, [url, dead], **options),  # type: ignore[arg-type]
            }
            results: dict[str, list[float]] = {name: [] for name in senders}
            for _ in range(rounds):
                for name, sender in senders.items():
                    results[name].append(await cpu_per_batch(sender, batches))
            print(f"CPU per batch, median of {rounds} rounds of {batches} (µs):")
            base = statistics.median(results["Endpoint (no failover layer)"])
            for name, values in results.items():
                median = statistics.median(values)
                print(f"  {name:32s} {median:8.1f}  ({median / base:.3f}x)")

            walls: dict[str, list[float]] = {"no failover": [], "failover (first refused)": []}
            for _ in range(200):
                healthy = UpstreamClient(session, [url, dead], **options)  # type: ignore[arg-type]
                started = time.perf_counter()
                await healthy.send_batch(BODY, 1)
                walls["no failover"].append(time.perf_counter() - started)
                failing = UpstreamClient(
                    session,
                    [dead, url],
                    backoff=Backoff(),
                    **options,  # type: ignore[arg-type]
                )
                started = time.perf_counter()
                answer = await failing.send_batch(BODY, 1)
                walls["failover (first refused)"].append(time.perf_counter() - started)
                assert answer.verdict == "ok"
                assert failing.selection.current == 1
            print("Wall time of one send_batch, median of 200 fresh clients (ms):")
            for name, values in walls.items():
                print(f"  {name:32s} {statistics.median(values) * 1000:8.2f}")
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    asyncio.run(main(args.batches, args.rounds))
