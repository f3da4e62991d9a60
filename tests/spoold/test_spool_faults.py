"""Spool under real faults: kill -9 mid-load, and a disk that really fills up."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spool_helpers import SpoolFactory, all_seqs, op

from spoold.accept.acceptor import Acceptor
from spoold.spool import Spool, SpoolFull, SpoolWriteError
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import asyncio, sys
from pathlib import Path
import structlog
from spoold.accept.acceptor import Acceptor
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex
from spoold.spool import Spool

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

async def main(directory):
    spool = Spool(directory, min_free_disk_bytes=0)
    held = spool.get_groups(1_000_000)  # taken from the queue and never acked
    print("held", sum(len(g.ops) for g in held), flush=True)
    acceptor = Acceptor(spool, RunsIndex(Path(directory) / "index.sqlite"), Ledger())
    acceptor.start()

    async def client(c):
        for k in range(1_000_000):
            seq = c * 1_000_000 + k
            event_id = f"s{seq}"
            op = {"kind": "create", "event_id": event_id, "body": {"event_id": event_id}}
            await acceptor.submit({**op, "seq": seq, "pad": "p" * 200})
            sys.stdout.write(f"{seq}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(client(c) for c in range(16)))

asyncio.run(main(sys.argv[1]))
"""


def test_kill_9_loses_no_acknowledged_operation(spool_dir: Path, tmp_path: Path) -> None:
    """SIGKILL under concurrent load: every op whose submit returned is in the spool after,
    and groups that were got but not acked are back too."""
    with Spool(spool_dir, min_free_disk_bytes=0) as spool:
        spool.put_group([op(-k) for k in range(1, 11)])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-u", str(script), str(spool_dir)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert child.stdout is not None
    acked: set[int] = set()
    deadline = time.monotonic() + 20
    try:
        assert child.stdout.readline().split() == [b"held", b"10"]
        while len(acked) < 2000 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.add(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
    acked.update(int(x) for x in rest.split())
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= 2000, "the child did not get going"
    with Spool(spool_dir, min_free_disk_bytes=0) as spool:
        stored = all_seqs(spool, max_ops=5000)
    print(f"acked={len(acked)} stored={len(stored)} lost={len(acked - set(stored))}")
    assert acked <= set(stored)
    assert stored[:10] == [-k for k in range(1, 11)]


@pytest.fixture
def tmpfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (needs root and mount)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)]
    done = subprocess.run(cmd, capture_output=True, timeout=10, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], timeout=10, check=False)


async def test_real_disk_full_fails_the_group_and_recovers(
    tmpfs_dir: Path, tmp_path: Path, make_spool: SpoolFactory
) -> None:
    """On a full filesystem waiters get SpoolFull/SpoolWriteError, nothing half-written
    stays, and writes succeed again once space is freed - no crash, no restart."""
    ballast = tmpfs_dir / "ballast"
    ballast.write_bytes(b"\0" * 2 * 1024 * 1024)
    spool = make_spool(tmpfs_dir / "spool", capacity_bytes=1 << 40)
    index = RunsIndex(tmp_path / "index.sqlite")  # off the tmpfs: the spool is under test
    acceptor = Acceptor(spool, index, Ledger(), window_s=0.001)
    acceptor.start()
    accepted, errors = 0, []
    async with asyncio.timeout(20):
        for batch in range(200):
            results = await asyncio.gather(
                *(acceptor.submit(op(batch * 8 + k, size=4000)) for k in range(8)),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            accepted += len(results) - len(errors)
            if errors:
                break
    assert errors, "the tmpfs never filled up"
    assert all(isinstance(e, (SpoolFull, SpoolWriteError)) for e in errors)
    assert spool.stats().depth_ops == accepted
    ballast.unlink()  # the operator frees space
    async with asyncio.timeout(10):
        await acceptor.submit(op(10_000))
    await acceptor.close()
    index.close()
    spool.close()
    stats = make_spool(tmpfs_dir / "spool").stats()  # counted from the rows on disk
    assert stats.depth_ops == accepted + 1


def test_disk_floor_refuses_before_the_disk_is_full(
    tmpfs_dir: Path, make_spool: SpoolFactory
) -> None:
    """With a free-disk floor the spool says full (SpoolFull) while SQLite still has room."""
    spool = make_spool(tmpfs_dir / "spool", min_free_disk_bytes=1024 * 1024)
    refused: SpoolFull | None = None
    for i in range(500):
        try:
            spool.check_capacity(8000)
        except SpoolFull as exc:
            refused = exc
            break
        spool.put_group([op(i, size=8000)])
    assert refused is not None
    assert refused.retry_after_s > 0
