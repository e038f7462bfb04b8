"""Mock mode's broker under a real uvicorn, and a ChatKit client that talks to it the way the
page does: mint a session secret at ``/api/chatkit/session``, then POST ChatKit requests to
the ``backend.url`` it names (``/chatkit/<workflow>``) with that secret as the bearer.

Every streamed frame is parsed into chatkit-python's own ``ThreadStreamEvent``, so a test
passes only when the stream is valid ChatKit protocol, not merely present.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from pydantic import TypeAdapter

from broker.app import build_broker, create_app
from broker.backends.mock.backend import MockAgentBackend
from broker.backends.mock.canned import mock_target
from broker.config import Settings, load_settings

from .asgi_server import run_asgi

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
    from chatkit.types import ThreadStreamEvent

MOCK_ENV = {"BROKER_MOCK": "1", "BROKER_LOG_FORMAT": "json"}
EVENTS: TypeAdapter[Any] = TypeAdapter(ThreadStreamEvent)
TEXT_DELTA = "assistant_message.content_part.text_delta"


def mock_settings(**env: str | None) -> Settings:
    """Mock mode's settings from ``MOCK_ENV`` plus ``env`` (None drops a variable)."""
    merged = {**MOCK_ENV, **env}
    return load_settings({k: v for k, v in merged.items() if v is not None})


def pace(broker: Any, *, step: float, slow_step: float) -> None:
    """Set the canned replies' pace (seconds between deltas) of a broker not yet started."""
    (backend,) = list(broker.backends)
    assert isinstance(backend, MockAgentBackend)
    backend.mock_agent = mock_target(step=step, slow_step=slow_step)


def user_input(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
        **extra,
    }


def sse(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a 200 SSE answer: every frame one ``data: {json}`` line, each a
    valid ChatKit ``ThreadStreamEvent``, the last frame complete."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == "", "the stream must end with a complete frame"
    return [event(frame) for frame in frames[:-1]]


def event(frame: str) -> dict[str, Any]:
    """One SSE frame as JSON, checked against chatkit's event types."""
    assert frame.startswith("data: ") and "\n" not in frame, frame
    with warnings.catch_warnings():
        # validating a widget builds chatkit's own (deprecated) named widget classes
        warnings.simplefilter("ignore", DeprecationWarning)
        EVENTS.validate_json(frame.removeprefix("data: "))
    return json.loads(frame.removeprefix("data: "))


def reply(events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The one assistant message a stream finished: its text and the deltas it came in,
    checked to agree and to come between the item's added and done events."""
    added = [
        i
        for i, e in enumerate(events)
        if e["type"] == "thread.item.added" and e["item"]["type"] == "assistant_message"
    ]
    assert len(added) == 1, [e["type"] for e in events]
    item_id = events[added[0]]["item"]["id"]
    done = [
        i
        for i, e in enumerate(events)
        if e["type"] == "thread.item.done" and e["item"]["id"] == item_id
    ]
    assert len(done) == 1 and added[0] < done[0]
    deltas = [
        e["update"]["delta"]
        for e in events[added[0] : done[0]]
        if e["type"] == "thread.item.updated"
        and e["item_id"] == item_id
        and e["update"]["type"] == TEXT_DELTA
    ]
    text = "".join(part["text"] for part in events[done[0]]["item"]["content"])
    assert "".join(deltas) == text
    return text, deltas


def deltas(events: list[dict[str, Any]]) -> list[str]:
    """Every text delta of a stream, finished or not."""
    return [
        e["update"]["delta"]
        for e in events
        if e["type"] == "thread.item.updated" and e["update"]["type"] == TEXT_DELTA
    ]


class Chat:
    """One browser's ChatKit client: a bearer (session secret, token or none) and an URL.

    ``send`` starts a thread, then adds to it; ``call`` is any request, answered as is.
    """

    def __init__(self, http: httpx.AsyncClient, url: str, bearer: str | None) -> None:
        self.http = http
        self.url = url
        self.bearer = bearer
        self.thread_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}

    async def call(self, type_: str, **params: Any) -> httpx.Response:
        body = {"type": type_, "params": params}
        return await self.http.post(self.url, json=body, headers=self.headers)

    async def json(self, type_: str, **params: Any) -> Any:
        response = await self.call(type_, **params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        return response.json()

    async def stream(self, type_: str, **params: Any) -> list[dict[str, Any]]:
        return sse(await self.call(type_, **params))

    async def send(self, text: str) -> list[dict[str, Any]]:
        if self.thread_id is None:
            events = await self.stream("threads.create", input=user_input(text))
            assert events[0]["type"] == "thread.created"
            self.thread_id = events[0]["thread"]["id"]
            return events
        return await self.stream(
            "threads.add_user_message", thread_id=self.thread_id, input=user_input(text)
        )

    async def items(self) -> list[dict[str, Any]]:
        page = await self.json("items.list", thread_id=self.thread_id, order="asc", limit=50)
        return page["data"]

    def on(self, thread_id: str) -> Chat:
        """The same client, carrying on in ``thread_id``."""
        self.thread_id = thread_id
        return self


class MockBroker:
    """The broker in mock mode at ``http``'s base URL."""

    def __init__(self, http: httpx.AsyncClient, app: Any) -> None:
        self.http = http
        self.app = app

    async def mint(self, workflow: str = "topic-generation", token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post(
            "/api/chatkit/session", json={"workflow": workflow}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def chat(self, workflow: str = "topic-generation", token: str | None = None) -> Chat:
        """A client holding a freshly minted secret for ``workflow`` (as ``token``'s user)."""
        minted = await self.mint(workflow, token)
        return Chat(self.http, minted["backend"]["url"], minted["client_secret"])

    def raw(self, url: str = "/chatkit/topic-generation", bearer: str | None = None) -> Chat:
        """A client with no minted secret: a token, a forged secret, or none (``mock-user``)."""
        return Chat(self.http, url, bearer)


@contextlib.asynccontextmanager
async def mock_broker(
    settings: Settings | None = None,
    *,
    step: float = 0.0,
    slow_step: float = 0.0,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[MockBroker]:
    """The real app in mock mode under uvicorn on a loopback port, lifespan run; the canned
    replies paced at ``step`` (``/slow`` at ``slow_step``)."""
    settings = settings or mock_settings(**(env or {}))
    broker = build_broker(settings)
    pace(broker, step=step, slow_step=slow_step)
    app = create_app(settings, broker=broker)
    async with (
        app.router.lifespan_context(app),
        run_asgi(app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield MockBroker(http, app)
