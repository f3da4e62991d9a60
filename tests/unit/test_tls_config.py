"""TLS settings of both daemons, the contexts built from them, and the exposure checks.

Certificates are made here with ``trustme`` (a throw-away CA); nothing touches the
system trust store.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from structlog.testing import capture_logs

from server.config import ConfigError, ServerConfig
from server.runtime.exposure import (
    Exposure,
    beyond_loopback,
    warn_if_exposed,
    warn_if_upstream_in_clear,
)
from server.runtime.tls import TLSSetupError, listener_context, upstream_context
from spoold.config import SpooldConfig
from spoold.upstream.client import UpstreamClient
from spoold.upstream.status import UpstreamStatus
from spoold.upstream.tls import HANDSHAKE_FAILED, VERIFY_FAILED, is_tls_failure


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem(tmp_path: Path, ca: trustme.CA) -> dict[str, Path]:
    """A CA file, a certificate for 127.0.0.1/localhost and its key, as files."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


# ---- configuration ---------------------------------------------------------------------


def test_server_tls_is_off_by_default_and_empty_variables_mean_unset() -> None:
    """No variables, or empty ones (an env file with `TELEMETRY_TLS_CERT_FILE=`): plain HTTP."""
    assert ServerConfig.from_env({}).tls_cert_file is None
    config = ServerConfig.from_env({"TELEMETRY_TLS_CERT_FILE": "", "TELEMETRY_TLS_KEY_FILE": " "})
    assert config.tls_cert_file is None
    assert config.tls_key_file is None


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("TELEMETRY_TLS_CERT_FILE", "TELEMETRY_TLS_KEY_FILE"),
        ("TELEMETRY_TLS_KEY_FILE", "TELEMETRY_TLS_CERT_FILE"),
    ],
)
def test_server_tls_needs_both_files(given: str, missing: str) -> None:
    """One of the pair alone is a configuration error naming both variables."""
    with pytest.raises(ConfigError) as error:
        ServerConfig.from_env({given: "/etc/tls/file.pem"})
    assert given in str(error.value)
    assert missing in str(error.value)


def test_server_tls_reads_both_paths() -> None:
    config = ServerConfig.from_env(
        {"TELEMETRY_TLS_CERT_FILE": "/etc/tls/c.pem", "TELEMETRY_TLS_KEY_FILE": "/etc/tls/k.pem"}
    )
    assert config.tls_cert_file == Path("/etc/tls/c.pem")
    assert config.tls_key_file == Path("/etc/tls/k.pem")


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("SPOOLD_TLS_CERT_FILE", "SPOOLD_TLS_KEY_FILE"),
        ("SPOOLD_TLS_KEY_FILE", "SPOOLD_TLS_CERT_FILE"),
    ],
)
def test_spoold_tls_needs_both_files(given: str, missing: str) -> None:
    with pytest.raises(ConfigError) as error:
        SpooldConfig.from_env({given: "/etc/tls/file.pem"})
    assert given in str(error.value)
    assert missing in str(error.value)


def test_spoold_upstream_ca_needs_an_https_upstream() -> None:
    """A CA bundle with an http:// upstream would silently never be used: refused."""
    with pytest.raises(ConfigError) as error:
        SpooldConfig.from_env(
            {"SPOOLD_UPSTREAM_URL": "http://central:8766", "SPOOLD_UPSTREAM_CA_FILE": "/ca.pem"}
        )
    assert "SPOOLD_UPSTREAM_CA_FILE" in str(error.value)
    config = SpooldConfig.from_env(
        {"SPOOLD_UPSTREAM_URL": "https://central:8766", "SPOOLD_UPSTREAM_CA_FILE": "/ca.pem"}
    )
    assert config.upstream_ca_file == Path("/ca.pem")
    assert SpooldConfig.from_env({"SPOOLD_UPSTREAM_CA_FILE": ""}).upstream_ca_file is None


# ---- the listener's context ------------------------------------------------------------


def test_listener_context_is_none_without_tls() -> None:
    assert listener_context(None, None) is None


def test_listener_context_serves_the_certificate_with_modern_defaults(
    pem: dict[str, Path],
) -> None:
    context = listener_context(pem["cert"], pem["key"])
    assert context is not None
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # clients authenticate with the bearer token
    assert context.get_ciphers()


def test_listener_context_missing_file_names_it(pem: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSSetupError, match=r"cannot read the private key .*nope\.pem"):
        listener_context(pem["cert"], missing)
    with pytest.raises(TLSSetupError, match=r"cannot read the certificate .*nope\.pem"):
        listener_context(missing, pem["key"])
    with pytest.raises(TLSSetupError, match="cannot read the certificate"):
        listener_context(tmp_path, pem["key"])  # a directory


def test_listener_context_refuses_a_key_of_another_certificate(
    pem: dict[str, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TLSSetupError, match="does not match the certificate"):
        listener_context(pem["cert"], other_key)


def test_listener_context_refuses_files_that_are_not_pem(
    pem: dict[str, Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSSetupError, match="cannot load the certificate"):
        listener_context(garbage, pem["key"])
    with pytest.raises(TLSSetupError, match="cannot load the certificate"):
        listener_context(pem["cert"], garbage)


def test_listener_context_never_prompts_for_a_passphrase(
    pem: dict[str, Path], tmp_path: Path
) -> None:
    """An encrypted key is a clear error, not an interactive prompt that hangs a daemon."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem["key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSSetupError, match="passphrase"):
        listener_context(pem["cert"], encrypted)


# ---- the upstream context --------------------------------------------------------------


def test_upstream_context_verifies_by_default() -> None:
    """System trust store, certificate and host name checked, TLS 1.2 at least."""
    context = upstream_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_upstream_context_with_a_ca_file_trusts_only_it(pem: dict[str, Path]) -> None:
    context = upstream_context(pem["ca"])
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] == 1


def test_upstream_context_refuses_a_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="cannot read the CA bundle"):
        upstream_context(tmp_path / "missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(TLSSetupError, match="not a PEM CA bundle"):
        upstream_context(empty)


# ---- TLS failures on /health ------------------------------------------------------------


def test_a_tls_failure_is_recorded_as_such_and_cleared_by_a_success() -> None:
    status = UpstreamStatus(url="https://central:8766")
    status.failed(f"{VERIFY_FAILED} (central:8766): unable to get local issuer", status=0)
    assert status.tls_failing is True
    assert status.reachable is False
    assert status.retries == {"tls": 1}
    assert status.as_json()["tls_failing"] is True
    status.succeeded()
    assert status.tls_failing is False
    status.failed("upstream server unreachable: connection refused", status=0)
    assert status.tls_failing is False
    assert is_tls_failure(f"upstream server unreachable: {VERIFY_FAILED}: x")


# ---- exposure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "exposed"),
    [
        ([("127.0.0.1", 8766)], False),
        ([("127.0.0.2", 8766)], False),
        ([("::1", 8766, 0, 0)], False),
        ([("localhost", 8766)], False),
        (["/run/telemetry.sock"], False),
        ([("0.0.0.0", 8766)], True),
        ([("::", 8766, 0, 0)], True),
        ([("192.168.1.20", 8766)], True),
        ([("fe80::1%eth0", 8766, 0, 2)], True),
        ([("127.0.0.1", 8766), ("10.0.0.5", 8766)], True),
        ([("central.example", 8766)], True),
    ],
)
def test_beyond_loopback(addresses: list[object], exposed: bool) -> None:
    assert beyond_loopback(addresses) is exposed


@pytest.fixture
def captured() -> Iterator[list[dict[str, object]]]:
    with capture_logs() as logs:
        yield logs


def test_warnings_name_what_is_missing(captured: list[dict[str, object]]) -> None:
    exposure = Exposure(tls=False, tls_hint="set X", auth_missing="anyone can write")
    assert warn_if_exposed("server", [("127.0.0.1", 1)], exposure) == []
    assert captured == []
    events = warn_if_exposed("server", [("0.0.0.0", 1)], exposure)
    assert events == ["listening_without_tls", "listening_without_auth"]
    assert [(log["event"], log["log_level"]) for log in captured] == [
        ("listening_without_tls", "warning"),
        ("listening_without_auth", "warning"),
    ]
    assert captured[0]["fix"] == "set X"
    assert captured[1]["risk"] == "anyone can write"
    protected = Exposure(tls=True, tls_hint="", auth_missing=None)
    assert warn_if_exposed("server", [("0.0.0.0", 1)], protected) == []


def test_plain_http_upstream_on_another_host_is_warned(
    captured: list[dict[str, object]],
) -> None:
    assert warn_if_upstream_in_clear("http://127.0.0.1:8766") is False
    assert warn_if_upstream_in_clear("http://localhost:8766") is False
    assert warn_if_upstream_in_clear("https://central.example:8766") is False
    assert warn_if_upstream_in_clear("http://central.example:8766") is True
    assert [log["event"] for log in captured] == ["upstream_without_tls"]


async def test_https_to_a_plain_http_server_is_named_a_tls_failure() -> None:
    """An https:// upstream that answers in clear text: a handshake failure, never delivery."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        connector = aiohttp.TCPConnector(ssl=upstream_context(None))
        async with aiohttp.ClientSession(connector=connector) as session:
            client = UpstreamClient(
                session,
                f"https://127.0.0.1:{port}",
                token=None,
                batch_timeout_s=5,
                lookup_timeout_s=5,
            )
            answer = await client.send_batch(b"[]", 0)
    finally:
        await runner.cleanup()
    assert answer.verdict == "retry"
    assert answer.cause.startswith(f"{HANDSHAKE_FAILED} (does the server speak plain HTTP?)")
    status = UpstreamStatus(url=f"https://127.0.0.1:{port}")
    status.failed(answer.cause, status=answer.status)
    assert status.tls_failing is True
