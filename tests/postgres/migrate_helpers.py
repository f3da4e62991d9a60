"""Helpers of the ``telemetry-server migrate`` tests: SQLite files with many runs, the
real command as a subprocess, and the target's rows read back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from server.contract.models import RunCreate
from server.storage.database import Database, StorageSettings
from server.storage.runs import _INSERT_SQL, insert_params

ROOT = Path(__file__).resolve().parents[2]
STATUSES = ("success", "failure", "running", "partial", "timeout", "cancelled")


async def new_database(path: Path) -> None:
    """An empty server database at this version's schema (the server made it)."""
    database = Database.open(StorageSettings(path=path))
    await database.close()


def fill(path: Path, rows: int, *, first: int = 0, agents: int = 50) -> None:
    """``rows`` runs straight through the server's insert statement (fast), ids in
    order, agents and statuses skewed, some free text hostile. ``path``: a server
    database (``new_database``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        batch = []
        for n in range(first, first + rows):
            run = RunCreate.model_validate(
                {
                    "event_id": f"ev-{n:07d}",
                    "run_id": f"run-{n}",
                    "agent_name": f"agent-{(n * n) % agents:03d}",
                    "job_type": f"job-{n % 7}",
                    "status": STATUSES[n % 11 % 6] if n % 11 < 6 else "success",
                    "start_time": f"2026-03-{1 + n % 28:02d}T10:00:00Z",
                    "error_details": "nul\x00here" if n % 97 == 0 else None,
                    "output_summary": "émoji 🚀 " * (n % 5),
                    "items_discovered": n % 1000,
                    "metrics_json": {"n": n, "tokens": [n, n + 1]},
                }
            )
            batch.append(insert_params(run, f"2026-03-{1 + n % 28:02d}T10:00:01.000000+00:00"))
        conn.executemany(_INSERT_SQL, batch)
        conn.execute("COMMIT")
    finally:
        conn.close()


def migrate_command(
    source: Path | str, url: str, *extra: str, timeout_s: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """``python -m server migrate`` as an operator runs it; its exit, stdout, stderr."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "migrate",
            "--from",
            f"sqlite:{source}",
            "--to",
            url,
            *list(extra),
        ],
        cwd=ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def start_migrate(source: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    """The command started, not waited for (the caller stops it by its PID)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "migrate",
            "--from",
            f"sqlite:{source}",
            "--to",
            url,
            *extra,
        ],
        cwd=ROOT,
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def command_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TELEMETRY_") and key != "DATABASE_URL"
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


async def target_rows(url: str) -> list[tuple[Any, ...]]:
    """Every run on the target, all columns, in id order."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch("SELECT * FROM agent_runs ORDER BY id")]
    finally:
        await conn.close()


async def scalar(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def row(url: str, sql: str, *args: Any) -> tuple[Any, ...]:
    """One row of a query (all its columns read in one snapshot)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        found = await conn.fetchrow(sql, *args)
    finally:
        await conn.close()
    assert found is not None, sql
    return tuple(found)


async def execute(url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()
