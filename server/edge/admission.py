"""Admission control: how many requests, and how many body bytes, a daemon holds at once.

Each body costs memory from its first byte until its answer: the raw bytes
while they are read, the parsed JSON (several times their size), the
validated model, and — for a write — the operation waiting in the writer's
queue (server) or the accept thread's queue (spoold). Handlers await that
write before they answer, so a request counts from admission until its
handler returns, and the bytes in those queues are always admitted bytes.

A request is admitted, before its body is read, if one more request and its
``Content-Length`` fit under the bounds; otherwise it is answered 503 with
``Retry-After`` and nothing is read or changed. A body without a
``Content-Length`` (chunked) — or one that decodes to more than it announced
(``Content-Encoding``) — is charged as it is read, and refused with the same
503 once it no longer fits. ``/health`` and ``/metrics`` are never refused
(nor counted): an overloaded daemon must still say so.

Handler cancellation stays off (aiohttp's default): a client that disconnects
does not stop the handler, so an admitted write still leaves the queue before
its bytes are released; a disconnect mid-body ends the read, and every
release happens in a ``finally``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from server.contract.errors import BadRequest, ServiceUnavailable, retry_after
from server.edge.responses import error_response

#: Never refused, never counted.
EXEMPT_PATHS = frozenset({"/health", "/metrics"})
#: What a refused client is told to wait: requests in flight finish within moments.
RETRY_AFTER_S = 1.0


class Busy(ServiceUnavailable):
    """The admission's refusal: the standard 503, answered on a connection that then closes."""


@dataclass
class Ticket:
    """One admitted request's share: the body bytes it holds (reserved or read)."""

    bytes: int
    released: bool = False


class Admission:
    """Counts requests and body bytes in flight against fixed bounds (one event loop)."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0
        self.refused = 0

    def admit(self, reserve: int) -> Ticket:
        """Take one request and ``reserve`` bytes, or raise the 503 (taking nothing)."""
        if self.requests >= self.max_requests:
            self._refuse(f"{self.requests} requests in flight (limit {self.max_requests})")
        self._check_room(reserve)
        self.requests += 1
        self.bytes += reserve
        return Ticket(reserve)

    def cover(self, ticket: Ticket, size: int) -> None:
        """The body has reached ``size`` bytes: charge what the ticket did not reserve."""
        extra = size - ticket.bytes
        if extra <= 0 or ticket.released:
            return
        self._check_room(extra)
        ticket.bytes += extra
        self.bytes += extra

    def release(self, ticket: Ticket) -> None:
        """Give back the ticket's request and bytes (idempotent)."""
        if ticket.released:
            return
        ticket.released = True
        self.requests -= 1
        self.bytes -= ticket.bytes

    def _check_room(self, size: int) -> None:
        if self.bytes + size > self.max_bytes:
            self._refuse(
                f"{self.bytes} request body bytes in flight, {size} more asked"
                f" (limit {self.max_bytes})"
            )

    def _refuse(self, why: str) -> None:
        self.refused += 1
        raise Busy(f"busy, retry later: {why}", headers=retry_after(RETRY_AFTER_S))


ADMISSION: web.AppKey[Admission] = web.AppKey("admission", Admission)
_TICKET: web.RequestKey[Ticket] = web.RequestKey("admission_ticket", Ticket)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit the request (or answer 503) before its body is read; release after its answer.

    A refused request's connection is closed after the answer (aiohttp first reads and
    discards what is left of the body, for a while): a client must not send its next
    request on a connection whose unread bytes may make the server reset it.
    """
    admission = request.app.get(ADMISSION)
    if admission is None or request.path in EXEMPT_PATHS:
        return await handler(request)
    announced = request.content_length or 0
    try:
        ticket = admission.admit(min(announced, request.client_max_size))
    except Busy as refusal:
        return _closing(refusal)
    request[_TICKET] = ticket
    try:
        return await handler(request)
    except Busy as refusal:  # a body charged as read no longer fits
        return _closing(refusal)
    finally:
        admission.release(ticket)


def _closing(refusal: Busy) -> web.Response:
    response = error_response(refusal)
    response.force_close()
    return response


async def read_body(request: web.Request) -> bytearray:
    """The whole body, charged to the request's ticket as it arrives.

    413 (aiohttp's, as ``request.read()`` raises it) once past ``client_max_size``;
    503 once the bytes read no longer fit the admission bound; 400 if the client
    goes away mid-body. The result is not cached on the request, so it is freed
    as soon as the caller has parsed it.
    """
    admission = request.app.get(ADMISSION)
    ticket: Ticket | None = request.get(_TICKET)
    limit = request.client_max_size
    body = bytearray()
    try:
        while chunk := await request.content.readany():
            body.extend(chunk)
            if limit and len(body) > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
            if admission is not None and ticket is not None:
                admission.cover(ticket, len(body))
    except web.RequestPayloadError as exc:
        raise BadRequest("request body could not be decoded (check Content-Encoding)") from exc
    except ConnectionResetError as exc:
        raise BadRequest("the connection closed before the request body was complete") from exc
    return body
