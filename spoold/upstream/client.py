"""The client to the central server: one object for the drainer, the presence beacon and
the handlers, whatever the number of upstreams in ``SPOOLD_UPSTREAM_URL``.

Each URL has its ``Endpoint`` (``spoold.upstream.endpoint``: the HTTP, the credentials,
the classification of answers); ``Selection`` (``spoold.upstream.selection``) decides
which one is asked, and says why. With one URL this is exactly that URL's endpoint.

* A batch goes to the current upstream; if it does not give the server's own answer, the
  same body goes at once to the next usable one, in preference order, one attempt after
  the other (never two at once). Only when every one tried failed does the caller get
  the failure (the drainer then backs off as it always did): its cause names the last
  upstream tried, its ``Retry-After`` is the soonest any of them asked for.
* Run look-ups and proxied reads (lists, a run, export, stats, metadata) go to the
  current upstream, and to the next ones only if it gives no answer at all (refused,
  reset, timed out); any answer it gives, an error too, is relayed. Reads never move
  the selection (a slow query is not a dead replica): batches and probes do.
* Down upstreams are probed (``GET /health``) in the background once their back-off
  ends, so the sidecar fails back to a preferred upstream without sending it a batch
  first. Probes are started by the calls above, at most one per upstream at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import aiohttp
import orjson
import structlog

from server.metric_labels import status_label
from spoold.upstream.endpoint import (
    BatchAnswer,
    BatchVerdict,
    Endpoint,
    Reply,
    UpstreamUnavailable,
    classify,
    lookup_verdict,
    run_path,
)
from spoold.upstream.retry import Backoff
from spoold.upstream.selection import Selection
from spoold.upstream.tls import is_tls_failure

__all__ = [
    "BatchAnswer",
    "BatchVerdict",
    "Reply",
    "UpstreamClient",
    "UpstreamUnavailable",
    "classify",
    "lookup_verdict",
    "run_path",
]

log = structlog.get_logger("spoold.upstream")

#: Verdicts that are the server's own answer: that upstream is up.
ANSWERED: frozenset[BatchVerdict] = frozenset({"ok", "split"})


class UpstreamClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str | Sequence[str],
        *,
        token: str | None,
        batch_timeout_s: float,
        lookup_timeout_s: float,
        presence: Callable[[], Mapping[str, str]] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.endpoints = [
            Endpoint(
                session,
                url,
                token=token,
                batch_timeout_s=batch_timeout_s,
                lookup_timeout_s=lookup_timeout_s,
                presence=presence,
            )
            for url in urls
        ]
        self.selection = Selection(
            [endpoint.base_url for endpoint in self.endpoints], backoff or Backoff()
        )
        self._probes: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        """The current upstream's base URL (as configured)."""
        return self.endpoints[self.selection.current].base_url

    @property
    def last_contact(self) -> float | None:
        """When (monotonic) a batch post was last answered by the server itself, by any."""
        contacts = [e.last_contact for e in self.endpoints if e.last_contact is not None]
        return max(contacts) if contacts else None

    @last_contact.setter
    def last_contact(self, value: float | None) -> None:
        for endpoint in self.endpoints:
            endpoint.last_contact = value

    async def send_batch(self, body: bytes, items: int) -> BatchAnswer:
        """POST the batch to the current upstream, failing over in order (module docstring)."""
        self._start_due_probes()
        failures: list[BatchAnswer] = []
        for index in self.selection.order():
            answer = await self.endpoints[index].send_batch(body, items)
            if answer.verdict in ANSWERED:
                if failures:
                    log.warning(
                        "upstream_failover",
                        to=self.selection.members[index].url,
                        index=index,
                        failed=len(failures),
                    )
                self.selection.succeeded(index)
                return answer
            self.selection.failed(index, problem_of(answer), answer.cause, answer.retry_after_s)
            failures.append(self._named(index, answer))
        waits = [answer.retry_after_s for answer in failures]
        soonest = None if None in waits else min(w for w in waits if w is not None)
        last = failures[-1]
        return BatchAnswer(last.verdict, last.status, last.body, soonest, last.cause)

    async def lookup_run(self, event_id: str) -> Reply:
        """GET the run for a write that needs it (with the fleet token)."""
        return await self._read_any(lambda endpoint: endpoint.lookup_run(event_id))

    async def read(
        self, path: str, *, query: Mapping[str, str] | None, authorization: str | None
    ) -> Reply:
        """A proxied read, with the caller's own Authorization (if any) and nothing else."""
        return await self._read_any(
            lambda endpoint: endpoint.read(path, query=query, authorization=authorization)
        )

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, *, query: Mapping[str, str] | None, authorization: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A proxied read whose body the caller streams (an export): from the first upstream
        that answers its headers; once streaming, it stays with that one."""
        self._start_due_probes()
        error: UpstreamUnavailable | None = None
        for index in self.selection.order():
            endpoint = self.endpoints[index]
            async with contextlib.AsyncExitStack() as stack:
                try:
                    response = await stack.enter_async_context(
                        endpoint.stream(path, query=query, authorization=authorization)
                    )
                except UpstreamUnavailable as exc:
                    error = exc
                    continue
                yield response
                return
        assert error is not None  # order() is never empty
        raise error

    async def probe(self) -> Reply:
        """GET /health of every usable upstream (and the down ones whose back-off ended),
        recording each verdict; the current one's answer, or UpstreamUnavailable. With one
        upstream, just its /health (the drainer's retries are its probe)."""
        if not self.selection.several:
            return await self.endpoints[0].probe()
        due = self.selection.take_due_probes()
        usable = [m.index for m in self.selection.members if m.state != "down"]
        indexes = sorted(set(due) | set(usable))
        replies = await asyncio.gather(*(self._probe_one(index) for index in indexes))
        by_index = dict(zip(indexes, replies, strict=True))
        reply = by_index.get(self.selection.current)
        if reply is None:
            reply = next((r for r in replies if r is not None), None)
        if reply is None:
            raise UpstreamUnavailable("no upstream answered its /health")
        return reply

    async def close(self) -> None:
        """Cancel the probes still running (the session closes after this)."""
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.wait(self._probes, timeout=1.0)

    # ---- internals -----------------------------------------------------------------------

    async def _read_any(self, ask: Callable[[Endpoint], Awaitable[Reply]]) -> Reply:
        self._start_due_probes()
        error: UpstreamUnavailable | None = None
        for index in self.selection.order():
            try:
                return await ask(self.endpoints[index])
            except UpstreamUnavailable as exc:
                error = exc
        assert error is not None  # order() is never empty
        raise error

    def _named(self, index: int, answer: BatchAnswer) -> BatchAnswer:
        """The answer with its cause naming the upstream (only when there are several)."""
        if not self.selection.several:
            return answer
        url = self.selection.members[index].url
        cause = f"{url}: {answer.cause}" if answer.cause else url
        return BatchAnswer(answer.verdict, answer.status, answer.body, answer.retry_after_s, cause)

    def _start_due_probes(self) -> None:
        for index in self.selection.take_due_probes():
            task = asyncio.create_task(self._background_probe(index), name=f"spoold-probe-{index}")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def _background_probe(self, index: int) -> None:
        await self._probe_one(index)

    async def _probe_one(self, index: int) -> Reply | None:
        """Probe one upstream and record the verdict in the selection."""
        try:
            reply = await self.endpoints[index].probe()
        except UpstreamUnavailable as exc:
            problem = "tls" if is_tls_failure(str(exc)) else "unreachable"
            self.selection.probed(index, healthy=False, problem=problem, error=str(exc))
            return None
        except BaseException:
            self.selection.members[index].probing = False
            raise
        if is_server_health(reply):
            self.selection.probed(index, healthy=True)
        else:
            self.selection.probed(
                index,
                healthy=False,
                problem="unexpected_answer" if reply.status < 500 else _http(reply.status),
                error=f"/health answered HTTP {reply.status}, not the server's status ok",
            )
        return reply


def is_server_health(reply: Reply) -> bool:
    """Whether a /health answer is the telemetry server's, saying it is ok."""
    if reply.status != 200:
        return False
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("status") == "ok" and "version" in body


def problem_of(answer: BatchAnswer) -> str:
    """A short, bounded name for why an attempt failed (per-upstream ``problem``)."""
    if answer.verdict == "auth":
        return "auth"
    if answer.verdict == "unexpected":
        return "unexpected_answer"
    if is_tls_failure(answer.cause):
        return "tls"
    if answer.status == 0:
        return "unreachable"
    return _http(answer.status)


def _http(status: int) -> str:
    return f"http_{status_label(status)}"
