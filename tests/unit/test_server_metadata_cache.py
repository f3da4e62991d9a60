"""server.storage.metadata.MetadataCache: invalidated only by writes adding new values."""

from __future__ import annotations

from server.storage.metadata import MetadataCache


def test_empty_cache_misses():
    """Nothing stored: get() is None."""
    assert MetadataCache().get() is None


def test_store_then_hit():
    """A stored snapshot is served until something invalidates it."""
    cache = MetadataCache()
    cache.store(cache.generation, ["a"], ["j"])
    snapshot = cache.get()
    assert snapshot is not None
    assert snapshot.agent_names == ("a",)
    assert snapshot.job_types == ("j",)


def test_known_values_keep_the_snapshot():
    """A write whose values the snapshot already has keeps it."""
    cache = MetadataCache()
    cache.store(cache.generation, ["a", "b"], ["j"])
    cache.note_written(["a", "b", "a"], ["j"])
    assert cache.get() is not None
    assert cache.invalidations == 0


def test_new_agent_or_job_invalidates():
    """A write adding a new agent name or job type drops the snapshot."""
    for agents, jobs in ((["new"], ["j"]), (["a"], ["new"])):
        cache = MetadataCache()
        cache.store(cache.generation, ["a"], ["j"])
        cache.note_written(agents, jobs)
        assert cache.get() is None
        assert cache.invalidations == 1


def test_store_racing_an_invalidation_is_discarded():
    """A recompute that began before an invalidation does not store stale values."""
    cache = MetadataCache()
    generation = cache.generation
    cache.invalidate()
    returned = cache.store(generation, ["stale"], [])
    assert returned.agent_names == ("stale",)
    assert cache.get() is None


def test_ttl_expires_snapshots():
    """A zero TTL never serves a snapshot from cache."""
    cache = MetadataCache(ttl_s=0)
    cache.store(cache.generation, ["a"], ["j"])
    assert cache.get() is None


def test_note_written_without_snapshot_is_a_no_op():
    """Writes before any snapshot exists do not count as invalidations."""
    cache = MetadataCache()
    cache.note_written(["a"], ["j"])
    assert cache.invalidations == 0


def test_write_during_first_recompute_is_not_lost():
    """A new value written while the first snapshot is being computed is never hidden."""
    cache = MetadataCache()
    generation = cache.generation  # a recompute begins and reads the database...
    cache.note_written(["new-agent"], ["j"])  # ...while a write adding new-agent commits
    cache.store(generation, ["old-agent"], ["j"])  # the recompute ends without new-agent
    snapshot = cache.get()
    assert snapshot is None or "new-agent" in snapshot.agent_names
