"""bench/sqlite_envelope.py end to end at tiny sizes (``--quick``), so the README's "when
to switch" envelope can always be measured again: a real server, real HTTP, the real
backup command and a restore. Speed is not asserted (the bench measures it), only that
every step ran and every figure came out."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "sqlite_envelope.py"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_envelope_bench_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--rows", "1500", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr[-3000:]
    assert re.search(r"^size: +1,500 runs in [\d,]+ MiB = [\d,]+ bytes/run$", out, re.M), out
    assert re.search(r"batch [\d,]+ runs/s = [\d,]+ M runs/day", out), out
    assert re.search(r"lifecycle create\+PATCH [\d,]+ runs/s", out), out
    assert re.search(r"^server CPU: [\d.]+ ms per 100 batched runs", out, re.M), out
    # the backup holds the prefill and what the ingest added; the restored server serves it
    backup = re.search(r"^backup: +([\d,]+) runs", out, re.M)
    assert backup is not None, out
    backed_up = int(backup[1].replace(",", ""))
    assert backed_up >= 1500 + 6 * 100
    assert re.search(r"first list page \(100 runs\)", out), out
    assert (tmp_path / "restored.sqlite").stat().st_size > 0
