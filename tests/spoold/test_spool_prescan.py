"""The spool's read of every row, started before spoold's imports (``spoold.spool.prescan``):
used at open only when the live rows are still the very ones it read, never a reason to
miss damage or drifted totals, and actually used by ``spoold serve``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from spool_helpers import SpoolFactory, op
from structlog.testing import capture_logs

from spoold.spool import SpoolLockedError, layout, prescan, totals
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BOUND_S = 30.0


@pytest.fixture(autouse=True)
def _no_leftover_reads() -> Iterator[None]:
    prescan.forget()
    yield
    prescan.forget()


def _filled(make_spool: SpoolFactory, groups: int = 5) -> None:
    spool = make_spool()
    for i in range(groups):
        spool.put_group([op(10 * i + k, size=5000) for k in range(i + 1)])
    spool.close()


def _opened_with(make_spool: SpoolFactory) -> list[dict[str, object]]:
    with capture_logs() as logs:
        make_spool().close()
    return [e for e in logs if e["event"] in ("spool_rows_read", "spool_totals_corrected")]


def test_a_read_of_the_same_rows_stands_for_the_read_at_open(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    _filled(make_spool)
    prescan.start(spool_dir)
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        assert prescan.take(spool_dir) == totals.scan(conn)
    prescan.start(spool_dir)  # taken once: a new read for the next open

    events = _opened_with(make_spool)

    assert events == [{"event": "spool_rows_read", "log_level": "info", "earlier_read_used": True}]
    assert prescan.take(spool_dir) is None  # the open took it


def test_rows_put_after_the_read_make_the_open_read_them_all(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    _filled(make_spool)
    prescan.start(spool_dir)
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        read_before = totals.scan(conn)
    _read_done(spool_dir)
    # The rows change between the read and the open (nothing of spoold's does this while
    # the read holds the lock; the check must not depend on that): the same count and
    # bytes, other rows.
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        (first,) = conn.execute('SELECT MIN(_id) FROM "ack_queue_spool"').fetchone()
        conn.execute('UPDATE "ack_queue_spool" SET _id = _id + 1000 WHERE _id = ?', (first,))
        conn.commit()
        assert totals.scan(conn).totals() == read_before.totals() != (0, 0, 0)

    events = _opened_with(make_spool)

    assert events == [{"event": "spool_rows_read", "log_level": "info", "earlier_read_used": False}]


def test_drifted_totals_are_corrected_from_an_earlier_read_too(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    _filled(make_spool)
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        conn.execute(f"UPDATE {totals.TABLE} SET ops = ops + 5, groups = groups + 1")
        conn.commit()
    prescan.start(spool_dir)

    events = _opened_with(make_spool)

    assert [e["event"] for e in events] == ["spool_totals_corrected", "spool_rows_read"]
    assert events[1]["earlier_read_used"] is True
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        assert totals.read(conn) == totals.count(conn)


def test_a_group_acked_and_another_put_make_the_open_read_them_all(
    make_spool: SpoolFactory, spool_dir: Path
) -> None:
    _filled(make_spool)
    prescan.start(spool_dir)
    _read_done(spool_dir)
    read_before = prescan._started[spool_dir.resolve()].found
    assert read_before is not None
    # After the read, the rows change as a drain and an agent would change them: the
    # oldest group gone, one as large put (through the file: the read holds the lock).
    with closing(sqlite3.connect(spool_dir / layout.DB_FILE)) as conn:
        first, data = conn.execute(
            'SELECT _id, data FROM "ack_queue_spool" ORDER BY _id LIMIT 1'
        ).fetchone()
        conn.execute('DELETE FROM "ack_queue_spool" WHERE _id = ?', (first,))
        conn.execute(
            'INSERT INTO "ack_queue_spool" (data, timestamp, status) VALUES (?, ?, 1)',
            (data, time.time()),
        )
        conn.commit()
        assert totals.scan(conn).totals() == read_before.totals()  # same totals, other rows

    events = _opened_with(make_spool)

    assert events == [{"event": "spool_rows_read", "log_level": "info", "earlier_read_used": False}]


def test_the_read_holds_the_directory_until_the_open_takes_it(
    spool_dir: Path, make_spool: SpoolFactory
) -> None:
    _filled(make_spool)
    prescan.start(spool_dir)
    _read_done(spool_dir)
    with pytest.raises(SpoolLockedError):
        layout.acquire_lock(spool_dir)  # another process's spoold would stop here
    assert prescan.take(spool_dir) is not None
    layout.release_lock(layout.acquire_lock(spool_dir))


def test_no_read_of_a_directory_another_process_holds(
    spool_dir: Path, make_spool: SpoolFactory
) -> None:
    _filled(make_spool)
    held = layout.acquire_lock(spool_dir)
    try:
        prescan.start(spool_dir)
        assert prescan.take(spool_dir) is None
    finally:
        layout.release_lock(held)


def test_no_spool_file_no_read(tmp_path: Path) -> None:
    prescan.start(tmp_path)
    assert prescan.take(tmp_path) is None


def test_a_damaged_spool_is_found_by_the_open_as_before(
    spool_dir: Path, make_spool: SpoolFactory
) -> None:
    spool_dir.mkdir(parents=True, exist_ok=True)
    (spool_dir / layout.DB_FILE).write_bytes(b"not a database at all" * 1000)
    prescan.start(spool_dir)
    _read_done(spool_dir)

    spool = make_spool()

    assert spool.quarantined_to is not None
    assert spool.stats().depth_ops == 0
    spool.close()


def _read_done(spool_dir: Path) -> None:
    """Wait for the thread's read (a test's look inside: the open would take it)."""
    started = prescan._started[spool_dir.resolve()]
    started.thread.join(BOUND_S)
    assert not started.thread.is_alive()


def _wait_for(pattern: str, log: Path, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if pattern in line:
                entry: dict[str, object] = json.loads(line)
                return entry
        assert process.poll() is None, log.read_text(errors="replace")
        time.sleep(0.05)
    raise AssertionError(f"no {pattern} in {log.read_text(errors='replace')}")


@pytest.mark.timeout(90)
def test_spoold_serve_reads_its_backlog_before_its_imports(
    make_spool: SpoolFactory, spool_dir: Path, tmp_path: Path
) -> None:
    _filled(make_spool, groups=20)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLD_", "TELEMETRY_"))}
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "spoold.log"
    argv = [sys.executable, "-m", "spoold", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(free_port()), "--upstream", f"http://127.0.0.1:{free_port()}"]
    argv += ["--spool-dir", str(spool_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        entry = _wait_for('"spool_rows_read"', log, process)
        opened = _wait_for('"spool_opened"', log, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert entry["earlier_read_used"] is True
    assert opened["ops"] == sum(range(1, 21))
