"""A small async HTTP load generator for 127.0.0.1 (aiohttp client, orjson bodies).

Model: ``concurrency`` workers share one counter of *operations*; each worker
takes the next sequence number and awaits ``op(client, seq)`` until either
``max_ops`` operations have started or ``max_seconds`` of wall time have
passed. An operation may issue several requests (a create then a PATCH);
every request is timed on its own and filed under a label, so one run
reports per-label requests/s and p50/p99/max latency, non-2xx counts by
status and client errors (timeouts, resets) by exception type.

The load can be spread over several client processes (``processes=N``, fork):
each runs ``concurrency / N`` workers on its own event loop (uvloop when
installed), they start together on a barrier, and their recordings are
merged. On a small machine the client's own CPU matters, so every result
carries the client processes' CPU seconds.

Only loopback targets are accepted: this tool is for benchmarking a local
server, never for loading someone else's.

Library use::

    async def create(client: Client, seq: int) -> None:
        status, body = await client.request("POST", "/api/v1/runs", json={...}, label="create")

    result = run_load("http://127.0.0.1:8766", create, concurrency=32, max_ops=10_000,
                      max_seconds=20)
    print(result.format())

Command line (one fixed request, for quick checks)::

    python bench/loadgen.py http://127.0.0.1:8766/health -c 32 -n 20000 -t 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import ipaddress
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

try:  # optional: a faster event loop keeps the client's CPU share down
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

LOOPBACK_NAMES = frozenset({"localhost"})


def event_loop_name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"


def check_loopback(base_url: str) -> None:
    """Refuse any target that is not on this machine's loopback interface."""
    host = urlsplit(base_url).hostname or ""
    if host in LOOPBACK_NAMES:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"loadgen only targets loopback addresses (127.0.0.1), not {host!r}")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LabelStats:
    """What one label's requests did: latency in seconds, outcome counts."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: LabelStats) -> None:
        self.latencies.extend(other.latencies)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    def quantiles_ms(self) -> tuple[float, float, float]:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan, math.nan, math.nan
        return percentile(ordered, 50) * 1e3, percentile(ordered, 99) * 1e3, ordered[-1] * 1e3


@dataclass
class Recording:
    """Everything one client process saw; recordings merge across processes."""

    labels: dict[str, LabelStats] = field(default_factory=dict)
    ops_done: int = 0
    ops_failed: int = 0
    #: Free-form per-scenario lists, e.g. the event_ids the server acknowledged.
    notes: dict[str, list[Any]] = field(default_factory=dict)
    started: float = math.inf  # time.monotonic() (system-wide on Linux)
    finished: float = 0.0
    cpu_s: float = 0.0
    #: The client's own garbage collections during the run: each one stalls every
    #: request in flight, and its pause is counted as the server's latency.
    gc_collections: int = 0
    gc_longest_s: float = 0.0

    def label(self, name: str) -> LabelStats:
        stats = self.labels.get(name)
        if stats is None:
            stats = self.labels[name] = LabelStats()
        return stats

    def note(self, key: str, value: Any) -> None:
        self.notes.setdefault(key, []).append(value)

    def merge(self, other: Recording) -> None:
        for name, stats in other.labels.items():
            self.label(name).merge(stats)
        self.ops_done += other.ops_done
        self.ops_failed += other.ops_failed
        for key, values in other.notes.items():
            self.notes.setdefault(key, []).extend(values)
        self.started = min(self.started, other.started)
        self.finished = max(self.finished, other.finished)
        self.cpu_s += other.cpu_s
        self.gc_collections += other.gc_collections
        self.gc_longest_s = max(self.gc_longest_s, other.gc_longest_s)


class GcPauses:
    """Times this process's garbage collections while installed (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.longest_s = max(self.longest_s, time.perf_counter() - self._started)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


BaseUrls = str | Sequence[str]


def base_list(base_url: BaseUrls) -> list[str]:
    """One target or several (replicas behind no load balancer): a list, never empty."""
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    if not bases:
        raise ValueError("at least one base URL is needed")
    return [base.rstrip("/") for base in bases]


class Client:
    """What an operation sees: a keep-alive session on base_url and the recording.

    With several base URLs (replicas of one server), requests go to them in turn,
    round robin, as a load balancer would spread them."""

    def __init__(self, session: aiohttp.ClientSession, base_url: BaseUrls, recording: Recording):
        self.session = session
        self.bases = base_list(base_url)
        self.base_url = self.bases[0]
        self.recording = recording
        self._turn = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        label: str = "request",
    ) -> tuple[int, Any]:
        """Send one request, time it, record it; (status, parsed JSON or None).

        Transport errors are recorded under the label and re-raised, so the
        operation stops (its remaining requests would make no sense).
        """
        data = None if json is None else orjson.dumps(json)
        headers = {"Content-Type": "application/json"} if data is not None else None
        stats = self.recording.label(label)
        base = self.bases[self._turn % len(self.bases)]
        self._turn += 1
        started = time.perf_counter()
        try:
            async with self.session.request(
                method, base + path, data=data, params=params, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            stats.latencies.append(time.perf_counter() - started)
            stats.errors[type(exc).__name__] += 1
            raise
        stats.latencies.append(time.perf_counter() - started)
        stats.statuses[status] += 1
        body: Any = None
        if raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(raw)
        return status, body


Operation = Callable[[Client, int], Awaitable[None]]


@dataclass
class LoadResult:
    """A finished run: elapsed wall time and the merged recording."""

    name: str
    concurrency: int
    processes: int
    elapsed_s: float
    recording: Recording
    timed_out: bool

    @property
    def ops_per_s(self) -> float:
        return self.recording.ops_done / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def requests_per_s(self, label: str | None = None) -> float:
        labels = [self.recording.label(label)] if label else self.recording.labels.values()
        count = sum(stats.requests for stats in labels)
        return count / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def stats(self, label: str | None = None) -> LabelStats:
        if label is not None:
            return self.recording.label(label)
        merged = LabelStats()
        for stats in self.recording.labels.values():
            merged.merge(stats)
        return merged

    @property
    def client_cpu_pct(self) -> float:
        """Client CPU as % of one core over the run (all client processes added up)."""
        return 100 * self.recording.cpu_s / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def format(self) -> str:
        lines = [
            f"{self.name}: {self.recording.ops_done} ops in {self.elapsed_s:.2f} s "
            f"= {self.ops_per_s:,.0f} ops/s (concurrency {self.concurrency}, "
            f"{self.processes} client process(es), {event_loop_name()}, "
            f"client CPU {self.client_cpu_pct:.0f}% of a core; client GC: "
            f"{self.recording.gc_collections} collections, longest "
            f"{self.recording.gc_longest_s * 1e3:.1f} ms)"
            + ("  [stopped by the time bound]" if self.timed_out else "")
        ]
        for name, stats in sorted(self.recording.labels.items()):
            p50, p99, worst = stats.quantiles_ms()
            statuses = ", ".join(f"{code}: {n}" for code, n in sorted(stats.statuses.items()))
            errors = ", ".join(f"{kind}: {n}" for kind, n in sorted(stats.errors.items()))
            lines.append(
                f"  {name:<12} {stats.requests:>8} req  {self.requests_per_s(name):>9,.0f} req/s"
                f"  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {worst:8.2f} ms"
                f"  non-2xx {stats.non_2xx}  errors {sum(stats.errors.values())}"
                f"  [{statuses}{'; ' + errors if errors else ''}]"
            )
        return "\n".join(lines)


async def _drive(
    base_url: BaseUrls,
    op: Operation,
    *,
    concurrency: int,
    max_ops: int,
    max_seconds: float,
    seq_offset: int,
    seq_stride: int,
    request_timeout_s: float,
    ready: Callable[[], None] | None = None,
) -> tuple[Recording, bool]:
    recording = Recording()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    next_index = 0
    timed_out = False
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
    ) as session:
        client = Client(session, base_url, recording)
        if ready is not None:
            await asyncio.get_running_loop().run_in_executor(None, ready)
        started = time.monotonic()
        deadline = started + max_seconds
        cpu_started = time.process_time()

        async def worker() -> None:
            nonlocal next_index, timed_out
            while next_index < max_ops:
                if time.monotonic() >= deadline:
                    timed_out = True
                    return
                index = next_index
                next_index += 1
                try:
                    await op(client, seq_offset + index * seq_stride)
                except (aiohttp.ClientError, TimeoutError):
                    recording.ops_failed += 1  # already recorded per request
                else:
                    recording.ops_done += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        # The time bound holds even if a request hangs: cancel what is left after a grace.
        with GcPauses() as pauses:
            _, pending = await asyncio.wait(tasks, timeout=max_seconds + request_timeout_s + 1)
        recording.gc_collections, recording.gc_longest_s = pauses.count, pauses.longest_s
        for task in pending:
            task.cancel()
            timed_out = True
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        recording.started = started
        recording.finished = time.monotonic()
        recording.cpu_s = time.process_time() - cpu_started
    return recording, timed_out


def _run_loop(coro: Awaitable[Any]) -> Any:
    if uvloop is not None:
        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def _child(
    conn: Any,
    barrier: Any,
    base_url: BaseUrls,
    op: Operation,
    kwargs: dict[str, Any],
) -> None:
    try:
        recording, timed_out = _run_loop(
            _drive(base_url, op, ready=lambda: barrier.wait(60), **kwargs)
        )
        conn.send((recording, timed_out, None))
    except BaseException as exc:  # report, do not hang the parent
        conn.send((None, False, repr(exc)))
    finally:
        conn.close()


def run_load(
    base_url: BaseUrls,
    op: Operation,
    *,
    name: str = "load",
    concurrency: int = 32,
    max_ops: int = 10_000,
    max_seconds: float = 30.0,
    processes: int = 1,
    request_timeout_s: float = 30.0,
) -> LoadResult:
    """Run op until max_ops operations or max_seconds; blocking; returns the merged result.

    With processes > 1, the workers are split over forked client processes and
    sequence numbers are interleaved (process p gets p, p+N, p+2N ...), so an
    op can derive unique ids from seq alone.
    """
    for base in base_list(base_url):
        check_loopback(base)
    if concurrency < 1 or max_ops < 1 or max_seconds <= 0 or processes < 1:
        raise ValueError("concurrency, max_ops, processes must be >= 1 and max_seconds > 0")
    processes = min(processes, concurrency)
    if processes == 1:
        recording, timed_out = _run_loop(
            _drive(
                base_url,
                op,
                concurrency=concurrency,
                max_ops=max_ops,
                max_seconds=max_seconds,
                seq_offset=0,
                seq_stride=1,
                request_timeout_s=request_timeout_s,
            )
        )
        return LoadResult(
            name,
            concurrency,
            1,
            recording.finished - recording.started,
            recording,
            timed_out,
        )

    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(processes)
    children = []
    for index in range(processes):
        share_c = concurrency // processes + (index < concurrency % processes)
        share_n = max_ops // processes + (index < max_ops % processes)
        parent_end, child_end = ctx.Pipe(duplex=False)
        kwargs = {
            "concurrency": share_c,
            "max_ops": share_n,
            "max_seconds": max_seconds,
            "seq_offset": index,
            "seq_stride": processes,
            "request_timeout_s": request_timeout_s,
        }
        process = ctx.Process(
            target=_child, args=(child_end, barrier, base_url, op, kwargs), daemon=True
        )
        process.start()
        child_end.close()
        children.append((process, parent_end))
    merged = Recording()
    timed_out = False
    failures = []
    bound = max_seconds + request_timeout_s + 90
    for process, parent_end in children:
        if parent_end.poll(bound):
            recording, child_timed_out, error = parent_end.recv()
            if error is not None:
                failures.append(error)
            else:
                merged.merge(recording)
                timed_out = timed_out or child_timed_out
        else:
            failures.append(f"client process {process.pid} did not report in {bound:.0f} s")
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    if failures:
        raise RuntimeError("client process failed: " + "; ".join(failures))
    return LoadResult(
        name, concurrency, processes, merged.finished - merged.started, merged, timed_out
    )


# ---- command line -------------------------------------------------------------------


@dataclass(frozen=True)
class _FixedRequest:
    method: str
    path: str
    body: Any

    async def __call__(self, client: Client, seq: int) -> None:
        await client.request(self.method, self.path, json=self.body, label=self.method)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="full URL on 127.0.0.1, e.g. http://127.0.0.1:8766/health")
    parser.add_argument("-X", "--method", default="GET")
    parser.add_argument("-d", "--data", help="JSON body (a string, or @file)")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-n", "--requests", type=int, default=10_000, help="at most this many")
    parser.add_argument("-t", "--seconds", type=float, default=30.0, help="at most this long")
    parser.add_argument("-p", "--processes", type=int, default=1, help="client processes")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    body = None
    if args.data is not None:
        raw = args.data
        if raw.startswith("@"):
            with open(raw[1:], "rb") as handle:
                raw = handle.read()
        body = orjson.loads(raw)
    result = run_load(
        base,
        _FixedRequest(args.method.upper(), path or "/", body),
        name=f"{args.method.upper()} {path or '/'}",
        concurrency=args.concurrency,
        max_ops=args.requests,
        max_seconds=args.seconds,
        processes=args.processes,
    )
    print(result.format())
    stats = result.stats()
    return 0 if stats.non_2xx == 0 and not stats.errors else 1


if __name__ == "__main__":
    sys.exit(main())
