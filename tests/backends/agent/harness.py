"""A real HTTP server (uvicorn on a loopback port, in the test's own loop) for one
``AgentServer``, so engine tests go through real sockets: streaming, and a client that
really hangs up. The caller's identity comes from an ``X-Test-User`` header here; in the
broker it comes from the gate."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from chatkit.types import ThreadStreamEvent
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.backends.agent.engine import AgentServer
from broker.backends.agent.protocol import answer
from broker.backends.agent.store import Caller
from broker.errors import BrokerError, error_body

from ...support import free_port

STREAM_EVENTS: TypeAdapter[ThreadStreamEvent] = TypeAdapter(ThreadStreamEvent)


def make_app(server: AgentServer, workflow: str = "support") -> Starlette:
    async def chatkit(request: Request) -> Response:
        caller = Caller(request.headers["x-test-user"], workflow)
        try:
            return await answer(server, await request.body(), caller)
        except BrokerError as exc:
            return JSONResponse(
                error_body(exc.code, exc.message, "req_test"), status_code=exc.status
            )

    return Starlette(routes=[Route("/chatkit", chatkit, methods=["POST"])])


@contextlib.asynccontextmanager
async def serve(server: AgentServer) -> AsyncIterator[str]:
    """Serve ``server`` at ``http://127.0.0.1:<port>/chatkit`` for the block's duration."""
    port = free_port()
    config = uvicorn.Config(
        make_app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    while not uv.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/chatkit"
    finally:
        uv.should_exit = True
        await task
        await server.drain()


def sse(body: str) -> list[dict[str, Any]]:
    """The events of an SSE body, each validated as a chatkit ``ThreadStreamEvent``."""
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    for event in events:
        STREAM_EVENTS.validate_python(event)
    return events


class Chat:
    """A ChatKit client for one user: ``await chat.send("hi")`` → the SSE events."""

    def __init__(self, http: httpx.AsyncClient, url: str, user: str) -> None:
        self.http = http
        self.url = url
        self.user = user
        self.thread_id: str | None = None

    async def post(self, type_: str, **params: Any) -> httpx.Response:
        return await self.http.post(
            self.url, json={"type": type_, "params": params}, headers={"X-Test-User": self.user}
        )

    async def send(self, text: str) -> list[dict[str, Any]]:
        message = {
            "content": [{"type": "input_text", "text": text}],
            "attachments": [],
            "inference_options": {},
        }
        if self.thread_id is None:
            r = await self.post("threads.create", input=message)
        else:
            r = await self.post("threads.add_user_message", thread_id=self.thread_id, input=message)
        assert r.status_code == 200, r.text
        events = sse(r.text)
        if self.thread_id is None:
            self.thread_id = events[0]["thread"]["id"]
        return events

    async def items(self) -> list[dict[str, Any]]:
        r = await self.post("items.list", thread_id=self.thread_id, order="asc", limit=50)
        assert r.status_code == 200, r.text
        return r.json()["data"]


def assistant_texts(items: list[dict[str, Any]]) -> list[str]:
    return [
        "".join(c["text"] for c in i["content"]) for i in items if i["type"] == "assistant_message"
    ]


def done_text(events: list[dict[str, Any]]) -> str:
    """The text of the assistant message the stream finished."""
    done = [
        e
        for e in events
        if e["type"] == "thread.item.done" and e["item"]["type"] == "assistant_message"
    ]
    assert done, events
    return "".join(c["text"] for c in done[-1]["item"]["content"])
