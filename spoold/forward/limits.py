"""The server's limits, applied at spoold's door to each operation as the server will see it.

The server judges the batch body, not the agent's request: an operation reaches it
wrapped in the envelope ``[{"event_id": …, "create"|"update": {…}}]``, two levels
deeper than a POST/PATCH body and a few dozen bytes larger (more once normalised,
e.g. ``created_at`` added; and its ``source`` and ``sequence``, which are judged at
their widest, ``WIDEST_ORIGIN``: the stamp the drainer puts on it later may be a few
dozen bytes shorter, never longer). An operation the server would refuse even alone could
only be acknowledged and then dead-lettered; it is refused here instead, with the
server's own error (413 ``payload_too_large``, 400 ``malformed_json``). The limits
are configuration mirroring the server's (``SPOOLD_UPSTREAM_MAX_BODY_BYTES`` /
``SPOOLD_UPSTREAM_MAX_JSON_DEPTH``, defaulting to the server's defaults): spoold
must judge while the server is away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from server.contract.codec import nesting_depth
from server.contract.errors import MalformedJson, PayloadTooLarge
from spoold.forward.coalesce import WIDEST_ORIGIN, lone


@dataclass(frozen=True)
class UpstreamLimits:
    max_body_bytes: int
    max_json_depth: int

    def check(self, op: dict[str, Any]) -> None:
        """Raise the server's own 413/400 if ``op``, alone in a batch, would be refused."""
        envelope = [_upsert_item(op)]
        encoded = orjson.dumps(envelope)
        size = len(encoded)
        if size > self.max_body_bytes:
            raise PayloadTooLarge(
                f"request body too large for the telemetry server: {size} bytes once wrapped "
                f"in its batch envelope, at most {self.max_body_bytes} are accepted"
            )
        # Depth never exceeds the count of opening brackets (strings included): only a
        # body with more of them than the limit needs the walk (~4 us for a typical run).
        brackets = encoded.count(b"{") + encoded.count(b"[")
        if (
            brackets > self.max_json_depth
            and nesting_depth(envelope, limit=self.max_json_depth) > self.max_json_depth
        ):
            raise MalformedJson(
                f"JSON nested deeper than {self.max_json_depth} levels once wrapped in the "
                "telemetry server's batch envelope, which adds 2 levels around each run "
                "or update"
            )


def _upsert_item(op: dict[str, Any]) -> dict[str, Any]:
    """The operation exactly as the drainer sends it alone (its ``seen_at``, a heartbeat's
    ``metrics_patch`` or ``heartbeat`` flag included; its source and sequence at their
    widest): the drainer's own folding, so the two can never disagree on a byte."""
    return lone(op, 0, WIDEST_ORIGIN).upsert_item()
