"""The kit on a server in the customer-support sample's shape, behind the broker's real
relay (``GatewayProxy``): unchanged, bob reads alice's threads; with the kit's lines, he
sees none of them, every request naming her ids is a 404, and nothing reaches the server
without a valid assertion for this body, this audience, once, in time."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from broker.assertion import ASSERTION_HEADER, AssertionSigner, HMACAssertionSigner
from broker.backends.gateway.proxy import GatewayProxy, Upstream, gateway_pool
from tests.support.asgi_server import bound_socket, run_asgi
from tests.support.fake_backend import sse_events
from tests.support.gateway_app import GatewayTestApp
from tests.support.sample_shaped import KitOptions, create_app

pytest.importorskip("chatkit")

ISSUER = "https://broker.example"


@dataclass
class Stack:
    gateway: GatewayTestApp
    broker: httpx.AsyncClient  # the browser, through the relay
    direct: httpx.AsyncClient  # straight to the sample, no broker
    sample: Any

    async def call(self, user: str, body: dict[str, Any]) -> httpx.Response:
        self.gateway.user = user
        return await self.broker.post("/chatkit/support", json=body)


async def _stack(kit: bool, jwks_path: str = "/.well-known/jwks.json") -> AsyncIterator[Stack]:
    gateway_sock, sample_sock = bound_socket(), bound_socket()
    gateway_url = f"http://127.0.0.1:{gateway_sock.getsockname()[1]}"
    sample_url = f"http://127.0.0.1:{sample_sock.getsockname()[1]}"
    options = KitOptions(gateway_url + jwks_path, "support", ISSUER) if kit else None
    sample = create_app(options)
    pool = gateway_pool()
    gateway = GatewayTestApp(
        GatewayProxy(pool),
        AssertionSigner(issuer=ISSUER),
        Upstream(sample_url + "/support/chatkit", idle_timeout=5.0),
    )
    try:
        async with (
            run_asgi(gateway, sock=gateway_sock),
            run_asgi(sample, sock=sample_sock),
            httpx.AsyncClient(base_url=gateway_url, timeout=10) as broker,
            httpx.AsyncClient(base_url=sample_url, timeout=10) as direct,
        ):
            yield Stack(gateway, broker, direct, sample)
    finally:
        await pool.close()


@pytest.fixture
async def unchanged() -> AsyncIterator[Stack]:
    async for stack in _stack(kit=False):
        yield stack


@pytest.fixture
async def kit() -> AsyncIterator[Stack]:
    async for stack in _stack(kit=True):
        yield stack


def create(text: str) -> dict[str, Any]:
    return {
        "type": "threads.create",
        "params": {"input": {"content": [{"type": "input_text", "text": text}],
                             "attachments": [], "inference_options": {}}},
    }  # fmt: skip


async def new_thread(stack: Stack, user: str, text: str) -> str:
    answer = await stack.call(user, create(text))
    assert answer.status_code == 200, answer.text
    (created,) = [e for e in sse_events(answer.content) if e["type"] == "thread.created"]
    return created["thread"]["id"]


async def listed(stack: Stack, user: str) -> list[str]:
    answer = await stack.call(user, {"type": "threads.list", "params": {"limit": 50}})
    assert answer.status_code == 200, answer.text
    return [t["id"] for t in answer.json()["data"]]


async def test_unchanged_the_sample_shows_bob_alices_threads(unchanged: Stack) -> None:
    """The failure the kit exists for, reproduced so the fixture is honest."""
    thread = await new_thread(unchanged, "alice", "my booking reference is ABC123")
    assert thread in await listed(unchanged, "bob")
    items = await unchanged.call(
        "bob", {"type": "items.list", "params": {"thread_id": thread, "limit": 10}}
    )
    assert "ABC123" in items.text
    bare = await unchanged.direct.post(
        "/support/chatkit", json={"type": "threads.list", "params": {}}
    )
    assert bare.status_code == 200  # no broker, no identity, and it answers


async def test_with_the_kit_bob_sees_none_of_alices_threads(kit: Stack) -> None:
    alices = {await new_thread(kit, "alice", f"alice {n}") for n in range(3)}
    bobs = await new_thread(kit, "bob", "bob's own")
    assert set(await listed(kit, "alice")) == alices
    shown = await kit.call("alice", {"type": "threads.list", "params": {}})
    assert "chatkit_broker_owner" not in shown.text  # the stamp stays in the store
    assert await listed(kit, "bob") == [bobs]
    assert await listed(kit, "carol") == []


async def test_with_the_kit_a_limit_pages_over_other_users_threads(kit: Stack) -> None:
    mine = [await new_thread(kit, "alice", f"a{n}") for n in range(3)]
    for n in range(5):
        await new_thread(kit, "bob", f"b{n}")
    first = await kit.call(
        "alice", {"type": "threads.list", "params": {"limit": 2, "order": "asc"}}
    )
    page = first.json()
    assert [t["id"] for t in page["data"]] == mine[:2] and page["has_more"] is True
    rest = await kit.call(
        "alice",
        {"type": "threads.list", "params": {"limit": 2, "order": "asc", "after": page["after"]}},
    )
    assert [t["id"] for t in rest.json()["data"]] == mine[2:]
    assert rest.json()["has_more"] is False


@pytest.mark.parametrize(
    "request_type",
    [
        "threads.get_by_id",
        "items.list",
        "threads.update",
        "threads.delete",
        "threads.add_user_message",
        "threads.retry_after_item",
        "items.feedback",
    ],
)
async def test_with_the_kit_every_request_naming_alices_thread_is_a_404(
    kit: Stack, request_type: str
) -> None:
    thread = await new_thread(kit, "alice", "private")
    items = await kit.call("alice", {"type": "items.list", "params": {"thread_id": thread}})
    item = items.json()["data"][0]["id"]
    params: dict[str, Any] = {
        "threads.get_by_id": {"thread_id": thread},
        "items.list": {"thread_id": thread},
        "threads.update": {"thread_id": thread, "title": "mine now"},
        "threads.delete": {"thread_id": thread},
        "threads.add_user_message": {
            "thread_id": thread,
            "input": {
                "content": [{"type": "input_text", "text": "hi"}],
                "attachments": [],
                "inference_options": {},
            },
        },
        "threads.retry_after_item": {"thread_id": thread, "item_id": item},
        "items.feedback": {"thread_id": thread, "item_ids": [item], "kind": "negative"},
    }[request_type]
    answer = await kit.call("bob", {"type": request_type, "params": params})
    assert answer.status_code == 404, (answer.status_code, answer.text[:200])
    assert answer.json()["error"]["code"] == "not_found"
    assert "private" not in answer.text
    # alice's thread is untouched and still hers
    again = await kit.call("alice", {"type": "threads.get_by_id", "params": {"thread_id": thread}})
    assert again.status_code == 200 and again.json().get("title") != "mine now"
    texts = json.dumps(again.json()["items"])
    assert "private" in texts and texts.count('"hi"') == 0


async def test_with_the_kit_another_users_attachment_is_not_found(kit: Stack) -> None:
    made = await kit.call(
        "alice",
        {"type": "attachments.create",
         "params": {"name": "passport.png", "size": 10, "mime_type": "image/png"}},
    )  # fmt: skip
    assert made.status_code == 200, made.text
    attachment = made.json()["id"]
    assert "metadata" not in made.json()  # the owner stamp never reaches the browser
    gone = await kit.call(
        "bob", {"type": "attachments.delete", "params": {"attachment_id": attachment}}
    )
    assert gone.status_code == 404
    assert kit.sample.state.attachments.inner.deleted == []
    mine = await kit.call(
        "alice", {"type": "attachments.delete", "params": {"attachment_id": attachment}}
    )
    assert mine.status_code == 200
    assert kit.sample.state.attachments.inner.deleted == [attachment]


# --- the verifier as the backend runs it ---------------------------------------------------

BODY = json.dumps({"type": "threads.list", "params": {}}).encode()


async def direct(kit: Stack, token: str | None, body: bytes = BODY) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[ASSERTION_HEADER] = token
    return await kit.direct.post("/support/chatkit", content=body, headers=headers)


async def test_a_request_without_the_broker_is_refused(kit: Stack) -> None:
    answer = await direct(kit, None)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_assertion"
    forged = await kit.direct.post(
        "/support/chatkit", content=BODY, headers={"X-User-Id": "alice", "X-Consumer-Username": "a"}
    )
    assert forged.status_code == 401
    assert (await kit.direct.get("/support/health")).status_code == 200  # exempt by name


async def test_forgeries_are_refused_and_the_real_thing_passes(kit: Stack) -> None:
    signer = kit.gateway.signer

    def sign(**kw: Any) -> str:
        args: dict[str, Any] = {"audience": "support", "workflow": "support", "body": BODY}
        return signer.sign("alice", **{**args, **kw})

    assert (await direct(kit, sign())).status_code == 200
    other_key = AssertionSigner(issuer=ISSUER).sign(
        "alice", audience="support", workflow="support", body=BODY
    )
    hs = HMACAssertionSigner("s" * 40, issuer=ISSUER).sign(
        "alice", audience="support", workflow="support", body=BODY
    )
    wrong_issuer = AssertionSigner(issuer="https://evil.example")
    wrong_issuer._key = signer._key  # the broker's key, someone else's iss
    wrong_issuer.kid = signer.kid
    wrong_issuer._headers = dict(signer._headers)
    cases = {
        "signed by another key": (other_key, BODY),
        "HS256 with a guessed secret": (hs, BODY),
        "another audience": (sign(audience="billing"), BODY),
        "another issuer": (wrong_issuer.sign("alice", audience="support", workflow="s", body=BODY), BODY),
        "body altered after signing": (sign(), BODY.replace(b"{}", b'{"limit":1}')),
        "no body hash": (sign(body=None), BODY),
    }  # fmt: skip
    for case, (token, body) in cases.items():
        answer = await direct(kit, token, body)
        assert answer.status_code == 401, (case, answer.text)


async def test_a_replayed_assertion_is_refused(kit: Stack) -> None:
    token = kit.gateway.signer.sign("alice", audience="support", workflow="s", body=BODY)
    assert (await direct(kit, token)).status_code == 200
    again = await direct(kit, token)
    assert again.status_code == 401 and "replayed" in again.json()["error"]["message"]


async def test_clock_skew_within_the_leeway_passes_and_beyond_it_is_refused(kit: Stack) -> None:
    now = [0.0]
    import time as _time

    skewed = AssertionSigner(issuer=ISSUER, clock=lambda: _time.time() + now[0])
    skewed._key = kit.gateway.signer._key
    skewed.kid = kit.gateway.signer.kid
    skewed._headers = dict(kit.gateway.signer._headers)
    now[0] = -62.0  # expired 2 s ago: within the 5 s leeway
    assert (
        await direct(kit, skewed.sign("a", audience="support", workflow="s", body=BODY))
    ).status_code == 200
    now[0] = -70.0  # expired 10 s ago
    late = await direct(kit, skewed.sign("a", audience="support", workflow="s", body=BODY))
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]


async def test_an_unreachable_jwks_fails_closed_with_a_clear_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "chatkit_broker.kit")
    async for stack in _stack(kit=True, jwks_path="/no-such-jwks.json"):
        answer = await stack.call("alice", {"type": "threads.list", "params": {}})
        assert answer.status_code == 502  # the relay's view of the backend's 503
        bare = await direct(
            stack, stack.gateway.signer.sign("a", audience="support", workflow="s", body=BODY)
        )
        assert bare.status_code == 503
        assert bare.json()["error"]["code"] == "assertion_keys_unavailable"
    lines = [r.getMessage() for r in caplog.records if r.name == "chatkit_broker.kit"]
    assert any(
        "cannot fetch the broker's keys from" in line and "refusing every request" in line
        for line in lines
    ), lines


async def test_with_the_kit_feedback_works_on_ones_own_thread_only(kit: Stack) -> None:
    thread = await new_thread(kit, "alice", "private")
    items = await kit.call("alice", {"type": "items.list", "params": {"thread_id": thread}})
    item = items.json()["data"][0]["id"]

    def feedback(thread_id: str, item_ids: list[str]) -> dict[str, Any]:
        params = {"thread_id": thread_id, "item_ids": item_ids, "kind": "positive"}
        return {"type": "items.feedback", "params": params}

    mine = await kit.call("alice", feedback(thread, [item]))
    assert (mine.status_code, mine.json()) == (200, {})
    for body in (feedback("thr_unknown", [item]), feedback(thread, ["msg_unknown"])):
        r = await kit.call("alice", body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
