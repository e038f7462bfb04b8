"""The streaming relay between a browser and a gateway workflow's own ChatKit server.

Pure ASGI, because the properties that matter live below any framework's response class:

* **no buffering**: each chunk of a ``text/event-stream`` answer goes to the browser as it
  arrives (``readany``), uncompressed (upstream is asked for ``identity``; bytes pass raw);
* **back-pressure**: the next chunk is read only after the browser's ``send`` returned, so a
  slow reader slows the backend through TCP instead of filling a queue;
* **Stop that stops**: ChatKit has no cancel request — Stop is the browser dropping the
  connection. A watcher on ``receive()`` sees ``http.disconnect`` and closes the upstream
  connection at once, so the backend's ``handle_stream_cancelled`` runs and the model stops;
* **stream timeouts**: no total timeout, a connect timeout and a per-read idle timeout;
* **honest failures**: before the first byte a JSON error (502/503/504); after it the
  connection is aborted (``StreamAborted``), never ended cleanly as if the reply were done;
* **no retries** except when no connection could be made (nothing was sent), and a pooled
  connection is kept idle for less time than a backend keeps it (uvicorn: 5 s).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from starlette.types import Message, Receive, Scope, Send

from ...edge import head_with_body
from ...errors import (
    BackendError,
    BackendRejectedIdentity,
    BackendTimeout,
    BackendUnavailable,
    BrokerError,
    PayloadTooLarge,
)
from ...http import HttpPool
from ...httpread import read_capped
from .files import AttachmentUrls, SseRewriter
from .headers import HeaderPolicy
from .workflow import DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT  # written once

log = logging.getLogger("broker.gateway")

MAX_REQUEST_BYTES = 256 * 1024
MAX_JSON_BYTES = 8 * 1024 * 1024
# an SSE event larger than this without a blank line is not ChatKit: abort instead of relaying
MAX_EVENT_BYTES = 1024 * 1024
LOGGED_BODY_CHARS = 300
POOL_KEEPALIVE = 2.0  # seconds; below uvicorn's default 5 s keep-alive (stale-socket race)
CONNECT_RETRY_DELAY = 0.1
SSE = "text/event-stream"


class Outcome(StrEnum):
    """How a proxied request ended; before the first byte the outcome is the error's code."""

    COMPLETED = "completed"
    CLIENT_CLOSED = "client_closed"
    BACKEND_RESET = "backend_reset"
    TIMEOUT = "timeout"
    BACKEND_GARBAGE = "backend_garbage"


class StreamAborted(Exception):
    """Raised after the response started, so the server drops the connection mid-body.

    A browser must see a broken stream (ChatKit shows an error and can retry), never a clean
    end that looks like a finished reply.
    """


@dataclass(frozen=True)
class Upstream:
    """Where one workflow's requests go, and how long to wait for them."""

    url: str
    workflow: str = ""  # for metrics and logs
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    # what to tell the operator when the backend refuses the assertion (JWKS URL, audience)
    identity_hint: str = ""
    # the workflow's forward_headers: inbound names forwarded beside the built-in allowlist
    forward_headers: tuple[str, ...] = ()


@dataclass
class Relay:
    """What happened to one proxied request: for metrics and the access-log line."""

    outcome: str = "pending"
    status: int | None = None  # what the browser got
    upstream_status: int | None = None
    bytes_out: int = 0
    ttfb: float | None = None  # seconds from sending upstream to the backend's answer head
    duration: float = 0.0
    streamed: bool = False


def gateway_pool(*, limit: int = 4096, keepalive: float = POOL_KEEPALIVE) -> HttpPool:
    """The gateway's own pool, shared by every gateway workflow.

    Apart from the broker's (30 s keep-alive) because an idle connection must be dropped
    before the backend drops it (uvicorn: 5 s): a POST on a connection the backend already
    closed fails, and must not be retried. Relays pass ``auto_decompress=False`` per request.
    """
    return HttpPool(limit=limit, keepalive=keepalive)


class _Framing:
    """Tracks SSE event boundaries across chunks, to refuse a stream that never frames."""

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self.limit = limit
        self.pending = 0  # bytes since the last blank line
        self._tail = b""

    def feed(self, chunk: bytes) -> bool:
        """False once more than ``limit`` bytes arrived without an event boundary."""
        if chunk.endswith(b"\n\n"):  # the usual chunk, whole events: no copy, no search
            self.pending = 0
            self._tail = b"\n\n"  # all that can start a boundary across the next chunk
            return True
        data = self._tail + chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"), data.rfind(b"\r\r"))
        if cut >= 0:
            self.pending = len(data) - cut - 2
        else:
            self.pending += len(chunk)
        self._tail = data[-3:]
        return self.pending <= self.limit


async def read_request_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole request body, ``PayloadTooLarge`` over ``limit``, None if the client left."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KiB.")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KiB.")
        if not message.get("more_body", False):
            return bytes(body)


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


@functools.lru_cache(maxsize=256)
def _timeout(connect: float, idle: float) -> aiohttp.ClientTimeout:
    """A relay's timeouts: none in total, ``connect`` to connect, ``idle`` between reads
    (immutable, so one object per pair serves every request)."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=idle)


def _snippet(body: bytes) -> str:
    text = body[:LOGGED_BODY_CHARS].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text + ("…" if len(body) > LOGGED_BODY_CHARS else "")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


class GatewayProxy:
    """Relays ChatKit requests to upstream servers; one instance serves every workflow."""

    def __init__(
        self,
        http: Callable[[], aiohttp.ClientSession],
        policy: HeaderPolicy | None = None,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_json_bytes: int = MAX_JSON_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        clock: Callable[[], float] = time.perf_counter,
        on_stream: Callable[[str, int], None] | None = None,
    ) -> None:
        self._http = http
        self._policy = policy or HeaderPolicy()
        self._max_request = max_request_bytes
        self._max_json = max_json_bytes
        self._max_event = max_event_bytes
        self._clock = clock
        # called with (workflow, +1) when an event stream starts and (workflow, -1) when it ends
        self._on_stream = on_stream

    async def read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The request body under the gateway's cap (``PayloadTooLarge``), None if the
        client left; read before ``relay`` so the caller can look at the request type."""
        return await read_request_body(scope, receive, self._max_request)

    async def relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        body: bytes,
        own_headers: Sequence[tuple[str, str]],
        record: Relay | None = None,
        urls: AttachmentUrls | None = None,
    ) -> Relay:
        """Forward one ``POST`` with ``body`` and relay its answer; ``own_headers`` (the
        assertion, the request id) are added after the inbound headers were filtered.

        Raises a ``BrokerError`` before anything was sent to the browser (the caller renders
        it), ``StreamAborted`` after. ``record`` is filled in on every path. With ``urls``,
        attachments' upload and preview URLs in the answer are rewritten to broker URLs.
        """
        record = record if record is not None else Relay()
        started = self._clock()
        try:
            headers = self._policy.forward(
                scope["headers"],
                [*own_headers, ("Accept-Encoding", "identity")],
                self._policy.allowed(upstream.forward_headers),
            )
            await self._race_disconnect(
                self._exchange(scope, send, upstream, body, headers, record, urls), receive, record
            )
            return record
        except BrokerError as exc:
            record.outcome = exc.code
            record.status = exc.status
            raise
        finally:
            record.duration = self._clock() - started

    async def _race_disconnect(
        self, exchange: Coroutine[Any, Any, None], receive: Receive, record: Relay
    ) -> None:
        """Run the exchange until it ends or the browser leaves, whichever comes first.

        The exchange runs in this task, so the request reaches the backend without a task
        start and an ``asyncio.wait`` first, and nothing is left to collect after the answer
        (issue 24: about 40 µs of the first event's path and as much after the last write);
        only the watcher is a task. When the browser leaves, the watcher cancels this task:
        the exchange's cleanup closes its upstream response, which closes the connection, so
        the backend's server sees the disconnect just as if the browser were its own client.
        """
        task = asyncio.current_task()
        assert task is not None
        left = False

        def on_watch_done(watch: asyncio.Future[None]) -> None:
            nonlocal left
            if watch.cancelled():
                return
            watch.exception()  # the receive channel's error, if any, also means "gone"
            left = True
            task.cancel()

        watch = asyncio.ensure_future(_until_disconnect(receive))
        watch.add_done_callback(on_watch_done)
        try:
            await exchange
        except asyncio.CancelledError:
            # the watcher's cancel is a browser that left; any other (server shutdown) goes on
            if left and task.uncancel() == 0:
                record.outcome = Outcome.CLIENT_CLOSED
                return
            raise
        finally:  # no await from here on: the watcher cannot fire after the exchange ended
            watch.remove_done_callback(on_watch_done)
            watch.cancel()

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        upstream: Upstream,
        body: bytes,
        headers: list[tuple[str, str]],
        record: Relay,
        urls: AttachmentUrls | None = None,
    ) -> None:
        started = self._clock()
        response = await self._open(upstream, body, headers)
        record.ttfb = self._clock() - started
        record.upstream_status = response.status
        finished = False
        try:
            await self._answer(scope, send, upstream, response, record, urls)
            finished = True
        finally:
            if finished:
                response.release()
            else:
                response.close()  # drop the connection: never reuse a half-read one

    async def _open(
        self, upstream: Upstream, body: bytes, headers: list[tuple[str, str]]
    ) -> aiohttp.ClientResponse:
        """Send the request; retried once only when no connection could be made at all."""
        timeout = _timeout(upstream.connect_timeout, upstream.idle_timeout)
        for attempt in (1, 2):
            try:
                return await self._http().post(
                    upstream.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=timeout,
                    auto_decompress=False,
                )
            except aiohttp.ClientConnectorCertificateError as exc:
                raise BackendUnavailable(
                    "The workflow's server presented a TLS certificate the broker does not trust."
                ) from exc
            except aiohttp.ClientConnectorError as exc:
                if attempt == 1:
                    log.info(
                        "gateway: connecting to %s failed (%s); retrying once",
                        upstream.url,
                        exc.os_error,
                    )
                    await asyncio.sleep(CONNECT_RETRY_DELAY)
                    continue
                log.warning("gateway: cannot connect to %s: %s", upstream.url, exc.os_error)
                raise BackendUnavailable(
                    "The workflow's server cannot be reached; try again shortly."
                ) from None
            except aiohttp.ConnectionTimeoutError:
                raise BackendTimeout(
                    f"The workflow's server did not accept a connection within "
                    f"{upstream.connect_timeout:g} s."
                ) from None
            except (aiohttp.SocketTimeoutError, TimeoutError):
                raise BackendTimeout(
                    f"The workflow's server did not start answering within "
                    f"{upstream.idle_timeout:g} s."
                ) from None
            except aiohttp.ServerDisconnectedError:
                log.warning("gateway: %s closed the connection before answering", upstream.url)
                raise BackendError(
                    "The workflow's server closed the connection before answering."
                ) from None
            except aiohttp.ClientResponseError as exc:  # not parseable as HTTP
                log.warning("gateway: %s answered invalid HTTP: %s", upstream.url, exc.message)
                raise BackendError("The workflow's server did not answer valid HTTP.") from None
            except aiohttp.ClientError as exc:
                log.warning("gateway: request to %s failed: %r", upstream.url, exc)
                raise BackendError("The request to the workflow's server failed.") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        upstream: Upstream,
        response: aiohttp.ClientResponse,
        record: Relay,
        urls: AttachmentUrls | None = None,
    ) -> None:
        status, content_type = response.status, response.content_type
        if 200 <= status < 300 and content_type == SSE:
            encoding = _encodings(response.headers.get("Content-Encoding", ""))
            if encoding:
                # the broker asked for identity; a compressed stream cannot be framed-checked
                # as it goes, and compression holds events back (caddy#6293)
                log.warning(
                    "gateway: %s answered an event stream with Content-Encoding %s",
                    upstream.url,
                    ", ".join(encoding)[:100],
                )
                raise BackendError(
                    "The workflow's server compressed its event stream; the broker relays "
                    "event streams uncompressed (it asks for Accept-Encoding: identity)."
                )
            await self._stream(scope, send, upstream, response, record, urls)
            return
        if 300 <= status < 400:
            log.warning(
                "gateway: %s answered a redirect (%d to %s); redirects are not followed",
                upstream.url,
                status,
                response.headers.get("Location", "?")[:200],
            )
            raise BackendError(
                f"The workflow's server answered a redirect (HTTP {status}); "
                "set the workflow's server URL to the final address."
            )
        if status >= 500 or status < 200:
            body = await self._read_for_log(response)
            log.warning("gateway: %s answered HTTP %d: %s", upstream.url, status, _snippet(body))
            raise BackendError(f"The workflow's server failed (HTTP {status}).")
        if status in (401, 403):
            body = await self._read_for_log(response)
            log.warning(
                "gateway: %s refused the broker's assertion (HTTP %d): %s",
                upstream.url,
                status,
                _snippet(body),
            )
            raise BackendRejectedIdentity(
                f"The workflow's server refused the broker's signed identity (HTTP {status}). "
                + upstream.identity_hint
            )
        if not _is_json(content_type):
            body = await self._read_for_log(response)
            log.warning(
                "gateway: %s answered HTTP %d with %r, not JSON or an event stream: %s",
                upstream.url,
                status,
                content_type,
                _snippet(body),
            )
            raise BackendError(
                f"The workflow's server answered HTTP {status} with {content_type or 'no'} "
                "content, not ChatKit JSON or an event stream."
            )
        await self._json(send, upstream, response, record, urls)

    async def _read_for_log(self, response: aiohttp.ClientResponse) -> bytes:
        try:
            return await asyncio.wait_for(response.content.read(LOGGED_BODY_CHARS + 1), 1.0)
        except (aiohttp.ClientError, TimeoutError):
            return b""

    async def _json(
        self,
        send: Send,
        upstream: Upstream,
        response: aiohttp.ClientResponse,
        record: Relay,
        urls: AttachmentUrls | None = None,
    ) -> None:
        """A JSON answer (2xx, or the backend's own 4xx) relayed as it is, once it is whole.

        Read whole (it is small) so that a backend that breaks off or sends garbage gets a
        502 rather than a truncated 200.
        """
        try:
            # auto_decompress is off for relays: Content-Length is the size read
            body = await read_capped(response.content, self._max_json, response.content_length)
        except (aiohttp.SocketTimeoutError, TimeoutError):
            raise BackendTimeout(
                f"The workflow's server stopped sending for {upstream.idle_timeout:g} s."
            ) from None
        except aiohttp.ClientError:
            log.warning("gateway: %s broke off a JSON answer", upstream.url)
            raise BackendError("The workflow's server broke off its answer.") from None
        if len(body) > self._max_json:
            log.warning(
                "gateway: %s answered more than %d bytes of JSON", upstream.url, self._max_json
            )
            raise BackendError("The workflow's server answered more JSON than the broker relays.")
        body = _decoded(
            upstream, body, response.headers.get("Content-Encoding", ""), self._max_json
        )
        try:
            json.loads(body)
        except (ValueError, RecursionError):
            log.warning("gateway: %s answered invalid JSON: %s", upstream.url, _snippet(body))
            raise BackendError("The workflow's server answered invalid JSON.") from None
        if urls is not None:  # the backend's own file URLs never reach the browser
            body = urls.body(body)
        # relayed decoded: the bytes the browser gets are the bytes that were checked
        headers = [
            (b"content-type", _raw(response.headers.get("Content-Type", "application/json"))),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        headers += _passed_through(response)
        record.status = response.status
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        record.bytes_out = len(body)
        record.outcome = Outcome.COMPLETED

    async def _stream(
        self,
        scope: Scope,
        send: Send,
        upstream: Upstream,
        response: aiohttp.ClientResponse,
        record: Relay,
        urls: AttachmentUrls | None = None,
    ) -> None:
        headers = [
            (b"content-type", _raw(response.headers.get("Content-Type", SSE))),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
            *_passed_through(response),
        ]
        record.status = response.status
        record.streamed = True
        start: Message = {
            "type": "http.response.start",
            "status": response.status,
            "headers": headers,
        }
        if self._on_stream is not None:
            self._on_stream(upstream.workflow, 1)
        try:
            await self._pump(scope, send, upstream, response, record, start, urls)
        finally:
            if self._on_stream is not None:
                self._on_stream(upstream.workflow, -1)

    async def _pump(
        self,
        scope: Scope,
        send: Send,
        upstream: Upstream,
        response: aiohttp.ClientResponse,
        record: Relay,
        start: Message,
        urls: AttachmentUrls | None = None,
    ) -> None:
        """Send the answer head, then each chunk as it comes. Two writes are saved where the
        bytes allow it, none of them by waiting: a first chunk already read with the backend's
        answer head goes out in one write with the browser's head (``edge.head_with_body``),
        and a chunk after which the backend's stream already ended carries the end of the
        answer (``more_body`` False) instead of an empty last write."""
        framing = _Framing(self._max_event)
        # with urls, bytes are held to event boundaries (an event is useless to the browser
        # until whole anyway) so an attachment's URLs can be rewritten before it leaves
        events = SseRewriter(urls) if urls is not None else None
        content = response.content
        if content.exception() is None and (first := content.read_nowait()):
            head_with_body(scope)
            await send(start)
            chunk: bytes | None = first
        else:
            await send(start)
            chunk = None
        while True:
            if chunk is None:
                try:
                    chunk = await content.readany()
                except (aiohttp.SocketTimeoutError, TimeoutError):
                    record.outcome = Outcome.TIMEOUT
                    log.warning(
                        "gateway: %s sent nothing for %g s mid-stream; aborting the stream",
                        upstream.url,
                        upstream.idle_timeout,
                    )
                    raise StreamAborted("idle timeout") from None
                except aiohttp.ClientError as exc:
                    record.outcome = Outcome.BACKEND_RESET
                    log.warning("gateway: %s broke off the stream: %r", upstream.url, exc)
                    raise StreamAborted("backend reset") from None
            if not chunk:
                break
            if not framing.feed(chunk):
                record.outcome = Outcome.BACKEND_GARBAGE
                log.warning(
                    "gateway: %s sent over %d bytes without an event boundary; aborting",
                    upstream.url,
                    framing.limit,
                )
                raise StreamAborted("unframed stream")
            # the backend's stream already ended on an event boundary (a short answer usually
            # arrives whole, with its head): this chunk carries the end of the answer too
            last = content.at_eof() and content.exception() is None and not framing.pending
            if events is not None:
                chunk = events.feed(chunk)
                if last:  # on a boundary the rewriter holds nothing back; end() says so
                    chunk += events.end()
                if not chunk:
                    chunk = None  # held to an event boundary: read on
                    continue
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            except OSError:  # a server that raises on a gone client (uvicorn just drops)
                record.outcome = Outcome.CLIENT_CLOSED
                return
            record.bytes_out += len(chunk)
            if last:
                record.outcome = Outcome.COMPLETED
                return
            chunk = None
        if framing.pending:
            log.warning(
                "gateway: %s ended its stream inside an event (%d bytes after the last blank line)",
                upstream.url,
                framing.pending,
            )
        tail = events.end() if events is not None else b""
        record.bytes_out += len(tail)
        await send({"type": "http.response.body", "body": tail, "more_body": False})
        record.outcome = Outcome.COMPLETED


_PASSED_THROUGH = ("Content-Language", "Retry-After")
# what a JSON answer may be encoded with: decoded (capped) and checked before it is relayed
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _encodings(header: str) -> list[str]:
    """The content codings applied, in order, without ``identity``."""
    return [c for c in (p.strip().lower() for p in header.split(",")) if c and c != "identity"]


def _decoded(upstream: Upstream, body: bytes, header: str, limit: int) -> bytes:
    """``body`` with every content coding undone, at most ``limit`` bytes; a coding the broker
    cannot undo, a corrupt body or one that inflates past the limit is the backend's 502."""
    for coding in reversed(_encodings(header)):
        wbits = _DECODERS.get(coding)
        if wbits is None:
            log.warning("gateway: %s answered with Content-Encoding %r", upstream.url, coding[:40])
            raise BackendError(
                f"The workflow's server answered with Content-Encoding {coding[:40]!r}, which "
                "the broker cannot check; it asks for identity (gzip and deflate are decoded)."
            )
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            log.warning("gateway: %s answered a corrupt %s body", upstream.url, coding)
            raise BackendError(f"The workflow's server answered a corrupt {coding} body.") from None
        if len(out) > limit or inflater.unconsumed_tail:
            log.warning("gateway: %s answered JSON inflating past %d bytes", upstream.url, limit)
            raise BackendError("The workflow's server answered more JSON than the broker relays.")
        if not inflater.eof:
            log.warning("gateway: %s answered a truncated %s body", upstream.url, coding)
            raise BackendError(f"The workflow's server answered a truncated {coding} body.")
        body = out
    return body


def _raw(value: str) -> bytes:
    """A response header value as the backend sent it (aiohttp decoded it with surrogateescape)."""
    return value.encode("utf-8", "surrogateescape")


def _passed_through(response: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    """The few answer headers a browser may need; never ``Set-Cookie`` on the broker's origin."""
    return [
        (name.lower().encode(), _raw(value))
        for name in _PASSED_THROUGH
        if (value := response.headers.get(name)) is not None
    ]
