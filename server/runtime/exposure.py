"""Start-up warnings for a daemon reachable from other hosts without TLS or without auth.

Judged from the addresses actually bound (``0.0.0.0``, ``::``, a LAN address or a
host name that resolved to one), not from the configured string.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

log = structlog.get_logger("daemon")


@dataclass(frozen=True)
class Exposure:
    """What a daemon protects, and what to tell the operator when it is reachable without it."""

    tls: bool
    tls_hint: str
    #: None when requests need a token; else who can do what, and how to fix it.
    auth_missing: str | None


def beyond_loopback(addresses: Iterable[Any]) -> bool:
    """True if any bound socket address (``(host, port, ...)`` or a path) is not loopback."""
    for address in addresses:
        if not isinstance(address, tuple) or not address:
            continue  # a Unix socket path is local
        if not loopback_host(str(address[0])):
            return True
    return False


def loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name may be reachable."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback  # drop an IPv6 zone id
    except ValueError:
        return False


def warn_if_exposed(name: str, addresses: Iterable[Any], exposure: Exposure) -> list[str]:
    """Log one warning per missing protection when listening beyond loopback; return their names."""
    bound = list(addresses)
    if not beyond_loopback(bound):
        return []
    where = ", ".join(str(address) for address in bound)
    events: list[str] = []
    if not exposure.tls:
        log.warning(
            "listening_without_tls",
            daemon=name,
            addresses=where,
            risk="requests, tokens and telemetry cross the network in clear text",
            fix=exposure.tls_hint,
        )
        events.append("listening_without_tls")
    if exposure.auth_missing is not None:
        log.warning(
            "listening_without_auth", daemon=name, addresses=where, risk=exposure.auth_missing
        )
        events.append("listening_without_auth")
    return events


def warn_if_upstream_in_clear(url: str) -> bool:
    """Log a warning when a plain http:// upstream is on another host; True if it did."""
    parts = urlsplit(url)
    if parts.scheme != "http" or loopback_host(parts.hostname or ""):
        return False
    log.warning(
        "upstream_without_tls",
        upstream=url,
        risk="batches and the upstream token cross the network in clear text",
        fix="serve the server over TLS and use an https:// SPOOLD_UPSTREAM_URL",
    )
    return True
