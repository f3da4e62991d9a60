"""`telemetry-server backup`: a consistent online copy while writes continue, and its restore."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from daemons import running_server

pytestmark = pytest.mark.integration

WRITERS = 8


def run(event_id: str) -> dict[str, str]:
    return {
        "event_id": event_id,
        "run_id": "r",
        "agent_name": "backup-agent",
        "job_type": "j",
        "start_time": "2026-01-12T10:30:00Z",
    }


async def test_backup_during_writes_is_consistent_and_restorable(tmp_path: Path) -> None:
    """A backup taken under load opens, passes integrity_check, holds every run acked before it, and restores."""
    db = tmp_path / "server.sqlite"
    backup_file = tmp_path / "backups" / "copy.sqlite"
    acked: list[str] = []
    with running_server(tmp_path, db_path=db) as server:
        async with aiohttp.ClientSession(server.url) as http:
            stop = asyncio.Event()

            async def writer(worker: int) -> None:
                for n in range(100_000):  # bounded; stopped by the event long before
                    if stop.is_set():
                        return
                    event_id = f"w{worker}-{n}"
                    async with http.post("/api/v1/runs", json=run(event_id)) as response:
                        if response.status == 201:
                            acked.append(event_id)

            tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
            for _ in range(200):  # let some writes land first (bounded wait)
                if len(acked) >= 200:
                    break
                await asyncio.sleep(0.02)
            acked_before = list(acked)
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "server", "backup", str(backup_file), "--db", str(db)],
                capture_output=True,
                timeout=60,
                check=False,
            )
            written_during = len(acked) - len(acked_before)
            stop.set()
            await asyncio.gather(*tasks)
        assert result.returncode == 0, result.stderr.decode()
        assert b'"runs"' in result.stdout
    assert written_during > 0, "writes must continue while the backup runs"
    with sqlite3.connect(backup_file) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in copy.execute("SELECT event_id FROM agent_runs")}
    assert set(acked_before) <= stored

    restored = tmp_path / "restored" / "telemetry.sqlite"
    restored.parent.mkdir()
    shutil.copyfile(backup_file, restored)
    with running_server(tmp_path, db_path=restored) as server:
        async with (
            aiohttp.ClientSession(server.url) as http,
            http.get(f"/api/v1/runs/{acked_before[0]}") as response,
        ):
            assert response.status == 200
            assert (await response.json())["agent_name"] == "backup-agent"


def test_backup_of_a_missing_database_fails_cleanly(tmp_path: Path) -> None:
    """No database: exit 1 with a message, no partial file left behind."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "backup",
            str(tmp_path / "out.sqlite"),
            "--db",
            str(tmp_path / "absent.sqlite"),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert b"no database" in result.stderr
    assert not list(tmp_path.glob("out.sqlite*"))
