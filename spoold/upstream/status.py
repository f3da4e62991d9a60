"""What spoold knows about the upstream server, for /health and the operator.

These fields are about the upstream service as a whole, as the drainer saw it (with
several upstreams: a failure here means every one tried failed); each upstream's own
state is in ``selection`` (``spoold.upstream.selection``), listed under ``upstreams``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from server.contract.timestamps import utc_now
from server.metric_labels import status_label
from spoold.upstream.selection import Selection, public_url
from spoold.upstream.tls import is_tls_failure


@dataclass
class UpstreamStatus:
    url: str
    reachable: bool | None = None
    auth_failing: bool = False
    tls_failing: bool = False
    #: Why the last answer was not this server's (another service, a proxy): nothing is
    #: acknowledged on such an answer; cleared by the next real one.
    unexpected_answer: str | None = None
    last_success: str | None = None
    last_success_unix: float | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    consecutive_failures: int = 0
    in_flight_batches: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    #: The upstreams one by one, when the client has them (``spoold.app`` sets it).
    selection: Selection | None = None

    @property
    def current_url(self) -> str:
        """The URL batches go to now, without credentials."""
        if self.selection is not None:
            return self.selection.members[self.selection.current].url
        return public_url(self.url)

    def succeeded(self) -> None:
        self.reachable = True
        self.auth_failing = False
        self.tls_failing = False
        self.unexpected_answer = None
        self.consecutive_failures = 0
        self.last_success = utc_now()
        self.last_success_unix = time.time()

    def failed(
        self, cause: str, *, status: int, auth: bool = False, unexpected: bool = False
    ) -> None:
        self.reachable = status != 0
        self.auth_failing = auth
        self.tls_failing = is_tls_failure(cause)
        self.unexpected_answer = cause if unexpected else None
        self.consecutive_failures += 1
        self.last_error = cause
        self.last_error_at = utc_now()
        if auth:
            kind = "auth"
        elif self.tls_failing:
            kind = "tls"
        elif unexpected:
            kind = "unexpected_answer"
        else:
            # A label of spoold_retries: statuses outside the fixed set are "http_other".
            kind = "connect" if status == 0 else f"http_{status_label(status)}"
        self.retries[kind] = self.retries.get(kind, 0) + 1

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "url": self.current_url,
            "reachable": self.reachable,
            "auth_failing": self.auth_failing,
            "tls_failing": self.tls_failing,
            "unexpected_answer": self.unexpected_answer,
            "last_success": self.last_success,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "consecutive_failures": self.consecutive_failures,
            "in_flight_batches": self.in_flight_batches,
            "retries": dict(self.retries),
        }
        if self.selection is not None:
            body["current"] = self.selection.current
            body["upstreams"] = self.selection.as_json()
        return body
