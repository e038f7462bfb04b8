"""The edge: one pure-ASGI pass over every HTTP request before the router sees it.

In order: the request id, the mock-mode loopback guard, CORS (only for requests that carry an
``Origin``), the per-address limit, the body limit and deadline; after the answer, one metrics
count and one access-log line. One layer rather than six because each layer that wraps
``send`` to learn the status costs a closure and a frame on every message of every answer;
here the status is learned once and the router and handlers see a request already checked.

The hot small JSON endpoints (the mint) are ``Plain``: the edge calls them itself, before the
router, and writes their answer with its own headers in one go, so such a request runs no
Starlette router, ``Request``, ``Response`` or exception layer and no ``send`` wrapper. They
stay in the route list too (the OpenAPI document, a 405 for another method, and a request
that CORS wraps goes the ordinary way through the router to the same code).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import REQUEST_ID_PATTERN
from .cors import CORS, cors_options
from .errors import (
    BrokerError,
    InternalError,
    MockLocalOnly,
    PayloadTooLarge,
    RequestTimeout,
    render,
)
from .logs import AccessLog, request_id_var
from .loopback import is_local_host_header, is_loopback_address
from .metrics import Metrics
from .ratelimit import LIMITED_PREFIXES, ClientAddress, RateLimits

error_log = logging.getLogger("broker.error")

MAX_BODY_BYTES = 16 * 1024
# ChatKit requests carry whole messages (and server-side runs their input): a larger cap
MAX_CHATKIT_BODY_BYTES = 256 * 1024
LARGE_BODY_PREFIXES = ("/chatkit/", "/mock/chatkit", "/api/workflows/")
BODY_TIMEOUT = 10.0
# attachment uploads (broker/files): the workflow's own max_size is enforced while reading;
# this is only the outer bound, with a deadline long enough for a large file on a slow link
FILE_UPLOAD_PREFIX = "/api/files/"
MAX_FILE_BODY_BYTES = 100 * 1024 * 1024 + 64 * 1024
FILE_BODY_TIMEOUT = 300.0
# set by ``server.GuardedHttpToolsProtocol``: a ``BodyArrival`` saying the body is all there
BODY_EXTENSION = "chatkit_broker.body"
# set by ``server.GuardedHttpToolsProtocol``: drops the connection of a started response
ABORT_EXTENSION = "chatkit_broker.abort"
# set by ``server.GuardedHttpToolsProtocol``: the next answer head is written together with
# the body chunk sent right after it (one write, one segment)
HEAD_WITH_BODY_EXTENSION = "chatkit_broker.head_with_body"
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN.encode())
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NO_STORE = (b"cache-control", b"no-store")
_MOCK_ONLY = "Mock mode answers only requests from this machine to localhost, 127.0.0.1 or [::1]."


def new_request_id() -> str:
    """16 hex digits for a request that brought no id of its own. An id only correlates log
    lines (a client may send its own), so it needs to be unique, not secret: the random
    module's generator (reseeded in every forked worker) instead of ``secrets``, whose
    ``getrandom`` system call was 3 % of a mint's CPU."""
    return f"{random.getrandbits(64):016x}"


def abort_response(scope: Scope) -> None:
    """Drop the connection of a response already started, so the client sees it broken.

    Returning from the app unfinished does that too, but uvicorn then logs "ASGI callable
    returned without completing response" after the request's context is gone (no request
    id): the caller logs why it aborted, and the server only closes. Without the broker's
    protocol (another server) returning unfinished is the fallback.
    """
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if abort is not None:
        abort()


def head_with_body(scope: Scope) -> None:
    """Have the server write the next ``http.response.start`` together with the body chunk
    sent right after it: one socket write and one TCP segment instead of two, so the client
    gets the head and the first event in one wake-up. Call it only when that chunk is in
    hand and sent at once (the head waits for it). Without the broker's protocol (another
    server) it does nothing: two writes, as before."""
    hold = scope.get("extensions", {}).get(HEAD_WITH_BODY_EXTENSION)
    if hold is not None:
        hold()


class Plain:
    """An endpoint the edge serves itself, before the router: ``answer(scope, receive)``
    returns the JSON body of its 200 or raises a ``BrokerError``. Only for exact paths (no
    path parameters) and one method; the route list holds it like any ASGI app."""

    __slots__ = ("answer", "method")

    def __init__(self, method: str, answer: Callable[[Scope, Receive], Awaitable[bytes]]) -> None:
        self.method = method
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Served through the router (a request that CORS wraps): a ``BrokerError`` goes to
        the app's error handler, as any route's."""
        body = await self.answer(scope, receive)
        await send({"type": "http.response.start", "status": 200, "headers": json_headers(body)})
        await send({"type": "http.response.body", "body": body})


def json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """A JSON answer's headers, as Starlette's ``JSONResponse`` writes them."""
    return [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]


def _with_extra(
    headers: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]], no_store: bool
) -> list[tuple[bytes, bytes]]:
    """An answer's headers plus the edge's (request id, mode); API answers are never cached,
    unless the handler already said how (once)."""
    headers = [*headers, *extra]
    if no_store and not any(k.lower() == b"cache-control" for k, _ in headers):
        headers.append(_NO_STORE)
    return headers


async def send_error(send: Send, error: BrokerError, request_id: str) -> None:
    """Answer with the error body directly from the edge (before any route runs)."""
    rendered = render(error, request_id)
    await send(
        {"type": "http.response.start", "status": rendered.status, "headers": rendered.headers}
    )
    await send({"type": "http.response.body", "body": rendered.body})


class Edge:
    """Request id in and out, the headers every answer carries, the checks every request
    passes, one metrics count and one access-log line; a JSON 500 (traceback to the log only)
    for anything that escaped."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        routes: Callable[[], Iterable[Any]],
        limits: RateLimits,
        addresses: ClientAddress,
        mock: bool = False,
        allowed_origins: tuple[str, ...] = (),
        access_log: AccessLog | None = None,
        body_limit: int = MAX_BODY_BYTES,
        large_body_limit: int = MAX_CHATKIT_BODY_BYTES,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limits = limits
        self.addresses = addresses
        self.mock = mock
        self.access_log = access_log or AccessLog()
        self.body_limit = body_limit
        self.large_body_limit = large_body_limit
        self.body_timeout = body_timeout
        self._mode = [(b"x-chatkit-broker-mode", b"mock")] if mock else []
        # CORS only wraps requests that carry an Origin; the rest never enter it
        self._cors = (
            CORS(self._admitted, **cors_options(allowed_origins)) if allowed_origins else None
        )
        self._routes = routes
        self._known: frozenset[str] | None = None
        self._plain: dict[str, Plain] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = host = origin = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value
            elif key == b"host":
                host = value
            elif key == b"origin":
                origin = value
        if incoming is not None and _REQUEST_ID_RE.fullmatch(incoming):
            request_id = incoming.decode()
        else:
            request_id = new_request_id()
        token = request_id_var.set(request_id)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        path = scope["path"]
        extra = [(b"x-request-id", request_id.encode()), *self._mode]
        no_store = path.startswith("/api/")
        status = 500
        plain = (self._plain if self._plain is not None else self._plain_routes()).get(path)
        if (
            plain is not None
            and plain.method == scope["method"]
            and (origin is None or self._cors is None)
            and (not self.mock or self._local(scope, host))
        ):
            try:
                status = await self._serve_plain(plain, scope, receive, send, extra, no_store)
            finally:
                self._done(scope, path, status, started, state, token)
            return
        response_started = False

        async def send_edge(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = _with_extra(message.get("headers", ()), extra, no_store)
                message = {**message, "headers": headers}
            await send(message)

        try:
            if self.mock and not self._local(scope, host):
                await send_error(send_edge, MockLocalOnly(_MOCK_ONLY), request_id)
            elif origin is not None and self._cors is not None:
                await self._cors(scope, receive, send_edge)
            else:
                await self._admitted(scope, receive, send_edge)
        except ClientDisconnect:
            # the client hung up before its body arrived: nobody to answer, not a bug
            if not response_started:
                status = 499  # nginx's "client closed request", for the access log only
        except Exception:
            _log_unhandled(scope)
            if not response_started:
                await send_error(send_edge, _internal_error(), request_id)
        finally:
            self._done(scope, path, status, started, state, token)

    def _done(
        self, scope: Scope, path: str, status: int, started: float, state: dict, token: Any
    ) -> None:
        """After the answer: one metrics count, one access-log line."""
        method = scope["method"]
        self.metrics.request(self._label(scope), method if method in _METHODS else "other", status)
        self.access_log.request(method, path, status, time.perf_counter() - started, state)
        request_id_var.reset(token)

    async def _serve_plain(
        self,
        plain: Plain,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
        no_store: bool,
    ) -> int:
        """A ``Plain`` endpoint with the edge's checks, its answer (or error) written straight
        to the server with the edge's headers; the status, for the log and metrics."""
        try:
            body = await plain.answer(scope, await self._checked(scope, receive))
            status, headers = 200, json_headers(body)
            headers += extra  # no cache-control of its own: no need to look for one
            if no_store:
                headers.append(_NO_STORE)
        except ClientDisconnect:
            return 499  # as above: nobody to answer
        except Exception as exc:
            if isinstance(exc, BrokerError):
                error = exc
            else:
                _log_unhandled(scope)
                error = _internal_error()
            rendered = render(error, scope["state"]["request_id"])
            status, body = rendered.status, rendered.body
            headers = _with_extra(rendered.headers, extra, no_store)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    def _plain_routes(self) -> dict[str, Plain]:
        """The route list's ``Plain`` endpoints by path (read once, at the first request)."""
        self._plain = {
            r.path: r.endpoint
            for r in self._routes()
            if isinstance(getattr(r, "endpoint", None), Plain)
        }
        return self._plain

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The per-address limit, then the body limit around the app."""
        try:
            limited = await self._checked(scope, receive)
        except BrokerError as error:
            await send_error(send, error, scope["state"]["request_id"])
            return
        await self.app(scope, limited, send)

    async def _checked(self, scope: Scope, receive: Receive) -> Receive:
        """The per-address limit and a declared body over the limit (either raised as the
        error to answer); then ``receive`` with the body limit and deadline."""
        path = scope["path"]
        if path.startswith(LIMITED_PREFIXES):
            error = await self.limits.hit_address(self.addresses(scope))
            if error is not None:
                raise error
        limit = self.large_body_limit if path.startswith(LARGE_BODY_PREFIXES) else self.body_limit
        upload = path.startswith(FILE_UPLOAD_PREFIX)
        if upload:
            limit = MAX_FILE_BODY_BYTES
        for key, value in scope["headers"]:
            if key == b"content-length":
                if value.isdigit() and int(value) > limit:
                    raise _too_large(limit)
                break
        extensions = scope.get("extensions")
        arrival = extensions.get(BODY_EXTENSION) if extensions else None
        timeout = FILE_BODY_TIMEOUT if upload else self.body_timeout
        return self._limited(receive, limit, arrival, timeout)

    def _limited(
        self, receive: Receive, limit: int, arrival: Any = None, timeout: float | None = None
    ) -> Receive:
        """``receive`` with the body capped at ``limit`` bytes and due ``body_timeout`` seconds
        after the app first asks for it (408: a client that stops mid-body would otherwise
        hold its handler forever). ``arrival`` is the protocol's word that the body is all
        there (``server.BodyArrival``): then no timer is armed for a read that cannot wait."""
        seen = 0
        complete = False
        deadline: float | None = None
        timeout = self.body_timeout if timeout is None else timeout

        async def limited_receive() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # e.g. a streaming response listening for the disconnect
                return await receive()
            if arrival is not None and arrival.complete:
                message = await receive()
            else:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(
                        f"The request body did not arrive within {timeout:g} s.",
                        headers={"Connection": "close"},
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return limited_receive

    def _local(self, scope: Scope, host: bytes | None) -> bool:
        """Mock mode answers only loopback peers that name a local host (defeats DNS
        rebinding); the socket peer counts, never ``X-Forwarded-For``: mock mode trusts no
        proxy."""
        client = scope.get("client")
        peer = client[0] if client else None
        return is_loopback_address(peer) and is_local_host_header((host or b"").decode("latin-1"))

    def _label(self, scope: Scope) -> str:
        """The route template for metrics (never the raw path, whose values are unbounded)."""
        route = scope.get("route")
        if route is not None:
            path = getattr(route, "path", "")
            return f"{path}/*" if isinstance(route, Mount) else path
        if self._known is None:
            self._known = frozenset(
                r.path for r in self._routes() if not isinstance(r, Mount) and hasattr(r, "path")
            )
        path = scope["path"]
        return path if path in self._known else "unmatched"


def _log_unhandled(scope: Scope) -> None:
    error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])


def _internal_error() -> InternalError:
    return InternalError("Something went wrong inside the broker; the request id is in its log.")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit // 1024} KiB.")
