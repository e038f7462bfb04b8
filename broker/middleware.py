"""Pure ASGI middleware: request ids and access logs, the mock-mode loopback guard, body limits.

Plain ASGI rather than ``BaseHTTPMiddleware`` because each layer sits on the hot path of
every mint and must cost microseconds, not a task switch.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import (
    BrokerError,
    InternalError,
    MockLocalOnly,
    PayloadTooLarge,
    RequestTimeout,
    render,
)
from .logs import request_id_var
from .loopback import is_local_host_header, is_loopback_address

access_log = logging.getLogger("broker.access")
error_log = logging.getLogger("broker.error")

MAX_BODY_BYTES = 16 * 1024
# ChatKit requests carry whole messages (and server-side runs their input): a larger cap
MAX_CHATKIT_BODY_BYTES = 256 * 1024
LARGE_BODY_PREFIXES = ("/chatkit/", "/mock/chatkit", "/api/workflows/")
BODY_TIMEOUT = 10.0
_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def send_error(send: Send, error: BrokerError, request_id: str) -> None:
    """Answer with the error body directly from middleware (before any route runs)."""
    rendered = render(error, request_id)
    await send(
        {"type": "http.response.start", "status": rendered.status, "headers": rendered.headers}
    )
    await send({"type": "http.response.body", "body": rendered.body})


class RequestContext:
    """Request id in and out, response headers every answer carries, one access-log line,
    and a JSON 500 (traceback to the log only) for anything that escaped."""

    def __init__(self, app: ASGIApp, *, mock: bool) -> None:
        self.app = app
        self.extra_headers = [(b"x-chatkit-broker-mode", b"mock")] if mock else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        if incoming is not None and _REQUEST_ID_RE.fullmatch(incoming):
            request_id = incoming.decode()
        else:
            request_id = secrets.token_hex(8)
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        no_store = path.startswith("/api/")
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.extend(self.extra_headers)
                if no_store and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))  # once, not doubled
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # the client hung up before its body arrived: nobody to answer, not a bug
            if not response_started:
                status = 499  # nginx's "client closed request", for the access log only
        except Exception:
            error_log.exception("unhandled error on %s %s", scope["method"], path)
            if not response_started:
                await send_error(
                    send_wrapper,
                    InternalError(
                        "Something went wrong inside the broker; the request id is in its log."
                    ),
                    request_id,
                )
        finally:
            state: dict[str, Any] = scope["state"]
            ms = round((time.perf_counter() - started) * 1000, 2)
            access_log.info(
                "%s %s %d %.1fms",
                scope["method"],
                path,
                status,
                ms,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "ms": ms,
                    "user": state.get("user"),
                    "workflow": state.get("workflow"),
                    # a proxied ChatKit request (gateway): how it ended, what passed through
                    "outcome": state.get("outcome"),
                    "chatkit_type": state.get("chatkit_type"),
                    "relayed_bytes": state.get("relayed_bytes"),
                    "ttfb_ms": state.get("ttfb_ms"),
                },
            )
            request_id_var.reset(token)


class MockGuard:
    """Mock mode answers only loopback peers that name a local host (defeats DNS rebinding).

    The socket peer is used, never ``X-Forwarded-For``: mock mode trusts no proxy.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            peer = client[0] if client else None
            host = (_header(scope, b"host") or b"").decode("latin-1")
            if not is_loopback_address(peer) or not is_local_host_header(host):
                error = MockLocalOnly(
                    "Mock mode answers only requests from this machine to localhost, 127.0.0.1 or [::1]."
                )
                await send_error(send, error, scope["state"]["request_id"])
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over 16 KiB (256 KiB for ChatKit requests and runs; early by
    Content-Length, else while reading), and bodies that have not fully arrived ``timeout``
    seconds after the app first asks for them (408: a client that stops mid-body would
    otherwise hold its handler forever)."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        timeout: float = BODY_TIMEOUT,
        large_limit: int = MAX_CHATKIT_BODY_BYTES,
    ) -> None:
        self.app = app
        self.limit = limit
        self.large_limit = large_limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.large_limit if scope["path"].startswith(LARGE_BODY_PREFIXES) else self.limit
        error = PayloadTooLarge(f"The request body is larger than {limit // 1024} KiB.")
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, error, scope["state"]["request_id"])
            return
        seen = 0
        complete = False
        deadline: float | None = None

        async def limited_receive() -> Message:
            nonlocal seen, complete, deadline
            if complete:  # e.g. a streaming response listening for the disconnect
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"The request body did not arrive within {self.timeout:g} s.",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise error
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        await self.app(scope, limited_receive, send)
