"""Spool bounds: the configured cap and a disk that really fills up -> 503, no crash, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
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
    get_json,
    health,
    new_event_id,
    server_rows,
    start_server,
    start_spoold,
    start_spoold_before_its_server,
    tally,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


async def _fill(
    http: aiohttp.ClientSession, spoold: Daemon, ledger: list[RunLedger], *, pad: int, limit: int
) -> tuple[Any, list[int]]:
    """POST padded creates until the first 503 (at most ``limit``); that answer and all statuses."""
    statuses: list[int] = []
    for _ in range(limit):
        run = RunLedger(new_event_id())
        answer = await call(
            http,
            "POST",
            f"{spoold.url}/api/v1/runs",
            create_body(run.event_id, input_summary="x" * pad),
        )
        assert answer.status is not None, answer
        statuses.append(answer.status)
        if answer.ok:
            run.create_acked = True
            ledger.append(run)
        else:
            return (answer, run.event_id), statuses
    raise AssertionError(f"no 503 after {limit} writes")


async def _more_writes(
    http: aiohttp.ClientSession, spoold: Daemon, ledger: list[RunLedger], count: int
) -> list[int]:
    """Creates and PATCHes of known runs while full; acked ones join the ledger."""
    statuses = []
    for n in range(count):
        if n % 2:
            run = ledger[n % len(ledger)]
            answer = await call(
                http,
                "PATCH",
                f"{spoold.url}/api/v1/runs/{run.event_id}",
                {"items_succeeded": run.items_acked + 1},
            )
            if answer.ok:
                run.items_acked = run.items_sent = run.items_acked + 1
        else:
            run = RunLedger(new_event_id())
            answer = await call(
                http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id)
            )
            if answer.ok:
                run.create_acked = True
                ledger.append(run)
        assert answer.status is not None, answer
        statuses.append(answer.status)
    return statuses


def _assert_503_with_retry_after(answer: Any) -> None:
    assert answer.status == 503, answer
    assert answer.retry_after is not None, answer
    assert int(answer.retry_after) >= 1, answer
    assert isinstance(answer.body, dict), answer
    assert "detail" in answer.body, answer


async def test_spool_cap_gives_503_with_retry_after_then_recovers(
    tmp_path: Path, reaper: Reaper
) -> None:
    """A tiny SPOOLD_MAX_SPOOL_MB with the server down: writes past the cap get 503 with
    Retry-After, spoold stays up, and once the server is back the spool drains and writes
    are accepted again; refused writes were never spooled."""
    db = tmp_path / "server.sqlite"
    spoold, server_port = start_spoold_before_its_server(
        reaper, tmp_path, env={"SPOOLD_MAX_SPOOL_MB": "0.05"}
    )
    ledger: list[RunLedger] = []
    async with aiohttp.ClientSession() as http:
        (refused, refused_id), statuses = await _fill(http, spoold, ledger, pad=1000, limit=500)
        _assert_503_with_retry_after(refused)
        assert set(statuses) == {201, 503}
        more = await _more_writes(http, spoold, ledger, 20)  # smaller writes may still fit
        assert set(more) <= {200, 201, 503}, more
        (tiny, _), _ = await _fill(http, spoold, ledger, pad=0, limit=500)
        _assert_503_with_retry_after(tiny)
        status, body = get_json(spoold.url + "/health")
        # At the brim (less than one write's size left), /health reports the spool full or
        # nearly so; it answers either way.
        assert status in (200, 503), body
        assert body["status"] in ("degraded", "unhealthy"), body
        assert any(reason.startswith("spool") for reason in body["reasons"]), body
        assert spoold.process.poll() is None

        start_server(reaper, tmp_path, port=server_port, db=db)
        await asyncio.to_thread(wait_drained, spoold, timeout_s=60)
        again = await call(
            http, "POST", f"{spoold.url}/api/v1/runs", create_body(refused_id, input_summary="y")
        )
        assert (again.status, again.body["status"]) == (201, "created")  # it was never spooled
        ledger.append(RunLedger(refused_id, create_acked=True))
        await asyncio.to_thread(wait_drained, spoold, timeout_s=30)
    rows = server_rows(db)
    result = tally(ledger, rows)
    assert result.problems == []
    assert result.lost == 0
    assert len(rows) == len(ledger)
    print(f"\n[cap] accepted {len(ledger) - 1} creates before 503; acked={result.acked}")


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real disk-full test needs root to mount a small tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {result.stderr.strip()}")


def _unmount(path: Path) -> None:
    result = subprocess.run(["umount", str(path)], capture_output=True, timeout=20, check=False)
    if result.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20, check=False)


@contextlib.contextmanager
def small_disk(reaper: Reaper, spool_dir: Path, size: str = "4m") -> Iterator[None]:
    """A real tmpfs of ``size`` mounted on spool_dir; daemons stopped before the unmount."""
    _mount_tmpfs(spool_dir, size)
    try:
        yield
    finally:
        reaper.stop_all()
        _unmount(spool_dir)
        wait_until(lambda: not os.path.ismount(spool_dir), timeout_s=5, what="the unmount")


def _fill_with_ballast(directory: Path) -> Path:
    """Another process fills the filesystem: write zeros until ENOSPC (bounded by its size)."""
    ballast = directory / "ballast.bin"
    chunk = b"\0" * 65536
    with ballast.open("wb", buffering=0) as handle:  # unbuffered: close() has nothing to flush
        for _ in range(10_000):
            try:
                handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return ballast


async def _accepted_again(http: aiohttp.ClientSession, spoold: Daemon) -> RunLedger | None:
    """Retry a create for a few seconds (bounded); the acked run, or None if never accepted."""
    run = RunLedger(new_event_id())
    for _ in range(25):
        answer = await call(http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id))
        assert answer.status != 500, answer
        if answer.ok:
            run.create_acked = True
            return run
        await asyncio.sleep(0.2)
    return None


async def _fill_disk_through_spoold(
    http: aiohttp.ClientSession, spoold: Daemon, ledger: list[RunLedger]
) -> None:
    """Padded creates until the disk is full: 503 with Retry-After, never 500, still alive."""
    (refused, _), statuses = await _fill(http, spoold, ledger, pad=32_000, limit=400)
    _assert_503_with_retry_after(refused)
    more = await _more_writes(http, spoold, ledger, 20)
    assert 500 not in statuses + more, statuses + more
    assert set(more) <= {200, 201, 503}, more
    status, body = get_json(spoold.url + "/health")
    assert status in (200, 503), (status, body)
    assert isinstance(body, dict), body
    assert spoold.process.poll() is None
    print(f"\n[disk-full] {len(ledger)} creates accepted before the disk filled")


def _full_disk_spoold(reaper: Reaper, workdir: Path, spool_dir: Path, server_port: int) -> Daemon:
    return start_spoold(
        reaper,
        workdir,
        port=free_port(),
        upstream=f"http://127.0.0.1:{server_port}",
        spool_dir=spool_dir,
        env={"SPOOLD_MIN_FREE_DISK_MB": "0", "SPOOLD_MAX_SPOOL_MB": "1024"},
    )


async def test_real_disk_full_gives_503_never_500(tmp_path: Path, reaper: Reaper) -> None:
    """The spool on a 4 MiB tmpfs, no free-disk floor, a large cap: the disk itself fills;
    writes get 503 with Retry-After (never 500), spoold stays up, /health answers."""
    spool_dir = tmp_path / "spool"
    with small_disk(reaper, spool_dir):
        spoold = _full_disk_spoold(reaper, tmp_path, spool_dir, free_port())
        async with aiohttp.ClientSession() as http:
            await _fill_disk_through_spoold(http, spoold, [])
            await asyncio.sleep(1.0)  # the drainer keeps retrying the (down) server meanwhile
            assert spoold.process.poll() is None


async def test_real_disk_full_counters_still_add_up(tmp_path: Path, reaper: Reaper) -> None:
    """Writes on a full disk are refused (503) or, once durable, answered even if the runs
    index could not record them yet: accepted = forwarded + queued + dead_lettered holds."""
    spool_dir = tmp_path / "spool"
    with small_disk(reaper, spool_dir):
        spoold = _full_disk_spoold(reaper, tmp_path, spool_dir, free_port())
        async with aiohttp.ClientSession() as http:
            await _fill_disk_through_spoold(http, spoold, [])
        counters = health(spoold)["counters"]
        print(f"[disk-full] counters after the refusals: {counters}")
        assert counters["accepted"] == (
            counters["forwarded"] + counters["queued"] + counters["dead_lettered"]
        )


@pytest.mark.xfail(
    strict=True,
    reason="LIMITATION (open): with SPOOLD_MIN_FREE_DISK_MB=0 spoold itself fills the disk "
    "to the last byte; the drain's settle in the runs index then finds no room for its "
    "commits (SQLITE_FULL at every round: the spool's reserve, spoold/spool/reserve.py, is "
    "given back for the spool's own writes, not the index's), so nothing is acked. "
    "Space freed from outside recovers (test_transient_disk_full_leaves_the_drainer_running); "
    "the default 256 MiB floor keeps spoold from filling the disk at all",
)
async def test_real_disk_full_recovers_once_the_server_is_back(
    tmp_path: Path, reaper: Reaper
) -> None:
    """After the disk filled through spoold, the server coming up drains the spool and
    writes are accepted again; every acked create reaches the server."""
    spool_dir = tmp_path / "spool"
    server_port = free_port()
    db = tmp_path / "server.sqlite"
    with small_disk(reaper, spool_dir):
        spoold = _full_disk_spoold(reaper, tmp_path, spool_dir, server_port)
        ledger: list[RunLedger] = []
        async with aiohttp.ClientSession() as http:
            await _fill_disk_through_spoold(http, spoold, ledger)
            start_server(reaper, tmp_path, port=server_port, db=db)
            try:
                await asyncio.to_thread(wait_drained, spoold, timeout_s=8, counters_add_up=False)
            finally:
                rows = server_rows(db)
                result = tally(ledger, rows)
                print(
                    f"[disk-full] after the server came back: {result.acked} acked, "
                    f"{result.delivered} on the server, health {health(spoold)['spool']}"
                )
            again = await _accepted_again(http, spoold)
            assert again is not None, "writes are not accepted again after the drain"
            ledger.append(again)
            await asyncio.to_thread(wait_drained, spoold, timeout_s=8, counters_add_up=False)
        result = tally(ledger, server_rows(db))
        assert result.problems == []
        assert result.lost == 0


async def test_transient_disk_full_leaves_the_drainer_running(
    tmp_path: Path, reaper: Reaper
) -> None:
    """Another process fills the spool's disk while the server is reachable; once it frees
    the space, spoold drains what it had and forwards new writes (no restart needed)."""
    spool_dir = tmp_path / "spool"
    server_port = free_port()
    db = tmp_path / "server.sqlite"
    with small_disk(reaper, spool_dir):
        spoold = _full_disk_spoold(reaper, tmp_path, spool_dir, server_port)
        ledger: list[RunLedger] = []
        async with aiohttp.ClientSession() as http:
            for _ in range(5):  # queued while the server is down; the drainer holds them
                run = RunLedger(new_event_id())
                answer = await call(
                    http, "POST", f"{spoold.url}/api/v1/runs", create_body(run.event_id)
                )
                assert answer.status == 201, answer
                run.create_acked = True
                ledger.append(run)
            ballast = _fill_with_ballast(spool_dir)
            refused = await call(
                http, "POST", f"{spoold.url}/api/v1/runs", create_body(new_event_id())
            )
            assert refused.status == 503, refused
            start_server(reaper, tmp_path, port=server_port, db=db)
            await asyncio.sleep(1.5)  # the server answers while the disk is still full
            ballast.unlink()
            again = await _accepted_again(http, spoold)
            assert again is not None, "writes are not accepted again once space is back"
            ledger.append(again)
            try:
                await asyncio.to_thread(wait_drained, spoold, timeout_s=8, counters_add_up=False)
            finally:
                print(
                    f"\n[transient disk-full] health after the space came back: "
                    f"{health(spoold)['spool']} status={health(spoold)['status']}"
                )
        result = tally(ledger, server_rows(db))
        assert result.problems == []
        assert result.lost == 0
        assert spoold.stop() == 0  # SIGTERM still exits cleanly
