"""spoold's storage layer: the durable local spool and the dead-letter store.

Data flow: the HTTP layer ``await``s ``spoold.accept.acceptor.Acceptor.submit(op)``, which
writes concurrent operations as one group into ``Spool`` (persist-queue on
SQLite) and answers only after the fsync; the drainer reads groups with
``Spool.get_groups``, acks them once the server has them and the runs index has
recorded that, and moves refused operations to ``DeadLetterStore``.
"""

from spoold.spool.codec import SpoolGroup
from spoold.spool.deadletter import DeadLetter, DeadLetterStore
from spoold.spool.errors import (
    SpoolClosedError,
    SpoolError,
    SpoolFormatError,
    SpoolFull,
    SpoolLockedError,
    SpoolWriteError,
)
from spoold.spool.queue import Spool
from spoold.spool.stats import SpoolStats
from spoold.spool.store import inspect_spool

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "Spool",
    "SpoolClosedError",
    "SpoolError",
    "SpoolFormatError",
    "SpoolFull",
    "SpoolGroup",
    "SpoolLockedError",
    "SpoolStats",
    "SpoolWriteError",
    "inspect_spool",
]
