"""The systemd units and the installer: verified by systemd itself, installed into a temporary root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from server.config import SETTINGS as SERVER_SETTINGS
from spoold.config import SETTINGS as SPOOLD_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("telemetry-server.service", "spoold.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """Each unit is valid for systemd once its ExecStart exists (here: a stand-in executable)."""
    executable = tmp_path / "bin" / unit.removesuffix(".service")
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    text = (ROOT / "systemd" / unit).read_text()
    name = "telemetry-server" if unit.startswith("telemetry") else "spoold"
    text = text.replace(f"/opt/local-telemetry/venv/bin/{name}", str(executable))
    copy = tmp_path / unit
    copy.write_text(text)
    result = verify(copy)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_unit_has_the_required_directives(unit: str) -> None:
    """Type=notify with a watchdog, restart on failure, state directory, hardening, env file."""
    text = (ROOT / "systemd" / unit).read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "DynamicUser=yes",
        "EnvironmentFile=-/etc/local-telemetry/",
        "TimeoutStopSec=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
    ):
        assert directive in text, directive


@pytest.mark.parametrize("unit", UNITS)
def test_stop_timeout_covers_the_whole_stop(unit: str) -> None:
    """TimeoutStopSec leaves 2 s beyond the daemon's default stop deadline plus the hard-stop
    grace, so systemd never has to SIGKILL a stopping daemon."""
    from server.config import ServerConfig
    from server.runtime.daemon import HARD_STOP_GRACE_S
    from spoold.config import SpooldConfig

    text = (ROOT / "systemd" / unit).read_text()
    stop_s = int(text.split("TimeoutStopSec=")[1].split("s")[0])
    deadline_s = (
        SpooldConfig().shutdown_deadline_s
        if unit == "spoold.service"
        else ServerConfig().shutdown_timeout_s
    )
    assert stop_s - 2 >= deadline_s + HARD_STOP_GRACE_S


@pytest.mark.parametrize(
    ("example", "settings"),
    [("server.env.example", SERVER_SETTINGS), ("spoold.env.example", SPOOLD_SETTINGS)],
)
def test_env_examples_document_every_setting(example: str, settings: tuple[object, ...]) -> None:
    """Every variable the daemon reads appears in its example env file, and nothing else."""
    text = (ROOT / "deploy" / example).read_text()
    names = {
        line.lstrip("#").split("=")[0]
        for line in text.splitlines()
        if "=" in line
        and line.lstrip("#")[:1].isupper()
        and line.lstrip("#").split("=")[0].isupper()
    }
    assert names == {setting.env for setting in settings}  # type: ignore[attr-defined]


INSTALL_SH = ROOT / "deploy" / "install.sh"


def install_sh(
    *args: str, destdir: Path | None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run install.sh, never starting anything; every test passes a temporary --destdir,
    except those that check a refusal happens before anything is touched (destdir None)."""
    command = ["bash", str(INSTALL_SH), *args, "--no-start"]
    if destdir is not None:
        command += ["--destdir", str(destdir)]
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("DESTDIR", None)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
    )


def _staged_install(destdir: Path) -> dict[str, Path]:
    """What an installed and used system looks like under destdir, plus bystanders."""
    paths = {
        "server_db": destdir / "var/lib/local-telemetry-server/telemetry.sqlite",
        "spool": destdir / "var/lib/private/spoold/spool.db",
        "conf_env": destdir / "etc/local-telemetry/spoold.env",
        "unit": destdir / "etc/systemd/system/spoold.service",
        "prefix_file": destdir / "opt/local-telemetry/venv/bin/spoold",
        # bystanders: --purge must leave every one of these alone
        "sibling_state": destdir / "var/lib/spoold-other/keep.db",
        "other_state": destdir / "var/lib/private/postgres/data",
        "other_conf": destdir / "etc/local-telemetry/other.conf",
        "other_unit": destdir / "etc/systemd/system/other.service",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (destdir / "var/lib/spoold").symlink_to("private/spoold")  # as DynamicUser= lays it out
    (destdir / "opt/local-telemetry/.local-telemetry-install").write_text("")
    return paths


BYSTANDERS = ("sibling_state", "other_state", "other_conf", "other_unit")


def test_purge_removes_only_our_state_under_the_destdir(tmp_path: Path) -> None:
    """--uninstall --purge --destdir removes our units, env files and state directories
    there, and nothing else: sibling directories and a file outside the destdir survive."""
    destdir = tmp_path / "root"
    paths = _staged_install(destdir)
    outside = tmp_path / "var" / "lib" / "spoold" / "outside.db"  # same layout, not under destdir
    outside.parent.mkdir(parents=True)
    outside.write_text("keep")

    result = install_sh("--uninstall", "--purge", destdir=destdir)

    assert result.returncode == 0, result.stderr
    for gone in ("server_db", "spool", "conf_env", "unit", "prefix_file"):
        assert not paths[gone].exists(), gone
    assert not (destdir / "var/lib/spoold").is_symlink()
    for kept in BYSTANDERS:
        assert paths[kept].read_text() == "x", kept
    assert outside.read_text() == "keep"


def test_purge_with_a_prefix_but_no_destdir_is_refused(tmp_path: Path) -> None:
    """--purge with a temporary --prefix and no --destdir would reach the host's /var/lib:
    it is refused (exit 2, a message naming --destdir) before anything is removed."""
    conf, units, prefix = tmp_path / "etc", tmp_path / "units", tmp_path / "opt"
    for directory in (conf, units, prefix):
        directory.mkdir()
    (conf / "spoold.env").write_text("SPOOLD_PORT=1\n")
    (units / "spoold.service").write_text("[Service]\n")
    result = install_sh(
        "--uninstall",
        "--purge",
        "--prefix",
        str(prefix),
        "--conf-dir",
        str(conf),
        "--unit-dir",
        str(units),
        destdir=None,
    )
    assert result.returncode == 2
    assert "--destdir" in result.stderr
    assert (conf / "spoold.env").exists()
    assert (units / "spoold.service").exists()


@pytest.mark.parametrize("flag", ["--conf-dir", "--unit-dir"])
def test_purge_with_any_non_default_dir_but_no_destdir_is_refused(
    tmp_path: Path, flag: str
) -> None:
    """A test (or a staged install) that moves only its conf or unit directory to a
    temporary one keeps the default prefix: without --destdir its --purge would still reach
    the host's /var/lib and /opt. Refused (exit 2) before anything is removed."""
    directory = tmp_path / "dir"
    directory.mkdir()
    keep = directory / ("spoold.env" if flag == "--conf-dir" else "spoold.service")
    keep.write_text("kept\n")
    result = install_sh("--uninstall", "--purge", flag, str(directory), destdir=None)
    assert result.returncode == 2, result.stdout
    assert "--destdir" in result.stderr
    assert keep.exists()


@pytest.mark.parametrize("bad", ["/", "relative/dir", ""])
def test_dangerous_paths_are_refused(tmp_path: Path, bad: str) -> None:
    """A prefix, conf dir or destdir of / or a relative path stops the script at once."""
    for flag in ("--prefix", "--conf-dir", "--unit-dir"):
        result = install_sh("--uninstall", "--purge", f"{flag}={bad}", destdir=tmp_path)
        assert result.returncode == 2, (flag, result.stdout)
    if bad:
        result = install_sh("--uninstall", "--purge", f"--destdir={bad}", destdir=None)
        assert result.returncode == 2, result.stdout


def test_uninstall_keeps_a_prefix_it_did_not_create(tmp_path: Path) -> None:
    """A prefix shared with other software (no install marker) loses only our venv and README."""
    destdir = tmp_path / "root"
    shared = destdir / "srv" / "shared"
    (shared / "venv" / "bin").mkdir(parents=True)
    (shared / "README.md").write_text("ours")
    (shared / "theirs.txt").write_text("keep")
    result = install_sh("--uninstall", "--prefix", "/srv/shared", destdir=destdir)
    assert result.returncode == 0, result.stderr
    assert not (shared / "venv").exists()
    assert not (shared / "README.md").exists()
    assert (shared / "theirs.txt").read_text() == "keep"


def test_no_test_runs_install_sh_without_a_destdir() -> None:
    """Every test that runs install.sh goes through install_sh(), which adds --destdir (the
    refusal tests pass None on purpose and expect exit 2 before anything is touched)."""
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text()
        # A file that names the script as a string, other than to read it, may run it.
        runs_it = any(
            ('"install.sh"' in line or "'install.sh'" in line) and ".read_text(" not in line
            for line in text.splitlines()
        )
        if not runs_it or path.name == "test_deploy.py":
            continue
        assert "--destdir" in text, f"{path} runs install.sh without --destdir"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_install_into_a_temporary_root_then_uninstall(tmp_path: Path) -> None:
    """install.sh builds a working venv and units, is idempotent, keeps config; uninstall keeps data unless --purge."""
    destdir = tmp_path / "root"
    prefix, units, conf = Path("/opt/lt"), Path("/units"), Path("/etc/lt")
    flags = ["--role", "both", "--prefix", str(prefix), "--unit-dir", str(units)]
    flags += ["--conf-dir", str(conf)]
    staged_prefix, staged_units, staged_conf = (
        destdir / str(p).lstrip("/") for p in (prefix, units, conf)
    )
    first = install_sh(*flags, destdir=destdir, timeout_s=600)
    assert first.returncode == 0, first.stderr
    version = subprocess.run(
        [str(staged_prefix / "venv" / "bin" / "telemetry-server"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.stdout.strip() == "3.0.0"
    for unit in UNITS:
        text = (staged_units / unit).read_text()
        assert f"ExecStart={prefix}/venv/bin/" in text
        assert f"EnvironmentFile=-{conf}/" in text
        if ANALYZE is not None:
            # verify the unit as it will run: its paths resolved inside the staging root
            resolved = tmp_path / unit
            resolved.write_text(text.replace(f"{prefix}/", f"{staged_prefix}/"))
            result = verify(resolved)
            assert result.returncode == 0, result.stderr
    server_env = staged_conf / "server.env"
    assert stat.S_IMODE(server_env.stat().st_mode) == 0o600
    server_env.write_text("TELEMETRY_API_PORT=9999\n")
    state = destdir / "var/lib/local-telemetry-server/telemetry.sqlite"
    state.parent.mkdir(parents=True)
    state.write_text("data")

    again = install_sh(*flags, destdir=destdir, timeout_s=600)
    assert again.returncode == 0, again.stderr
    assert server_env.read_text() == "TELEMETRY_API_PORT=9999\n"  # an operator's config is kept

    uninstall = install_sh(*flags, "--uninstall", destdir=destdir)
    assert uninstall.returncode == 0, uninstall.stderr
    assert not (staged_units / "spoold.service").exists()
    assert not staged_prefix.exists()
    assert server_env.exists()
    assert state.exists()
    purge = install_sh(*flags, "--uninstall", "--purge", destdir=destdir)
    assert purge.returncode == 0, purge.stderr
    assert not server_env.exists()
    assert not state.exists()
