"""An independent fsync probe: is a slow request the server's, or the disk's?

    python bench/fsync_probe.py --file /tmp/x/probe.dat --out /tmp/x/probe.log --seconds 60

Every ``--interval-ms`` it overwrites 4 KiB of its own small, preallocated file and
fdatasyncs it, and appends ``<unix time> <milliseconds>`` to ``--out``. Nothing else
shares that file, so a slow sample is the device's or the filesystem's: on this
machine (a Firecracker VM) the virtual disk sometimes completes nothing for 0.5-1 s
with requests in flight, and every fsync on it, the server's COMMIT included, waits.
The benchmarks run it beside each round (``FsyncProbe``) and quote its worst sample in
the same window next to the round's own maximum latency.

It runs as a process of its own, so it takes no GIL from the load generator; the
benchmark stops it by PID.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

PAGE = 4096
#: The probe's file: 16 pages, overwritten in turn (no allocation, no metadata to journal).
FILE_PAGES = 16
#: A sample this slow counts as ``slow``: the latency targets' p99.
SLOW_MS = 25.0


@dataclass(frozen=True)
class ProbeWindow:
    """The probe's samples within one round."""

    samples: int
    worst_ms: float
    worst_at: float  # unix time the worst sample ended
    slow: int  # samples over SLOW_MS

    def describe(self) -> str:
        if not self.samples:
            return "no probe samples"
        at = time.strftime("%H:%M:%S", time.gmtime(self.worst_at))
        return (
            f"{self.worst_ms:.1f} ms at {at} UTC, {self.slow} of {self.samples} over {SLOW_MS:g} ms"
        )


class FsyncProbe:
    """The probe as a subprocess; ``window`` reads its samples between two instants."""

    def __init__(
        self,
        workdir: Path,
        *,
        interval_ms: float = 20.0,
        seconds: float = 7200.0,
        enabled: bool = True,
    ):
        #: Off (``--no-disk-probe``): nothing runs, and every window is empty. The probe
        #: adds 50 small fsyncs a second to the disk it measures.
        self.enabled = enabled
        self.data = workdir / "fsync-probe.dat"
        self.out = workdir / "fsync-probe.log"
        self._argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--file",
            str(self.data),
            "--out",
            str(self.out),
            "--interval-ms",
            str(interval_ms),
            "--seconds",
            str(seconds),
            "--parent",
            str(os.getpid()),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FsyncProbe:
        if self.enabled:
            self._process = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def window(self, started: float, ended: float, wait_s: float = 3.0) -> ProbeWindow:
        """The samples that overlap the window from ``started`` to ``ended`` (unix times).
        It first waits (up to ``wait_s``) for a sample that ended after ``ended``: an fsync
        stalled at the end of the window is logged only once it returns."""
        if not self.enabled:
            return ProbeWindow(0, math.nan, math.nan, 0)
        deadline = time.monotonic() + wait_s
        while True:
            lines = self._lines()
            if self._process is None or self._process.poll() is not None:
                break  # no more samples will come
            if (lines and _ended_at(lines[-1]) > ended) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        samples, slow, worst, worst_at = 0, 0, math.nan, math.nan
        for line in lines:
            parts = line.split()
            try:
                at, ms = float(parts[0]), float(parts[1])
            except (IndexError, ValueError):
                continue  # the line being written
            if len(parts) != 2:
                continue
            if started <= at and at - ms / 1e3 <= ended:  # overlaps the window
                samples += 1
                slow += ms > SLOW_MS
                if not worst >= ms:  # also replaces NaN
                    worst, worst_at = ms, at
        return ProbeWindow(samples, worst, worst_at, slow)

    def _lines(self) -> list[str]:
        try:
            return self.out.read_text().splitlines()
        except OSError:
            return []


def _ended_at(line: str) -> float:
    """When a logged sample ended (0 for a line being written)."""
    parts = line.split()
    try:
        return float(parts[0]) if len(parts) == 2 else 0.0
    except ValueError:
        return 0.0


def probe(file: Path, out: Path, interval_s: float, seconds: float, parent: int) -> None:
    """The loop: write a page, fdatasync, log how long; until SIGTERM, ``seconds``, or
    ``parent`` (the benchmark's PID) is no longer this process's parent."""
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\0" * PAGE * FILE_PAGES, 0)
        os.fsync(fd)
        page = os.urandom(PAGE)
        deadline = time.monotonic() + seconds
        with out.open("a", buffering=1) as log:
            turn = 0
            # Also stops when the benchmark that started it is gone (killed with SIGKILL).
            while not stopping and time.monotonic() < deadline and os.getppid() == parent:
                started = time.perf_counter()
                os.pwrite(fd, page, (turn % FILE_PAGES) * PAGE)
                os.fdatasync(fd)
                took = time.perf_counter() - started
                log.write(f"{time.time():.3f} {took * 1e3:.2f}\n")
                turn += 1
                time.sleep(max(interval_s - took, 0.0))
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--parent", type=int, default=os.getppid(), help="stop once it is gone")
    args = parser.parse_args()
    probe(args.file, args.out, args.interval_ms / 1e3, args.seconds, args.parent)


if __name__ == "__main__":
    main()
