"""TLS contexts for both daemons: the listener's (certificate + key) and spoold's upstream one.

Built once at start-up from the validated config. Every way the files can be wrong
(missing, unreadable, not PEM, key of another certificate, passphrase-protected key)
becomes a ``TLSSetupError`` whose message names the file and the fix, so the daemon
exits with one clear line instead of a traceback.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from server.runtime.settings import ConfigError

#: Oldest protocol either side of a connection may negotiate.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSSetupError(ConfigError):
    """A certificate, key or CA bundle cannot be used; the message says which and why."""


def listener_context(cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext | None:
    """The server-side context for a listener, or None when TLS is not configured."""
    if cert_file is None or key_file is None:
        return None
    _readable(cert_file, "certificate")
    _readable(key_file, "private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    asked_for_passphrase = False

    def no_passphrase() -> bytes:
        nonlocal asked_for_passphrase
        asked_for_passphrase = True
        return b""  # never prompt on a terminal: a daemon has nobody to answer

    try:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except ssl.SSLError as exc:
        raise TLSSetupError(
            _chain_problem(exc, cert_file, key_file, encrypted=asked_for_passphrase)
        ) from None
    return context


def upstream_context(ca_file: Path | None) -> ssl.SSLContext:
    """The client-side context for https:// upstreams: certificates and host names verified.

    Without ``ca_file`` the system trust store is used; with it, only that bundle
    (a private CA need not be trusted by the whole host).
    """
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        _readable(ca_file, "CA bundle")
        try:  # given a cafile, the default context loads it instead of the system store
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        except ssl.SSLError as exc:
            raise TLSSetupError(f"{ca_file}: not a PEM CA bundle ({_reason(exc)})") from None
    context.minimum_version = MINIMUM_VERSION
    return context


def _readable(path: Path, what: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TLSSetupError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _chain_problem(exc: ssl.SSLError, cert_file: Path, key_file: Path, *, encrypted: bool) -> str:
    reason = _reason(exc)
    if encrypted:
        return f"the private key {key_file} is protected by a passphrase; give an unencrypted key"
    if "KEY_VALUES_MISMATCH" in reason.upper():
        return f"the private key {key_file} does not match the certificate {cert_file}"
    return f"cannot load the certificate {cert_file} with the key {key_file}: {reason}"


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)
