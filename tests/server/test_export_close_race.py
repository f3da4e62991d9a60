"""An export closed while a chunk is being read (the client left, the handler was
cancelled) must end the read first: closing a SQLite connection under a running
statement crashed the whole server (SIGSEGV seen in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("export_close_race.py")
ROOT = Path(__file__).resolve().parents[2]


def test_closing_an_export_mid_chunk_never_crashes(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "race.sqlite")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok 30"
