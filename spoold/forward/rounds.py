"""What passes between the drain's stages: a round read from the spool (``Round``), and
the same round once the server has answered for it (``Delivered``).

A round is a set of spool groups read in FIFO order. The read stage folds it into
batches (``spoold.forward.read``), the send stage delivers them (``spoold.forward.send``)
and the record stage settles the round in the runs index, then acks it in the spool
(``spoold.forward.record``). Nothing in a round is kept decoded: see ``RoundOps``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import orjson

from spoold.forward.coalesce import Origin, Snapshot, encode_batch
from spoold.spool import SpoolGroup
from spoold.state.runs_index import Settling


@dataclass
class DrainStats:
    batches: int = 0
    operations_forwarded: int = 0
    duplicates_sent: int = 0
    dead_lettered: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    splits: int = 0
    last_batch_size: int = 0
    #: Rounds after which the drain went on without its rest while agents wrote: the
    #: spool held more than after the last round that rested (``spoold.forward.send``).
    rests_skipped: int = 0


class RoundOps(Sequence[dict[str, Any]]):
    """A round's operations, kept encoded: each is decoded again only when needed (a
    split, a dead letter). Decoded, a large body costs ~20-35 times its bytes, and a
    round is held for as long as the server takes to answer - forever while it is down,
    with the next round read ahead meanwhile (spoold runs under MemoryMax)."""

    def __init__(self, ops: Iterable[dict[str, Any]], origin: Origin | None = None) -> None:
        #: Where the round's snapshots were made (their source and sequences).
        self.origin = origin
        self._encoded: list[bytes] = []
        self.event_ids: list[str] = []
        for op in ops:
            self._encoded.append(orjson.dumps(op))
            self.event_ids.append(op["event_id"])

    def __len__(self) -> int:
        return len(self._encoded)

    @overload
    def __getitem__(self, position: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, position: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, position: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(position, slice):
            return [orjson.loads(encoded) for encoded in self._encoded[position]]
        op: dict[str, Any] = orjson.loads(self._encoded[position])
        return op


@dataclass(frozen=True)
class Planned:
    """A snapshot to send, by reference: its run and the round positions of the
    operations it folds (in order). Its body is the batch's, or is folded again from
    the round's operations (``snapshot``) when a refusal splits the batch."""

    event_id: str
    positions: tuple[int, ...]

    @property
    def operations(self) -> int:
        return len(self.positions)

    def snapshot(self, ops: Sequence[dict[str, Any]]) -> Snapshot:
        origin = ops.origin if isinstance(ops, RoundOps) else None
        snapshot = Snapshot(self.event_id)
        for position in self.positions:
            snapshot.fold(ops[position], position, origin)
        return snapshot

    def expand(self) -> list[Planned]:
        """Its operations as snapshots of their own, in the order they were accepted."""
        return [Planned(self.event_id, (position,)) for position in self.positions]


#: A batch to send: its snapshots and, when encoded ahead of time, its body.
Chunk = tuple[list[Planned], bytes | None]
#: Refused operations, by their position in the round: (reason, HTTP status).
Refusals = dict[int, tuple[str, int | None]]


def encode_chunk(chunk: list[Planned], ops: Sequence[dict[str, Any]]) -> bytes:
    """The batch body of ``chunk``, folded again from the round's operations."""
    return encode_batch(planned.snapshot(ops) for planned in chunk)


@dataclass
class Round:
    """A round read from the spool: its groups (their ids), their operations (encoded)
    and its batches (one snapshot per run, packed under the body cap and encoded ahead
    of time). Nothing in it is decoded: see ``RoundOps``."""

    groups: list[SpoolGroup]
    ops: RoundOps
    batches: list[Chunk]
    oldest: str | None = None  # the round's oldest accepted_at (``forward.presence``)


@dataclass
class Delivered:
    """A round the server has answered: to settle in the index (in slices), then ack in
    the spool. ``done`` is how far the settle got, so a retried record goes on from there."""

    groups: list[SpoolGroup]
    event_ids: list[str]  # by position in the round (spool order)
    dead: frozenset[int]  # positions dead-lettered; every other one was forwarded
    started: float  # perf_counter when the round's send began
    done: int = 0  # positions settled so far
    synced: bool = False  # the settle fsync'd (the spool ack may follow)

    @property
    def operations(self) -> int:
        return len(self.event_ids)

    @property
    def settled(self) -> bool:
        return self.done >= len(self.event_ids)

    def mark(self, done: int) -> Settling:
        return Settling(
            [group.id for group in self.groups], self.operations, done, tuple(sorted(self.dead))
        )

    def counts(self, start: int, end: int) -> tuple[dict[str, int], dict[str, int]]:
        """(forwarded, dead-lettered) operations per event_id among positions [start, end)."""
        forwarded: dict[str, int] = {}
        dead: dict[str, int] = {}
        for position in range(start, end):
            into = dead if position in self.dead else forwarded
            event_id = self.event_ids[position]
            into[event_id] = into.get(event_id, 0) + 1
        return forwarded, dead
