"""TLS end to end with real processes: both listeners over HTTPS, spoold's upstream verified,
clear start-up errors, and the warnings of a daemon that listens beyond loopback.

Certificates come from a throw-away CA made with ``trustme``; nothing uses the system
trust store except where a test checks that it does not trust that CA. Traffic goes to
127.0.0.1 only (a daemon bound to 0.0.0.0 is still reached through 127.0.0.1).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from daemons import Daemon, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))
from procs import (
    Reaper,
    create_body,
    log_events,
    new_event_id,
    server_rows,
    start_server,
    start_spoold,
    wait_until,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    """PEM files in a temporary directory, and a client context trusting the CA."""

    ca: Path
    cert: Path  # for 127.0.0.1 and localhost
    key: Path
    other_ca: Path  # a CA that signed none of these
    wrong_host_cert: Path  # signed by ca, for telemetry.example only
    wrong_host_key: Path
    client: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    good = ca.issue_cert("127.0.0.1", "localhost")
    wrong_host = ca.issue_cert("telemetry.example")
    paths = {
        name: directory / f"{name}.pem"
        for name in ("ca", "cert", "key", "other_ca", "wrong_host_cert", "wrong_host_key")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    for blob in good.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    good.private_key_pem.write_to_path(str(paths["key"]))
    for blob in wrong_host.cert_chain_pems:
        blob.write_to_path(str(paths["wrong_host_cert"]), append=True)
    wrong_host.private_key_pem.write_to_path(str(paths["wrong_host_key"]))
    client = ssl.create_default_context(cafile=str(paths["ca"]))
    return Pki(client=client, **paths)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    procs = Reaper()
    try:
        yield procs
    finally:
        procs.stop_all()


def server_tls_env(pki: Pki, *, wrong_host: bool = False) -> dict[str, str]:
    cert, key = (pki.wrong_host_cert, pki.wrong_host_key) if wrong_host else (pki.cert, pki.key)
    return {"TELEMETRY_TLS_CERT_FILE": str(cert), "TELEMETRY_TLS_KEY_FILE": str(key)}


def https_server(
    reaper: Reaper,
    tmp_path: Path,
    pki: Pki,
    *,
    port: int | None = None,
    wrong_host: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Daemon:
    """A real server over HTTPS; readiness is checked trusting the certificate it serves."""
    ready = pki.client
    if wrong_host:  # the name is wrong on purpose: check readiness without the name check
        ready = ssl.create_default_context(cafile=str(pki.ca))
        ready.check_hostname = False
    daemon = start_server(
        reaper,
        tmp_path,
        port=port or free_port(),
        db=tmp_path / "server.sqlite",
        env={**server_tls_env(pki, wrong_host=wrong_host), **(extra_env or {})},
        client_ssl=ready,
    )
    return dataclasses.replace(daemon, client_ssl=pki.client)


def get_json(url: str, context: ssl.SSLContext | None = None) -> tuple[int | None, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"null")
    except OSError:
        return None, None


def spoold_health(spoold: Daemon) -> dict[str, Any]:
    status, body = get_json(spoold.url + "/health", spoold.client_ssl)
    assert status == 200, (status, body)
    assert isinstance(body, dict)
    return body


def no_traceback(daemon: Daemon) -> None:
    assert "Traceback" not in daemon.log(), daemon.log()[-3000:]


async def post_runs(base: str, count: int, context: ssl.SSLContext | bool = True) -> list[str]:
    """POST count runs, then PATCH each to success; return their event ids (all acked)."""
    ids = [new_event_id() for _ in range(count)]
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(ssl=context)) as http:
        for event_id in ids:
            created = await http.post("/api/v1/runs", json=create_body(event_id))
            assert created.status == 201, await created.text()
            done = await http.patch(
                f"/api/v1/runs/{event_id}",
                json={
                    "status": "success",
                    "end_time": "2026-01-12T10:35:00Z",
                    "items_succeeded": 7,
                },
            )
            assert done.status in (200, 202), await done.text()
    return ids


# ---- the server over HTTPS --------------------------------------------------------------


async def test_server_speaks_https_to_a_client_that_trusts_its_ca(
    reaper: Reaper, tmp_path: Path, pki: Pki
) -> None:
    server = https_server(reaper, tmp_path, pki)
    assert server.url.startswith("https://")
    ids = await post_runs(server.url, 2, pki.client)
    async with aiohttp.ClientSession(
        server.url, connector=aiohttp.TCPConnector(ssl=pki.client)
    ) as http:
        one = await http.get(f"/api/v1/runs/{ids[0]}")
        assert one.status == 200
        assert (await one.json())["status"] == "success"
        listed = await http.get("/api/v1/runs", params={"agent_name": "fault-agent"})
        assert listed.status == 200
        assert {run["event_id"] for run in await listed.json()} == set(ids)
    # A client that does not trust the CA is refused by its own verification.
    async with aiohttp.ClientSession() as untrusting:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await untrusting.get(f"{server.url}/health")
    no_traceback(server)


def test_plain_http_to_the_tls_port_fails_cleanly(reaper: Reaper, tmp_path: Path, pki: Pki) -> None:
    """No answer in clear text, no hang, no traceback; the server keeps serving HTTPS."""
    server = https_server(reaper, tmp_path, pki)
    for _ in range(3):
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain_get(server.port, "/health")
    assert get_json(server.url + "/health", pki.client)[0] == 200
    assert server.process.poll() is None
    no_traceback(server)


def plain_get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def run_module(
    module: str, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("env_of", "message"),
    [
        (
            lambda p: {"TELEMETRY_TLS_CERT_FILE": str(p.cert)},
            "TELEMETRY_TLS_CERT_FILE is set but TELEMETRY_TLS_KEY_FILE is not",
        ),
        (
            lambda p: {"TELEMETRY_TLS_KEY_FILE": str(p.key)},
            "TELEMETRY_TLS_KEY_FILE is set but TELEMETRY_TLS_CERT_FILE is not",
        ),
        (
            lambda p: {
                "TELEMETRY_TLS_CERT_FILE": str(p.cert),
                "TELEMETRY_TLS_KEY_FILE": str(p.ca.parent / "missing-key.pem"),
            },
            "cannot read the private key",
        ),
        (
            lambda p: {
                "TELEMETRY_TLS_CERT_FILE": str(p.cert),
                "TELEMETRY_TLS_KEY_FILE": str(p.wrong_host_key),
            },
            "does not match the certificate",
        ),
        (
            lambda p: {"TELEMETRY_TLS_CERT_FILE": str(p.ca), "TELEMETRY_TLS_KEY_FILE": str(p.ca)},
            "cannot load the certificate",
        ),
    ],
    ids=["cert-alone", "key-alone", "missing-key", "mismatched-key", "not-a-key"],
)
def test_server_refuses_to_start_with_unusable_tls_settings(
    tmp_path: Path, pki: Pki, env_of: Any, message: str
) -> None:
    """One clear line on stderr and exit status 2; never a traceback, never a plain-HTTP start."""
    port = free_port()
    result = run_module(
        "server", ["--port", str(port), "--db", str(tmp_path / "s.sqlite")], env_of(pki), tmp_path
    )
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "server_listening" not in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPOOLD_TLS_CERT_FILE": "{cert}"}, "SPOOLD_TLS_CERT_FILE is set but"),
        (
            {"SPOOLD_UPSTREAM_URL": "https://127.0.0.1:1", "SPOOLD_UPSTREAM_CA_FILE": "{missing}"},
            "cannot read the CA bundle",
        ),
        (
            {"SPOOLD_UPSTREAM_URL": "https://127.0.0.1:1", "SPOOLD_UPSTREAM_CA_FILE": "{key}"},
            "not a PEM CA bundle",
        ),
        (
            {"SPOOLD_TLS_CERT_FILE": "{cert}", "SPOOLD_TLS_KEY_FILE": "{wrong_key}"},
            "does not match the certificate",
        ),
    ],
    ids=["cert-alone", "missing-ca", "ca-not-pem", "mismatched-key"],
)
def test_spoold_refuses_to_start_with_unusable_tls_settings(
    tmp_path: Path, pki: Pki, env: dict[str, str], message: str
) -> None:
    files = {
        "cert": str(pki.cert),
        "key": str(pki.key),
        "wrong_key": str(pki.wrong_host_key),
        "missing": str(tmp_path / "missing-ca.pem"),
    }
    filled = {name: value.format(**files) for name, value in env.items()}
    args = ["serve", "--port", str(free_port()), "--spool-dir", str(tmp_path / "spool")]
    result = run_module("spoold", args, filled, tmp_path)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ---- warnings when listening beyond loopback -------------------------------------------


def warnings_of(daemon: Daemon) -> set[str]:
    return {event["event"] for event in log_events(daemon) if event.get("level") == "warning"}


@pytest.mark.slow
def test_server_warns_when_reachable_without_tls_or_auth(
    reaper: Reaper, tmp_path: Path, pki: Pki
) -> None:
    exposed = start_server(
        reaper,
        tmp_path,
        port=free_port(),
        db=tmp_path / "a.sqlite",
        env={"TELEMETRY_API_HOST": "0.0.0.0"},
    )
    lines = [e for e in log_events(exposed) if e["event"].startswith("listening_without")]
    assert {e["event"] for e in lines} == {"listening_without_tls", "listening_without_auth"}
    assert all(e["level"] == "warning" for e in lines)
    assert "TELEMETRY_TLS_CERT_FILE" in next(
        e["fix"] for e in lines if e["event"] == "listening_without_tls"
    )
    assert "TELEMETRY_API_AUTH_ENABLED" in next(
        e["risk"] for e in lines if e["event"] == "listening_without_auth"
    )
    exposed.stop()

    protected = start_server(
        reaper,
        tmp_path,
        port=free_port(),
        db=tmp_path / "b.sqlite",
        env={
            "TELEMETRY_API_HOST": "0.0.0.0",
            "TELEMETRY_API_AUTH_ENABLED": "true",
            "TELEMETRY_API_AUTH_TOKEN": "fleet-token",
            **server_tls_env(pki),
        },
        client_ssl=pki.client,
    )
    assert not warnings_of(protected) & {"listening_without_tls", "listening_without_auth"}
    protected.stop()

    loopback = start_server(reaper, tmp_path, port=free_port(), db=tmp_path / "c.sqlite")
    assert not warnings_of(loopback) & {"listening_without_tls", "listening_without_auth"}


@pytest.mark.slow
def test_spoold_warns_when_reachable_beyond_loopback(reaper: Reaper, tmp_path: Path) -> None:
    """spoold has no auth of its own: bound beyond loopback it says so, and that TLS is off."""
    upstream = f"http://127.0.0.1:{free_port()}"  # nobody there; not needed for this check
    exposed = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=upstream,
        spool_dir=tmp_path / "spool-a",
        env={"SPOOLD_HOST": "0.0.0.0"},
    )
    events = {e["event"]: e for e in log_events(exposed)}
    assert events["listening_without_tls"]["level"] == "warning"
    assert events["listening_without_auth"]["level"] == "warning"
    assert "no authentication" in events["listening_without_auth"]["risk"]
    assert "upstream_without_tls" not in events  # the upstream is on loopback
    exposed.stop()

    loopback = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=upstream, spool_dir=tmp_path / "spool-b"
    )
    assert not warnings_of(loopback) & {"listening_without_tls", "listening_without_auth"}


# ---- spoold over HTTPS, to an HTTPS server ---------------------------------------------


def wait_delivered(spoold: Daemon, db: Path, ids: list[str], timeout_s: float = 30.0) -> None:
    def delivered() -> bool:
        rows = server_rows(db)
        health = spoold_health(spoold)
        settled = health["counters"]["queued"] == 0 and health["spool"]["depth"] == 0
        return settled and all(
            rows.get(event_id, {}).get("status") == "success" for event_id in ids
        )

    wait_until(delivered, timeout_s=timeout_s, what="every run delivered with its final status")


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # each has its own TLS transport
async def test_spoold_over_https_delivers_to_an_https_server_and_proxies_reads(
    reaper: Reaper, tmp_path: Path, pki: Pki, loop: str
) -> None:
    server = https_server(
        reaper,
        tmp_path,
        pki,
        extra_env={"TELEMETRY_EVENT_LOOP": loop, "TELEMETRY_LOG_LEVEL": "INFO"},
    )
    spoold = start_spoold(
        reaper,
        tmp_path,
        port=free_port(),
        upstream=server.url,
        spool_dir=tmp_path / "spool",
        env={
            "SPOOLD_UPSTREAM_CA_FILE": str(pki.ca),
            "SPOOLD_TLS_CERT_FILE": str(pki.cert),
            "SPOOLD_TLS_KEY_FILE": str(pki.key),
            "SPOOLD_EVENT_LOOP": loop,
            "SPOOLD_LOG_LEVEL": "INFO",
        },
        client_ssl=pki.client,
    )
    assert spoold.url.startswith("https://")
    for daemon, name in ((server, "server"), (spoold, "spoold")):
        assert f'"{name}_listening"' in daemon.log()
        assert f'"event_loop":"{loop}"' in daemon.log(), daemon.log()[-2000:]
    ids = await post_runs(spoold.url, 5, pki.client)
    wait_delivered(spoold, tmp_path / "server.sqlite", ids)
    health = spoold_health(spoold)
    assert health["counters"]["forwarded"] == health["counters"]["accepted"] == 10
    assert health["upstream"]["reachable"] is True
    assert health["upstream"]["tls_failing"] is False
    async with aiohttp.ClientSession(
        spoold.url, connector=aiohttp.TCPConnector(ssl=pki.client)
    ) as http:
        listed = await http.get("/api/v1/runs", params={"agent_name": "fault-agent"})
        assert listed.status == 200  # proxied to the server over https
        assert {run["event_id"] for run in await listed.json()} == set(ids)
        metadata = await http.get("/api/v1/metadata")
        assert metadata.status == 200
    no_traceback(spoold)
    no_traceback(server)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["wrong-ca", "system-store", "wrong-hostname"])
async def test_an_upstream_certificate_that_does_not_verify_is_never_delivery(
    reaper: Reaper, tmp_path: Path, pki: Pki, fault: str
) -> None:
    """Batches are retried, nothing is acked or stored, /health names the TLS failure;
    once the trust is right every acknowledged operation is delivered."""
    db = tmp_path / "server.sqlite"
    server = https_server(reaper, tmp_path, pki, wrong_host=fault == "wrong-hostname")
    spool_dir = tmp_path / "spool"
    ca_env = {
        "wrong-ca": {"SPOOLD_UPSTREAM_CA_FILE": str(pki.other_ca)},
        "system-store": {},  # no CA file: the system store, which does not know our CA
        "wrong-hostname": {"SPOOLD_UPSTREAM_CA_FILE": str(pki.ca)},
    }[fault]
    spoold = start_spoold(
        reaper, tmp_path, port=free_port(), upstream=server.url, spool_dir=spool_dir, env=ca_env
    )
    ids = await post_runs(spoold.url, 4, False)

    def failing() -> dict[str, Any] | None:
        body = spoold_health(spoold)
        upstream = body["upstream"]
        return body if upstream["tls_failing"] and upstream["consecutive_failures"] >= 3 else None

    health = wait_until(failing, timeout_s=20, what="repeated TLS failures on /health")
    assert "TLS certificate verify failed" in health["upstream"]["last_error"]
    assert health["upstream"]["reachable"] is False
    assert health["status"] != "ok"
    assert any("TLS certificate verify failed" in reason for reason in health["reasons"])
    assert health["counters"]["forwarded"] == 0
    assert health["counters"]["queued"] == 8
    assert health["spool"]["depth"] == 8
    assert health["spool"]["dead_letters"] == 0
    assert server_rows(db) == {}
    status, _ = get_json(spoold.url + "/api/v1/runs?agent_name=fault-agent")
    assert status == 503  # a read is not answered from an unverified server
    assert "upstream_retry" in {event["event"] for event in log_events(spoold)}

    # Fix it: trust the right CA (restart spoold) or serve the right certificate.
    if fault == "wrong-hostname":
        port = server.port
        server.stop()
        https_server(reaper, tmp_path, pki, port=port)
    else:
        assert spoold.stop() == 0
        spoold = start_spoold(
            reaper,
            tmp_path,
            port=free_port(),
            upstream=server.url,
            spool_dir=spool_dir,
            env={"SPOOLD_UPSTREAM_CA_FILE": str(pki.ca)},
        )
    wait_delivered(spoold, db, ids)
    health = spoold_health(spoold)
    assert health["upstream"]["tls_failing"] is False
    assert health["counters"]["dead_lettered"] == 0
    assert health["spool"]["depth"] == 0
    assert set(server_rows(db)) == set(ids)
    no_traceback(spoold)
    no_traceback(server)
