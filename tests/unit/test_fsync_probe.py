"""bench/fsync_probe.py: the independent fsync probe the write benchmarks run beside each
round, so a slow round can be told apart from a stalled disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from fsync_probe import FsyncProbe


def test_the_probe_records_real_fsyncs_and_stops_by_pid(tmp_path: Path) -> None:
    started = time.time()
    with FsyncProbe(tmp_path, interval_ms=5) as probe:
        pid = probe._process.pid if probe._process else 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and probe.window(started, time.time()).samples < 5:
            time.sleep(0.05)
    window = probe.window(started, time.time())
    assert window.samples >= 5
    assert 0 < window.worst_ms < 20_000
    assert started <= window.worst_at <= time.time()
    assert probe.data.stat().st_size == 16 * 4096  # its own preallocated file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:  # a zombie would still answer; a live probe must not
        assert Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_window_counts_only_its_own_samples_and_skips_a_torn_line(tmp_path: Path) -> None:
    probe = FsyncProbe(tmp_path)
    probe.out.write_text("100.000 1.50\n101.000 250.00\n102.000 3.00\n103.400 900.00\n104.0")
    assert probe.window(100.5, 102.4).samples == 2
    assert probe.window(100.5, 102.4).worst_ms == 250.0
    assert probe.window(101.5, 102.4).worst_ms == 3.0
    # An fsync that began in the window and returned after it (a stall at its end) counts.
    assert probe.window(101.5, 102.6).worst_ms == 900.0
    assert probe.window(200, 300).samples == 0
    assert probe.window(200, 300).describe() == "no probe samples"


def test_the_probe_stops_when_the_benchmark_is_killed(tmp_path: Path) -> None:
    """A benchmark killed with SIGKILL cannot stop its probe: the probe sees its parent
    gone and stops by itself instead of syncing for hours."""
    launcher = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from fsync_probe import FsyncProbe;"
        "p = FsyncProbe(__import__('pathlib').Path(sys.argv[2]), interval_ms=5).__enter__();"
        "print(p._process.pid, flush=True); time.sleep(60)"
    )
    bench = Path(__file__).resolve().parents[2] / "bench"
    parent = subprocess.Popen(
        [sys.executable, "-c", launcher, str(bench), str(tmp_path)], stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        probe_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{probe_pid}").exists():
        stat = Path(f"/proc/{probe_pid}/stat").read_text().split()
        if stat[2] == "Z":
            break
        time.sleep(0.05)
    else:
        assert not Path(f"/proc/{probe_pid}").exists()


def test_a_probe_switched_off_starts_nothing(tmp_path: Path) -> None:
    with FsyncProbe(tmp_path, enabled=False) as probe:
        assert probe._process is None
        window = probe.window(0, time.time() + 1)
    assert window.samples == 0
    assert not probe.out.exists()
