"""Isolation through the broker's real HTTP gate (issue 15): bob, signed in with his own JWT or
session secret, names alice's thread, items and attachment in every ChatKit request and every
server-side route; each is a 404 JSON before any stream, and alice's rows in the database are
byte-for-byte what they were. test_protocol.py checks the engine alone; this checks the gate,
the per-workflow routing and the runs/threads routes in front of it, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from chatkit.types import FileAttachment

from broker.backends.agent.store import (
    Caller,
    SQLStore,
    attachments,
    items,
    resolve_database_url,
    threads,
)
from broker.config import load_settings

from ...support import app_client, auth
from ...support.adversarial import SecretWatch, logged_text
from ...support.fake_responses import FakeResponses, text
from .harness import sse
from .test_protocol import MESSAGE, foreign_requests

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
AGENTS = "support=examples.agent.support_agent:agent,triage=examples.agent.support_agent:agent"


async def snapshot(db_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables, read straight from the database, in a stable order."""
    store = SQLStore(resolve_database_url(db_url))
    await store.start()
    try:
        async with store._engine.connect() as conn:
            return {
                table.name.removeprefix("ckb_"): [
                    tuple(row) for row in await conn.execute(sa.select(table).order_by(table.c.seq))
                ]
                for table in (threads, items, attachments)
            }
    finally:
        await store.close()


@pytest.fixture(autouse=True)
def no_secret_in_the_log(caplog: pytest.LogCaptureFixture, token) -> Iterator[SecretWatch]:
    """Every log line of the test, scanned at the end for the secrets it handled."""
    watch = SecretWatch()
    watch.add(SESSION_SECRET, token("alice"), token("bob"))
    with caplog.at_level(logging.DEBUG):
        yield watch
    logged = logged_text(caplog)  # (caplog.text here would be the teardown's lines only)
    assert watch.check(logged) > 0  # there were log lines, and none held a secret
    # what the broker would write (INFO and up); httpcore's DEBUG lines may hold a traceback
    assert "Traceback" not in logged_text(caplog, logging.INFO)


@pytest.fixture
async def broker(
    base_env: dict[str, str], responses: FakeResponses, db_url: str, token
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    """The broker with two agent workflows; alice has a conversation and an attachment."""
    env = {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": AGENTS,
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
    }
    async with app_client(load_settings(env)) as client:
        responses.script(text("Private reply."))
        r = await client.post(
            "/chatkit/support",
            json={"type": "threads.create", "params": {"input": MESSAGE}},
            headers=auth(token("alice")),
        )
        assert r.status_code == 200, r.text
        thread_id = sse(r.text)[0]["thread"]["id"]
        r = await client.get(f"/api/threads/{thread_id}/items", headers=auth(token("alice")))
        user_item, reply_item = (i["id"] for i in r.json()["data"])
        store = SQLStore(resolve_database_url(db_url))
        await store.start()
        await store.save_attachment(
            FileAttachment(id="atc_alice", name="a.txt", mime_type="text/plain"),
            Caller("alice", "support"),
        )
        await store.close()
        yield client, {"thread": thread_id, "user_item": user_item, "reply_item": reply_item}


async def bob_credentials(client: httpx.AsyncClient, token) -> dict[str, str]:
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token("bob"))
    )
    assert minted.status_code == 200, minted.text
    return {"jwt": token("bob"), "session secret": minted.json()["client_secret"]}


def assert_404_json(r: httpx.Response, what: Any) -> None:
    assert r.status_code == 404, (what, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), what
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == "not_found", what
    assert "Private" not in r.text and "event:" not in r.text and "data:" not in r.text


async def test_bob_gets_404_for_every_chatkit_request_naming_alices_ids(
    broker, token, responses: FakeResponses, db_url: str
) -> None:
    client, ids = broker
    before = await snapshot(db_url)
    calls = len(responses.requests)
    tried = 0
    for how, credential in (await bob_credentials(client, token)).items():
        for type_, params in foreign_requests(ids["thread"], ids["user_item"], ids["reply_item"]):
            r = await client.post(
                "/chatkit/support",
                json={"type": type_, "params": params},
                headers=auth(credential),
            )
            assert_404_json(r, (how, type_))
            tried += 1
        # alice's thread does not exist at the other workflow for alice either
        r = await client.post(
            "/chatkit/triage",
            json={"type": "threads.get_by_id", "params": {"thread_id": ids["thread"]}},
            headers=auth(token("alice")),
        )
        assert_404_json(r, "alice at another workflow")
    assert tried == 2 * len(foreign_requests("t", "u", "r"))
    assert len(responses.requests) == calls  # nothing reached the model
    assert await snapshot(db_url) == before
    rows = before["threads"]
    assert len(rows) == 1 and "alice" in rows[0] and len(before["items"]) == 2


async def test_bob_gets_404_at_every_server_side_route_with_alices_thread(
    broker, token, responses: FakeResponses, db_url: str
) -> None:
    client, ids = broker
    before = await snapshot(db_url)
    calls = len(responses.requests)
    bob = auth(token("bob"))
    thread = ids["thread"]
    for query in ("", "?limit=5", "?order=desc", f"?after={ids['user_item']}"):
        r = await client.get(f"/api/threads/{thread}/items{query}", headers=bob)
        assert_404_json(r, ("items", query))
    for workflow in ("support", "triage"):
        for query in ("", "?stream=1"):
            r = await client.post(
                f"/api/workflows/{workflow}/runs{query}",
                json={"input": "give me alice's data", "thread_id": thread},
                headers=bob,
            )
            assert_404_json(r, ("runs", workflow, query))
        r = await client.get("/api/threads", params={"workflow": workflow}, headers=bob)
        assert r.status_code == 200 and r.json()["data"] == []
        r = await client.get(
            "/api/threads", params={"workflow": workflow, "after": thread}, headers=bob
        )
        assert r.status_code in (200, 404), r.text
        assert thread not in r.text or r.status_code == 404
        assert "Private" not in r.text
    # alice at the wrong workflow's runs route: 404 as well
    r = await client.post(
        "/api/workflows/triage/runs",
        json={"input": "x", "thread_id": thread},
        headers=auth(token("alice")),
    )
    assert_404_json(r, "alice at triage")
    assert len(responses.requests) == calls
    assert await snapshot(db_url) == before
    # and alice still reads her own conversation
    r = await client.get(f"/api/threads/{thread}/items", headers=auth(token("alice")))
    assert r.status_code == 200 and len(r.json()["data"]) == 2
