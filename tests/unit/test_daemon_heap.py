"""The daemon runtime keeps start-up objects out of later garbage collections (gc.freeze)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ports import free_port

SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, os, signal, sys
    from aiohttp import web
    from server.runtime import daemon

    seen = {}

    async def state(app):
        app["start_up_state"] = [{"n": i} for i in range(20_000)]  # loaded at start-up
        yield

    async def probe(app):
        async def later():
            await asyncio.sleep(0.2)
            seen["frozen"] = gc.get_freeze_count()
            os.kill(os.getpid(), signal.SIGTERM)
        task = asyncio.get_running_loop().create_task(later())
        yield
        task.cancel()

    app = web.Application()
    app.cleanup_ctx.append(state)
    app.cleanup_ctx.append(probe)
    asyncio.run(daemon.serve(app, host="127.0.0.1", port=int(sys.argv[1]),
                             shutdown_timeout_s=2, name="t"))
    print("frozen", seen["frozen"])
    """
)


def test_serve_freezes_what_start_up_created() -> None:
    """Once start-up is done (cleanup contexts entered), its objects are in the permanent
    generation: full collections under load no longer walk them."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.split("frozen", 1)[1].split()[0])
    assert frozen >= 20_000, done.stdout
