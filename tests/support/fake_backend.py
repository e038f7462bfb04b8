"""A gateway backend that misbehaves on request, and records what reached it.

Each path is one behaviour (``POST /sse/trickle``, ``/hang``, ``/reset`` …). Handlers run
with aiohttp's handler cancellation on, so a client (the broker) closing its connection
cancels the handler: ``cancelled`` records when, which is how a test proves that Stop in the
browser reached the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .aioserver import serve

EVENT = b'data: {"type":"progress_update","text":"tick"}\n\n'


@dataclass
class Seen:
    """One request as the backend received it."""

    path: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: tuple[str, int]


@dataclass
class FakeBackend:
    requests: list[Seen] = field(default_factory=list)
    cancelled: list[tuple[str, float]] = field(default_factory=list)  # (path, monotonic time)
    written: int = 0  # bytes the flood handler managed to hand to the socket
    base_url: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers_of(self, index: int = -1) -> dict[str, list[str]]:
        folded: dict[str, list[str]] = {}
        for name, value in self.requests[index].headers:
            folded.setdefault(name.lower(), []).append(value)
        return folded

    # --- handlers --------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        self.requests.append(
            Seen(
                request.path,
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
                await request.read(),
                peer,
            )
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        return response

    @contextlib.asynccontextmanager
    async def _watched(self, request: web.Request) -> AsyncIterator[None]:
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled.append((request.path, time.monotonic()))
            raise

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        kind = request.match_info["kind"]
        async with self._watched(request):
            return await getattr(self, "do_" + kind.replace("-", "_"))(request)

    async def do_sse(self, request: web.Request) -> web.StreamResponse:
        """``count`` events, ``gap`` seconds apart."""
        count = int(request.query.get("count", "3"))
        gap = float(request.query.get("gap", "0"))
        response = await self._stream(request)
        for index in range(count):
            if index and gap:
                await asyncio.sleep(gap)
            await response.write(EVENT)
        await response.write_eof()
        return response

    async def do_whole(self, request: web.Request) -> web.StreamResponse:
        """One event answered whole, with a Content-Length: head and body in one segment."""
        return web.Response(body=EVENT, content_type="text/event-stream")

    async def do_trickle(self, request: web.Request) -> web.StreamResponse:
        """One event, one byte at a time, ``gap`` seconds apart."""
        gap = float(request.query.get("gap", "0.1"))
        response = await self._stream(request)
        for byte in EVENT:
            await response.write(bytes([byte]))
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def do_hang(self, request: web.Request) -> web.StreamResponse:
        """Accept the request and never answer."""
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def do_stall(self, request: web.Request) -> web.StreamResponse:
        """One event, then silence."""
        response = await self._stream(request)
        await response.write(EVENT)
        await asyncio.sleep(3600)
        return response

    async def do_reset(self, request: web.Request) -> web.StreamResponse:
        """Two events, then the connection is torn down mid-body."""
        response = await self._stream(request)
        await response.write(EVENT + EVENT)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def do_garbage(self, request: web.Request) -> web.StreamResponse:
        """A 200 event stream of 10 MB without a single event boundary (after ``?events=``
        whole events, 0 by default)."""
        response = await self._stream(request)
        for _ in range(int(request.query.get("events", "0"))):
            await response.write(EVENT)
            await asyncio.sleep(0.01)  # one chunk each
        chunk = b"x" * 65536
        for _ in range(160):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def do_unframed(self, request: web.Request) -> web.StreamResponse:
        """A short stream whose last event never ends with a blank line."""
        response = await self._stream(request)
        await response.write(EVENT + b'data: {"type":"notice"')
        await response.write_eof()
        return response

    async def do_flood(self, request: web.Request) -> web.StreamResponse:
        """Write 64 MiB of well-framed events as fast as the socket takes them."""
        response = await self._stream(request)
        event = b"data: " + b"y" * (16 * 1024 - 8) + b"\n\n"
        for _ in range(4096):
            await response.write(event)
            self.written += len(event)
        await response.write_eof()
        return response

    async def do_json(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [], "has_more": False, "after": None})

    async def do_bad_json(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"data": [', content_type="application/json")

    async def do_status(self, request: web.Request) -> web.StreamResponse:
        status = int(request.query["code"])
        if request.query.get("json"):
            body = {"error": {"code": "backend_says", "message": "thread not found"}}
            return web.json_response(body, status=status, headers={"Retry-After": "7"})
        return web.Response(
            status=status,
            text="Traceback: secret-internal-detail at line 42",
            content_type="text/html",
        )

    async def do_encoded(self, request: web.Request) -> web.StreamResponse:
        """A body compressed by hand and labelled ``?coding=`` (gzip, deflate, br…), whatever
        it holds: ``?payload=json|html|bomb|corrupt``, ``?type=`` its content type."""
        coding = request.query.get("coding", "gzip")
        payload = request.query.get("payload", "json")
        raw = {
            "json": b'{"data": [], "has_more": false, "after": null}',
            "html": b"<html><body>Sign in to continue</body></html>",
            "bomb": b"[" + b" " * (64 * 1024 * 1024) + b"]",
        }.get(payload, b"{}")
        body = zlib.compress(raw) if coding == "deflate" else gzip.compress(raw, compresslevel=9)
        if payload == "corrupt":
            body = body[:10] + b"\x00garbage" + body[10:]
        content_type = request.query.get("type", "application/json")
        headers = {"Content-Encoding": coding, "Content-Type": content_type}
        return web.Response(body=body, headers=headers)

    async def do_redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(location=self.url("/sse"))

    async def do_echo(self, request: web.Request) -> web.StreamResponse:
        """The request's headers back as JSON, for the header-policy tests."""
        return web.json_response({"headers": self.requests[-1].headers})

    async def do_close_early(self, request: web.Request) -> web.StreamResponse:
        """Read the request, then drop the connection without answering."""
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(1)
        return web.Response()


@contextlib.asynccontextmanager
async def fake_backend(*, keepalive: float = 75.0) -> AsyncIterator[FakeBackend]:
    backend = FakeBackend()
    app = web.Application()
    app.router.add_post("/{kind}", backend.handle)
    async with serve(app, keepalive=keepalive, handler_cancellation=True) as url:
        backend.base_url = url
        yield backend


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON payloads of a ``data:``-only event stream, as chatkit-python writes them."""
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            events.append(json.loads(block[len(b"data: ") :]))
    return events
