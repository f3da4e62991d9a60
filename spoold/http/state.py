"""Typed application state shared by spoold's handlers."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from spoold.accept.acceptor import Acceptor
from spoold.config import SpooldConfig
from spoold.forward.drainer import Drainer
from spoold.forward.presence import Presence
from spoold.spool import DeadLetterStore, Spool
from spoold.state.ledger import Ledger
from spoold.state.runs_index import RunsIndex
from spoold.state.storage import StorageRecoveries
from spoold.upstream.client import UpstreamClient
from spoold.upstream.status import UpstreamStatus


@dataclass
class Sidecar:
    """Everything the handlers use; built by the app's cleanup contexts."""

    config: SpooldConfig
    spool: Spool
    dead_letters: DeadLetterStore
    acceptor: Acceptor
    reader_index: RunsIndex
    ledger: Ledger
    client: UpstreamClient
    upstream: UpstreamStatus
    drainer: Drainer
    started_at: float
    #: Damaged local files set aside so far (counted at start-up, see ``spoold.state.storage``).
    recoveries: StorageRecoveries = field(default_factory=StorageRecoveries)
    #: The sidecar id and the presence headers of every batch (``forward.presence``).
    presence: Presence | None = None


SIDECAR: web.AppKey[Sidecar] = web.AppKey("sidecar", Sidecar)
CONFIG: web.AppKey[SpooldConfig] = web.AppKey("spoold_config", SpooldConfig)
