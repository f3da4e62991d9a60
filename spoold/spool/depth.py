"""What the spool holds, counted in memory: groups, operations, bytes, the oldest group's time.

The writer (the accept thread) adds, the reader (the drainer's thread) forgets; both
under one short lock of their own, never the reader's I/O lock, so a put never waits
for a read to count. The counts start from the totals kept in the file
(``spoold.spool.totals``) and are recounted from them after start-up repair.
"""

from __future__ import annotations

import threading


class Depth:
    """The spool's counts, and up to which item the reader may hand out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.groups = self.ops = self.bytes = 0
        self.oldest: float | None = None
        #: The earliest group put since an ack began reading the oldest live group: a put
        #: that commits after that read must not be hidden by it (``after_ack``).
        self._put_since_read: float | None = None
        self._published = 0

    def added(
        self, item_id: int, n_ops: int, nbytes: int, enqueued_at: float, *, publish: bool
    ) -> None:
        """A group was put (and committed)."""
        with self._lock:
            self.groups += 1
            self.ops += n_ops
            self.bytes += nbytes
            if self.oldest is None:
                self.oldest = enqueued_at
            if self._put_since_read is None or enqueued_at < self._put_since_read:
                self._put_since_read = enqueued_at
            if publish:
                self._published = max(self._published, item_id)

    def publish(self, item_id: int) -> None:
        """Let the reader hand out items up to ``item_id``."""
        with self._lock:
            self._published = max(self._published, item_id)

    def published(self) -> int:
        with self._lock:
            return self._published

    def queued_bytes(self) -> int:
        with self._lock:
            return self.bytes

    def forget(self, n_ops: int, nbytes: int) -> None:
        """A group left the spool (acked, or set aside as undecodable)."""
        with self._lock:
            self.groups -= 1
            self.ops -= n_ops
            self.bytes -= nbytes

    def reading_oldest(self) -> None:
        """An ack is about to read the oldest live group's time from the file."""
        with self._lock:
            self._put_since_read = None

    def after_ack(self, oldest: float | None) -> None:
        """The oldest live group's time, as read after an ack."""
        with self._lock:
            # A put that committed after the read is not in it: "empty" would hide it
            # (no X-Spoold-Queued-Since while it is queued), and the next put would
            # take its place. Only acks (the reader) remove groups: a time read is
            # still live, and puts only add later ones.
            if oldest is None:
                oldest = self._put_since_read
            self.oldest = oldest

    def recounted(self, groups: int, nbytes: int, ops: int, oldest: float | None) -> None:
        """The counts as read from the file's kept totals."""
        with self._lock:
            self.groups, self.bytes, self.ops = groups, nbytes, ops
            self.oldest = oldest

    def published_from(self, item_id: int) -> None:
        """At open: every item already in the file may be handed out."""
        with self._lock:
            self._published = item_id

    def snapshot(self) -> tuple[int, int, int, float | None]:
        """(operations, groups, bytes, oldest time): the oldest only while groups are
        queued (an ack updates the oldest just after the depth)."""
        with self._lock:
            return self.ops, self.groups, self.bytes, self.oldest if self.groups else None
