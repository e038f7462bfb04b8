"""The mock ChatKit backend, driven over HTTP the way the `<openai-chatkit>` component drives it.

Every streamed event is parsed into chatkit-python's own `ThreadStreamEvent` types, so a
test passes only when the stream is valid ChatKit protocol, not merely present.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
from pydantic import TypeAdapter

from broker.backends.mock.engine import MockChatKitBackend
from broker.config import Settings

from .support import SECRET, app_client, auth

pytest.importorskip("chatkit", reason="the mock backend needs the 'mock' extra")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.types import (
        AssistantMessageContentPartTextDelta,
        AssistantMessageItem,
        ErrorEvent,
        Page,
        ProgressUpdateEvent,
        StreamOptionsEvent,
        Thread,
        ThreadCreatedEvent,
        ThreadItem,
        ThreadItemAddedEvent,
        ThreadItemDoneEvent,
        ThreadItemUpdatedEvent,
        ThreadStreamEvent,
        ThreadUpdatedEvent,
        UserMessageItem,
        WidgetItem,
    )
    from chatkit.widgets import StrictWidgetRoot

EVENTS: TypeAdapter[Any] = TypeAdapter(ThreadStreamEvent)
THREAD_PAGE: TypeAdapter[Page[Thread]] = TypeAdapter(Page[Thread])
ITEM_PAGE: TypeAdapter[Page[ThreadItem]] = TypeAdapter(Page[ThreadItem])
URL = "/mock/chatkit"


@pytest.fixture
def mock_settings(make_settings: Callable[..., Settings]) -> Settings:
    """Mock mode with the JWT secret configured, so tokens are verified as in live mode."""
    return make_settings(BROKER_MOCK="1", OPENAI_API_KEY=None)


@pytest.fixture
async def client(mock_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    backend = MockChatKitBackend(slow_step=0, step=0)
    async with app_client(mock_settings, mock_backend=backend) as c:
        yield c


# --- helpers ----------------------------------------------------------------------------


def token_for(user: str, key: str = SECRET) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, key, algorithm="HS256")


def user_input(text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }


async def call(
    client: httpx.AsyncClient, type_: str, params: dict[str, Any], *, user: str | None = None
) -> httpx.Response:
    headers = auth(token_for(user)) if user else {}
    return await client.post(URL, json={"type": type_, "params": params}, headers=headers)


def parse_sse(response: httpx.Response) -> list[Any]:
    """Every frame must be one `data: {json}` line that is a valid ThreadStreamEvent."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[-1] == "", "the stream must end with a complete frame"
    events = []
    for frame in frames[:-1]:
        assert frame.startswith("data: ") and "\n" not in frame, frame
        events.append(parse_event(frame.encode()))
    return events


def parse_event(frame: bytes) -> Any:
    with warnings.catch_warnings():
        # validating a widget builds chatkit's own (deprecated) named widget classes
        warnings.simplefilter("ignore", DeprecationWarning)
        return EVENTS.validate_json(frame.removeprefix(b"data: "))


async def stream(
    client: httpx.AsyncClient, type_: str, params: dict[str, Any], *, user: str | None = None
) -> list[Any]:
    return parse_sse(await call(client, type_, params, user=user))


async def json_call(
    client: httpx.AsyncClient, type_: str, params: dict[str, Any], *, user: str | None = None
) -> Any:
    response = await call(client, type_, params, user=user)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assistant_reply(events: list[Any]) -> tuple[str, list[str]]:
    """The final assistant text and the deltas it streamed in, checked to agree."""
    added = [e for e in events if isinstance(e, ThreadItemAddedEvent)]
    assert len(added) == 1 and isinstance(added[0].item, AssistantMessageItem)
    item_id = added[0].item.id
    deltas = [
        e.update.delta
        for e in events
        if isinstance(e, ThreadItemUpdatedEvent)
        and e.item_id == item_id
        and isinstance(e.update, AssistantMessageContentPartTextDelta)
    ]
    done = [e for e in events if isinstance(e, ThreadItemDoneEvent) and e.item.id == item_id]
    assert len(done) == 1
    text = done[0].item.content[0].text
    assert "".join(deltas) == text
    # added → deltas → done, in that order
    positions = [events.index(e) for e in (added[0], done[0])]
    assert positions[0] < positions[1]
    return text, deltas


async def new_thread(
    client: httpx.AsyncClient, text: str = "hello", *, user: str | None = None
) -> tuple[str, list[Any]]:
    events = await stream(client, "threads.create", {"input": user_input(text)}, user=user)
    assert isinstance(events[0], ThreadCreatedEvent)
    return events[0].thread.id, events


# --- the conversation a UI goes through ---------------------------------------------------


async def test_create_thread_streams_a_marked_echo_in_several_deltas(
    client: httpx.AsyncClient,
) -> None:
    _, events = await new_thread(client, "Hello, mock!")

    kinds = [type(e) for e in events]
    assert kinds[:3] == [ThreadCreatedEvent, ThreadItemDoneEvent, StreamOptionsEvent]
    assert isinstance(events[1].item, UserMessageItem)
    assert events[1].item.content[0].text == "Hello, mock!"
    assert isinstance(events[-1], ThreadItemDoneEvent)

    text, deltas = assistant_reply(events)
    assert text.startswith("**[mock]**")
    assert "Hello, mock!" in text
    assert len(deltas) >= 3

    titles = [e.thread.title for e in events if isinstance(e, ThreadUpdatedEvent)]
    assert titles == ["Hello, mock!"]


async def test_full_thread_lifecycle(client: httpx.AsyncClient) -> None:
    thread_id, _ = await new_thread(client, "first message")
    events = await stream(
        client,
        "threads.add_user_message",
        {"thread_id": thread_id, "input": user_input("second message")},
    )
    text, _ = assistant_reply(events)
    assert "second message" in text
    # the title comes from the first message and is not replaced later
    assert not any(isinstance(e, ThreadUpdatedEvent) for e in events)

    threads = THREAD_PAGE.validate_python(await json_call(client, "threads.list", {}))
    assert [(t.id, t.title) for t in threads.data] == [(thread_id, "first message")]

    items = ITEM_PAGE.validate_python(
        await json_call(client, "items.list", {"thread_id": thread_id, "order": "asc"})
    )
    assert [type(i) for i in items.data] == [
        UserMessageItem,
        AssistantMessageItem,
        UserMessageItem,
        AssistantMessageItem,
    ]
    assert items.data[3].content[0].text == text

    thread = Thread.model_validate(
        await json_call(client, "threads.get_by_id", {"thread_id": thread_id})
    )
    assert thread.title == "first message"
    assert [i.id for i in thread.items.data] == [i.id for i in items.data]

    updated = Thread.model_validate(
        await json_call(client, "threads.update", {"thread_id": thread_id, "title": "Renamed"})
    )
    assert updated.title == "Renamed"

    feedback = {"thread_id": thread_id, "item_ids": [items.data[1].id], "kind": "positive"}
    assert await json_call(client, "items.feedback", feedback) == {}

    assert await json_call(client, "threads.delete", {"thread_id": thread_id}) == {}
    assert (await json_call(client, "threads.list", {}))["data"] == []
    gone = await call(client, "threads.get_by_id", {"thread_id": thread_id})
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


async def test_threads_list_pages_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await new_thread(client, f"thread {n}"))[0] for n in range(3)]

    first = THREAD_PAGE.validate_python(await json_call(client, "threads.list", {"limit": 2}))
    assert [t.id for t in first.data] == [ids[2], ids[1]]
    assert first.has_more and first.after == ids[1]

    rest = THREAD_PAGE.validate_python(
        await json_call(client, "threads.list", {"limit": 2, "after": first.after})
    )
    assert [t.id for t in rest.data] == [ids[0]]
    assert not rest.has_more


async def test_retry_after_item_replaces_the_reply(client: httpx.AsyncClient) -> None:
    thread_id, events = await new_thread(client, "try again")
    user_item = events[1].item
    old_reply = [e for e in events if isinstance(e, ThreadItemDoneEvent)][-1].item

    retried = await stream(
        client, "threads.retry_after_item", {"thread_id": thread_id, "item_id": user_item.id}
    )
    text, _ = assistant_reply(retried)
    assert "try again" in text

    items = ITEM_PAGE.validate_python(
        await json_call(client, "items.list", {"thread_id": thread_id, "order": "asc"})
    )
    assert items.data[0].id == user_item.id
    assert len(items.data) == 2
    assert items.data[1].id != old_reply.id

    not_a_user_message = await call(
        client, "threads.retry_after_item", {"thread_id": thread_id, "item_id": items.data[1].id}
    )
    assert not_a_user_message.status_code == 400
    assert not_a_user_message.json()["error"]["code"] == "invalid_request"


# --- commands -----------------------------------------------------------------------------


async def test_slow_streams_over_several_steps(mock_settings: Settings) -> None:
    step = 0.05
    backend = MockChatKitBackend(slow_step=step, step=0)
    async with app_client(mock_settings, mock_backend=backend) as client:
        started = time.monotonic()
        _, events = await new_thread(client, "/slow please")
        elapsed = time.monotonic() - started

    assert any(isinstance(e, ProgressUpdateEvent) for e in events)
    text, deltas = assistant_reply(events)
    assert text.startswith("**[mock]**") and "/slow please" in text
    assert len(deltas) == 10
    assert elapsed >= (len(deltas) - 1) * step


async def test_slow_reply_arrives_piece_by_piece() -> None:
    """The backend hands out events as they happen: the first delta comes long before the last."""
    backend = MockChatKitBackend(slow_step=3600, step=0)
    body = json.dumps({"type": "threads.create", "params": {"input": user_input("/slow")}})
    response = await backend.handle(body.encode(), "mock-user")
    chunks = response.body_iterator
    seen: list[Any] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            async for chunk in chunks:
                raw = chunk if isinstance(chunk, bytes) else chunk.encode()
                seen.append(parse_event(raw))
    await chunks.aclose()
    deltas = [e for e in seen if isinstance(e, ThreadItemUpdatedEvent)]
    assert len(deltas) == 2  # content part added, then the first text delta; then it waits
    assert isinstance(deltas[1].update, AssistantMessageContentPartTextDelta)


async def test_error_command_ends_the_stream_with_an_error_event(
    client: httpx.AsyncClient,
) -> None:
    thread_id, events = await new_thread(client, "/error")

    assert isinstance(events[-1], ErrorEvent)
    assert events[-1].allow_retry is True
    assert "[mock]" in (events[-1].message or "")
    assert any(
        isinstance(e, ThreadItemUpdatedEvent)
        and isinstance(e.update, AssistantMessageContentPartTextDelta)
        for e in events
    ), "a partial reply streams before the error"
    assert not any(
        isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, AssistantMessageItem)
        for e in events
    )
    items = await json_call(client, "items.list", {"thread_id": thread_id})
    assert [i["type"] for i in items["data"]] == ["user_message"]


async def test_long_command_sends_markdown_with_list_table_and_code(
    client: httpx.AsyncClient,
) -> None:
    _, events = await new_thread(client, "/long")
    text, deltas = assistant_reply(events)

    assert text.startswith("**[mock]**")
    assert len(text) > 1000
    assert len(deltas) >= 10
    lines = text.splitlines()
    assert any(line.startswith("1. ") for line in lines)
    assert any(line.lstrip().startswith("- ") for line in lines)
    assert "| --- | --- | --- |" in lines
    assert "```python" in lines and lines.count("```") == 1


async def test_widget_command_sends_a_card_whose_button_round_trips(
    client: httpx.AsyncClient,
) -> None:
    thread_id, events = await new_thread(client, "/widget")

    widgets = [
        e.item
        for e in events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
    ]
    assert len(widgets) == 1
    raw = widgets[0].widget.model_dump(mode="json", exclude_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        card = TypeAdapter(StrictWidgetRoot).validate_python(raw)
    assert card.type == "Card"
    button = next(c for c in card.children if c.type == "Button")
    badge = card.children[0].children[-1]
    assert badge.type == "Badge" and badge.label == "mock"

    action = button.onClickAction.model_dump(mode="json")
    pressed = await stream(
        client,
        "threads.custom_action",
        {"thread_id": thread_id, "item_id": widgets[0].id, "action": action},
    )
    text, _ = assistant_reply(pressed)
    assert text.startswith("**[mock]**") and "pressed" in text


# --- users are kept apart -------------------------------------------------------------------


async def test_users_never_see_each_others_threads(client: httpx.AsyncClient) -> None:
    alice_thread, events = await new_thread(client, "alice's secret", user="alice")
    reply_id = [e for e in events if isinstance(e, ThreadItemDoneEvent)][-1].item.id
    user_item_id = events[1].item.id
    bob_thread, _ = await new_thread(client, "bob's note", user="bob")

    alice = await json_call(client, "threads.list", {}, user="alice")
    bob = await json_call(client, "threads.list", {}, user="bob")
    anonymous = await json_call(client, "threads.list", {})
    assert [t["id"] for t in alice["data"]] == [alice_thread]
    assert [t["id"] for t in bob["data"]] == [bob_thread]
    assert anonymous["data"] == []

    foreign = {
        "threads.get_by_id": {"thread_id": alice_thread},
        "items.list": {"thread_id": alice_thread},
        "threads.update": {"thread_id": alice_thread, "title": "mine now"},
        "threads.delete": {"thread_id": alice_thread},
        "items.feedback": {"thread_id": alice_thread, "item_ids": [reply_id], "kind": "negative"},
        "threads.add_user_message": {"thread_id": alice_thread, "input": user_input("hi")},
        "threads.retry_after_item": {"thread_id": alice_thread, "item_id": user_item_id},
    }
    for type_, params in foreign.items():
        response = await call(client, type_, params, user="bob")
        assert response.status_code == 404, (type_, response.text)
        assert response.json()["error"]["code"] == "not_found"
        assert "alice's secret" not in response.text

    thread = await json_call(client, "threads.get_by_id", {"thread_id": alice_thread}, user="alice")
    assert thread["title"] == "alice's secret"
    assert len(thread["items"]["data"]) == 2


# --- bad requests -----------------------------------------------------------------------------


BAD_BODIES = {
    "empty": b"",
    "not json": b"{",
    "not an object": b"[]",
    "nested too deep": b"[" * 5000,
    "not utf-8": b"\xff\xfe",
    "unknown type": b'{"type": "threads.explode", "params": {}}',
    "no type": b'{"params": {}}',
    "params missing": b'{"type": "threads.list"}',
    "params wrong type": b'{"type": "threads.list", "params": []}',
    "input missing keys": json.dumps(
        {"type": "threads.create", "params": {"input": {"content": []}}}
    ).encode(),
    "wrong kind": json.dumps(
        {"type": "items.feedback", "params": {"thread_id": "t", "item_ids": [], "kind": "meh"}}
    ).encode(),
    "attachments": json.dumps(
        {"type": "threads.create", "params": {"input": {**user_input("x"), "attachments": ["a"]}}}
    ).encode(),
    "unsupported operation": json.dumps(
        {"type": "attachments.create", "params": {"name": "a", "size": 1, "mime_type": "x/y"}}
    ).encode(),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_bodies_get_a_clean_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(URL, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["request_id"]
    assert 10 < len(error["message"]) <= 300


# --- without the extra ----------------------------------------------------------------------


# --- the route inside the app ------------------------------------------------------------------


async def test_stream_carries_mock_mode_and_request_id_headers(client: httpx.AsyncClient) -> None:
    response = await client.post(
        URL,
        json={"type": "threads.create", "params": {"input": user_input("hi")}},
        headers={"X-Request-ID": "trace-123"},
    )
    parse_sse(response)
    assert response.headers["x-chatkit-broker-mode"] == "mock"
    assert response.headers["x-request-id"] == "trace-123"
    assert response.headers["cache-control"] == "no-store"


async def test_bad_body_error_names_the_request_id(client: httpx.AsyncClient) -> None:
    response = await client.post(URL, content=b"{", headers={"X-Request-ID": "trace-400"})
    assert response.status_code == 400
    assert response.json()["error"]["request_id"] == "trace-400"


async def test_oversized_body_is_refused(client: httpx.AsyncClient) -> None:
    body = {"type": "threads.create", "params": {"input": user_input("x" * 300_000)}}
    response = await client.post(URL, json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("10.1.2.3", "127.0.0.1:8000"),  # a non-loopback peer
        ("127.0.0.1", "evil.example:8000"),  # DNS rebinding: loopback peer, foreign Host
        ("127.0.0.1", "localhost.evil.example"),
    ],
)
async def test_loopback_guards_cover_the_route(
    mock_settings: Settings, peer: str, host: str
) -> None:
    backend = MockChatKitBackend(slow_step=0, step=0)
    async with app_client(mock_settings, peer=peer, mock_backend=backend) as c:
        response = await c.post(
            URL,
            json={"type": "threads.create", "params": {"input": user_input("hi")}},
            headers={"Host": host, "X-Forwarded-For": "127.0.0.1"},
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "mock_local_only"
    # nothing was created behind the guard
    assert (await backend.handle(b'{"type":"threads.list","params":{}}', "mock-user")).body == (
        b'{"data":[],"has_more":false}'
    )


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000"])
async def test_local_hosts_pass_the_guard(client: httpx.AsyncClient, host: str) -> None:
    response = await client.post(
        URL, json={"type": "threads.list", "params": {}}, headers={"Host": host}
    )
    assert response.status_code == 200, response.text


async def test_route_does_not_exist_in_live_mode(client_live: httpx.AsyncClient) -> None:
    response = await client_live.post(URL, json={"type": "threads.list", "params": {}})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "chatkit-broker[mock]" not in response.text  # unknown route, not a missing extra
    assert (await client_live.get(URL)).status_code == 404  # not 405: no route at all
    config = (await client_live.get("/api/chatkit/config")).json()
    assert config["mode"] == "live"
    assert config["mock_backend_url"] is None and config["domain_key"] is None


@pytest.fixture
async def client_live(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(make_settings()) as c:
        yield c


async def test_config_points_the_page_at_the_mock_backend(client: httpx.AsyncClient) -> None:
    config = (await client.get("/api/chatkit/config")).json()
    assert config["mode"] == "mock"
    assert config["mock_backend_url"] == URL
    assert config["domain_key"] == "local-dev"


# --- who the user is ---------------------------------------------------------------------------


async def test_a_mock_client_secret_names_its_user(client: httpx.AsyncClient) -> None:
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token_for("carol"))
    )
    assert minted.status_code == 200, minted.text
    secret = minted.json()["client_secret"]
    assert secret.startswith("cks_")

    response = await client.post(
        URL,
        json={"type": "threads.create", "params": {"input": user_input("from the secret")}},
        headers=auth(secret),
    )
    thread_id = parse_sse(response)[0].thread.id

    carol = await json_call(client, "threads.list", {}, user="carol")
    assert [t["id"] for t in carol["data"]] == [thread_id]
    assert (await json_call(client, "threads.list", {}))["data"] == []  # not mock-user's


async def test_a_forged_or_cancelled_mock_secret_is_refused(client: httpx.AsyncClient) -> None:
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token_for("carol"))
    )
    secret, session_id = minted.json()["client_secret"], minted.json()["session_id"]
    cancelled = await client.post(
        "/api/chatkit/session/cancel",
        json={"session_id": session_id},
        headers=auth(token_for("carol")),
    )
    assert cancelled.status_code == 200, cancelled.text

    for bad in (secret, secret[:-4] + "AAAA", "mock_not-a-secret"):
        response = await client.post(
            URL, json={"type": "threads.list", "params": {}}, headers=auth(bad)
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
        assert bad not in response.text


async def test_tokens_are_verified_when_a_key_is_configured(client: httpx.AsyncClient) -> None:
    forged = token_for("mallory", key="another-secret-that-is-32-bytes-long!!")
    response = await client.post(
        URL, json={"type": "threads.list", "params": {}}, headers=auth(forged)
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_without_a_key_the_token_user_is_read_unverified(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(BROKER_MOCK="1", OPENAI_API_KEY=None, BROKER_JWT_SECRET=None)
    backend = MockChatKitBackend(slow_step=0, step=0)
    async with app_client(settings, mock_backend=backend) as c:
        dave = auth(token_for("dave", key="any-key-at-all-since-nothing-checks-it"))
        created = await c.post(
            URL,
            json={"type": "threads.create", "params": {"input": user_input("hi")}},
            headers=dave,
        )
        thread_id = parse_sse(created)[0].thread.id
        mine = await c.post(URL, json={"type": "threads.list", "params": {}}, headers=dave)
        anonymous = await c.post(URL, json={"type": "threads.list", "params": {}})
    assert [t["id"] for t in mine.json()["data"]] == [thread_id]
    assert anonymous.json()["data"] == []


# --- without the extra, through the app ----------------------------------------------------------


def test_the_broker_imports_without_the_extras_dependencies() -> None:
    """The app loads without openai-chatkit, the Agents SDK and openai (pydantic is a core
    dependency now: the settings are declared with pydantic-settings)."""
    code = (
        "import sys\n"
        "for name in ('chatkit', 'agents', 'openai'):\n"
        "    sys.modules[name] = None\n"
        "import broker.app, broker.cli\n"
        "from broker.backends.mock.engine import mock_backend_available\n"
        "assert not mock_backend_available()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
