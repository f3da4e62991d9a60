"""Naming TLS failures of the upstream connection, so /health says what to fix.

aiohttp reports a certificate that does not verify (unknown CA, wrong host name,
expired) and other handshake failures as connection errors; a sidecar must show
them as such — never as delivery, never as a plain "unreachable".
"""

from __future__ import annotations

import ssl

import aiohttp

VERIFY_FAILED = "TLS certificate verify failed"
HANDSHAKE_FAILED = "TLS handshake failed"


def describe_tls_error(exc: BaseException) -> str | None:
    """A one-line cause for a TLS failure, or None if exc is not one."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        detail = getattr(error, "verify_message", None) or str(error)
        return f"{VERIFY_FAILED} ({exc.host}:{exc.port}): {detail}"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        hint = " (does the server speak plain HTTP?)" if "WRONG_VERSION_NUMBER" in str(exc) else ""
        return f"{HANDSHAKE_FAILED}{hint}: {exc}"
    return None


def is_tls_failure(cause: str) -> bool:
    """True if an upstream failure cause (as recorded on /health) is about TLS."""
    return VERIFY_FAILED in cause or HANDSHAKE_FAILED in cause
