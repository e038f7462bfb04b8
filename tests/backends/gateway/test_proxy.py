"""The streaming relay through real HTTP: browser (httpx) → uvicorn → proxy → fake backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from broker.assertion import AssertionSigner, verify_with_key
from broker.backends.gateway.files import AttachmentUrls
from broker.backends.gateway.headers import HeaderPolicy
from broker.backends.gateway.proxy import GatewayProxy, Relay, Upstream, gateway_pool
from broker.files.tokens import SealedFileTokens
from broker.http import HttpPool
from tests.support.asgi_server import run_asgi
from tests.support.fake_backend import EVENT, FakeBackend, fake_backend, sse_events
from tests.support.gateway_app import GatewayTestApp

BODY = {"type": "threads.list", "params": {"limit": 20}}


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    async with fake_backend() as b:
        yield b


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    p = gateway_pool()
    yield p
    await p.close()


@pytest.fixture
async def gateway(backend: FakeBackend, pool: HttpPool) -> AsyncIterator[GatewayTestApp]:
    app = GatewayTestApp(
        GatewayProxy(pool, HeaderPolicy(["X-Tenant", "X-Acme-*"])),
        AssertionSigner(),
        Upstream(
            backend.url("/sse"),
            connect_timeout=1.0,
            idle_timeout=1.0,
            identity_hint="Verify it against http://broker/.well-known/jwks.json, audience 'support'.",
            forward_headers=("X-Benign", "X-Tenant", "X-Smuggled"),
        ),
    )
    async with run_asgi(app) as url:
        app.url = url  # type: ignore[attr-defined]
        yield app


@pytest.fixture
async def browser(gateway: GatewayTestApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:  # type: ignore[attr-defined]
        yield client


def point(gateway: GatewayTestApp, backend: FakeBackend, path: str, **kw: Any) -> None:
    gateway.upstream = replace(gateway.upstream, url=backend.url(path), **kw)


async def until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# --- relaying --------------------------------------------------------------------------------


async def test_an_event_stream_is_relayed_with_stream_headers(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/sse?count=3")
    response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["cache-control"] == "no-store"
    assert "content-length" not in response.headers
    assert response.content == EVENT * 3
    (record,) = gateway.records
    assert record.outcome == "completed" and record.streamed
    assert record.bytes_out == len(EVENT) * 3
    assert record.ttfb is not None and 0 < record.ttfb < 1
    assert backend.headers_of()["accept-encoding"] == ["identity"]
    assert json.loads(backend.requests[-1].body) == BODY


async def test_events_reach_the_browser_as_they_are_sent_not_at_the_end(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/sse?count=3&gap=0.4")
    arrivals = []
    started = time.monotonic()
    async with browser.stream("POST", "/chatkit/support", json=BODY) as response:
        async for chunk in response.aiter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == EVENT * 3
    assert arrivals[0][0] < 0.3  # the first event did not wait for the other two
    assert arrivals[-1][0] >= 0.75


async def test_a_trickling_backend_is_relayed_byte_by_byte(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/trickle?gap=0.05")
    chunks = []
    async with browser.stream("POST", "/chatkit/support", json=BODY) as response:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
    assert b"".join(chunks) == EVENT
    assert len(chunks) > len(EVENT) // 2  # nothing coalesced them into one late write
    assert gateway.records[0].outcome == "completed"


async def test_a_json_answer_passes_through_unchanged(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/json")
    response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == 200
    assert response.json() == {"data": [], "has_more": False, "after": None}
    assert response.headers["cache-control"] == "no-store"
    assert gateway.records[0].outcome == "completed" and not gateway.records[0].streamed


async def test_the_backends_own_4xx_json_passes_through(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/status?code=404&json=1")
    response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "backend_says", "message": "thread not found"}}
    assert response.headers["retry-after"] == "7"


# --- failures before the first byte ----------------------------------------------------------


async def _error(browser: httpx.AsyncClient, status: int, code: str) -> dict[str, Any]:
    response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message", "request_id"}
    return body["error"]


async def test_an_unreachable_backend_is_a_503(
    gateway: GatewayTestApp, browser: httpx.AsyncClient
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        gateway.upstream = replace(gateway.upstream, url=f"http://127.0.0.1:{port}/chatkit")
        await _error(browser, 503, "backend_unavailable")
    assert gateway.records[0].outcome == "backend_unavailable"


async def test_a_backend_that_never_answers_is_a_504_after_the_idle_timeout(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/hang", idle_timeout=0.5)
    started = time.monotonic()
    await _error(browser, 504, "backend_timeout")
    assert 0.4 < time.monotonic() - started < 3
    assert len(backend.requests) == 1  # the POST was not retried


async def test_a_connect_that_hangs_is_a_504_after_the_connect_timeout(
    gateway: GatewayTestApp, browser: httpx.AsyncClient
) -> None:
    # a listener whose accept queue is full: the kernel drops further SYNs, connect hangs
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        gateway.upstream = replace(
            gateway.upstream, url=f"http://127.0.0.1:{port}/chatkit", connect_timeout=0.5
        )
        started = time.monotonic()
        error = await _error(browser, 504, "backend_timeout")
        assert "connection" in error["message"]
        assert time.monotonic() - started < 3
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("status", [401, 403])
async def test_a_backend_refusing_the_assertion_is_explained(
    gateway: GatewayTestApp,
    backend: FakeBackend,
    browser: httpx.AsyncClient,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    point(gateway, backend, f"/status?code={status}")
    with caplog.at_level(logging.WARNING, logger="broker.gateway"):
        error = await _error(browser, 502, "backend_rejected_identity")
    assert f"HTTP {status}" in error["message"]
    assert "jwks.json" in error["message"] and "audience" in error["message"]
    assert "secret-internal-detail" not in error["message"]
    assert "secret-internal-detail" in caplog.text  # for the operator, in the log


async def test_a_backend_5xx_is_a_502_and_its_body_goes_only_to_the_log(
    gateway: GatewayTestApp,
    backend: FakeBackend,
    browser: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    point(gateway, backend, "/status?code=500")
    with caplog.at_level(logging.WARNING, logger="broker.gateway"):
        response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "backend_error"
    assert "secret-internal-detail" not in response.text
    assert "secret-internal-detail" in caplog.text


@pytest.mark.parametrize(
    "path",
    ["/status?code=404", "/bad-json", "/status?code=200"],
    ids=["html-404", "bad-json", "html-200"],
)
async def test_garbage_instead_of_chatkit_is_a_502(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient, path: str
) -> None:
    point(gateway, backend, path)
    await _error(browser, 502, "backend_error")


@pytest.mark.parametrize(
    "query",
    [
        "coding=gzip&payload=html",
        "coding=deflate&payload=html",
        "coding=gzip&payload=corrupt",
        "coding=gzip&payload=bomb",
        "coding=br&payload=json",
        "coding=gzip&payload=json&type=text/event-stream",
    ],
    ids=["gzip-html", "deflate-html", "corrupt", "bomb", "br", "gzip-sse"],
)
async def test_an_encoded_answer_is_checked_after_decoding(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient, query: str
) -> None:
    """Issue 22: ``<html>`` labelled gzip JSON reached the browser as a 200; now the check
    runs on the decoded bytes, and what cannot be decoded (br, corrupt, a bomb) is a 502."""
    point(gateway, backend, "/encoded?" + query)
    await _error(browser, 502, "backend_error")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_encoded_json_is_relayed_decoded(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient, coding: str
) -> None:
    point(gateway, backend, "/encoded?payload=json&coding=" + coding)
    response = await browser.post("/chatkit/support", json=BODY)
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.json() == {"data": [], "has_more": False, "after": None}
    assert int(response.headers["content-length"]) == len(response.content)


async def test_a_redirect_is_not_followed(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/redirect")
    await _error(browser, 502, "backend_error")
    assert [r.path for r in backend.requests] == ["/redirect"]


async def test_a_connection_dropped_after_the_request_was_sent_is_not_retried(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/close-early")
    await _error(browser, 502, "backend_error")
    assert len(backend.requests) == 1


async def test_a_body_over_256_kib_is_a_413_and_never_reaches_the_backend(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    big = {"type": "threads.create", "params": {"input": "x" * (300 * 1024)}}
    await browser.post("/chatkit/support", json=big)
    response = await browser.post("/chatkit/support", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    # chunked, so no Content-Length to refuse early: the cap applies while reading
    chunks = [b'{"type":"threads.create","params":{"input":"', b"x" * (300 * 1024), b'"}}']

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = await browser.post("/chatkit/support", content=body())
    assert response.status_code == 413
    assert backend.requests == []


# --- failures after the first byte -----------------------------------------------------------


async def _read_until_broken(browser: httpx.AsyncClient) -> bytes:
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        async with browser.stream("POST", "/chatkit/support", json=BODY) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += chunk
    return received


async def test_a_backend_reset_mid_stream_aborts_the_browsers_connection(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/reset")
    received = await _read_until_broken(browser)
    assert received == EVENT * 2  # what came before the reset, then no clean end
    await until(lambda: gateway.records[0].outcome == "backend_reset")


async def test_a_stream_that_goes_silent_is_aborted_after_the_idle_timeout(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/stall", idle_timeout=0.5)
    started = time.monotonic()
    received = await _read_until_broken(browser)
    assert received == EVENT
    assert time.monotonic() - started < 3
    await until(lambda: gateway.records[0].outcome == "timeout")
    await until(lambda: backend.cancelled != [])  # and the backend was let go


async def test_ten_megabytes_without_an_event_boundary_are_cut_off(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/garbage")
    received = await _read_until_broken(browser)
    assert 0 < len(received) <= 1024 * 1024 + 65536 * 2
    await until(lambda: gateway.records[0].outcome == "backend_garbage")


async def test_megabytes_without_a_boundary_after_whole_events_are_cut_off(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    # chunks that end an event take the relay's fast path; the count starts over after them
    point(gateway, backend, "/garbage?events=3")
    received = await _read_until_broken(browser)
    assert received.startswith(EVENT * 3)
    assert len(received) <= 3 * len(EVENT) + 1024 * 1024 + 65536 * 2
    await until(lambda: gateway.records[0].outcome == "backend_garbage")


async def test_a_short_unframed_stream_is_relayed_as_sent_and_logged(
    gateway: GatewayTestApp,
    backend: FakeBackend,
    browser: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    point(gateway, backend, "/unframed")
    with caplog.at_level(logging.WARNING, logger="broker.gateway"):
        response = await browser.post("/chatkit/support", json=BODY)
    assert response.content == EVENT + b'data: {"type":"notice"'
    assert sse_events(response.content.rsplit(b"\n\n", 1)[0]) == [json.loads(EVENT[6:])]
    assert "inside an event" in caplog.text


# --- the browser going away ------------------------------------------------------------------


async def test_closing_the_browser_mid_stream_closes_the_upstream_within_a_second(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/sse?count=100&gap=0.2")
    async with browser.stream("POST", "/chatkit/support", json=BODY) as response:
        async for chunk in response.aiter_raw():
            assert chunk.startswith(b"data: ")
            break
        closed_at = time.monotonic()
    await until(lambda: backend.cancelled != [], timeout=2)
    path, cancelled_at = backend.cancelled[0]
    assert path == "/sse"
    assert cancelled_at - closed_at < 1.0
    await until(lambda: gateway.records[0].outcome == "client_closed")


async def test_closing_the_browser_before_the_first_byte_closes_the_upstream(
    gateway: GatewayTestApp, backend: FakeBackend
) -> None:
    point(gateway, backend, "/hang", idle_timeout=30)
    host, port = gateway.url.removeprefix("http://").split(":")  # type: ignore[attr-defined]
    _reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps(BODY).encode()
    writer.write(
        b"POST /chatkit/support HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    await until(lambda: backend.requests != [])
    writer.close()
    closed_at = time.monotonic()
    await until(lambda: backend.cancelled != [], timeout=2)
    assert backend.cancelled[0][1] - closed_at < 1.0
    await until(lambda: gateway.records[0].outcome == "client_closed")


@pytest.mark.parametrize("rewriting", [False, True], ids=["plain", "file-urls"])
async def test_an_answer_that_arrived_whole_goes_out_with_its_end(
    backend: FakeBackend, pool: HttpPool, rewriting: bool
) -> None:
    """A short answer usually arrives whole with its head: its last chunk carries the end of
    the answer (``more_body`` false) instead of an empty last write, which would wake the
    browser once more — also when the file-URL rewriter reads the events (the broker's case)."""
    proxy = GatewayProxy(pool)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    urls = (
        AttachmentUrls(SealedFileTokens(["k" * 43]), "https://b.example", "support", "alice")
        if rewriting
        else None
    )
    scope = {"type": "http", "headers": [], "extensions": {}}
    record = await proxy.relay(
        scope,
        receive,
        send,
        Upstream(backend.url("/whole"), workflow="support"),
        json.dumps(BODY).encode(),
        [],
        urls=urls,
    )
    assert record.outcome == "completed"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == EVENT
    assert sent[1]["more_body"] is False


async def test_a_relay_cancelled_from_outside_is_not_taken_for_a_browser_that_left(
    backend: FakeBackend, pool: HttpPool
) -> None:
    """The exchange runs in the caller's task and the disconnect watcher cancels that task:
    a cancel from anyone else (the server shutting down) must go on as a cancel, and still
    let the backend go, rather than end as ``client_closed``."""
    proxy = GatewayProxy(pool)
    upstream = Upstream(backend.url("/sse?count=100&gap=0.2"), workflow="support")
    sent: list[dict[str, Any]] = []
    first = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            first.set()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the browser never leaves
        raise AssertionError("unreachable")

    record = Relay()
    scope = {"type": "http", "headers": [], "extensions": {}}
    relay = asyncio.ensure_future(
        proxy.relay(scope, receive, send, upstream, json.dumps(BODY).encode(), [], record)
    )
    await asyncio.wait_for(first.wait(), 5)
    relay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relay
    assert record.outcome != "client_closed"
    await until(lambda: backend.cancelled != [], timeout=2)


async def test_a_browser_that_stops_reading_holds_the_backend_back(
    gateway: GatewayTestApp, backend: FakeBackend
) -> None:
    """Back-pressure: no queue between the two sides grows while the browser reads nothing."""
    point(gateway, backend, "/flood")
    host, port = gateway.url.removeprefix("http://").split(":")  # type: ignore[attr-defined]
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    body = json.dumps(BODY).encode()
    sock.sendall(
        b"POST /chatkit/support HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    try:
        await until(lambda: backend.written > 0)
        await asyncio.sleep(1.5)  # the browser reads nothing
        stalled = backend.written
        assert stalled < 24 * 1024 * 1024, stalled  # 64 MiB were ready to go
        await asyncio.sleep(0.5)
        assert backend.written - stalled < 1024 * 1024  # and it stays stalled
    finally:
        sock.close()


# --- headers ---------------------------------------------------------------------------------


SPOOFED = [
    ("X-User-Id", "admin"),
    ("x-user-id", "admin2"),
    ("X_User_Id", "admin3"),
    ("X-USER", "admin4"),
    ("X-Forwarded-User", "admin5"),
    ("X-Forwarded-Email", "admin@example.com"),
    ("x_forwarded_user", "admin6"),
    ("X-Auth-Request-User", "admin7"),
    ("X-Auth-Request-Email", "admin@example.com"),
    ("ChatKit-Broker-Assertion", "eyJforged.eyJforged.sig"),
    ("chatkit_broker_assertion", "eyJforged2.eyJforged.sig"),
    ("ChatKit-Broker-User", "admin8"),
    ("X-Tenant", "other-tenant"),  # allowed by the workflow, vetoed by the strip list
    ("x_tenant", "other-tenant2"),
    ("X-Consumer-Username", "admin-kong"),
    ("X-Identity", "admin-identity"),
    ("X-Original-User", "admin-original"),
    ("X-Token-Subject", "admin-subject"),
    ("X-Anything-New", "a header nobody listed"),
    ("X-Acme-Role", "superuser"),
    ("Authorization", "Bearer the-users-own-token"),
    ("Cookie", "session=the-users-cookie"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Request-ID", "chosen-by-client"),
    ("X-Smuggled", "listed-in-connection"),
    ("Connection", "keep-alive, X-Smuggled"),
    ("Proxy-Authorization", "Basic abc"),
]


async def test_every_spelling_of_an_identity_header_is_stripped(
    gateway: GatewayTestApp, backend: FakeBackend, browser: httpx.AsyncClient
) -> None:
    point(gateway, backend, "/echo")
    headers = [*SPOOFED, ("X-Benign", "kept"), ("Accept-Language", "fr")]
    response = await browser.post("/chatkit/support", json=BODY, headers=headers)
    assert response.status_code == 200
    seen = backend.headers_of()
    folded = {name.replace("_", "-") for name in seen}
    for name, _ in SPOOFED:
        name = name.lower().replace("_", "-")
        if name in ("chatkit-broker-assertion", "x-request-id", "connection"):
            continue  # the broker sets its own (checked below)
        assert name not in folded, name
    assert not any(v in ("admin", "admin2", "admin3") for vals in seen.values() for v in vals)
    # exactly one assertion, the broker's own, and it names the admitted user
    (assertion,) = seen["chatkit-broker-assertion"]
    assert (
        verify_with_key(assertion, key=gateway.signer.jwks()["keys"][0], audience="support").user
        == "alice"
    )
    assert seen["x-request-id"] != ["chosen-by-client"]
    assert seen["x-benign"] == ["kept"] and seen["accept-language"] == ["fr"]


async def test_duplicate_and_mixed_case_copies_are_all_stripped(
    gateway: GatewayTestApp, backend: FakeBackend
) -> None:
    """Raw bytes on the wire, so no client library normalises the names first."""
    point(gateway, backend, "/echo")
    host, port = gateway.url.removeprefix("http://").split(":")  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps(BODY).encode()
    writer.write(
        b"POST /chatkit/support HTTP/1.1\r\nHost: x\r\n"
        b"X-User-Id: admin\r\nx-user-id: admin\r\nX-uSeR-iD: admin\r\nX_USER_ID: admin\r\n"
        b"x-forwarded-user: admin\r\nX-Forwarded-User: admin\r\n"
        b"chatkit-broker-assertion: forged\r\nChatKit-Broker-Assertion: forged\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), body)
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    seen = backend.headers_of()
    assert "x-user-id" not in {n.replace("_", "-") for n in seen}
    assert "x-forwarded-user" not in seen
    assert len(seen["chatkit-broker-assertion"]) == 1
    assert seen["chatkit-broker-assertion"] != ["forged"]


def test_the_header_policy_forwards_by_allowlist_only() -> None:
    policy = HeaderPolicy(["X-Tenant", "x_acme_*"])
    allowed = policy.allowed(("X-Tenant", "X-Acme-Role", "X-Widget", "X_Other"))
    # the strip list vetoes a workflow's forward_headers; an "_" spelling is never a name
    assert allowed == {
        "content-type",
        "accept",
        "accept-language",
        "user-agent",
        "traceparent",
        "tracestate",
        "x-widget",
    }
    for name in ("X-User-Id", "X_USER_ID", "X-Tenant", "x_tenant", "X-Acme-Role", "Cookie", "TE"):
        assert policy.is_denied(name), name
    kept = policy.forward(
        [
            (b"connection", b"close, x-widget"),
            (b"x-widget", b"smuggled"),
            (b"Content-Type", b"application/json"),
            (b"content-type", b"text/plain"),
            (b"Content_Type", b"text/html"),
            (b"ACCEPT", b"text/event-stream"),
            (b"x-consumer-username", b"admin"),
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ],
        [("ChatKit-Broker-Assertion", "token")],
        allowed,
    )
    assert kept == [
        ("content-type", "application/json"),
        ("accept", "text/event-stream"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("ChatKit-Broker-Assertion", "token"),
    ]


# --- the pool --------------------------------------------------------------------------------


async def test_an_idle_pooled_connection_is_dropped_before_the_backend_would(
    backend: FakeBackend,
) -> None:
    """keepalive below the backend's: the second request after the pool's keepalive opens a
    new connection instead of reusing one the backend may be closing."""
    pool = gateway_pool(keepalive=0.3)
    app = GatewayTestApp(GatewayProxy(pool), AssertionSigner(), Upstream(backend.url("/json")))
    try:
        async with run_asgi(app) as url, httpx.AsyncClient(base_url=url) as client:
            await client.post("/chatkit/support", json=BODY)
            await client.post("/chatkit/support", json=BODY)  # at once: reused
            await asyncio.sleep(0.8)
            await client.post("/chatkit/support", json=BODY)  # after the pool keepalive
        peers = [seen.peer for seen in backend.requests]
        assert peers[0] == peers[1]
        assert peers[2] != peers[1]
    finally:
        await pool.close()


def test_header_values_pass_as_utf8_and_undecodable_ones_are_dropped() -> None:
    policy = HeaderPolicy()
    kept = policy.forward(
        [(b"x-name", "café".encode()), (b"x-bad", b"\xff\xfe"), (b"accept", b"*/*")],
        [],
        policy.allowed(("X-Name", "X-Bad")),
    )
    assert kept == [("x-name", "café"), ("accept", "*/*")]


async def test_a_refused_connection_is_retried_once_and_then_succeeds(
    gateway: GatewayTestApp, browser: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing was sent when the connection was refused, so one retry is safe."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound but not listening yet: the first connect is refused
    port = sock.getsockname()[1]
    answered = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        answered.append(True)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        await writer.drain()
        writer.close()

    class ListenOnRetry(logging.Handler):
        """Starts listening when the proxy says it retries: after the refusal, before the
        second connect (the kernel queues it until the server below accepts it)."""

        def emit(self, record: logging.LogRecord) -> None:
            if "retrying once" in record.getMessage() and not retrying.is_set():
                sock.listen(8)
                retrying.set()

    retrying = asyncio.Event()
    hook = ListenOnRetry()
    gateway.upstream = replace(gateway.upstream, url=f"http://127.0.0.1:{port}/chatkit")
    logger = logging.getLogger("broker.gateway")
    logger.addHandler(hook)
    try:
        with caplog.at_level(logging.INFO, logger="broker.gateway"):
            request = asyncio.ensure_future(browser.post("/chatkit/support", json=BODY))
            await asyncio.wait_for(retrying.wait(), 30)  # a failure, not a hang, if none
            server = await asyncio.start_server(answer, sock=sock)
            response = await request
    finally:
        logger.removeHandler(hook)
    server.close()
    assert response.status_code == 200 and response.json() == {}
    assert answered == [True]
    assert "retrying once" in caplog.text


async def test_no_credential_or_assertion_reaches_the_logs(
    gateway: GatewayTestApp,
    backend: FakeBackend,
    browser: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = {
        "Authorization": "Bearer eyJhbGciOi.eyJzdWIiOi.users-token",
        "Cookie": "sid=cookie-value",
    }
    with caplog.at_level(logging.DEBUG):
        for path in ("/sse", "/status?code=401", "/status?code=500", "/reset", "/bad-json"):
            point(gateway, backend, path)
            with contextlib.suppress(httpx.HTTPError):
                await browser.post("/chatkit/support", json=BODY, headers=headers)
    assertions = [
        v
        for seen in backend.requests
        for n, v in seen.headers
        if n.lower() == "chatkit-broker-assertion"
    ]
    assert len(assertions) == 5
    for secret in [*assertions, "users-token", "cookie-value"]:
        assert secret not in caplog.text
