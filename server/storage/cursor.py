"""Opaque, signed keyset cursors for walking GET /api/v1/runs page by page.

A cursor names the last run of a page by its place in the list order
(``created_at DESC``, then insertion order ``id DESC``); the next page starts
strictly after it. Rows inserted meanwhile never shift the walk: nothing is
skipped or repeated, unlike ``offset``.

The token is ``base64url(json position) "." base64url(HMAC-SHA256)``; the MAC
covers the position and the query's filters, with a random key kept in the
database (so cursors survive restarts). Any token that was not made by this
server for these filters is refused — never parsed on trust.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

MAX_CURSOR_CHARS = 512
_MAC_BYTES = 16
_SQLITE_MAX_ROWID = 2**63 - 1


class InvalidCursor(ValueError):
    """A cursor that is malformed, forged, or made for other filters."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: the last run's created_at and row id."""

    created_at: str
    row_id: int


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        # Keyed once: each MAC copies this state (half the cost of keying it per call).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def encode(self, position: Position, scope: str) -> str:
        payload = orjson.dumps([position.created_at, position.row_id])
        return f"{_b64(payload)}.{_b64(self._mac(payload, scope))}"

    def decode(self, token: str, scope: str) -> Position:
        """The position in token, if this server made it for this scope (the filters)."""
        if len(token) > MAX_CURSOR_CHARS or token.count(".") != 1:
            raise InvalidCursor("malformed cursor")
        encoded_payload, encoded_mac = token.split(".")
        payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        if not hmac.compare_digest(mac, self._mac(payload, scope)):
            raise InvalidCursor("cursor was not issued by this server for these filters")
        try:
            created_at, row_id = orjson.loads(payload)
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise InvalidCursor("malformed cursor") from exc
        if (
            not isinstance(created_at, str)
            or type(row_id) is not int
            or not 0 < row_id <= _SQLITE_MAX_ROWID
        ):
            raise InvalidCursor("malformed cursor")
        return Position(created_at, row_id)

    def _mac(self, payload: bytes, scope: str) -> bytes:
        message = payload + b"\0" + scope.encode("utf-8", "surrogatepass")
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()[:_MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise InvalidCursor("malformed cursor")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCursor("malformed cursor") from exc
