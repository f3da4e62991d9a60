"""Run as a script by test_export_close_race.py: close an export while another thread
reads a chunk, many times. A process that survives prints ``ok N``; the bug this guards
(the connection closed under a running statement) ends it with SIGSEGV."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from server.contract.models import RunCreate, RunQuery
from server.storage.connection import open_writer
from server.storage.export import Export
from server.storage.runs import insert_params, insert_rows
from server.storage.schema import migrate

ROUNDS = 30
RUNS = 4000


def build(path: Path) -> None:
    conn = open_writer(path, journal_mode="WAL", synchronous="NORMAL", busy_timeout_ms=2000)
    migrate(conn)
    now = datetime.now(UTC).isoformat()
    rows = [
        insert_params(
            RunCreate(
                event_id=f"e-{i}",
                run_id=f"r-{i}",
                agent_name=f"agent-{i % 50}",
                job_type="crawl",
                start_time=now,
                error_details="x" * 2000,
            ),
            now,
        )
        for i in range(RUNS)
    ]
    conn.execute("BEGIN")
    insert_rows(conn, rows)
    conn.execute("COMMIT")
    conn.close()


def one_round(path: Path, delay_s: float) -> None:
    export = Export.open(path, RunQuery(), "ndjson", busy_timeout_ms=2000, chunk_rows=RUNS)
    reader = threading.Thread(target=export.next_chunk)
    reader.start()
    time.sleep(delay_s)
    export.close()  # from this thread, while the chunk may still be read
    reader.join(timeout=30)
    assert not reader.is_alive()
    export.close()  # idempotent


def main() -> None:
    path = Path(sys.argv[1])
    build(path)
    for n in range(ROUNDS):
        one_round(path, delay_s=(n % 10) * 0.002)
    print(f"ok {ROUNDS}")


if __name__ == "__main__":
    main()
