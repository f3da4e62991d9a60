"""The dead-letter CLI: replay walks every page with no cap, never moves a run back to an
older state, and the operator commands find the spool the installed daemon uses."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from sidecar_helpers import answer, make_run, proxy, refuse_runs

from spoold.cli import commands as cli
from spoold.cli.locate import (
    DEFAULT_ENV_FILE,
    DEFAULT_STATE_DIRS,
    UNIT_STATE_DIRECTORY,
    SpoolNotFound,
    locate_spool_dir,
)
from spoold.spool import DeadLetterStore
from spoold.state.storage import DEAD_LETTER_FILE

REPO = Path(__file__).resolve().parents[2]


def run_cli(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    out = io.StringIO()
    code = fn(*args, out=out, **kwargs)
    text = out.getvalue()
    return code, orjson.loads(text) if text else None


def create_op(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "create",
        "event_id": run["event_id"],
        "body": run,
        "accepted_at": "2026-01-12T10:30:00Z",
    }


def invalid_op(n: int) -> dict[str, Any]:
    """An update that no longer validates: a status that is not a string, or no event_id."""
    if n % 2:
        return {"kind": "update", "body": {"status": "success"}, "accepted_at": f"{n}"}
    return {"kind": "update", "event_id": f"gone-{n}", "body": {"status": 123}, "accepted_at": ""}


def dead_letters(spool_dir: Path, ops: list[dict[str, Any]]) -> list[int]:
    with DeadLetterStore(spool_dir / DEAD_LETTER_FILE) as store:
        return store.add_many([(op, "refused by the test", 422) for op in ops])


def test_replay_walks_past_a_first_page_of_invalid_letters(spool_dir: Path) -> None:
    """600 letters that no longer validate, then 3 good ones: the good ones are replayed,
    the invalid ones kept and counted, and the exit code says something was left."""
    good = [make_run() for _ in range(3)]
    dead_letters(spool_dir, [invalid_op(n) for n in range(600)] + [create_op(r) for r in good])
    code, report = run_cli(cli.deadletter_replay, spool_dir, None)
    assert report["replayed"] == 3
    assert report["left_invalid"] == 600
    assert code == 1
    _, stats = run_cli(cli.spool_stats, spool_dir)
    assert stats["depth"] == 3
    assert stats["dead_letters"] == 600


def test_replay_of_explicit_ids_has_no_cap(spool_dir: Path) -> None:
    """700 ids named on the command line: all 700 are replayed (not the first 500); an id
    that does not exist is reported, not silently ignored."""
    ids = dead_letters(spool_dir, [create_op(make_run()) for _ in range(700)])
    code, report = run_cli(cli.deadletter_replay, spool_dir, [*ids, 999_999])
    assert report["replayed"] == 700
    assert report["not_found"] == [999_999]
    assert code == 1
    _, stats = run_cli(cli.spool_stats, spool_dir)
    assert stats["depth"] == 700
    assert stats["dead_letters"] == 0


@pytest.mark.parametrize("newer", ["delivered", "queued"])
async def test_replay_never_moves_a_run_back_to_an_older_state(
    newer: str, fake: Any, central: Any, make_sidecar: Any, spool_dir: Path
) -> None:
    """Two updates of a run are dead-lettered, then a newer one is accepted (and delivered, or
    still queued when spoold stops). After replay the server holds the newer status and
    counters; only the old field nothing newer changed is applied; the update whose every
    field was overtaken is superseded."""
    run = make_run()
    sidecar = await make_sidecar(fake.url, batch_size=1)
    assert (await sidecar.create(run)).status == 201
    await sidecar.wait_drained()
    url = f"/api/v1/runs/{run['event_id']}"
    fake.batch_default = refuse_runs({run["event_id"]})
    assert (await sidecar.patch(url, json={"status": "running"})).status == 200
    old = {"status": "running", "items_succeeded": 1, "items_discovered": 7}
    assert (await sidecar.patch(url, json=old)).status == 200
    health = await sidecar.wait_drained()
    assert health["spool"]["dead_letters"] == 2
    fake.batch_default = proxy if newer == "delivered" else answer(503)
    newest = {"status": "success", "items_succeeded": 3, "output_summary": "done"}
    assert (await sidecar.patch(url, json=newest)).status == 200
    if newer == "delivered":
        await sidecar.wait_drained()
    await sidecar.close()

    code, report = run_cli(cli.deadletter_replay, spool_dir, None)
    assert code == 0
    assert (report["replayed"], report["superseded"], report["fields_dropped"]) == (1, 1, 3)

    fake.batch_default = proxy
    sidecar = await make_sidecar(fake.url)
    await sidecar.wait_drained()
    stored = await central.api.run(run["event_id"])
    assert stored["status"] == "success"
    assert stored["items_succeeded"] == 3
    assert stored["output_summary"] == "done"
    assert stored["items_discovered"] == 7  # the old field nothing newer changed


def test_replay_keeps_a_letter_the_server_would_refuse_again_and_says_why(
    tmp_path: Path,
) -> None:
    """A letter dead-lettered because the server refused its size or depth (413/400) is not
    put back to be refused again: replay applies the daemon's door checks, with the limits
    from its env file, keeps the letter, says why and exits 1; the good letter goes."""
    spool_dir = tmp_path / "spool"
    big = make_run()
    big["error_details"] = "x" * 40_000  # fits the default 5 MiB, not the configured cap
    deep = make_run()
    nested: dict[str, Any] = {}
    for _ in range(30):  # 30 levels: fits a body (<= 32), not once wrapped in the envelope
        nested = {"a": nested}
    deep["metrics_json"] = nested
    good = make_run()
    dead_letters(spool_dir, [create_op(big), create_op(deep), create_op(good)])
    env_file = tmp_path / "spoold.env"
    env_file.write_text(f"SPOOLD_SPOOL_DIR={spool_dir}\nSPOOLD_UPSTREAM_MAX_BODY_BYTES=32768\n")
    result = _cli("--env-file", str(env_file), "deadletter", "replay", cwd=tmp_path, env={})
    assert result.returncode == 1, result.stderr
    report = orjson.loads(result.stdout)
    assert report["replayed"] == 1
    assert report["left_refused"] == 2
    assert "2 dead letters would be refused by the server again" in result.stderr
    _, stats = run_cli(cli.spool_stats, spool_dir)
    assert stats["depth"] == 1
    assert stats["dead_letters"] == 2


# ---- finding the spool ------------------------------------------------------------------


def _spool_at(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "spool.db").write_bytes(b"")
    return path


def test_the_first_place_that_names_a_directory_decides(tmp_path: Path) -> None:
    """--spool-dir, then SPOOLD_SPOOL_DIR, then the env file, then STATE_DIRECTORY, then the
    unit's state directory (the daemon's order); each answer says where it came from."""
    flag, env_dir, state, from_file, unit_dir = (
        _spool_at(tmp_path / name) for name in ("flag", "env", "state", "file", "unit")
    )
    env_file = tmp_path / "spoold.env"
    env_file.write_text(
        f'# the daemon\'s settings\nSPOOLD_PORT=8765\nSPOOLD_SPOOL_DIR="{from_file}"\n'
    )
    full = {"SPOOLD_SPOOL_DIR": str(env_dir), "STATE_DIRECTORY": f"{state}:/other"}

    def where(flag_value: Path | None, env: dict[str, str], file: Path) -> tuple[Path, str]:
        found = locate_spool_dir(flag_value, env, env_file=file, state_dirs=[unit_dir])
        return found.path, found.source

    assert where(flag, full, env_file) == (flag, "--spool-dir")
    assert where(None, full, env_file) == (env_dir, "SPOOLD_SPOOL_DIR")
    assert where(None, {"STATE_DIRECTORY": full["STATE_DIRECTORY"]}, env_file) == (
        from_file,
        str(env_file),
    )
    no_file = tmp_path / "absent.env"
    assert where(None, {"STATE_DIRECTORY": full["STATE_DIRECTORY"]}, no_file) == (
        state,
        "STATE_DIRECTORY",
    )
    assert where(None, {}, tmp_path / "absent.env") == (unit_dir, "the unit's StateDirectory")


def test_a_named_directory_without_a_spool_is_refused_not_created(tmp_path: Path) -> None:
    """A configured directory that holds no spool stops the command; nothing is created."""
    empty = tmp_path / "empty"
    with pytest.raises(SpoolNotFound, match="holds no spool"):
        locate_spool_dir(empty, {}, env_file=tmp_path / "none.env", state_dirs=[])
    assert not empty.exists()
    with pytest.raises(SpoolNotFound, match="--spool-dir"):
        locate_spool_dir(None, {}, env_file=tmp_path / "none.env", state_dirs=[tmp_path / "x"])


def test_the_defaults_match_the_unit_and_the_installer() -> None:
    """The env file and state directory looked at are the ones the unit and install.sh use."""
    unit = (REPO / "systemd" / "spoold.service").read_text()
    assert f"StateDirectory={UNIT_STATE_DIRECTORY}\n" in unit
    assert f"EnvironmentFile=-{DEFAULT_ENV_FILE}\n" in unit
    installer = (REPO / "deploy" / "install.sh").read_text()
    assert f"CONF_DIR={DEFAULT_ENV_FILE.parent}\n" in installer
    assert [str(path) for path in DEFAULT_STATE_DIRS] == [
        "/var/lib/spoold",
        "/var/lib/private/spoold",
    ]


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in ("SPOOLD_SPOOL_DIR", "STATE_DIRECTORY")
    }
    return subprocess.run(
        [sys.executable, "-m", "spoold", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, **env, "PYTHONPATH": str(REPO)},
        check=False,
    )


def test_the_command_reads_the_daemons_env_file_and_says_so(tmp_path: Path) -> None:
    """`spoold deadletter list` with no flag uses SPOOLD_SPOOL_DIR from the env file and
    names the directory on stderr; stdout stays JSON."""
    spool_dir = tmp_path / "configured-spool"
    dead_letters(spool_dir, [create_op(make_run())])
    env_file = tmp_path / "spoold.env"
    env_file.write_text(f"SPOOLD_SPOOL_DIR={spool_dir}\n")
    result = _cli("--env-file", str(env_file), "deadletter", "list", cwd=tmp_path, env={})
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["total"] == 1
    assert f"using spool directory {spool_dir} (from {env_file})" in result.stderr


def test_with_nothing_configured_the_command_refuses_and_creates_no_spool(tmp_path: Path) -> None:
    """No flag, no variable, no env file, no state directory: exit 2 with a message saying
    what to do, and no ./spool appears in the working directory."""
    if any(path.exists() for path in DEFAULT_STATE_DIRS):
        pytest.skip("this host has a spoold state directory")
    cwd = tmp_path / str(uuid.uuid4())
    cwd.mkdir()
    for command in (["deadletter", "list"], ["deadletter", "purge"], ["spool", "stats"]):
        result = _cli("--env-file", str(tmp_path / "none.env"), *command, cwd=cwd, env={})
        assert result.returncode == 2, (command, result.stdout)
        assert "no spool directory configured or found" in result.stderr
        assert "--spool-dir" in result.stderr
        assert list(cwd.iterdir()) == []
