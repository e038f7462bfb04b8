"""Isolation before streaming: every ChatKit request naming a thread, item or attachment the
caller does not own is refused with a 404 before any work, over real HTTP, on both
databases; bodies that are not ChatKit requests are a 400 naming the field."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from agents import Agent
from chatkit.types import FileAttachment

from broker.backends.agent.engine import AgentServer
from broker.backends.agent.store import Caller, SQLStore
from broker.backends.agent.targets import AgentTarget

from ...support.fake_responses import FakeResponses, text
from .harness import Chat, serve

MESSAGE = {
    "content": [{"type": "input_text", "text": "hi"}],
    "attachments": [],
    "inference_options": {},
}


@pytest.fixture
async def alice_thread(store: SQLStore, openai_client, responses: FakeResponses):
    """A served engine, and a conversation of alice's: (url, thread id, user item, reply item)."""
    agent = Agent(name="helper", model="gpt-test")
    server = AgentServer(store, AgentTarget("tests:agent", agent), openai_client=openai_client)
    await store.save_attachment(
        FileAttachment(id="atc_alice", name="a.txt", mime_type="text/plain"),
        Caller("alice", "support"),
    )
    responses.script(text("Private reply."))
    async with serve(server) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("My secret question")
        user_item, reply_item = (i["id"] for i in await chat.items())
        yield http, url, chat, user_item, reply_item


def foreign_requests(
    thread_id: str, user_item: str, reply_item: str
) -> list[tuple[str, dict[str, Any]]]:
    action = {"type": "x.pressed", "payload": {}}
    return [
        ("threads.get_by_id", {"thread_id": thread_id}),
        ("items.list", {"thread_id": thread_id}),
        ("threads.add_user_message", {"thread_id": thread_id, "input": MESSAGE}),
        ("threads.retry_after_item", {"thread_id": thread_id, "item_id": user_item}),
        (
            "threads.custom_action",
            {"thread_id": thread_id, "item_id": reply_item, "action": action},
        ),
        ("threads.custom_action", {"thread_id": thread_id, "action": action}),
        ("threads.sync_custom_action", {"thread_id": thread_id, "action": action}),
        ("threads.add_client_tool_output", {"thread_id": thread_id, "result": {"ok": True}}),
        (
            "threads.add_structured_input",
            {"thread_id": thread_id, "item_id": reply_item, "input": {}},
        ),
        ("items.feedback", {"thread_id": thread_id, "item_ids": [reply_item], "kind": "positive"}),
        ("threads.update", {"thread_id": thread_id, "title": "hijacked"}),
        ("threads.delete", {"thread_id": thread_id}),
        ("attachments.delete", {"attachment_id": "atc_alice"}),
        ("threads.create", {"input": {**MESSAGE, "attachments": ["atc_alice"]}}),
    ]


async def test_another_user_is_refused_every_request_before_it_runs(
    alice_thread, responses: FakeResponses, store: SQLStore
) -> None:
    http, url, chat, user_item, reply_item = alice_thread
    bob = Chat(http, url, "bob")
    before = await chat.items()
    calls = len(responses.requests)
    for type_, params in foreign_requests(chat.thread_id, user_item, reply_item):
        r = await bob.post(type_, **params)
        assert r.status_code == 404, (type_, r.text)
        assert r.headers["content-type"] == "application/json"
        error = r.json()["error"]
        assert error["code"] == "not_found" and "Private" not in error["message"], type_
    assert len(responses.requests) == calls  # nothing reached the model
    assert (await bob.post("threads.list", limit=20)).json()["data"] == []
    # alice's conversation is untouched: same items, same title, attachment still hers.
    assert await chat.items() == before
    thread = (await chat.post("threads.get_by_id", thread_id=chat.thread_id)).json()
    assert thread["title"] == "My secret question"
    assert (await store.load_attachment("atc_alice", Caller("alice", "support"))).name == "a.txt"


async def test_unknown_ids_of_ones_own_are_404_too(alice_thread) -> None:
    _, _, chat, user_item, reply_item = alice_thread
    for type_, params in foreign_requests("thr_" + "0" * 32, user_item, reply_item):
        if "thread_id" not in params:
            continue  # names no thread (alice owns atc_alice)
        r = await chat.post(type_, **params)
        assert r.status_code == 404, (type_, r.text)
    r = await chat.post("threads.create", input={**MESSAGE, "attachments": ["atc_unknown"]})
    assert r.status_code == 404 and "atc_unknown" in r.json()["error"]["message"]
    r = await chat.post(
        "items.feedback",
        thread_id=chat.thread_id,
        item_ids=[reply_item, "msg_nope"],
        kind="negative",
    )
    assert r.status_code == 404 and "msg_nope" in r.json()["error"]["message"]


async def test_ids_of_the_wrong_kind_are_400_before_the_stream(alice_thread) -> None:
    _, _, chat, user_item, reply_item = alice_thread
    cases = [
        (
            "threads.retry_after_item",
            {"thread_id": chat.thread_id, "item_id": reply_item},
            "user message",
        ),
        (
            "threads.custom_action",
            {"thread_id": chat.thread_id, "item_id": user_item, "action": {"type": "x"}},
            "widget",
        ),
        (
            "threads.add_client_tool_output",
            {"thread_id": chat.thread_id, "result": 1},
            "pending client tool call",
        ),
        (
            "threads.add_structured_input",
            {"thread_id": chat.thread_id, "item_id": user_item, "input": {}},
            "structured input",
        ),
        (
            "attachments.create",
            {"name": "a.txt", "size": 3, "mime_type": "text/plain"},
            "file uploads",
        ),
        ("input.transcribe", {"audio_base64": "AA==", "mime_type": "audio/webm"}, "dictation"),
        (
            "threads.sync_custom_action",
            {"thread_id": chat.thread_id, "action": {"type": "x"}},
            "not synchronously",
        ),
    ]
    for type_, params, words in cases:
        r = await chat.post(type_, **params)
        assert r.status_code == 400, (type_, r.text)
        assert (
            r.json()["error"]["code"] == "invalid_request" and words in r.json()["error"]["message"]
        )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "Invalid JSON"),
        (b"[]", "Input should be an object"),
        (b"{}", "a request type is required"),
        (b'{"type": "threads.nope", "params": {}}', "Unknown ChatKit request type 'threads.nope'"),
        (
            b'{"type": "threads.create", "params": {}}',
            "threads.create request (params.input: Field required)",
        ),
        (b'{"type": "items.list", "params": {"thread_id": 7}}', "params.thread_id"),
    ],
)
async def test_bodies_that_are_not_chatkit_requests_name_the_field(
    alice_thread, body: bytes, words: str
) -> None:
    http, url, *_ = alice_thread
    r = await http.post(url, content=body, headers={"X-Test-User": "alice"})
    assert r.status_code == 400
    assert words in r.json()["error"]["message"]
