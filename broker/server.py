"""uvicorn's httptools protocol with the two guards it lacks against hostile clients.

uvicorn (0.30-0.54) puts no limit on the size of a request head when it parses with
httptools, and no deadline on receiving it: one client sending an endless header line grew a
broker to hundreds of MB (200 MiB of header → +330 MB RSS, never returned), and a connection
that trickles its head (slowloris) or sends nothing at all is kept open forever. This
subclass adds:

* ``MAX_HEAD_BYTES``: a request head (request line + headers) over 64 KiB is answered
  431 ``headers_too_large`` and the connection closed, before more is buffered — whether it
  arrives over many reads (counted as it comes) or in one (measured as it is parsed);
* one ``Host`` header: two are a 400, as RFC 9112 §3.2 requires (which one would count?);
* ``HEAD_TIMEOUT``: a connection must deliver a complete head within 10 s of opening (or of
  its first byte after a keep-alive pause): otherwise 408 ``request_timeout`` and close
  (silently when it sent nothing at all);
* malformed HTTP gets the SPEC error shape (400 ``invalid_request``) instead of uvicorn's
  plain-text 400.

The request *body* deadline lives in ``edge.Edge`` (it needs the app's answer); this class tells
it, through the ``chatkit_broker.body`` scope extension, when a body has already fully arrived
— usual for a small POST, parsed in the same packet as its head — so the edge does not arm a
timer (about 9 µs) for a read that cannot wait.
``cli.serve`` selects this class with ``http="broker.server:GuardedHttpToolsProtocol"``.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import partial
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .edge import ABORT_EXTENSION, BODY_EXTENSION, HEAD_WITH_BODY_EXTENSION, new_request_id
from .errors import BrokerError, HeadersTooLarge, InvalidRequest, RequestTimeout, render

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 10.0


def error_response(error: BrokerError) -> bytes:
    """A complete HTTP/1.1 error answer in the API's error shape that closes the connection."""
    request_id = new_request_id()
    rendered = render(error, request_id)
    reason = HTTPStatus(rendered.status).phrase
    head = [f"HTTP/1.1 {rendered.status} {reason}".encode()]
    head += [name + b": " + value for name, value in rendered.headers]
    head += [b"x-request-id: " + request_id.encode(), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + rendered.body


def _too_large() -> HeadersTooLarge:
    return HeadersTooLarge(
        f"The request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB."
    )


def _abort(cycle_ref: weakref.ref[Any], transport: asyncio.Transport) -> None:
    """``edge.abort_response``: close the connection; the cycle is marked disconnected, so
    uvicorn takes the app's return for a client that left rather than an unfinished answer."""
    cycle = cycle_ref()
    if cycle is not None:
        cycle.disconnected = True
    transport.close()


class _HeadHeld:
    """A cycle's transport that holds the first write (the answer head) and joins it to the
    second (the first body chunk): ``edge.head_with_body``. Then the cycle gets its own
    transport back; everything else passes through."""

    __slots__ = ("_cycle", "_head", "_transport")

    def __init__(self, cycle: Any, transport: asyncio.Transport) -> None:
        self._cycle, self._transport, self._head = cycle, transport, None

    def write(self, data: bytes) -> None:
        if self._head is None:
            self._head = data
            return
        self._cycle.transport = self._transport
        self._transport.write(self._head + data)

    def close(self) -> None:
        self._cycle.transport = self._transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _hold_head(cycle_ref: weakref.ref[Any]) -> None:
    cycle = cycle_ref()
    if cycle is not None and cycle.transport.__class__ is not _HeadHeld:
        cycle.transport = _HeadHeld(cycle, cycle.transport)


class BodyArrival:
    """Whether the current request's body has fully arrived (set by the protocol)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` plus a head size cap and a head deadline (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between messages, or inside a request head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._got_bytes = False
        self._completed = False  # a message ended inside the chunk being parsed
        self._body: BodyArrival | None = None
        self._head_size = 0  # of the head being parsed, as its parts are parsed
        self._refusal: BrokerError | None = None

    # --- the guards ---------------------------------------------------------------------

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined head behind a running request: its turn comes later
            return
        if self._got_bytes:
            self._refuse(
                RequestTimeout(f"The request head did not arrive within {HEAD_TIMEOUT:g} s.")
            )
        else:
            self.transport.close()

    def _refuse(self, error: BrokerError) -> None:
        self._disarm()
        self.logger.info("refused a client: %d %s", error.status, error.code)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(error_response(error))
        self.transport.close()

    # --- uvicorn / httptools hooks ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._arm()
        self._completed = False
        super().data_received(data)
        # bytes still unparsed into a complete head count against the cap; a chunk in which
        # a message ended is not counted (its tail, if any, starts a pipelined request)
        if self._in_head and not self._completed and not self.transport.is_closing():
            self._got_bytes = True
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(_too_large())

    # A head that arrives whole in one read completes inside ``data_received``, so the count
    # above never sees it: the parsed parts are measured too (request line + header lines).

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = len("  HTTP/1.1\r\n\r\n")  # around the method and URL

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._head_size += len(self.parser.get_method())
        if self._head_size > MAX_HEAD_BYTES:
            self._refusal = _too_large()
        elif sum(name == b"host" for name, _ in self.headers) > 1:
            self._refusal = InvalidRequest("Send one Host header, not several (RFC 9112 §3.2).")
        if self._refusal is not None:
            # stops the parser (httptools: a callback error); uvicorn then calls
            # send_400_response, which answers this refusal instead
            raise RuntimeError(self._refusal.code)
        self._in_head = False
        self._disarm()
        body = self._body = BodyArrival()
        # before the app's task runs: uvicorn only schedules it here
        extensions = self.scope.setdefault("extensions", {})
        extensions[BODY_EXTENSION] = body
        super().on_headers_complete()
        # the cycle holds the scope: a strong reference back would make every request a
        # reference cycle, freed only by the garbage collector (whose young generation runs
        # every 50,000 allocations in `serve`): at 512 connections, about 12 MB of RSS
        cycle = weakref.ref(self.cycle)
        extensions[ABORT_EXTENSION] = partial(_abort, cycle, self.transport)
        extensions[HEAD_WITH_BODY_EXTENSION] = partial(_hold_head, cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._body is not None:
            self._body.complete = True
            self._body = None
        self._in_head, self._head_bytes, self._got_bytes = True, 0, False
        self._completed = True

    def send_400_response(self, msg: str) -> None:
        refused, self._refusal = self._refusal, None
        if refused is not None:
            self._refuse(refused)
            return
        self._disarm()
        self.transport.write(error_response(InvalidRequest("The request is not valid HTTP/1.1.")))
        self.transport.close()
