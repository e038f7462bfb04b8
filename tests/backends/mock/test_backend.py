"""Mock mode's backend through the broker, the way a page drives it (mint a session secret,
then POST /chatkit/<workflow>): a thread's whole life, stop, retry, users kept apart, bad
requests, who the caller is, and where the threads live."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.backends.mock.backend import MockAgentBackend

from ...support import SECRET, auth
from ...support.mock_broker import deltas, event, mock_broker, reply, user_input

# --- a thread's life ------------------------------------------------------------------------


async def test_mock_mode_serves_every_workflow_from_the_agent_engine() -> None:
    async with mock_broker() as broker:
        (backend,) = list(broker.app.state.broker.backends)
        assert isinstance(backend, MockAgentBackend)
        for name in ("topic-generation", "post-writer"):
            minted = await broker.mint(name)
            assert minted["workflow"] == {"name": name, "kind": "mock"}
            assert minted["backend"]["url"] == f"/chatkit/{name}"


async def test_a_thread_from_first_message_to_deletion() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        await chat.send("first message")
        events = await chat.send("second message")
        text, _ = reply(events)
        assert "> second message" in text
        # the title comes from the first message and is not replaced later
        assert not any(e["type"] == "thread.updated" for e in events)

        threads = await chat.json("threads.list")
        assert [(t["id"], t["title"]) for t in threads["data"]] == [
            (chat.thread_id, "first message")
        ]
        items = await chat.items()
        assert [i["type"] for i in items] == [
            "user_message",
            "assistant_message",
            "user_message",
            "assistant_message",
        ]
        assert items[3]["content"][0]["text"] == text

        thread = await chat.json("threads.get_by_id", thread_id=chat.thread_id)
        assert thread["title"] == "first message"
        assert [i["id"] for i in thread["items"]["data"]] == [i["id"] for i in items]

        renamed = await chat.json("threads.update", thread_id=chat.thread_id, title="Renamed")
        assert renamed["title"] == "Renamed"
        feedback = {"thread_id": chat.thread_id, "item_ids": [items[1]["id"]], "kind": "positive"}
        assert await chat.json("items.feedback", **feedback) == {}

        assert await chat.json("threads.delete", thread_id=chat.thread_id) == {}
        assert (await chat.json("threads.list"))["data"] == []
        gone = await chat.call("threads.get_by_id", thread_id=chat.thread_id)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


async def test_threads_list_pages_newest_first() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        ids = []
        for n in range(3):
            chat.thread_id = None
            await chat.send(f"thread {n}")
            ids.append(chat.thread_id)
        first = await chat.json("threads.list", limit=2)
        rest = await chat.json("threads.list", limit=2, after=first["after"])
    assert [t["id"] for t in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] and first["after"] == ids[1]
    assert [t["id"] for t in rest["data"]] == [ids[0]] and not rest["has_more"]


async def test_retry_after_item_replaces_the_reply() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        events = await chat.send("try again")
        user_item = events[1]["item"]
        old_reply = [e for e in events if e["type"] == "thread.item.done"][-1]["item"]

        retried = await chat.stream(
            "threads.retry_after_item", thread_id=chat.thread_id, item_id=user_item["id"]
        )
        text, _ = reply(retried)
        items = await chat.items()
        not_a_user_message = await chat.call(
            "threads.retry_after_item", thread_id=chat.thread_id, item_id=items[1]["id"]
        )
    assert "> try again" in text
    assert items[0]["id"] == user_item["id"] and len(items) == 2
    assert items[1]["id"] != old_reply["id"] and items[1]["content"][0]["text"] == text
    assert not_a_user_message.status_code == 400
    assert not_a_user_message.json()["error"]["code"] == "invalid_request"


async def test_stop_mid_reply_keeps_the_partial_reply_and_the_chat_goes_on() -> None:
    """The stop button closes the stream: what was shown is saved, the next turn answers."""
    async with mock_broker(slow_step=0.3) as broker:
        chat = await broker.chat()
        body = {"type": "threads.create", "params": {"input": user_input("/slow story")}}
        seen: list[dict[str, Any]] = []
        async with broker.http.stream("POST", chat.url, json=body, headers=chat.headers) as r:
            async for line in r.aiter_lines():
                if line:
                    seen.append(event(line))
                if len(deltas(seen)) == 2:
                    break  # hang up mid-reply, as the stop button does
        chat.thread_id = seen[0]["thread"]["id"]
        shown = "".join(deltas(seen))
        saved: list[str] = []
        for _ in range(200):
            items = await chat.items()
            saved = [i["content"][0]["text"] for i in items if i["type"] == "assistant_message"]
            if saved:
                break
            await asyncio.sleep(0.025)
        assert saved == [shown] and shown.startswith("**[mock]**")

        text, _ = reply(await chat.send("never mind"))
        kinds = [i["type"] for i in await chat.items()]
    assert "> never mind" in text
    assert kinds == ["user_message", "assistant_message", "user_message", "assistant_message"]


# --- users are kept apart --------------------------------------------------------------------


async def test_users_never_see_each_others_threads(token: Callable[..., str]) -> None:
    async with mock_broker(env={"BROKER_JWT_SECRET": SECRET}) as broker:
        alice = await broker.chat(token=token("alice"))
        events = await alice.send("alice's secret")
        reply_id = [e for e in events if e["type"] == "thread.item.done"][-1]["item"]["id"]
        user_item_id = events[1]["item"]["id"]
        bob = await broker.chat(token=token("bob"))
        await bob.send("bob's note")
        anonymous = await broker.chat()

        assert [t["id"] for t in (await alice.json("threads.list"))["data"]] == [alice.thread_id]
        assert [t["id"] for t in (await bob.json("threads.list"))["data"]] == [bob.thread_id]
        assert (await anonymous.json("threads.list"))["data"] == []

        foreign = {
            "threads.get_by_id": {"thread_id": alice.thread_id},
            "items.list": {"thread_id": alice.thread_id},
            "threads.update": {"thread_id": alice.thread_id, "title": "mine now"},
            "threads.delete": {"thread_id": alice.thread_id},
            "items.feedback": {
                "thread_id": alice.thread_id,
                "item_ids": [reply_id],
                "kind": "negative",
            },
            "threads.add_user_message": {"thread_id": alice.thread_id, "input": user_input("hi")},
            "threads.retry_after_item": {"thread_id": alice.thread_id, "item_id": user_item_id},
            "threads.custom_action": {
                "thread_id": alice.thread_id,
                "item_id": reply_id,
                "action": {"type": "mock.button_pressed", "payload": {}},
            },
        }
        for type_, params in foreign.items():
            for who in (bob, anonymous):
                response = await who.call(type_, **params)
                assert response.status_code == 404, (type_, response.text)
                assert response.json()["error"]["code"] == "not_found"
                assert "alice's secret" not in response.text

        thread = await alice.json("threads.get_by_id", thread_id=alice.thread_id)
    assert thread["title"] == "alice's secret"
    assert [i["id"] for i in thread["items"]["data"]][:2] == [user_item_id, reply_id]
    assert len(thread["items"]["data"]) == 2


# --- bad requests ------------------------------------------------------------------------------


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
    "file upload of a negative size": json.dumps(
        {
            "type": "attachments.create",
            "params": {"name": "a", "size": -1, "mime_type": "image/png"},
        }
    ).encode(),
    "dictation that is not base64": json.dumps(
        {
            "type": "input.transcribe",
            "params": {"audio_base64": "A", "mime_type": "audio/webm"},
        }
    ).encode(),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_bad_bodies_get_a_clean_400(body: bytes) -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        response = await broker.http.post(
            chat.url,
            content=body,
            headers={**chat.headers, "Content-Type": "application/json", "X-Request-ID": "t-400"},
        )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["request_id"] == "t-400"
    assert 10 < len(error["message"]) <= 300


async def test_an_attachment_the_caller_does_not_have_is_not_found() -> None:
    """The old in-memory mock answered 400 (it took no attachments at all); the engine looks
    the id up in the caller's own scope like any other id: 404, the same for every user."""
    async with mock_broker() as broker:
        chat = await broker.chat()
        response = await chat.call("threads.create", input=user_input("x", attachments=["a"]))
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


async def test_stream_headers_say_mock_no_store_and_the_request_id() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        response = await broker.http.post(
            chat.url,
            json={"type": "threads.create", "params": {"input": user_input("hi")}},
            headers={**chat.headers, "X-Request-ID": "trace-123"},
        )
    assert response.status_code == 200 and response.text.startswith("data: ")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-chatkit-broker-mode"] == "mock"
    assert response.headers["x-request-id"] == "trace-123"
    assert response.headers["cache-control"] == "no-store"


async def test_an_oversized_body_is_refused() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        response = await chat.call("threads.create", input=user_input("x" * 300_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


# --- who the caller is -------------------------------------------------------------------------


async def test_a_session_secret_names_its_user(token: Callable[..., str]) -> None:
    async with mock_broker(env={"BROKER_JWT_SECRET": SECRET}) as broker:
        carol = await broker.chat(token=token("carol"))
        assert carol.bearer.startswith("cks_")
        await carol.send("from the secret")
        by_token = broker.raw(carol.url, token("carol"))
        listed = await by_token.json("threads.list")
        anonymous = await broker.raw(carol.url).json("threads.list")
    assert [t["id"] for t in listed["data"]] == [carol.thread_id]
    assert anonymous["data"] == []  # not mock-user's


async def test_a_forged_or_cancelled_secret_is_refused(token: Callable[..., str]) -> None:
    async with mock_broker(env={"BROKER_JWT_SECRET": SECRET}) as broker:
        minted = await broker.mint(token=token("carol"))
        secret, url = minted["client_secret"], minted["backend"]["url"]
        cancelled = await broker.http.post(
            "/api/chatkit/session/cancel",
            json={"session_id": minted["session_id"]},
            headers=auth(token("carol")),
        )
        assert cancelled.status_code == 200, cancelled.text
        for bad in (secret, secret[:-4] + "AAAA", "cks_not-a-secret"):
            response = await broker.raw(url, bad).call("threads.list")
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthenticated"
            assert bad not in response.text


async def test_a_token_is_verified_when_a_key_is_configured(token: Callable[..., str]) -> None:
    async with mock_broker(env={"BROKER_JWT_SECRET": SECRET}) as broker:
        forged = token("mallory", key="another-secret-that-is-32-bytes-long!!")
        response = await broker.raw(bearer=forged).call("threads.list")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_without_a_key_the_token_user_is_read_unverified(token: Callable[..., str]) -> None:
    async with mock_broker() as broker:
        dave = broker.raw(bearer=token("dave", key="any-key-at-all-since-nothing-checks-it"))
        await dave.send("hi")
        mine = await dave.json("threads.list")
        anonymous = await broker.raw().json("threads.list")
    assert [t["id"] for t in mine["data"]] == [dave.thread_id]
    assert anonymous["data"] == []


# --- where the threads live ----------------------------------------------------------------------


async def test_the_older_alias_reaches_the_same_threads() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        await chat.send("hello")
        listed = await broker.raw("/mock/chatkit", chat.bearer).json("threads.list")
    assert [t["id"] for t in listed["data"]] == [chat.thread_id]


async def test_threads_live_in_memory_unless_a_database_is_set(tmp_path: Path) -> None:
    async with mock_broker() as broker:
        await (await broker.chat()).send("forgotten")
    async with mock_broker() as broker:
        assert (await (await broker.chat()).json("threads.list"))["data"] == []
    env = {"BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'mock.sqlite3'}"}
    async with mock_broker(env=env) as broker:
        await (await broker.chat()).send("kept")
    async with mock_broker(env=env) as broker:
        kept = (await (await broker.chat()).json("threads.list"))["data"]
    assert [t["title"] for t in kept] == ["kept"]


def test_the_canned_pace_comes_from_broker_mock_step() -> None:
    """BROKER_MOCK_STEP reaches the canned model (0: no pause; the fuzz suite uses it), the
    default is 0.02 s, and a step outside 0..1 is a configuration error, not a silent clamp."""
    from broker.app import build_broker
    from broker.config import ConfigError

    from ...support.mock_broker import mock_settings

    for env, step in (
        ({}, 0.02),
        ({"BROKER_MOCK_STEP": "0"}, 0.0),
        ({"BROKER_MOCK_STEP": "0.3"}, 0.3),
    ):
        (backend,) = list(build_broker(mock_settings(**env)).backends)
        assert backend.mock_agent.agent.model.step == step, env
        assert backend.mock_agent.agent.model.slow_step == 0.5  # /slow keeps its own pace
    with pytest.raises(ConfigError, match="BROKER_MOCK_STEP"):
        mock_settings(BROKER_MOCK_STEP="2")
