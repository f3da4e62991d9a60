"""systemd/telemetry-server-pg@.service, the example unit of a replica on PostgreSQL (one
instance per port): verified by systemd itself, held to the same directives as the SQLite
unit, and its start-up guard (no database URL: refuse, never a silent SQLite file) run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from server.config import SETTINGS, ServerConfig
from server.runtime.daemon import HARD_STOP_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "telemetry-server-pg@.service"
ANALYZE = shutil.which("systemd-analyze")
EXECUTABLE = "/opt/local-telemetry/venv/bin/telemetry-server"


def _directives(name: str) -> list[str]:
    prefix = name + "="
    return [
        line[len(prefix) :] for line in UNIT.read_text().splitlines() if line.startswith(prefix)
    ]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_an_instance_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """An instance (port 8766) of the template is valid once its ExecStart exists."""
    assert ANALYZE is not None
    executable = tmp_path / "bin" / "telemetry-server"
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\nexit 0\n")
    executable.chmod(0o755)
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace(EXECUTABLE, str(executable)))
    result = subprocess.run(
        [ANALYZE, "verify", str(tmp_path / "telemetry-server-pg@8766.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_has_the_required_directives() -> None:
    """The SQLite unit's supervision and hardening, and the instance's port."""
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=",
        "DynamicUser=yes",
        "EnvironmentFile=-/etc/local-telemetry/server.env",
        "TimeoutStopSec=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        f"ExecStart={EXECUTABLE} serve",
    ):
        assert directive in text, directive
    # the instance's port comes after the environment files, so it wins over them
    assert _directives("Environment").index("TELEMETRY_API_PORT=%i") == 0
    assert text.index("Environment=TELEMETRY_API_PORT=%i") > text.rindex("EnvironmentFile=")


def test_every_variable_the_unit_sets_is_a_real_setting() -> None:
    known = {setting.env for setting in SETTINGS} | {"PYTHONUNBUFFERED"}
    for assignment in _directives("Environment"):
        assert assignment.split("=", 1)[0] in known, assignment


def test_stop_timeout_covers_the_whole_stop() -> None:
    stop_s = int(_directives("TimeoutStopSec")[0].removesuffix("s"))
    assert stop_s - 2 >= ServerConfig().shutdown_timeout_s + HARD_STOP_GRACE_S


def _guard(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStartPre as systemd runs it for instance 8766 ($$ is a literal $)."""
    (line,) = _directives("ExecStartPre")
    argv = shlex.split(line.replace("$$", "$").replace("%i", "8766"))
    base = {
        k: v for k, v in os.environ.items() if k not in ("TELEMETRY_DATABASE_URL", "DATABASE_URL")
    }
    return subprocess.run(
        argv, env={**base, **env}, capture_output=True, text=True, timeout=30, check=False
    )


def test_start_is_refused_without_a_database_url() -> None:
    refused = _guard({})
    assert refused.returncode != 0
    assert "TELEMETRY_DATABASE_URL" in refused.stderr
    assert "8766" in refused.stderr
    assert _guard({"TELEMETRY_DATABASE_URL": ""}).returncode != 0


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "sqlite:///var/lib/telemetry.sqlite"},  # the reference's own form
        {"DATABASE_URL": "postgresql+asyncpg://u:pw@h/d"},
        {"TELEMETRY_DATABASE_URL": "", "DATABASE_URL": "mysql://u:pw@h/d"},
        {"TELEMETRY_DATABASE_URL": "/var/lib/telemetry.sqlite"},
    ],
)
def test_start_is_refused_with_a_url_that_is_not_postgresql(env: dict[str, str]) -> None:
    """A DATABASE_URL the server would leave to SQLite (each replica on a file of its
    own, silently) stops this unit at its guard."""
    refused = _guard(env)
    assert refused.returncode != 0
    assert "TELEMETRY_DATABASE_URL=postgresql://" in refused.stderr


@pytest.mark.parametrize("name", ["TELEMETRY_DATABASE_URL", "DATABASE_URL"])
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_start_goes_on_with_a_database_url(name: str, scheme: str) -> None:
    allowed = _guard({name: f"{scheme}://telemetry:pw@127.0.0.1:5432/telemetry"})
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr == ""
