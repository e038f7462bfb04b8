"""Mock mode on the agent engine, through the broker: no token, no OpenAI, the canned
replies and commands, threads in memory unless BROKER_DATABASE_URL says otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from broker.backends.agent.backend import MockAgentBackend
from broker.config import load_settings

from ...support import app_client
from .harness import done_text, sse

MOCK = {"BROKER_MOCK": "1", "BROKER_LOG_FORMAT": "json"}


async def send(
    client: httpx.AsyncClient, name: str, secret: str, text: str, thread_id: str | None = None
) -> list[dict[str, Any]]:
    message = {
        "content": [{"type": "input_text", "text": text}],
        "attachments": [],
        "inference_options": {},
    }
    if thread_id is None:
        body = {"type": "threads.create", "params": {"input": message}}
    else:
        body = {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": message},
        }
    r = await client.post(
        f"/chatkit/{name}", json=body, headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200, r.text
    return sse(r.text)


async def mint(client: httpx.AsyncClient, name: str) -> str:
    r = await client.post("/api/chatkit/session", json={"workflow": name})
    assert r.status_code == 200, r.text
    assert (
        r.json()["workflow"]["kind"] == "mock" and r.json()["backend"]["url"] == f"/chatkit/{name}"
    )
    return r.json()["client_secret"]


async def test_mock_mode_serves_every_workflow_from_the_engine() -> None:
    async with app_client(load_settings(MOCK)) as client:
        (backend,) = list(client.app.state.broker.backends)
        assert isinstance(backend, MockAgentBackend)
        secret = await mint(client, "topic-generation")
        events = await send(client, "topic-generation", secret, "hello mock")
        assert done_text(events).startswith("**[mock]**") and "> hello mock" in done_text(events)
        titles = [e["thread"]["title"] for e in events if e["type"] == "thread.updated"]
        assert titles == ["hello mock"]  # titled from the first message
        thread_id = events[0]["thread"]["id"]
        failed = await send(client, "topic-generation", secret, "/error", thread_id)
        assert next(e for e in failed if e["type"] == "error")["message"].startswith("[mock]")
        widget = await send(client, "topic-generation", secret, "/widget", thread_id)
        assert any(
            e["type"] == "thread.item.done" and e["item"]["type"] == "widget" for e in widget
        )
        # the older alias reaches the same threads
        r = await client.post(
            "/mock/chatkit",
            json={"type": "threads.list", "params": {}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert [t["id"] for t in r.json()["data"]] == [thread_id]
        # and the server-side run API works in mock mode too, without a token
        r = await client.post("/api/workflows/post-writer/runs", json={"input": "draft a post"})
        assert r.status_code == 200 and "> draft a post" in r.json()["output_text"]


async def test_mock_threads_live_in_memory_unless_a_database_is_set(tmp_path: Path) -> None:
    async with app_client(load_settings(MOCK)) as client:
        secret = await mint(client, "topic-generation")
        await send(client, "topic-generation", secret, "forgotten")
    async with app_client(load_settings(MOCK)) as client:
        secret = await mint(client, "topic-generation")
        r = await client.post(
            "/chatkit/topic-generation",
            json={"type": "threads.list", "params": {}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert r.json()["data"] == []
    env = {**MOCK, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'mock.sqlite3'}"}
    for _ in range(2):
        async with app_client(load_settings(env)) as client:
            secret = await mint(client, "topic-generation")
            r = await client.post(
                "/chatkit/topic-generation",
                json={"type": "threads.list", "params": {}},
                headers={"Authorization": f"Bearer {secret}"},
            )
            kept = r.json()["data"]
            if not kept:
                await send(client, "topic-generation", secret, "kept")
    assert [t["title"] for t in kept] == ["kept"]
