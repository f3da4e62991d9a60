"""Instructions per request of the whole server, per thread, under the lifecycle load.

    python bench/server_instructions.py --rows 100000 --compare-root /tmp/base

Runs ``telemetry-server`` under ``valgrind --tool=callgrind --separate-threads=yes``
(instrumentation off until the load starts, so start-up costs nothing), on a copy of a
fleet prefill (``server_bench.prefill_fleet``), drives ``--lifecycles`` create+PATCH
lifecycles at concurrency 32 (after a warm-up), and prints the instructions each thread
spent per HTTP request: the event loop (thread 01), then the others by creation order
(on the server of late 2026: 03 the WAL checkpointer, 04 the SQLite writer).
With ``--compare-root`` the other tree's server runs the same load on its own copy first.

Why instructions: the machine is shared and wall-clock figures swing with the other
load; valgrind counts user-space instructions in every thread, repeatable to about 1%
between runs. Valgrind runs threads one at a time, so a group holds fewer writes than
on the real machine (printed): compare trees at similar writes/commit. The reaper is
off (``TELEMETRY_STALE_AFTER_S=0``), as in server_bench. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_bench
from loadgen import run_load

ROOT = Path(__file__).resolve().parent.parent


def _writes(base_url: str) -> tuple[int, int]:
    performance = server_bench.http_get_json(base_url + "/metrics", timeout=60)["performance"]
    return int(performance["write_transactions"]), int(performance["write_operations"])


def measure(root: Path, template: Path, workdir: Path, lifecycles: int, tag: str) -> None:
    """One tree's server under callgrind; prints instructions per request per thread."""
    db = workdir / f"{tag}.sqlite"
    shutil.copyfile(template, db)
    out = workdir / f"callgrind-{tag}.out"
    port = server_bench.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "TELEMETRY_LOG_LEVEL": "INFO",
        "TELEMETRY_STALE_AFTER_S": "0",
    }
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        str(db),
    ]
    base_url = f"http://127.0.0.1:{port}"
    with (workdir / f"{tag}.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                if server_bench.http_get_json(base_url + "/health", timeout=5)["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"{tag}: server not healthy under valgrind")
        lifecycle = server_bench.Lifecycle()
        run_load(base_url, lifecycle, name="warm", concurrency=32, max_ops=300, max_seconds=600)
        pid = str(process.pid)
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        before = _writes(base_url)
        result = run_load(
            base_url, lifecycle, name=tag, concurrency=32, max_ops=lifecycles, max_seconds=1800
        )
        after = _writes(base_url)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
    finally:
        process.terminate()
        process.wait(300)
    requests = result.stats().requests
    groups = max(1, after[0] - before[0])
    print(f"{tag}: {requests} requests, {(after[1] - before[1]) / groups:.1f} writes/commit")
    names = {"01": "MainThread (event loop)"}
    total = 0
    for dump in sorted(workdir.glob(f"callgrind-{tag}.out.1-*")):
        text = dump.read_text(errors="replace")
        match = re.search(r"^summary: (\d+)", text, re.MULTILINE)
        count = int(match.group(1)) if match else 0
        if count:
            thread = dump.name.rsplit("-", 1)[1]
            print(f"  thread {names.get(thread, thread)}: {count / requests / 1000:,.1f}k")
            total += count
    print(f"  all threads: {total / requests / 1000:,.1f}k instructions per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lifecycles", type=int, default=1000)
    parser.add_argument("--compare-root", type=Path, default=None)
    parser.add_argument("--prefilled", type=Path, default=None, help="prefill to reuse/keep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="server-instructions-") as tmp:
        workdir = Path(tmp)
        template = args.prefilled or workdir / "prefill.sqlite"
        if not template.exists():
            print(f"prefilling {args.rows:,} fleet rows ...", file=sys.stderr)
            server_bench.prefill_fleet(template, args.rows, datetime.now(UTC))
        if args.compare_root is not None:
            measure(args.compare_root.resolve(), template, workdir, args.lifecycles, "before")
        measure(ROOT, template, workdir, args.lifecycles, "this-tree")


if __name__ == "__main__":
    main()
