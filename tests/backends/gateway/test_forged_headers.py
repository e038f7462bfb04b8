"""Forged identity through a gateway, generated (issues 15, 22): hypothesis spells identity
headers every way a client could — random case, ``_`` for ``-``, duplicates, names listed in
``Connection``, very long and non-ASCII values — and sends them as raw bytes through uvicorn
and the real proxy; the fake backend records what arrived, and no forged value is in it.
Forwarding is an allowlist, so any other name (``X-Consumer-Username``, or one hypothesis
makes up) is dropped too. test_proxy.py checks fixed spellings; this searches for a hole."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.assertion import AssertionSigner, verify_with_key
from broker.backends.gateway.headers import HeaderPolicy
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from tests.support.asgi_server import run_asgi
from tests.support.fake_backend import FakeBackend, fake_backend
from tests.support.gateway_app import GatewayTestApp

BODY = json.dumps({"type": "threads.list", "params": {"limit": 20}}).encode()
# written out here, not read from the policy, so a name dropped from the policy is caught
BASE_NAMES = [
    "authorization",
    "cookie",
    "chatkit-broker-assertion",
    "chatkit-broker-user",
    "x-user",
    "x-user-id",
    "x-user-email",
    "remote-user",
    "x-email",
    "x-id-token",
    "x-access-token",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-remote-user",
    "x-authenticated-userid",
    "x-goog-authenticated-user-email",
    "x-goog-iap-jwt-assertion",
    "x-pomerium-jwt-assertion",
    "cf-access-jwt-assertion",
    "cf-access-authenticated-user-email",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-data",
    "x-ms-client-principal-name",
    "proxy-authorization",
    "forwarded",
    "x-real-ip",
    "x-tenant",
    # reached backends while forwarding was a deny-list (issue 22)
    "x-consumer-username",
    "x-consumer-id",
    "x-identity",
    "x-original-user",
    "x-token-subject",
]


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[GatewayTestApp, FakeBackend, tuple[str, int]]]:
    """The fake backend and the gateway on their own loop in a thread, for a sync client."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    stop = asyncio.Event()
    started = threading.Event()

    async def main() -> None:
        pool = gateway_pool()
        try:
            async with fake_backend() as backend:
                app = GatewayTestApp(
                    GatewayProxy(pool, HeaderPolicy(["X-Tenant"])),
                    AssertionSigner(),
                    Upstream(
                        backend.url("/echo"),
                        connect_timeout=2.0,
                        idle_timeout=5.0,
                        identity_hint="test",
                        forward_headers=("X-Benign",),
                    ),
                )
                async with run_asgi(app) as url:
                    ready.update(app=app, backend=backend, url=url)
                    started.set()
                    await stop.wait()
        finally:
            await pool.close()
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10) and "url" in ready, "servers did not start"
    host, port = ready["url"].removeprefix("http://").split(":")
    yield ready["app"], ready["backend"], (host, int(port))
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


@st.composite
def spelling(draw: st.DrawFn) -> bytes:
    """An identity header name, re-cased and with any ``-`` possibly written ``_``."""
    name = draw(st.sampled_from(BASE_NAMES))
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    unders = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    out = "".join(
        ("_" if u and c == "-" else (c.upper() if f else c))
        for c, f, u in zip(name, flips, unders, strict=True)
    )
    return out.encode()


VALUE_TAIL = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=40).map(lambda b: bytes(x for x in b if x >= 0x80) or b"\xe9"),
    st.integers(1000, 6000).map(lambda n: b"A" * n),
    st.just("é→管理者".encode()),
)
SMUGGLED = (
    st.from_regex(r"\Ax-[a-z]{3,12}\Z", fullmatch=True)
    .filter(lambda name: name != "x-benign")
    .map(str.encode)
)
# names nobody listed, in any spelling: not forwarded whether or not they are in Connection
UNLISTED = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{2,20}\Z", fullmatch=True).filter(
    lambda name: (
        name.lower().replace("_", "-")
        not in {"x-benign", "content-type", "content-length", "connection", "host", "upgrade"}
        # the allowlist (written out): a client's own value for these is meant to arrive
        and name.lower() not in {"accept", "accept-language", "user-agent", "traceparent"}
        and name.lower() != "tracestate"
        and not name.lower().startswith(("transfer", "expect"))
    )
)


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    forged=st.lists(st.tuples(spelling(), VALUE_TAIL), min_size=1, max_size=6),
    duplicate=st.booleans(),
    smuggled=st.lists(SMUGGLED, max_size=3, unique=True),
    unlisted=st.lists(UNLISTED, max_size=3, unique=True),
)
def test_no_spelling_of_an_identity_header_reaches_the_backend(
    servers,
    forged: list[tuple[bytes, bytes]],
    duplicate: bool,
    smuggled: list[bytes],
    unlisted: list[str],
) -> None:
    app, backend, (host, port) = servers
    lines: list[bytes] = []
    markers: list[bytes] = []
    for i, (name, tail) in enumerate(forged):
        marker = b"forged%d" % i
        markers.append(marker)
        lines.append(name + b": " + marker + tail)
        if duplicate:
            lines.append(name.swapcase() + b": " + marker + tail)
    for i, name in enumerate(smuggled):
        marker = b"smuggled%d" % i
        markers.append(marker)
        lines.append(name + b": " + marker)
    if smuggled:
        lines.append(b"Connection: keep-alive, " + b", ".join(smuggled))
    for i, name in enumerate(unlisted):
        marker = b"unlisted%d" % i
        markers.append(marker)
        lines.append(name.encode() + b": " + marker)
    lines.append(b"X-Benign: kept")
    lines.append(b"x_benign: underscore")
    lines.append(b"X-BENIGN: second copy")
    markers += [b"underscore", b"second copy"]
    before = len(backend.requests)
    request = (
        b"POST /chatkit/support HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(BODY)
        + BODY
    )
    with contextlib.closing(socket.create_connection((host, port), timeout=10)) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 200"):
        # uvicorn may refuse a request whose headers are too big: then nothing went upstream
        assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:300]
        assert len(backend.requests) == before
        return
    assert len(backend.requests) == before + 1
    seen = backend.requests[-1].headers
    for name, value in seen:
        for marker in markers:
            assert marker.decode() not in value, (name, value[:80])
    names = [n.lower() for n, _ in seen]
    assert names.count("chatkit-broker-assertion") == 1
    assert ("X-Benign", "kept") in seen or ("x-benign", "kept") in seen
    (assertion,) = [v for n, v in seen if n.lower() == "chatkit-broker-assertion"]
    key = app.signer.jwks()["keys"][0]
    assert verify_with_key(assertion, key=key, audience="support").user == "alice"
