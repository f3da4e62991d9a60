"""The HTTP client to one upstream (one base URL): batches, run look-ups, proxied reads.

``spoold.upstream.client.UpstreamClient`` holds one of these per URL of
``SPOOLD_UPSTREAM_URL`` and chooses between them (``spoold.upstream.selection``).

Credentials: the fleet token (``SPOOLD_UPSTREAM_TOKEN``) authorises spoold's own
writes - the batches it delivers, and the look-ups a write needs (does this run
exist, its ``run_id`` for the answer). Proxied reads carry the caller's own
``Authorization`` header and never the fleet token: a local user reads only what
their own credentials allow.

Every path segment built from an id is percent-encoded (``run_path``) and sent
as is: an id with ``?``, ``#`` or ``%`` names its own run, never another one.

Foreign exceptions (aiohttp's, asyncio's timeouts) are translated here, at one
boundary, into ``UpstreamUnavailable`` keeping the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from spoold.upstream.answers import about_the_request, batch_answer_problem, is_server_error
from spoold.upstream.retry import AUTH_STATUSES, RETRYABLE_STATUSES, parse_retry_after
from spoold.upstream.tls import describe_tls_error

BatchVerdict = Literal["ok", "retry", "auth", "split", "unexpected"]
#: Whole-batch answers that are about the items themselves (when the server's own).
SPLIT_STATUSES = frozenset({400, 413, 422})


def run_path(event_id: str, *tail: str) -> str:
    """``/api/v1/runs/{event_id}[/tail…]`` with the id percent-encoded as one segment.

    ``quote`` leaves dots alone, so an id ``.`` or ``..`` is escaped by hand: any HTTP
    stack on the way may otherwise resolve it as a dot segment (``/api/v1/runs/..`` is
    ``/api/v1/``)."""
    segment = quote(event_id, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return "/".join(("/api/v1/runs", segment, *tail))


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


#: A streamed read (export) fails when the server sends nothing for this long.
STREAM_READ_TIMEOUT_S = 60.0


class Endpoint:
    """One upstream base URL; every call gives one answer from it, never from another."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        token: str | None,
        batch_timeout_s: float,
        lookup_timeout_s: float,
        presence: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._session = session
        #: Headers every batch post carries (``spoold.forward.presence``).
        self._presence = presence
        #: When (monotonic) a batch post was last answered by the server itself.
        self.last_contact: float | None = None
        self._base = base_url.rstrip("/")
        self._fleet = {"Authorization": f"Bearer {token}"} if token else {}
        self._batch_timeout = aiohttp.ClientTimeout(total=batch_timeout_s)
        self._lookup_timeout = aiohttp.ClientTimeout(total=lookup_timeout_s)
        self.base_url = self._base

    def _url(self, path: str) -> URL:
        """The base URL plus an already percent-encoded path, not re-quoted."""
        return URL(str(URL(self._base)) + path, encoded=True)

    async def send_batch(self, body: bytes, items: int) -> BatchAnswer:
        """POST a JSON array of ``items`` upsert items (already encoded); classify the answer."""
        presence = self._presence() if self._presence is not None else {}
        try:
            async with self._session.post(
                self._url("/api/v1/runs/batch?mode=upsert"),
                data=body,
                headers={**self._fleet, **presence, "Content-Type": "application/json"},
                timeout=self._batch_timeout,
            ) as response:
                raw = await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return BatchAnswer("retry", 0, cause=_describe(exc))
        answer = classify(status, raw, items, retry_after)
        if answer.verdict in ("ok", "split"):  # the server's own answer
            self.last_contact = time.monotonic()
        return answer

    async def lookup_run(self, event_id: str) -> Reply:
        """GET the run for a write that needs it (with the fleet token)."""
        return await self._get(run_path(event_id), headers=self._fleet)

    async def read(
        self, path: str, *, query: Mapping[str, str] | None, authorization: str | None
    ) -> Reply:
        """A proxied read, with the caller's own Authorization (if any) and nothing else."""
        headers = {"Authorization": authorization} if authorization else {}
        return await self._get(path, query=query, headers=headers)

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, *, query: Mapping[str, str] | None, authorization: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A proxied read whose body the caller streams (an export): the lookup deadline
        until the answer's headers, then only one between two reads of the body."""
        headers = {"Authorization": authorization} if authorization else {}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._lookup_timeout.total, sock_read=STREAM_READ_TIMEOUT_S
        )
        try:
            context = self._session.get(
                self._url(path), params=query, headers=headers, timeout=timeout
            )
            async with asyncio.timeout(self._lookup_timeout.total):  # until the headers
                response = await context.__aenter__()
        except TimeoutError as exc:
            raise UpstreamUnavailable("upstream server timed out", timeout=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream server unreachable: {_describe(exc)}") from exc
        try:
            yield response
        finally:
            response.release()

    async def probe(self) -> Reply:
        """GET /health, an open path: no credentials."""
        return await self._get("/health", headers={})

    async def _get(
        self,
        path: str,
        *,
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
    ) -> Reply:
        """A GET; raise UpstreamUnavailable if the server cannot answer."""
        try:
            async with self._session.get(
                self._url(path),
                params=query,
                headers=headers,
                timeout=self._lookup_timeout,
            ) as response:
                raw = await response.read()
                return Reply(
                    response.status,
                    raw,
                    response.content_type or "application/json",
                    {
                        key: value
                        for key, value in response.headers.items()
                        if key.lower() in _PASS_HEADERS
                    },
                )
        except TimeoutError as exc:
            raise UpstreamUnavailable("upstream server timed out", timeout=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream server unreachable: {_describe(exc)}") from exc


LookupVerdict = Literal["found", "missing", "unknown"]


def lookup_verdict(reply: Reply, event_id: str) -> LookupVerdict:
    """What a run look-up says: the server's run, the server's own 404, or nothing sure
    (a proxy's 404, another service's 200, a 5xx…) - then the update is kept, unconfirmed."""
    body = _safe_json(reply.body)
    if reply.status == 404 and is_server_error(404, body):
        return "missing"
    if reply.status == 200 and isinstance(body, dict) and body.get("event_id") == event_id:
        return "found"
    return "unknown"


def classify(status: int, raw: bytes, items: int, retry_after: float | None) -> BatchAnswer:
    """What the answer to a batch of ``items`` items means for the drainer."""
    if 200 <= status < 300:
        body = _safe_json(raw)
        problem = batch_answer_problem(body, items)
        if problem is None:
            return BatchAnswer("ok", status, body)
        return BatchAnswer(
            "unexpected", status, cause=f"unexpected answer: HTTP {status}, {problem}"
        )
    if status in AUTH_STATUSES:
        return BatchAnswer("auth", status, cause=f"HTTP {status}", retry_after_s=retry_after)
    if status in RETRYABLE_STATUSES or status >= 500:
        return BatchAnswer("retry", status, retry_after_s=retry_after, cause=f"HTTP {status}")
    body = _safe_json(raw)
    if status in SPLIT_STATUSES and is_server_error(status, body) and not about_the_request(body):
        # About the content: split until the bad item stands alone.
        return BatchAnswer("split", status, body=body, cause=f"HTTP {status}")
    # A proxy's 413, a server without mode=upsert, a wrong URL (404/405…): not about the
    # items. Retried (an operator can fix it) and shown on /health; never dead-lettered.
    return BatchAnswer(
        "unexpected",
        status,
        retry_after_s=retry_after,
        cause=f"unexpected answer: HTTP {status}, not this server's error for a batch",
    )


#: Answer headers relayed on proxied reads, lower case: names are matched whatever their
#: case (a proxy, or HTTP/2, may lower-case them).
_PASS_HEADERS = frozenset(
    {
        "retry-after",
        "www-authenticate",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-next-cursor",  # the list's keyset cursor, so agents can page through spoold too
    }
)


def _safe_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _describe(exc: BaseException) -> str:
    text = describe_tls_error(exc) or str(exc) or type(exc).__name__
    return text[:200]
