"""deploy/compose: PostgreSQL + 2 replicas + HAProxy. No Docker engine here, so the files
are checked for what would break at ``docker compose up``: every variable a replica gets
is a real server setting, the database URL names the database service and its role, the
ports and health checks agree, the load balancer's upstreams are the replicas and are
health-checked on /health, and HAProxy itself accepts its configuration (when installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import SETTINGS, ServerConfig
from server.postgres.url import parse_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
HAPROXY_CFG = COMPOSE_DIR / "haproxy.cfg"
REPLICAS = ("replica1", "replica2")
_INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?+][^}]*)?\}")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services() -> dict[str, Any]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _interpolate(value: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:?message}`` substitution, from values."""
    return _INTERPOLATION.sub(lambda match: values[match[1]], value)


def _example_variables() -> dict[str, str]:
    text = (COMPOSE_DIR / "compose.env.example").read_text()
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def _haproxy_servers() -> dict[str, str]:
    """name -> address:port of each ``server`` line of the replicas' backend."""
    backend = HAPROXY_CFG.read_text().split("backend replicas", 1)[1]
    return {
        fields[1]: fields[2]
        for fields in (line.split() for line in backend.splitlines())
        if fields and fields[0] == "server"
    }


def test_services_are_postgres_two_replicas_and_a_load_balancer() -> None:
    assert set(_services()) == {"postgres", *REPLICAS, "lb"}


@pytest.mark.parametrize("replica", REPLICAS)
def test_every_replica_variable_is_a_real_server_setting(replica: str) -> None:
    """A misspelt variable would be ignored silently by the server: none here."""
    environment = _services()[replica]["environment"]
    known = {setting.env for setting in SETTINGS}
    assert set(environment) <= known, set(environment) - known


@pytest.mark.parametrize("replica", REPLICAS)
def test_replica_settings_load_and_point_at_the_database_service(replica: str) -> None:
    """The replica's environment, interpolated as compose would from the documented
    variables, is a valid configuration on PostgreSQL: the URL names the postgres
    service, its published role, database and port."""
    services = _services()
    values = {name: "secret-from-env" for name in _example_variables()}
    environment = {
        key: _interpolate(str(value), values)
        for key, value in services[replica]["environment"].items()
    }
    config = ServerConfig.from_env(environment)
    url = config.postgres_url()
    assert url is not None
    postgres = services["postgres"]["environment"]
    parsed = parse_url(environment["TELEMETRY_DATABASE_URL"])
    assert parsed.dsn == url.dsn
    assert "@postgres:5432/" in environment["TELEMETRY_DATABASE_URL"]
    assert f"//{postgres['POSTGRES_USER']}:" in environment["TELEMETRY_DATABASE_URL"]
    assert environment["TELEMETRY_DATABASE_URL"].endswith("/" + postgres["POSTGRES_DB"])
    assert config.host == "0.0.0.0"  # reachable by the load balancer on the compose network
    assert config.auth_enabled  # the replicas take writes from other hosts: never without a token


def test_every_interpolated_variable_is_documented_and_required() -> None:
    """Each ``${NAME}`` of compose.yaml is in compose.env.example, and the secrets fail
    ``docker compose up`` when unset (``:?``) instead of starting with an empty password."""
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    used = {match[1] for match in _INTERPOLATION.finditer(text)}
    assert used == set(_example_variables())
    for name in used:
        assert re.search(rf"\$\{{{name}:\?", text), name
        assert not re.search(rf"\$\{{{name}(?::?-)", text), f"{name} has a default"


def test_ports_and_health_checks_agree() -> None:
    """Each replica listens where its health check and HAProxy look; only HAProxy is
    published, on loopback; everything waits for what it needs to be healthy."""
    services = _services()
    servers = _haproxy_servers()
    assert set(servers) == set(REPLICAS)  # the upstreams are exactly the replicas
    for replica in REPLICAS:
        service = services[replica]
        port = service["environment"]["TELEMETRY_API_PORT"]
        assert servers[replica] == f"{replica}:{port}"
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/health" in check
        assert "ports" not in service  # reached through the load balancer only
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        # compose stops with SIGTERM then SIGKILL: leave the server its whole stop deadline
        grace_s = int(service["stop_grace_period"].removesuffix("s"))
        assert grace_s >= ServerConfig().shutdown_timeout_s + 4
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    lb = services["lb"]
    assert lb["ports"] == ["127.0.0.1:8766:8766"]
    assert "bind :8766" in HAPROXY_CFG.read_text()
    assert {name: dep["condition"] for name, dep in lb["depends_on"].items()} == dict.fromkeys(
        REPLICAS, "service_healthy"
    )
    mount = next(v for v in lb["volumes"] if v.startswith("./haproxy.cfg:"))
    assert mount.endswith(":ro")


def test_load_balancer_checks_health_on_every_upstream() -> None:
    text = HAPROXY_CFG.read_text()
    backend = text.split("backend replicas", 1)[1]
    assert "option httpchk GET /health" in backend
    assert "http-check expect status 200" in backend
    assert re.search(r"^\s*default-server .*\bcheck\b", backend, re.M)


def test_the_image_builds_from_this_tree() -> None:
    """The build context and Dockerfile exist, and the image installs the PostgreSQL driver
    (pip install . takes the project's dependencies)."""
    for replica in REPLICAS:
        build = _services()[replica]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]).is_file()
    assert '"asyncpg' in (ROOT / "pyproject.toml").read_text()
    assert "pip install" in (ROOT / "deploy" / "Dockerfile").read_text()


HAPROXY = shutil.which("haproxy")


#: CI installs haproxy (.ci/run): there its absence fails the checks instead of skipping them.
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None and not os.environ.get("CI"),
    reason="haproxy is not installed (apt-get install haproxy)",
)


def _haproxy_check(config: Path) -> subprocess.CompletedProcess[str]:
    assert HAPROXY is not None, "haproxy is not installed (.ci/run installs it)"
    return subprocess.run(
        [HAPROXY, "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=config.parent,
    )


@needs_haproxy
def test_haproxy_accepts_its_configuration() -> None:
    """``haproxy -c``: valid for HAProxy itself, and its only warnings are that the
    replicas' names do not resolve outside compose (init-addr none keeps them)."""
    result = _haproxy_check(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    assert len(warnings) <= len(REPLICAS), warnings
    for line in warnings:
        assert "could not resolve address" in line, line


@needs_haproxy
def test_haproxy_check_rejects_a_broken_configuration(tmp_path: Path) -> None:
    """The check above can fail: a misspelt health-check directive is refused."""
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace("option httpchk", "option httpchek"))
    assert _haproxy_check(broken).returncode != 0
