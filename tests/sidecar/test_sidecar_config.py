"""SpooldConfig.from_env: bad values name their SPOOLD_* variable; the systemd state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spoold.config import SETTINGS, ConfigError, SpooldConfig


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SPOOLD_PORT", "eighty"),
        ("SPOOLD_PORT", "70000"),
        ("SPOOLD_UPSTREAM_URL", "ftp://server:8766"),
        ("SPOOLD_UPSTREAM_URL", "127.0.0.1:8766"),
        ("SPOOLD_MAX_SPOOL_MB", "0"),
        ("SPOOLD_MAX_SPOOL_MB", "lots"),
        ("SPOOLD_MIN_FREE_DISK_MB", "-1"),
        ("SPOOLD_BATCH_SIZE", "0"),
        ("SPOOLD_BATCH_SIZE", "2.5"),
        ("SPOOLD_GROUP_WINDOW_MS", "1000"),
        ("SPOOLD_SHUTDOWN_DEADLINE_S", "-3"),
        ("SPOOLD_UPSTREAM_TIMEOUT_S", "0"),
        ("SPOOLD_LOOKUP_TIMEOUT_S", "never"),
        ("SPOOLD_BACKOFF_BASE_S", "0"),
        ("SPOOLD_BACKOFF_CAP_S", "-1"),
        ("SPOOLD_MAX_BODY_BYTES", "10"),
        ("SPOOLD_LOG_LEVEL", "chatty"),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_variable(name, value):
    """Each bad environment value raises ConfigError whose message names that variable."""
    with pytest.raises(ConfigError) as caught:
        SpooldConfig.from_env({name: value})
    assert name in str(caught.value)


def test_every_setting_is_loaded_from_its_variable(tmp_path):
    """Good values of every SPOOLD_* variable land in the config, converted."""
    env = {
        "SPOOLD_HOST": "127.0.0.1",
        "SPOOLD_PORT": "9001",
        "SPOOLD_UPSTREAM_URL": "http://127.0.0.1:9002/",
        "SPOOLD_UPSTREAM_TOKEN": "tok",
        "SPOOLD_SPOOL_DIR": str(tmp_path / "s"),
        "SPOOLD_MAX_SPOOL_MB": "1.5",
        "SPOOLD_BATCH_SIZE": "250",
        "SPOOLD_SHUTDOWN_DEADLINE_S": "3",
        "SPOOLD_LOG_LEVEL": "debug",
    }
    config = SpooldConfig.from_env(env)
    assert config.port == 9001
    assert config.upstream_url == "http://127.0.0.1:9002"
    assert config.upstream_token == "tok"
    assert config.spool_dir == tmp_path / "s"
    assert config.max_spool_bytes == int(1.5 * 1024 * 1024)
    assert config.batch_size == 250
    assert config.shutdown_deadline_s == 3
    assert config.log_level == "DEBUG"
    assert "tok" not in repr(config)


def test_every_documented_variable_maps_to_a_field():
    """Each SETTINGS entry is a SPOOLD_* variable bound to a real config field."""
    for setting in SETTINGS:
        assert setting.env.startswith("SPOOLD_")
        assert setting.field in SpooldConfig.model_fields


def test_state_directory_is_the_spool_dir_when_spoold_spool_dir_is_unset():
    """Under systemd, $STATE_DIRECTORY (its first entry) is the default spool directory."""
    assert SpooldConfig.from_env({"STATE_DIRECTORY": "/var/lib/spoold"}).spool_dir == Path(
        "/var/lib/spoold"
    )
    both = SpooldConfig.from_env({"STATE_DIRECTORY": "/var/lib/spoold:/var/lib/other"})
    assert both.spool_dir == Path("/var/lib/spoold")


def test_explicit_spool_dir_wins_over_state_directory():
    """SPOOLD_SPOOL_DIR, or the --spool-dir flag, takes precedence over $STATE_DIRECTORY."""
    env = {"STATE_DIRECTORY": "/var/lib/spoold", "SPOOLD_SPOOL_DIR": "/srv/spool"}
    assert SpooldConfig.from_env(env).spool_dir == Path("/srv/spool")
    flag = SpooldConfig.from_env({"STATE_DIRECTORY": "/var/lib/spoold"}, spool_dir=Path("/x"))
    assert flag.spool_dir == Path("/x")
    assert SpooldConfig.from_env({}).spool_dir == Path("spool")


def test_flags_override_the_environment():
    """Non-None overrides (CLI flags) replace environment values; None ones do not."""
    config = SpooldConfig.from_env(
        {"SPOOLD_PORT": "9001", "SPOOLD_UPSTREAM_URL": "http://127.0.0.1:1"},
        port=9100,
        upstream_url=None,
    )
    assert config.port == 9100
    assert config.upstream_url == "http://127.0.0.1:1"


def test_the_daemon_exits_2_naming_a_bad_variable(tmp_path):
    """`spoold` with a bad SPOOLD_* value exits 2 with a message naming it, serving nothing."""
    env = {"PATH": "/usr/bin:/bin", "SPOOLD_MAX_SPOOL_MB": "-5", "SPOOLD_SPOOL_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "spoold", "spool", "stats"],
        capture_output=True,
        timeout=30,
        check=False,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2
    assert b"SPOOLD_MAX_SPOOL_MB" in done.stderr
    assert b"Traceback" not in done.stderr
