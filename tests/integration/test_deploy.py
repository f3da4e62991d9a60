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


def test_stop_timeout_covers_the_drain_deadline() -> None:
    """spoold's TimeoutStopSec leaves room for SPOOLD_SHUTDOWN_DEADLINE_S plus in-flight work."""
    from spoold.config import SpooldConfig

    text = (ROOT / "systemd" / "spoold.service").read_text()
    stop_s = int(text.split("TimeoutStopSec=")[1].split("s")[0])
    assert stop_s >= SpooldConfig().shutdown_deadline_s + 5


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


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_install_into_a_temporary_root_then_uninstall(tmp_path: Path) -> None:
    """install.sh builds a working venv and units, is idempotent, keeps config; uninstall keeps data unless --purge."""
    prefix, units, conf = tmp_path / "opt" / "lt", tmp_path / "units", tmp_path / "etc"
    command = [
        "bash",
        str(ROOT / "deploy" / "install.sh"),
        "--role",
        "both",
        "--prefix",
        str(prefix),
        "--unit-dir",
        str(units),
        "--conf-dir",
        str(conf),
        "--no-start",
    ]
    env = {**os.environ, "PYTHON": sys.executable}
    first = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert first.returncode == 0, first.stderr
    version = subprocess.run(
        [str(prefix / "venv" / "bin" / "telemetry-server"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.stdout.strip() == "3.0.0"
    for unit in UNITS:
        text = (units / unit).read_text()
        assert f"ExecStart={prefix}/venv/bin/" in text
        assert f"EnvironmentFile=-{conf}/" in text
        if ANALYZE is not None:
            result = verify(units / unit)
            assert result.returncode == 0, result.stderr
    server_env = conf / "server.env"
    assert stat.S_IMODE(server_env.stat().st_mode) == 0o600
    server_env.write_text("TELEMETRY_API_PORT=9999\n")

    again = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert again.returncode == 0, again.stderr
    assert server_env.read_text() == "TELEMETRY_API_PORT=9999\n"  # an operator's config is kept

    uninstall = subprocess.run(
        [*command, "--uninstall"], capture_output=True, text=True, timeout=120, check=False
    )
    assert uninstall.returncode == 0, uninstall.stderr
    assert not (units / "spoold.service").exists()
    assert not prefix.exists()
    assert server_env.exists()
    purge = subprocess.run(
        [*command, "--uninstall", "--purge"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert purge.returncode == 0, purge.stderr
    assert not server_env.exists()
