"""The body of ``POST /api/v1/runs/{event_id}/heartbeat``, shared by both daemons.

A heartbeat says "this run's agent is alive". Its body is empty (Content-Length
0 or only whitespace, any or no content type) or ``{"progress": {...}}``, a JSON
object (not JSON text in a string) applied to
the run's ``metrics_json`` as an RFC 7396 merge patch. Nothing else is accepted:
a typo must not pass for a heartbeat that carried nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.contract.codec import loads
from server.contract.validation import parse_model


class Heartbeat(BaseModel):
    """An optional ``progress`` merge patch; an empty body is a heartbeat without one."""

    model_config = ConfigDict(extra="forbid")

    progress: dict[str, Any] | None = Field(
        default=None,
        description="Merged into the run's metrics_json as an RFC 7396 JSON merge patch "
        "(a null metrics_json counts as {}; a key set to null is removed).",
    )

    def body(self) -> dict[str, Any]:
        """What a spooled heartbeat keeps: ``{"progress": {...}}``, or ``{}``."""
        return {} if self.progress is None else {"progress": self.progress}


def parse_heartbeat(
    raw: bytes | bytearray, *, max_depth: int, context: dict[str, Any]
) -> Heartbeat:
    """Validate a heartbeat body: empty (or only whitespace) is a bare heartbeat; anything
    else must be the model's JSON."""
    if not raw.strip():
        return Heartbeat()
    return parse_model(Heartbeat, loads(raw, max_depth=max_depth), context=context)
