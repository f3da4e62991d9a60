"""The cache behind /api/v1/metadata.

A snapshot of distinct agent names and job types, kept until a write adds a
value the snapshot lacks (or renames one away), or the TTL passes. A
generation counter stops a recompute that raced with an invalidation from
storing stale values.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MetadataSnapshot:
    agent_names: tuple[str, ...]
    job_types: tuple[str, ...]
    taken_at: float
    agent_set: frozenset[str] = field(init=False, repr=False)
    job_set: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "agent_set", frozenset(self.agent_names))
        object.__setattr__(self, "job_set", frozenset(self.job_types))


class MetadataCache:
    def __init__(self, ttl_s: float = 300.0) -> None:
        self._ttl_s = ttl_s
        self._snapshot: MetadataSnapshot | None = None
        self._generation = 0
        self.invalidations = 0

    @property
    def generation(self) -> int:
        return self._generation

    def get(self) -> MetadataSnapshot | None:
        snapshot = self._snapshot
        if snapshot is None or time.monotonic() - snapshot.taken_at > self._ttl_s:
            return None
        return snapshot

    def store(
        self, generation: int, agents: Iterable[str], jobs: Iterable[str]
    ) -> MetadataSnapshot:
        """Keep a recomputed snapshot unless an invalidation happened since it began."""
        snapshot = MetadataSnapshot(tuple(agents), tuple(jobs), time.monotonic())
        if generation == self._generation:
            self._snapshot = snapshot
        return snapshot

    def invalidate(self) -> None:
        self._generation += 1
        self.invalidations += 1
        self._snapshot = None

    def note_written(self, agent_names: Iterable[str], job_types: Iterable[str]) -> None:
        """Invalidate only if a committed write added a value the snapshot lacks."""
        snapshot = self._snapshot
        if snapshot is None:
            # A recompute may be running: make sure it does not store values older than this write.
            self._generation += 1
            return
        if not snapshot.agent_set.issuperset(agent_names) or not snapshot.job_set.issuperset(
            job_types
        ):
            self.invalidate()
