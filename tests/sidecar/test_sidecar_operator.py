"""The operator CLI, called in-process on a stopped daemon's spool: dead letters and spool stats."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from sidecar_helpers import make_run, refuse_runs

from spoold.cli import commands as cli

REPO = Path(__file__).resolve().parents[2]


def run_cli(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    out = io.StringIO()
    code = fn(*args, out=out, **kwargs)
    text = out.getvalue()
    return code, orjson.loads(text) if text else None


@pytest.fixture
async def poisoned(fake, make_sidecar, spool_dir: Path) -> dict[str, Any]:
    """A stopped spoold whose spool holds two dead letters (a refused run's create and update)."""
    poison, good = make_run(), make_run()
    fake.batch_default = refuse_runs({poison["event_id"]})
    sidecar = await make_sidecar(fake.url, batch_size=1)
    for run in (poison, good):
        await sidecar.create(run)
    path = f"/api/v1/runs/{poison['event_id']}"
    assert (await sidecar.patch(path, json={"status": "success"})).status == 200
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 2
    await sidecar.close()
    return poison


async def test_deadletter_list_shows_each_refused_operation(poisoned, spool_dir):
    """list prints total and one summary per dead letter: id, event_id, kind, error, status."""
    code, listing = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    assert code == 0
    assert listing["total"] == 2
    assert [item["kind"] for item in listing["items"]] == ["create", "update"]
    for item in listing["items"]:
        assert item["event_id"] == poisoned["event_id"]
        assert item["error"] == "refused by the test"
        assert item["status"] == 422
        assert item["attempts"] == 1
    code, page = run_cli(cli.deadletter_list, spool_dir, limit=1, offset=1)
    assert page["total"] == 2
    assert [i["id"] for i in page["items"]] == [listing["items"][1]["id"]]


async def test_deadletter_show_prints_the_operation(poisoned, spool_dir, capsys):
    """show prints the whole stored operation; an unknown id exits 1 with a message."""
    _, listing = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    update_id = listing["items"][1]["id"]
    code, shown = run_cli(cli.deadletter_show, spool_dir, update_id)
    assert code == 0
    assert shown["operation"]["kind"] == "update"
    assert shown["operation"]["event_id"] == poisoned["event_id"]
    assert shown["operation"]["body"] == {"status": "success"}
    code, nothing = run_cli(cli.deadletter_show, spool_dir, 999_999)
    assert code == 1
    assert nothing is None
    assert "999999" in capsys.readouterr().err


async def test_deadletter_purge_by_id_then_all(poisoned, spool_dir):
    """purge with ids removes those; purge without ids removes the rest."""
    _, listing = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    first = listing["items"][0]["id"]
    assert run_cli(cli.deadletter_purge, spool_dir, [first, 424242]) == (0, {"purged": 1})
    assert run_cli(cli.deadletter_purge, spool_dir, None) == (0, {"purged": 1})
    _, after = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    assert after == {"total": 0, "items": []}


async def test_deadletter_replay_requeues_and_the_restarted_daemon_delivers(
    poisoned, spool_dir, make_sidecar, central
):
    """replay moves dead letters back to the spool; spoold then delivers them and counts add up."""
    code, replayed = run_cli(cli.deadletter_replay, spool_dir, None)
    assert code == 0
    assert replayed["replayed"] == 2
    assert replayed["left_invalid"] == replayed["superseded"] == 0
    _, stats = run_cli(cli.spool_stats, spool_dir)
    assert stats["depth"] == 2
    assert stats["dead_letters"] == 0
    sidecar = await make_sidecar(central.url)
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 0
    counters = health["counters"]
    assert counters["accepted"] == counters["forwarded"] + counters["dead_lettered"]
    stored = await central.api.run(poisoned["event_id"])
    assert stored["status"] == "success"


async def test_deadletter_replay_of_chosen_ids_only(poisoned, spool_dir):
    """replay with ids moves only those letters; the others stay in the store."""
    _, listing = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    first = listing["items"][0]["id"]
    code, replayed = run_cli(cli.deadletter_replay, spool_dir, [first])
    assert code == 0
    assert (replayed["replayed"], replayed["left_invalid"], replayed["not_found"]) == (1, 0, [])
    _, after = run_cli(cli.deadletter_list, spool_dir, limit=100, offset=0)
    assert [item["id"] for item in after["items"]] == [listing["items"][1]["id"]]
    _, stats = run_cli(cli.spool_stats, spool_dir)
    assert stats["depth"] == 1


async def test_deadletter_replay_refuses_while_spoold_owns_the_spool(
    poisoned, spool_dir, make_sidecar, dead_url, capsys
):
    """replay exits 2 with a message while a running spoold holds the spool lock; nothing moves."""
    sidecar = await make_sidecar(dead_url)
    code, output = run_cli(cli.deadletter_replay, spool_dir, None)
    assert (code, output) == (2, None)
    assert "stop it" in capsys.readouterr().err
    health = await sidecar.health()
    assert health["spool"]["dead_letters"] == 2
    assert health["spool"]["depth"] == 0
    code, listing = run_cli(cli.deadletter_list, spool_dir, limit=10, offset=0)
    assert code == 0
    assert listing["total"] == 2


async def test_spool_stats_on_a_stopped_daemon(dead_url, make_sidecar, spool_dir):
    """spool stats reports depth, bytes, age and the counters of a stopped spoold's spool."""
    sidecar = await make_sidecar(dead_url)
    for _ in range(3):
        await sidecar.create(make_run())
    live = (await sidecar.health())["spool"]
    await sidecar.close()
    code, stats = run_cli(cli.spool_stats, spool_dir)
    assert code == 0
    assert stats["depth"] == 3
    assert stats["bytes"] == live["bytes"]
    assert stats["oldest_age_s"] >= 0
    assert stats["dead_letters"] == 0
    assert stats["counters"]["accepted"] == 3
    assert stats["counters"]["forwarded"] == 0


async def test_spool_stats_of_an_empty_directory(tmp_path):
    """spool stats on a directory spoold never used reports an empty spool, exit 0."""
    code, stats = run_cli(cli.spool_stats, tmp_path / "never-used")
    assert code == 0
    assert stats["depth"] == 0
    assert stats["bytes"] == 0


async def test_the_spoold_command_reaches_the_operator_functions(poisoned, spool_dir):
    """`python -m spoold --spool-dir D deadletter list` prints the listing, exit 0."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spoold",
        "--spool-dir",
        str(spool_dir),
        "deadletter",
        "list",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err
    assert orjson.loads(out)["total"] == 2
