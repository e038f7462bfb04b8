"""The whole broker in front of the real example ChatKit server, through real HTTP.

browser (httpx) → uvicorn → broker (gate, session secret, message limit, relay) → uvicorn →
examples/chatkit_server (verifies the assertion against the broker's JWKS) — as docs/gateway.md's
"Gateway workflows" walkthrough runs them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from broker.app import create_app
from broker.assertion import generate_private_key_pem
from broker.config import load_settings
from tests.support import jwt_kit
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.chatkit_bodies import create
from tests.support.fake_backend import sse_events

chatkit_types = pytest.importorskip("chatkit.types")
from examples.chatkit_server.app import Options  # noqa: E402
from examples.chatkit_server.app import create_app as create_example  # noqa: E402

JWT_SECRET = "test-jwt-secret-that-is-at-least-32-bytes!"
SESSION_SECRET = "test-session-secret-that-is-32-bytes-long"
EVENTS: TypeAdapter[Any] = TypeAdapter(chatkit_types.ThreadStreamEvent)


def token(sub: str = "alice", **claims: Any) -> str:
    return jwt_kit.token(sub, key=JWT_SECRET, **claims)


def reply_text(raw: bytes) -> str:
    events = [EVENTS.validate_python(e) for e in sse_events(raw)]
    return "".join(
        e.update.delta
        for e in events
        if e.type == "thread.item.updated"
        and e.update.type == "assistant_message.content_part.text_delta"
    )


@dataclass
class Stack:
    broker: str
    example: str


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    broker_sock, example_sock = bound_socket(), bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    example_url = f"http://127.0.0.1:{example_sock.getsockname()[1]}"
    (tmp_path / "workflows.toml").write_text(
        f"""
[workflows.example]
server = "{example_url}/chatkit"
forward_claims = ["email"]
max_messages_per_minute = 3
idle_timeout = 5
"""
    )
    settings = load_settings(
        {
            "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_ASSERTION_KEY": generate_private_key_pem(),
            "BROKER_PUBLIC_URL": broker_url,
            "BROKER_LOG_FORMAT": "json",
        }
    )
    example = create_example(
        Options(broker=broker_url, audience="example", issuer=broker_url, delay=0.2)
    )
    async with (
        run_asgi(create_app(settings), sock=broker_sock, lifespan="on"),
        run_asgi(example, sock=example_sock),
    ):
        yield Stack(broker_url, example_url)


async def test_a_session_secret_streams_a_reply_naming_the_verified_user(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        minted = await browser.post(
            "/api/chatkit/session",
            json={"workflow": "example"},
            headers={"Authorization": f"Bearer {token()}"},
        )
        assert minted.status_code == 200, minted.text
        session = minted.json()
        assert session["workflow"]["kind"] == "gateway"
        assert session["backend"]["url"] == "/chatkit/example"
        response = await browser.post(
            session["backend"]["url"],
            json=create("hi there"),
            headers={"Authorization": f"Bearer {session['client_secret']}", "X-User-Id": "admin"},
        )
    assert response.status_code == 200
    assert response.headers["x-accel-buffering"] == "no"
    assert reply_text(response.content) == "Hello alice, you said: hi there"


async def test_an_app_jwt_works_too_and_the_jwks_is_published(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        keys = (await browser.get("/.well-known/jwks.json")).json()["keys"]
        assert keys and keys[0]["alg"] == "ES256" and "d" not in keys[0]
        response = await browser.post(
            "/chatkit/example",
            json=create("hello"),
            headers={"Authorization": f"Bearer {token('bob')}"},
        )
        unauthenticated = await browser.post("/chatkit/example", json=create("hello"))
    assert reply_text(response.content) == "Hello bob, you said: hello"
    assert unauthenticated.status_code == 401


async def test_the_message_limit_counts_turns_not_reads(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {token('carol')}"}
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        for _ in range(4):
            listed = await browser.post(
                "/chatkit/example", json={"type": "threads.list", "params": {}}, headers=headers
            )
            assert listed.status_code == 200
        answers = [
            (await browser.post("/chatkit/example", json=create(str(n)), headers=headers))
            for n in range(4)
        ]
        other_user = await browser.post(
            "/chatkit/example", json=create("x"), headers={"Authorization": f"Bearer {token()}"}
        )
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[3].json()["error"]["code"] == "rate_limited"
    assert "messages to workflow 'example'" in answers[3].json()["error"]["message"]
    assert other_user.status_code == 200


async def test_stop_reaches_the_backend_and_the_access_line_says_how_it_ended(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        async with (
            httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser,
            browser.stream(
                "POST",
                "/chatkit/example",
                json=create("one two three four five six seven eight nine ten"),
                headers={"Authorization": f"Bearer {token()}"},
            ) as response,
        ):
            async for chunk in response.aiter_raw():
                if b"text_delta" in chunk:
                    break
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and "stream cancelled" not in caplog.text:
            await asyncio.sleep(0.02)
        assert "stream cancelled: alice went away" in caplog.text
        await asyncio.sleep(0.1)
    access = [
        r for r in caplog.records if r.name == "broker.access" and r.path == "/chatkit/example"
    ]
    assert access[-1].outcome == "client_closed"
    assert access[-1].chatkit_type == "threads.create"
    assert access[-1].user == "alice" and access[-1].workflow == "example"


async def test_metrics_count_proxied_requests_by_outcome(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        await browser.post(
            "/chatkit/example",
            json={"type": "threads.list", "params": {}},
            headers={"Authorization": f"Bearer {token()}"},
        )
        text = (await browser.get("/metrics")).text
    assert 'broker_gateway_requests_total{outcome="completed",workflow="example"} 1.0' in text
    assert "broker_gateway_first_byte_seconds_bucket" in text


async def test_a_body_over_256_kib_is_refused_before_the_backend(stack: Stack) -> None:
    big = create("x" * (300 * 1024))
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        response = await browser.post(
            "/chatkit/example", json=big, headers={"Authorization": f"Bearer {token()}"}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_a_backend_that_is_down_is_a_503_with_a_request_id(tmp_path: Path) -> None:
    dead = bound_socket()  # bound, never listening
    settings = load_settings(
        {
            "BROKER_WORKFLOWS": f"down=http://127.0.0.1:{dead.getsockname()[1]}/chatkit",
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_LOG_FORMAT": "json",
        }
    )
    async with (
        run_asgi(create_app(settings), lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=10) as browser,
    ):
        response = await browser.post(
            "/chatkit/down", json=create("hi"), headers={"Authorization": f"Bearer {token()}"}
        )
    dead.close()
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert error["request_id"] == response.headers["x-request-id"]


async def test_the_openapi_document_describes_the_gateway_routes(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        doc = (await browser.get("/openapi.json")).json()
        keys = (await browser.get("/.well-known/jwks.json")).json()
    assert "get" in doc["paths"]["/.well-known/jwks.json"]
    assert "post" in doc["paths"]["/chatkit/{name}"]
    schema = doc["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"]["content"]
    required = schema["application/json"]["schema"]["properties"]["keys"]["items"]["required"]
    assert all(set(required) <= set(key) for key in keys["keys"])


async def test_a_backend_reset_mid_stream_breaks_the_browsers_stream_through_the_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker's middleware must not turn an aborted relay into a clean, finished answer."""
    from tests.support.fake_backend import EVENT, fake_backend

    async with fake_backend() as backend:
        settings = load_settings(
            {
                "BROKER_WORKFLOWS": f"flaky={backend.url('/reset')},slow={backend.url('/sse?count=4&gap=0.3')}",
                "BROKER_JWT_SECRET": JWT_SECRET,
                "BROKER_SESSION_SECRET": SESSION_SECRET,
                "BROKER_LOG_FORMAT": "json",
            }
        )
        headers = {"Authorization": f"Bearer {token()}"}
        with caplog.at_level(logging.INFO, logger="broker.access"):
            async with (
                run_asgi(create_app(settings), lifespan="on") as url,
                httpx.AsyncClient(base_url=url, timeout=10) as browser,
            ):
                received = b""
                with pytest.raises(httpx.RemoteProtocolError):
                    async with browser.stream(
                        "POST", "/chatkit/flaky", json=create("hi"), headers=headers
                    ) as response:
                        assert response.status_code == 200
                        async for chunk in response.aiter_raw():
                            received += chunk
                # the open-streams gauge counts a stream while it is relayed
                async with browser.stream(
                    "POST", "/chatkit/slow", json=create("hi"), headers=headers
                ) as response:
                    async for _ in response.aiter_raw():
                        break
                    metrics = (await browser.get("/metrics")).text
                after = (await browser.get("/metrics")).text
    assert received == EVENT * 2
    assert 'broker_gateway_open_streams{workflow="slow"} 1.0' in metrics
    assert 'broker_gateway_open_streams{workflow="slow"} 0.0' in after
    outcomes = {
        r.workflow: r.outcome
        for r in caplog.records
        if r.name == "broker.access" and r.path.startswith("/chatkit/")
    }
    assert outcomes == {"flaky": "backend_reset", "slow": "client_closed"}


async def test_the_message_limit_holds_across_instances_sharing_redis() -> None:
    import secrets as _secrets

    from tests.support import REDIS_URL, need, redis_reachable
    from tests.support.fake_backend import fake_backend

    need(redis_reachable(REDIS_URL), f"Redis at {REDIS_URL} is needed")
    async with fake_backend() as backend:
        (wf_file := Path(f"/tmp/gw-{_secrets.token_hex(4)}.toml")).write_text(
            f'[workflows.shared]\nserver = "{backend.url("/json")}"\nmax_messages_per_minute = 2\n'
        )
        env = {
            "BROKER_WORKFLOWS_FILE": str(wf_file),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_REDIS_URL": REDIS_URL,
            "BROKER_REDIS_PREFIX": f"gw-test-{_secrets.token_hex(4)}:",
            "BROKER_LOG_FORMAT": "json",
        }
        headers = {"Authorization": f"Bearer {token('dora')}"}
        try:
            async with (
                run_asgi(create_app(load_settings(env)), lifespan="on") as one,
                run_asgi(create_app(load_settings(env)), lifespan="on") as two,
                httpx.AsyncClient(timeout=10) as browser,
            ):
                codes = []
                for base in (one, two, one):
                    answer = await browser.post(
                        f"{base}/chatkit/shared", json=create("hi"), headers=headers
                    )
                    codes.append(answer.status_code)
        finally:
            wf_file.unlink()
    assert codes == [200, 200, 429]


async def test_every_turn_starting_type_counts_and_forward_headers_pass_by_name() -> None:
    """Issue 22: tool outputs and structured input run the model too, so they count; a
    workflow's ``forward_headers`` reach the backend, and nothing else a client makes up."""
    from tests.support.fake_backend import fake_backend

    async with fake_backend() as backend:
        (wf_file := Path(f"/tmp/gw-{int(time.time() * 1e6)}.toml")).write_text(
            f'[workflows.tools]\nserver = "{backend.url("/json")}"\n'
            'max_messages_per_minute = 3\nforward_headers = ["X-Widget"]\n'
        )
        env = {
            "BROKER_WORKFLOWS_FILE": str(wf_file),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
        }
        headers = {
            "Authorization": f"Bearer {token('erin')}",
            "X-Widget": "blue",
            "X-Consumer-Username": "admin",
            "X-Identity": "admin",
            "X-Original-User": "admin",
            "X-Token-Subject": "admin",
            "X_Widget": "underscore",
        }
        bodies = [
            {"type": "threads.add_client_tool_output", "params": {"thread_id": "t", "result": 1}},
            {"type": "threads.add_structured_input", "params": {"thread_id": "t", "input": {}}},
            {"type": "threads.add_client_tool_output", "params": {"thread_id": "t", "result": 2}},
            {"type": "threads.add_structured_input", "params": {"thread_id": "t", "input": {}}},
        ]
        try:
            async with (
                run_asgi(create_app(load_settings(env)), lifespan="on") as url,
                httpx.AsyncClient(base_url=url, timeout=10) as browser,
            ):
                codes = [
                    (await browser.post("/chatkit/tools", json=b, headers=headers)).status_code
                    for b in bodies
                ]
        finally:
            wf_file.unlink()
    assert codes == [200, 200, 200, 429]
    seen = backend.headers_of()
    assert seen["x-widget"] == ["blue"]
    for name in ("x-consumer-username", "x-identity", "x-original-user", "x-token-subject"):
        assert name not in seen, name
    assert "admin" not in {v for values in seen.values() for v in values}
    assert not any("_" in name for name in seen)
