"""Agent workflows in real ``chatkit-broker serve`` processes: a conversation survives a
restart on a SQLite file, and two brokers share one PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ...support import API_KEY, SECRET, BrokerProcess, auth, jwt_kit
from ...support.fake_responses import FakeResponses, text

ROOT = Path(__file__).resolve().parents[3]
SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"


def token(sub: str) -> dict[str, str]:
    return auth(jwt_kit.token(sub))


def env_for(responses: FakeResponses, database_url: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": responses.base_url,
        # a file path: serve runs in a temporary directory, where no package `examples` is
        "BROKER_WORKFLOWS": f"support={ROOT}/examples/agent/support_agent.py:agent",
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": database_url,
        "BROKER_LOG_FORMAT": "json",
    }


def run(broker: BrokerProcess, user: str, message: str, thread_id: str | None = None) -> dict:
    body = {"input": message} | ({"thread_id": thread_id} if thread_id else {})
    r = httpx.post(
        f"{broker.url}/api/workflows/support/runs", json=body, headers=token(user), timeout=30
    )
    assert r.status_code == 200, (r.text, broker.logs())
    return r.json()


def items(broker: BrokerProcess, user: str, thread_id: str) -> list[str]:
    r = httpx.get(
        f"{broker.url}/api/threads/{thread_id}/items?order=asc", headers=token(user), timeout=10
    )
    assert r.status_code == 200, r.text
    return [
        "".join(part["text"] for part in item["content"])
        for item in r.json()["data"]
        if item["type"] in ("user_message", "assistant_message")
    ]


def test_a_conversation_survives_a_restart_on_a_sqlite_file(
    run_broker: Callable[..., BrokerProcess], responses: FakeResponses, tmp_path: Path
) -> None:
    env = env_for(responses, f"sqlite:///{tmp_path / 'threads.sqlite3'}")
    responses.script(text("Before the restart."), text("After the restart."))
    first = run_broker(env)
    thread_id = run(first, "alice", "Remember me")["thread_id"]
    first.stop()
    assert "Application shutdown complete" in first.logs()  # the store closed cleanly
    second = run_broker(env)
    assert items(second, "alice", thread_id) == ["Remember me", "Before the restart."]
    assert run(second, "alice", "Still there?", thread_id)["output"] == "After the restart."
    assert responses.requests[-1].texts() == ["Remember me", "Before the restart.", "Still there?"]
    assert (tmp_path / "threads.sqlite3").is_file()
    r = httpx.get(f"{second.url}/api/threads/{thread_id}/items", headers=token("bob"), timeout=10)
    assert r.status_code == 404


def test_two_brokers_share_one_postgresql(
    run_broker: Callable[..., BrokerProcess], responses: FakeResponses, pg_url: str
) -> None:
    env = env_for(responses, pg_url)
    a, b = run_broker(env), run_broker(env)
    responses.script(text("Answered by A."), text("Answered by B."))
    thread_id = run(a, "carol", "Hello A")["thread_id"]
    assert run(b, "carol", "Hello B", thread_id)["output"] == "Answered by B."
    expected = ["Hello A", "Answered by A.", "Hello B", "Answered by B."]
    assert items(a, "carol", thread_id) == items(b, "carol", thread_id) == expected
    listed = httpx.get(f"{a.url}/api/threads?workflow=support", headers=token("carol"), timeout=10)
    assert [t["id"] for t in listed.json()["data"]] == [thread_id]
    ready = [httpx.get(f"{p.url}/readyz", timeout=5).status_code for p in (a, b)]
    assert ready == [200, 200]


def test_stop_in_the_browser_keeps_the_partial_reply_in_a_real_broker(
    run_broker: Callable[..., BrokerProcess], responses: FakeResponses, tmp_path: Path
) -> None:
    broker = run_broker(env_for(responses, f"sqlite:///{tmp_path / 'threads.sqlite3'}"))
    responses.script(text("A long answer that the user stops halfway", chunks=8, hang_after=3))
    message = {
        "content": [{"type": "input_text", "text": "Go on"}],
        "attachments": [],
        "inference_options": {},
    }
    body = {"type": "threads.create", "params": {"input": message}}
    seen, deltas, thread_id = "", 0, None
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{broker.url}/chatkit/support", json=body, headers=token("dave")) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            thread_id = thread_id or event.get("thread", {}).get("id")
            if event.get("update", {}).get("type") == "assistant_message.content_part.text_delta":
                seen += event["update"]["delta"]
                deltas += 1
            if deltas == 3:
                break  # the Stop button: the browser closes the stream
    for _ in range(100):
        saved = items(broker, "dave", thread_id)
        if len(saved) == 2:
            break
        time.sleep(0.05)
    assert saved == ["Go on", seen]


def test_a_database_from_a_newer_broker_stops_the_start(
    run_broker: Callable[..., BrokerProcess], responses: FakeResponses, tmp_path: Path
) -> None:
    import asyncio

    from broker.backends.agent.store import SQLStore, resolve_database_url, schema_table

    url = f"sqlite:///{tmp_path / 'threads.sqlite3'}"

    async def age() -> None:
        store = SQLStore(resolve_database_url(url))
        await store.start()
        async with store._engine.begin() as conn:
            await conn.execute(schema_table.update().values(version=99))
        await store.close()

    asyncio.run(age())
    broker = run_broker(env_for(responses, url), ready=False)
    assert broker.proc.wait(30) != 0
    assert (
        "has schema version 99, but this chatkit-broker understands versions up to 1"
        in broker.logs()
    )
