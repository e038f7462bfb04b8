"""The relay in front of the real example chatkit-python server (examples/chatkit_server)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from broker.assertion import ASSERTION_HEADER, AssertionSigner
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from tests.support.asgi_server import run_asgi
from tests.support.chatkit_bodies import create
from tests.support.fake_backend import sse_events
from tests.support.gateway_app import GatewayTestApp

chatkit_types = pytest.importorskip("chatkit.types")
from examples.chatkit_server.app import Options, create_app  # noqa: E402

EVENTS: TypeAdapter[Any] = TypeAdapter(chatkit_types.ThreadStreamEvent)


@pytest.fixture
async def stack() -> AsyncIterator[tuple[GatewayTestApp, str, str]]:
    """(the gateway app, its URL, the example server's URL), wired as in docs/gateway.md."""
    pool = gateway_pool()
    gateway = GatewayTestApp(GatewayProxy(pool), AssertionSigner(), Upstream("http://unset"))
    async with run_asgi(gateway) as gateway_url:
        example = create_app(Options(broker=gateway_url, audience="support", delay=0.05))
        async with run_asgi(example) as example_url:
            gateway.upstream = Upstream(f"{example_url}/chatkit", idle_timeout=5)
            yield gateway, gateway_url, example_url
    await pool.close()


def reply_text(raw: bytes) -> tuple[str, int]:
    """The assistant's text, assembled from the deltas, and how many deltas carried it."""
    events = [EVENTS.validate_python(e) for e in sse_events(raw)]  # chatkit's own types
    deltas = [
        e.update.delta
        for e in events
        if e.type == "thread.item.updated"
        and e.update.type == "assistant_message.content_part.text_delta"
    ]
    return "".join(deltas), len(deltas)


async def test_a_reply_streams_through_the_gateway_naming_the_verified_user(
    stack: tuple[GatewayTestApp, str, str],
) -> None:
    gateway, url, _ = stack
    async with httpx.AsyncClient(base_url=url, timeout=10) as browser:
        response = await browser.post(
            "/chatkit/support", json=create("hi there"), headers={"X-User-Id": "admin"}
        )
    assert response.status_code == 200
    text, deltas = reply_text(response.content)
    assert text == "Hello alice, you said: hi there"  # not admin: the header changed nothing
    assert deltas >= 3
    assert gateway.records[-1].outcome == "completed"


async def test_threads_belong_to_the_verified_user(stack: tuple[GatewayTestApp, str, str]) -> None:
    gateway, url, _ = stack
    async with httpx.AsyncClient(base_url=url, timeout=10) as browser:
        await browser.post("/chatkit/support", json=create("mine"))
        listed = await browser.post("/chatkit/support", json={"type": "threads.list", "params": {}})
        (thread,) = listed.json()["data"]
        gateway.user = "bob"
        theirs = await browser.post("/chatkit/support", json={"type": "threads.list", "params": {}})
        assert theirs.json()["data"] == []
        stolen = await browser.post(
            "/chatkit/support",
            json={"type": "threads.get_by_id", "params": {"thread_id": thread["id"]}},
        )
        assert stolen.status_code == 404  # the backend's own 4xx JSON, passed through


async def test_the_example_refuses_requests_that_bypass_the_broker(
    stack: tuple[GatewayTestApp, str, str],
) -> None:
    _, _, example_url = stack
    forged = AssertionSigner().sign("admin", audience="support", workflow="support")
    async with httpx.AsyncClient(base_url=example_url, timeout=10) as direct:
        for headers in ({"X-User-Id": "admin"}, {ASSERTION_HEADER: forged}):
            response = await direct.post("/chatkit", json=create("hi"), headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_assertion"


async def test_stop_in_the_browser_cancels_the_stream_in_the_backend(
    stack: tuple[GatewayTestApp, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    gateway, url, _example_url = stack
    slow = create("a rather long message that streams in several slow pieces")
    example = gateway.upstream
    # a slower example server, so there is time to press Stop mid-reply
    async with run_asgi(create_app(Options(broker=url, audience="support", delay=0.5))) as slow_url:
        gateway.upstream = Upstream(f"{slow_url}/chatkit", idle_timeout=5)
        with caplog.at_level(logging.INFO, logger="example.chatkit"):
            async with (
                httpx.AsyncClient(base_url=url, timeout=10) as browser,
                browser.stream("POST", "/chatkit/support", json=slow) as response,
            ):
                async for chunk in response.aiter_raw():
                    if b"text_delta" in chunk:
                        break
                stopped = time.monotonic()
            deadline = stopped + 1.0
            while "stream cancelled" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert "stream cancelled: alice went away" in caplog.text
        assert "finished the reply" not in caplog.text
    gateway.upstream = example
