"""``GatewayBackend.serve`` behind a fixed admission: limits, assertion claims, logs, metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send

from broker import config
from broker.assertion import AssertionSigner, body_digest, verify_with_key
from broker.auth import Identity
from broker.backends.base import Admission
from broker.backends.gateway.backend import GatewayBackend, GatewaySettings
from broker.backends.gateway.metrics import GatewayMetrics
from broker.errors import RateLimited
from tests.support import free_port
from tests.support.asgi_server import run_asgi
from tests.support.chatkit_bodies import create
from tests.support.fake_backend import FakeBackend, fake_backend

SECRET = "shared-assertion-secret-that-is-32-bytes+"


def Workflow(name: str, server: str, **options: Any) -> config.Workflow:
    return config.Workflow(name=name, label=name, kind="gateway", server=server, **options)


@dataclass
class CountingLimiter:
    """Per (user, workflow) counts in a dict: the broker's Redis limiter stands behind this."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    async def hit(self, user: str, workflow: str, per_minute: int) -> None:
        key = (user, workflow)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] > per_minute:
            raise RateLimited("Too many messages.", headers={"Retry-After": "60"})

    async def refund(self, user: str, workflow: str, per_minute: int) -> None:
        self.counts[(user, workflow)] -= 1


@dataclass
class App:
    backend: GatewayBackend
    admission: Admission
    states: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["request_id"] = "req-1"
        self.states.append(scope["state"])
        await self.backend.serve(self.admission, scope, receive, send)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBackend]:
    async with fake_backend() as b:
        yield b


async def serve_one(app: App, body: Any, **kw: Any) -> httpx.Response:
    async with run_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post("/chatkit/support", json=body, **kw)


async def test_the_assertion_carries_user_session_forwarded_claims_and_body(
    fake: FakeBackend,
) -> None:
    backend = GatewayBackend(GatewaySettings(public_url="https://broker.example"))
    workflow = Workflow(
        "support", fake.url("/echo"), audience="support-api", forward_claims=("email", "sub")
    )
    identity = Identity("alice", {"sub": "alice", "email": "alice@example.com", "role": "admin"})
    response = await serve_one(
        App(backend, Admission(identity, workflow, session_id="sess_9")), create("hi")
    )
    assert response.status_code == 200
    (assertion,) = [
        v for n, v in fake.requests[-1].headers if n.lower() == "chatkit-broker-assertion"
    ]
    verified = verify_with_key(
        assertion,
        key=backend.signer.jwks()["keys"][0],
        audience="support-api",
        issuer="https://broker.example",
        body=fake.requests[-1].body,
    )
    assert verified.user == "alice"
    assert verified.session_id == "sess_9" and verified.workflow == "support"
    assert verified.claims["email"] == "alice@example.com"
    assert "role" not in verified.claims  # only the configured claims are forwarded
    assert verified.claims["req_sha256"] == body_digest(fake.requests[-1].body)
    await backend.shutdown()


async def test_an_hs256_workflow_is_signed_with_the_shared_secret(fake: FakeBackend) -> None:
    backend = GatewayBackend(GatewaySettings(assertion_secret=SECRET))
    workflow = Workflow("support", fake.url("/echo"), assertion="hs256")
    await serve_one(App(backend, Admission(Identity("bob", {}), workflow)), create("hi"))
    (assertion,) = [
        v for n, v in fake.requests[-1].headers if n.lower() == "chatkit-broker-assertion"
    ]
    assert verify_with_key(assertion, secret=SECRET, audience="support").user == "bob"
    await backend.shutdown()


async def test_the_message_limit_counts_only_the_requests_that_start_a_turn(
    fake: FakeBackend,
) -> None:
    limiter = CountingLimiter()
    backend = GatewayBackend(GatewaySettings(), limiter=limiter)
    workflow = Workflow("support", fake.url("/json"), max_messages_per_minute=2)
    app = App(backend, Admission(Identity("alice", {}), workflow))
    async with run_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(5):  # reads are never counted
            assert (
                await client.post("/chatkit/s", json={"type": "threads.list", "params": {}})
            ).status_code == 200
        assert (await client.post("/chatkit/s", json=create("1"))).status_code == 200
        assert (await client.post("/chatkit/s", json=create("2"))).status_code == 200
        refused = await client.post("/chatkit/s", json=create("3"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "60"
    assert limiter.counts == {("alice", "support"): 3}
    assert len(fake.requests) == 7  # the refused message never reached the backend
    await backend.shutdown()


async def test_a_message_the_backend_refused_or_never_got_is_not_counted(
    fake: FakeBackend,
) -> None:
    """Only turns the backend accepted count against ``max_messages_per_minute``: its 404
    (another user's thread), 401, a redirect, or no connection at all give the count back;
    a 2xx counts, and so does a stream the backend started and then broke."""
    limiter = CountingLimiter()
    backend = GatewayBackend(GatewaySettings(), limiter=limiter)
    alice = Identity("alice", {})

    def at(path: str) -> App:
        workflow = Workflow("support", path, max_messages_per_minute=2)
        return App(backend, Admission(alice, workflow))

    refused = {
        "backend 404": at(fake.url("/status?code=404&json=1")),
        "backend 401": at(fake.url("/status?code=401")),
        "backend redirect": at(fake.url("/redirect")),
        "no connection": at(f"http://127.0.0.1:{free_port()}/chatkit"),
    }
    for what, app in refused.items():
        for _ in range(3):  # more than the limit: none of them counts
            r = await serve_one(app, create("x"))
            assert r.status_code != 200 and r.status_code != 429, (what, r.status_code)
    assert limiter.counts == {("alice", "support"): 0}
    async with (
        run_asgi(at(fake.url("/reset"))) as url,
        httpx.AsyncClient(base_url=url) as c,
        c.stream("POST", "/chatkit/support", json=create("1")) as broken,
    ):
        assert broken.status_code == 200  # the backend started the turn, then reset
        with pytest.raises(httpx.RemoteProtocolError):
            await broken.aread()
    assert (await serve_one(at(fake.url("/sse?count=1")), create("2"))).status_code == 200
    over = await serve_one(at(fake.url("/sse?count=1")), create("3"))
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
    assert limiter.counts == {("alice", "support"): 3}  # the 429 itself is not given back
    await backend.shutdown()


async def test_a_backends_own_4xx_error_gets_the_brokers_request_id(fake: FakeBackend) -> None:
    """Found by schemathesis (tests/adversarial/test_fuzz_kinds.py): the example server's 400/404 bodies
    have no ``request_id``, so the browser got an error outside the SPEC shape. Its status,
    code, message and headers pass through; the id is the one in ``X-Request-ID``."""
    backend = GatewayBackend(GatewaySettings())
    alice = Identity("alice", {})
    for status in (404, 409, 422):
        workflow = Workflow("support", fake.url(f"/status?code={status}&json=1"))
        r = await serve_one(App(backend, Admission(alice, workflow)), {"type": "threads.list"})
        assert r.status_code == status
        assert r.json() == {
            "error": {"code": "backend_says", "message": "thread not found", "request_id": "req-1"}
        }
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers["retry-after"] == "7"
    ok = await serve_one(
        App(backend, Admission(alice, Workflow("support", fake.url("/json")))),
        {"type": "threads.list"},
    )
    assert ok.json() == {"data": [], "has_more": False, "after": None}  # a 2xx untouched
    await backend.shutdown()


async def test_a_body_without_a_chatkit_type_is_a_400(fake: FakeBackend) -> None:
    backend = GatewayBackend(GatewaySettings())
    app = App(backend, Admission(Identity("alice", {}), Workflow("support", fake.url("/json"))))
    response = await serve_one(app, ["not", "an", "object"])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert fake.requests == []
    await backend.shutdown()


async def test_metrics_and_the_access_line_facts_per_proxied_request(fake: FakeBackend) -> None:
    registry = CollectorRegistry()
    backend = GatewayBackend(GatewaySettings(), metrics=GatewayMetrics(registry))
    app = App(
        backend, Admission(Identity("alice", {}), Workflow("support", fake.url("/sse?count=2")))
    )
    response = await serve_one(app, create("hi"))
    app.admission = Admission(
        Identity("alice", {}), Workflow("support", fake.url("/status?code=500"))
    )
    failed = await serve_one(app, create("hi"))
    assert response.status_code == 200 and failed.status_code == 502
    assert failed.json()["error"]["request_id"] == "req-1"
    ok, bad = app.states
    assert ok["outcome"] == "completed" and ok["chatkit_type"] == "threads.create"
    assert ok["relayed_bytes"] == len(response.content) and ok["ttfb_ms"] > 0
    assert bad["outcome"] == "backend_error"

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("broker_gateway_requests_total", workflow="support", outcome="completed") == 1
    assert value("broker_gateway_requests_total", workflow="support", outcome="backend_error") == 1
    assert value("broker_gateway_relayed_bytes_total", workflow="support") == len(response.content)
    assert value("broker_gateway_first_byte_seconds_count", workflow="support") == 2
    assert value("broker_gateway_open_streams", workflow="support") == 0
    await backend.shutdown()


async def test_the_jwks_route_publishes_current_and_previous_keys(tmp_path: Any) -> None:
    from broker.assertion import generate_private_key_pem

    old = tmp_path / "old.pem"
    old.write_text(generate_private_key_pem())
    backend = GatewayBackend(
        GatewaySettings(assertion_key=generate_private_key_pem(), previous_keys=(f"@{old}",))
    )
    from starlette.applications import Starlette

    async with (
        run_asgi(Starlette(routes=backend.routes())) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        response = await client.get("/.well-known/jwks.json")
    keys = response.json()["keys"]
    assert keys[0]["kid"] == backend.signer.kid and len(keys) == 2
    assert all("d" not in k for k in keys)
    assert json.loads(response.text) == backend.signer.jwks()
    assert backend.signer.ephemeral is False
    assert AssertionSigner().ephemeral is True


async def test_a_stream_the_backend_breaks_off_is_cut_with_a_log_line_naming_the_request(
    fake: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by probing (issue 23): the cut used to be uvicorn's "ASGI callable returned
    without completing response", logged after the request's context was gone. Through the
    broker's own protocol the connection is closed and the proxy's line is the only one."""
    from broker.logs import request_id_var

    lines: list[tuple[str, str]] = []

    class Ids(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((request_id_var.get(), record.getMessage()))

    handler = Ids(logging.WARNING)
    # uvicorn's logger does not propagate, and its config (at start) resets its handlers
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    backend = GatewayBackend(GatewaySettings())
    app = App(backend, Admission(Identity("alice", {}), Workflow("support", fake.url("/reset"))))

    async def with_id(scope: Scope, receive: Receive, send: Send) -> None:
        token = request_id_var.set("req-1")  # as the edge does
        try:
            await app(scope, receive, send)
        finally:
            request_id_var.reset(token)

    try:
        async with (
            run_asgi(with_id, http="broker.server:GuardedHttpToolsProtocol") as url,
            httpx.AsyncClient(base_url=url) as c,
        ):
            for logger in loggers:
                logger.addHandler(handler)
            async with c.stream("POST", "/chatkit/support", json=create("1")) as broken:
                assert broken.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    await broken.aread()
            await asyncio.sleep(0.1)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        await backend.shutdown()
    assert [(rid, "broke off the stream" in m) for rid, m in lines] == [("req-1", True)], lines
