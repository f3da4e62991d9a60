"""The on-disk encoding of one queue item: a group of operations, as JSON.

A group is written by hand as ``{"v":1,"n":<ops>,"t":<enqueued_at>,"ops":[...]}``
with the operations already serialised by orjson (each op is encoded once, on
the event loop, where a bad op fails only its own caller). Keeping ``n`` at a
fixed offset lets the spool count queued operations at start-up with one SQL
aggregate over a short prefix of each row instead of parsing every group.
persist-queue never sees Python objects: ``GroupSerializer`` passes bytes
through on ``dumps`` (no pickle anywhere) and on ``loads`` (``RawGroup``: the spool
decodes a group only when it hands it out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

GROUP_FORMAT = 1
_PREFIX = b'{"v":1,"n":'
#: SQL expression giving a row's operation count from its fixed-offset header.
SQL_OPS_COUNT = f"CAST(substr(data, {len(_PREFIX) + 1}, 12) AS INTEGER)"
#: Bytes of a row needed to read its header (count and enqueue time).
HEADER_BYTES = 64
_HEADER_RE = re.compile(rb'^\{"v":1,"n":(\d+),"t":([0-9.]+),')


def accepted_since(ops: Iterable[Mapping[str, Any]]) -> float | None:
    """When the oldest of ``ops`` was accepted (their ``accepted_at``, epoch seconds), if
    they say: a group's time is never later than that (``Spool.put_encoded``)."""
    stamps = (op.get("accepted_at") for op in ops)
    oldest = min((stamp for stamp in stamps if isinstance(stamp, str)), default=None)
    if oldest is None:
        return None
    try:
        return datetime.fromisoformat(oldest).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class DecodedGroup:
    """A group read back from the queue; ``valid`` is False for an undecodable row."""

    ops: list[dict[str, Any]]
    enqueued_at: float
    n_ops: int
    nbytes: int
    valid: bool = True


def encode_op(op: dict[str, Any]) -> bytes:
    """Serialise one operation (raises TypeError for values JSON cannot hold)."""
    return orjson.dumps(op)


def encode_group(encoded_ops: Sequence[bytes], enqueued_at: float) -> bytes:
    """Join pre-encoded operations into one group item."""
    header = b'%s%d,"t":%.6f,"ops":[' % (_PREFIX, len(encoded_ops), enqueued_at)
    return header + b",".join(encoded_ops) + b"]}"


def parse_header(data: bytes) -> tuple[int, float] | None:
    """Return (n_ops, enqueued_at) from the first bytes of a group, or None."""
    match = _HEADER_RE.match(data[:HEADER_BYTES])
    if match is None:
        return None
    return int(match.group(1)), float(match.group(2))


def decode_group(data: bytes) -> DecodedGroup:
    """Decode a group; never raises, so one bad row cannot wedge the reader."""
    try:
        obj = orjson.loads(data)
        ops = obj["ops"]
        if obj.get("v") != GROUP_FORMAT or not isinstance(ops, list):
            raise ValueError("not a spool group")
        return DecodedGroup(ops, float(obj["t"]), len(ops), len(data))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        header = parse_header(bytes(data))
        n_ops, enqueued_at = header if header is not None else (0, 0.0)
        return DecodedGroup([], enqueued_at, n_ops, len(data), valid=False)


@dataclass(frozen=True, slots=True)
class RawGroup:
    """A group as read from the queue, not decoded yet.

    Its size and operation count (from the header) are known without parsing it: the
    spool decodes a group only when it hands it out, so a group read but held back (the
    next round's first) costs its bytes, not its objects (~20-35 times more).
    """

    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def n_ops(self) -> int:
        header = parse_header(self.data)
        return header[0] if header is not None else 0

    def decode(self) -> DecodedGroup:
        return decode_group(self.data)


@dataclass(frozen=True, slots=True)
class SpoolGroup:
    """One queue item handed to the drainer: ack or nack it as a whole."""

    id: int
    ops: list[dict[str, Any]]
    enqueued_at: float
    nbytes: int


class GroupSerializer:
    """The ``serializer=`` object handed to persist-queue (dumps/loads)."""

    @staticmethod
    def dumps(value: object, sort_keys: bool = False) -> bytes:
        if not isinstance(value, bytes):
            raise TypeError("spool items must be groups encoded by encode_group()")
        return value

    @staticmethod
    def loads(data: bytes) -> RawGroup:
        return RawGroup(bytes(data))
