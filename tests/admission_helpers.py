"""Helpers of the admission tests of both daemons: an app served as the daemon serves it,
and raw HTTP/1.1 connections that hold a request open mid-body.

The app runs on an ``AppRunner`` on 127.0.0.1 with handler cancellation off, as
``server.runtime.daemon`` runs it (aiohttp's test server turns cancellation on, which
would hide what a real daemon does when a client goes away mid-body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from server.edge.admission import ADMISSION, Admission

KIB = 1024
FORBIDDEN_IN_ANY_BODY = ("Traceback", 'File "')


class Raw:
    """One HTTP/1.1 connection on a raw socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send_head(self, method: str, path: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_chunked(self, body: bytes, *, piece: int = KIB, end: bool = True) -> None:
        for start in range(0, len(body), piece):
            part = body[start : start + piece]
            await self.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        if end:
            await self.send(b"0\r\n\r\n")

    async def response(self, timeout_s: float = 5.0) -> tuple[int, dict[str, str], Any]:
        """Status, headers (lower-case names) and JSON body of the next response."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
        status_line, *lines = head.decode().split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        raw = await asyncio.wait_for(
            self.reader.readexactly(int(headers["content-length"])), timeout_s
        )
        return int(status_line.split()[1]), headers, json.loads(raw)

    def abort(self) -> None:
        """Drop the connection mid-request, as a crashing client does."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class Served:
    """An app served on 127.0.0.1 as its daemon serves it, with a client and raw sockets."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.port = 0
        self.http: aiohttp.ClientSession | None = None
        self._raws: list[Raw] = []

    @property
    def admission(self) -> Admission:
        return self.app[ADMISSION]

    async def start(self) -> Served:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        self.http = aiohttp.ClientSession(f"http://127.0.0.1:{self.port}")
        return self

    async def stop(self) -> None:
        for raw in self._raws:
            await raw.close()
        if self.http is not None:
            await self.http.close()
        await self.runner.cleanup()

    async def connect(self) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        raw = Raw(reader, writer)
        self._raws.append(raw)
        return raw

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers (lower-case names) and parsed body; no traceback ever leaks."""
        assert self.http is not None
        async with self.http.request(
            method, path, json=json_body, data=data, headers=headers
        ) as response:
            text = await response.text()
            for marker in FORBIDDEN_IN_ANY_BODY:
                assert marker not in text, text[:300]
            headers = {name.lower(): value for name, value in response.headers.items()}
            body = json.loads(text) if "json" in response.content_type else text
            return response.status, headers, body


def json_head(size: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "Content-Length": str(size)}


CHUNKED_HEAD = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}


def padded(run: dict[str, Any], size: int) -> bytes:
    """``run`` as a JSON body of exactly ``size`` bytes (padded in error_details)."""
    run = {**run, "error_details": ""}
    bare = len(json.dumps(run).encode())
    run["error_details"] = "x" * (size - bare)
    body = json.dumps(run).encode()
    assert len(body) == size, (len(body), size)
    return body


def assert_busy(status: int, headers: dict[str, str], body: Any) -> None:
    """The admission's refusal: 503, Retry-After, the standard JSON error body."""
    assert status == 503, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    assert int(headers["retry-after"]) >= 1, headers
    assert isinstance(body, dict), body
    assert set(body) == {"detail", "error"}, body
    assert body["error"] == "service_unavailable", body
    assert "busy" in body["detail"], body


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll predicate (bounded in time and in polls), or fail naming what was awaited."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.01) + 2):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
