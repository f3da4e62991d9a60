"""The fixed label sets of both daemons' Prometheus metrics (methods and statuses).

A label value outside a fixed set is "other", so no client can grow a metric's label
set. Kept apart from the HTTP layer: spoold's upstream status counts its retries by
the same status labels and may not import the server's HTTP modules.
"""

from __future__ import annotations

#: The only values the ``method`` and ``status`` labels take (others: "other").
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_LABELS = frozenset(
    {200, 201, 202, 204, 304, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 422}
    | {429, 431, 500, 501, 502, 503, 504}
)


def method_label(method: str) -> str:
    return method if method in METHOD_LABELS else "other"


def status_label(status: int) -> str:
    return str(status) if status in STATUS_LABELS else "other"
