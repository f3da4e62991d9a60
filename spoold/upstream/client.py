"""The HTTP client to the central server: batches, run look-ups and proxied reads.

Foreign exceptions (aiohttp's, asyncio's timeouts) are translated here, at one
boundary, into ``UpstreamUnavailable`` keeping the cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson

from spoold.upstream.retry import AUTH_STATUSES, RETRYABLE_STATUSES, parse_retry_after
from spoold.upstream.tls import describe_tls_error

BatchVerdict = Literal["ok", "retry", "auth", "split"]
#: Whole-batch answers that are about the items themselves.
SPLIT_STATUSES = frozenset({400, 413, 422})


class UpstreamUnavailable(Exception):
    """The server could not be reached or did not answer in time."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class BatchAnswer:
    verdict: BatchVerdict
    status: int
    body: Any = None
    retry_after_s: float | None = None
    cause: str = ""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str]


class UpstreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        token: str | None,
        batch_timeout_s: float,
        lookup_timeout_s: float,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._batch_timeout = aiohttp.ClientTimeout(total=batch_timeout_s)
        self._lookup_timeout = aiohttp.ClientTimeout(total=lookup_timeout_s)
        self.base_url = self._base

    async def send_batch(self, body: bytes) -> BatchAnswer:
        """POST a JSON array of upsert items (already encoded) and classify the answer."""
        try:
            async with self._session.post(
                f"{self._base}/api/v1/runs/batch",
                params={"mode": "upsert"},
                data=body,
                headers={**self._headers, "Content-Type": "application/json"},
                timeout=self._batch_timeout,
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return BatchAnswer("retry", 0, cause=_describe(exc))
        if 200 <= status < 300:
            try:
                return BatchAnswer("ok", status, orjson.loads(raw))
            except orjson.JSONDecodeError:
                return BatchAnswer("retry", status, cause="unparseable batch answer")
        if status in AUTH_STATUSES:
            return BatchAnswer("auth", status, cause=f"HTTP {status}", retry_after_s=retry_after)
        if status in SPLIT_STATUSES:  # about the content: split until the bad item stands alone
            return BatchAnswer("split", status, body=_safe_json(raw), cause=f"HTTP {status}")
        # 5xx, 429, and also 404/405/400…: the endpoint or a proxy is wrong, not the items.
        # Retried (an operator can fix the URL) and shown on /health; never dead-lettered.
        kind = "retry" if status in RETRYABLE_STATUSES or status >= 500 else "misconfigured"
        return BatchAnswer(
            "retry", status, retry_after_s=retry_after, cause=f"HTTP {status} ({kind})"
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        """A proxied request; raise UpstreamUnavailable if the server cannot answer."""
        try:
            async with self._session.request(
                method,
                f"{self._base}{path}",
                params=query,
                data=body,
                headers={**self._headers, "Content-Type": "application/json"}
                if body
                else self._headers,
                timeout=self._lookup_timeout,
            ) as response:
                raw = await response.read()
                return Reply(
                    response.status,
                    raw,
                    response.content_type or "application/json",
                    {key: value for key, value in response.headers.items() if key in _PASS_HEADERS},
                )
        except TimeoutError as exc:
            raise UpstreamUnavailable("upstream server timed out", timeout=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream server unreachable: {_describe(exc)}") from exc


_PASS_HEADERS = frozenset(
    {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    | {"X-Next-Cursor"}  # the list's keyset cursor, so agents can page through spoold too
)


def _safe_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _describe(exc: BaseException) -> str:
    text = describe_tls_error(exc) or str(exc) or type(exc).__name__
    return text[:200]
