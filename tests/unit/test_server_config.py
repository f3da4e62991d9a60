"""server.config: defaults, environment parsing, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.config import SETTINGS, ConfigError, ServerConfig


def test_defaults():
    """Defaults: 127.0.0.1:8766, data/telemetry.sqlite, WAL, auth and rate limiting off."""
    config = ServerConfig.from_env({})
    assert config.host == "127.0.0.1"
    assert config.port == 8766
    assert config.db_path == Path("data/telemetry.sqlite")
    assert config.journal_mode == "WAL"
    assert config.auth_enabled is False
    assert config.rate_limit_enabled is False
    assert config == ServerConfig()


def test_reads_the_reference_variable_names():
    """The reference implementation's variable names configure the server."""
    config = ServerConfig.from_env(
        {
            "TELEMETRY_API_HOST": "0.0.0.0",
            "TELEMETRY_API_PORT": "9000",
            "TELEMETRY_DB_PATH": "/tmp/x.sqlite",
            "TELEMETRY_API_AUTH_ENABLED": "true",
            "TELEMETRY_API_AUTH_TOKEN": "tok",
            "TELEMETRY_RATE_LIMIT_ENABLED": "1",
            "TELEMETRY_RATE_LIMIT_RPM": "120",
            "TELEMETRY_LOG_LEVEL": "debug",
            "TELEMETRY_DB_JOURNAL_MODE": "delete",
            "TELEMETRY_DB_SYNCHRONOUS": "normal",
        }
    )
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert config.db_path == Path("/tmp/x.sqlite")
    assert config.auth_enabled is True
    assert config.auth_token == "tok"
    assert config.rate_limit_enabled is True
    assert config.rate_limit_rpm == 120
    assert config.log_level == "DEBUG"
    assert config.journal_mode == "DELETE"
    assert config.synchronous == "NORMAL"


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_spellings(raw):
    """Common true spellings enable a switch."""
    assert ServerConfig.from_env({"TELEMETRY_RATE_LIMIT_ENABLED": raw}).rate_limit_enabled


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", ""])
def test_false_spellings(raw):
    """Common false spellings (and empty) disable a switch."""
    assert not ServerConfig.from_env({"TELEMETRY_RATE_LIMIT_ENABLED": raw}).rate_limit_enabled


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TELEMETRY_API_PORT", "abc"),
        ("TELEMETRY_API_PORT", "70000"),
        ("TELEMETRY_API_PORT", "-1"),
        ("TELEMETRY_API_PORT", ""),
        ("TELEMETRY_API_AUTH_ENABLED", "maybe"),
        ("TELEMETRY_RATE_LIMIT_ENABLED", "2"),
        ("TELEMETRY_RATE_LIMIT_RPM", "0"),
        ("TELEMETRY_RATE_LIMIT_RPM", "fast"),
        ("TELEMETRY_RATE_LIMIT_MAX_CLIENTS", "0"),
        ("TELEMETRY_DB_JOURNAL_MODE", "wall"),
        ("TELEMETRY_DB_SYNCHRONOUS", "sometimes"),
        ("TELEMETRY_DB_BUSY_TIMEOUT_MS", "-5"),
        ("TELEMETRY_LOG_LEVEL", "chatty"),
        ("TELEMETRY_MAX_BODY_BYTES", "10"),
        ("TELEMETRY_MAX_JSON_DEPTH", "1"),
        ("TELEMETRY_BATCH_MAX_ITEMS", "0"),
        ("TELEMETRY_METADATA_CACHE_TTL_S", "soon"),
        ("TELEMETRY_SHUTDOWN_TIMEOUT_S", "-1"),
        ("TELEMETRY_DB_WAL_RESTART_PAGES", "-1"),
        ("TELEMETRY_DB_WAL_RESTART_PAGES", "10"),
        ("TELEMETRY_DB_WAL_RESTART_PAGES", "lots"),
        ("TELEMETRY_DB_WAL_RESTART_PAGES", "2000000"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(variable, raw):
    """A bad value raises ConfigError whose message names the environment variable."""
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({variable: raw})
    assert variable in str(caught.value)


def test_wal_restart_pages_default_and_zero_for_sqlite_checkpoints():
    """Checkpoints off the writer by default (8,000 pages); 0 is SQLite's own behaviour."""
    assert ServerConfig.from_env({}).wal_restart_pages == 8000
    assert ServerConfig.from_env({"TELEMETRY_DB_WAL_RESTART_PAGES": "0"}).wal_restart_pages == 0
    assert ServerConfig.from_env({"TELEMETRY_DB_WAL_RESTART_PAGES": "64"}).wal_restart_pages == 64


def test_auth_without_token_names_the_token_variable():
    """Enabling auth without a token is a ConfigError naming TELEMETRY_API_AUTH_TOKEN."""
    with pytest.raises(ConfigError, match="TELEMETRY_API_AUTH_TOKEN"):
        ServerConfig.from_env({"TELEMETRY_API_AUTH_ENABLED": "true"})
    with pytest.raises(ConfigError, match="TELEMETRY_API_AUTH_TOKEN"):
        ServerConfig.from_env(
            {"TELEMETRY_API_AUTH_ENABLED": "true", "TELEMETRY_API_AUTH_TOKEN": ""}
        )


def test_protect_reads_without_auth_is_refused_not_silently_open():
    """PROTECT_READS on with auth off would protect nothing (there is no token to check):
    a ConfigError naming both variables, never a server that looks protected and is not."""
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"TELEMETRY_API_AUTH_PROTECT_READS": "true"})
    assert "TELEMETRY_API_AUTH_PROTECT_READS" in str(caught.value)
    assert "TELEMETRY_API_AUTH_ENABLED" in str(caught.value)
    protected = ServerConfig.from_env(
        {
            "TELEMETRY_API_AUTH_PROTECT_READS": "true",
            "TELEMETRY_API_AUTH_ENABLED": "true",
            "TELEMETRY_API_AUTH_TOKEN": "tok",
        }
    )
    assert protected.auth_protect_reads is True


def test_overrides_win_over_environment_and_none_is_ignored():
    """CLI overrides replace environment values; a None override leaves them alone."""
    env = {"TELEMETRY_API_PORT": "9000", "TELEMETRY_API_HOST": "0.0.0.0"}
    config = ServerConfig.from_env(env, port=9100, host=None, db_path=Path("/tmp/y.sqlite"))
    assert config.port == 9100
    assert config.host == "0.0.0.0"
    assert config.db_path == Path("/tmp/y.sqlite")


def test_bad_override_names_the_variable():
    """A bad CLI override is reported with the matching variable name."""
    with pytest.raises(ConfigError, match="TELEMETRY_API_PORT"):
        ServerConfig.from_env({}, port=99999)


def test_unrelated_variables_are_ignored():
    """Variables outside SETTINGS do not affect or break the config."""
    assert ServerConfig.from_env({"PATH": "/bin", "TELEMETRY_API_URL": "x"}) == ServerConfig()


def test_config_is_frozen_and_token_not_in_repr():
    """The config cannot be mutated, and its repr never shows the token."""
    config = ServerConfig(auth_enabled=True, auth_token="very-secret")
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]
    assert "very-secret" not in repr(config)


def test_every_setting_maps_to_a_field():
    """Each documented setting names a real config field, once."""
    fields = [setting.field for setting in SETTINGS]
    assert len(fields) == len(set(fields))
    assert set(fields) <= set(ServerConfig.model_fields)
    envs = [setting.env for setting in SETTINGS]
    assert all(env.startswith("TELEMETRY_") for env in envs)


# ---- stale runs ----------------------------------------------------------------------------


def test_stale_defaults_and_policy():
    config = ServerConfig.from_env({})
    assert (config.stale_after_s, config.stale_after_by_job) == (21_600, {})
    assert (config.sidecar_presence_s, config.sidecar_lost_s) == (120.0, 86_400.0)
    assert config.reaper_interval_s == 30.0
    policy = ServerConfig.from_env(
        {
            "TELEMETRY_STALE_AFTER_S": "0",
            "TELEMETRY_STALE_AFTER_BY_JOB": " nightly-etl=7200, crawl=600 ,,off=0 ",
            "TELEMETRY_REAPER_INTERVAL_S": "0.05",
        }
    ).stale_policy()
    assert policy.default_s == 0
    assert policy.by_job == (("crawl", 600), ("nightly-etl", 7200), ("off", 0))


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("crawl", "'crawl' is not job=seconds"),
        ("crawl=", "'crawl=' is not job=seconds"),
        ("=600", "'=600' is not job=seconds"),
        ("crawl=10m", "'crawl=10m' is not job=seconds"),
        ("crawl=-1", "'crawl=-1' is not job=seconds"),
        ("crawl=1.5", "'crawl=1.5' is not job=seconds"),
        ("crawl=600;etl=60", "not job=seconds"),
        ("crawl=600,crawl=60", "given twice"),
        ("crawl=2592001", "at most 2592000"),
        ("a/b=60", "must not contain '/'"),
    ],
)
def test_a_bad_stale_after_by_job_names_the_variable_and_the_pair(raw, named):
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_env({"TELEMETRY_STALE_AFTER_BY_JOB": raw})
    assert "TELEMETRY_STALE_AFTER_BY_JOB" in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("TELEMETRY_STALE_AFTER_S", "-1"),
        ("TELEMETRY_STALE_AFTER_S", "6h"),
        ("TELEMETRY_STALE_AFTER_S", "2592001"),
        ("TELEMETRY_SIDECAR_PRESENCE_S", "0"),
        ("TELEMETRY_SIDECAR_LOST_S", "-5"),
        ("TELEMETRY_REAPER_INTERVAL_S", "0"),
        ("TELEMETRY_REAPER_INTERVAL_S", "soon"),
    ],
)
def test_bad_stale_settings_name_the_variable(variable, raw):
    with pytest.raises(ConfigError, match=variable):
        ServerConfig.from_env({variable: raw})


def test_a_sidecar_is_lost_only_after_it_stops_being_present():
    with pytest.raises(ConfigError, match="TELEMETRY_SIDECAR_LOST_S must be more than"):
        ServerConfig.from_env(
            {"TELEMETRY_SIDECAR_PRESENCE_S": "600", "TELEMETRY_SIDECAR_LOST_S": "600"}
        )
