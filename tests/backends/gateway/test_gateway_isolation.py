"""Isolation through a gateway workflow (issue 15): the whole broker in front of the real
example ChatKit server; bob — with his JWT or his session secret, and with forged identity
headers naming alice — names alice's thread in every thread request. The example server
answers as bob (its own 404s, passed through), never as alice, and alice's thread is intact."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.support.adversarial import SecretWatch

from .test_broker_gateway import Stack, create, reply_text, stack, token

__all__ = ["stack"]  # the fixture, shared with test_broker_gateway

FORGED = {
    "X-User-Id": "alice",
    "X-Forwarded-User": "alice",
    "ChatKit-Broker-User": "alice",
    "X_User": "alice",
}


async def test_bob_never_reaches_alices_thread_through_the_gateway(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    watch = SecretWatch()
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        alice = {"Authorization": f"Bearer {token('alice')}"}
        r = await browser.post("/chatkit/example", json=create("alice's secret"), headers=alice)
        assert reply_text(r.content) == "Hello alice, you said: alice's secret"
        listed = await browser.post(
            "/chatkit/example", json={"type": "threads.list", "params": {}}, headers=alice
        )
        (thread,) = listed.json()["data"]
        thread_id = thread["id"]
        items_before = (
            await browser.post(
                "/chatkit/example",
                json={"type": "items.list", "params": {"thread_id": thread_id}},
                headers=alice,
            )
        ).json()

        minted = await browser.post(
            "/api/chatkit/session",
            json={"workflow": "example"},
            headers={"Authorization": f"Bearer {token('bob')}"},
        )
        assert minted.status_code == 200, minted.text
        watch.add(minted.json()["client_secret"], token("alice"), token("bob"))
        message = create("x")["params"]["input"]
        requests = [
            ("threads.get_by_id", {"thread_id": thread_id}),
            ("items.list", {"thread_id": thread_id}),
            ("threads.add_user_message", {"thread_id": thread_id, "input": message}),
            ("threads.update", {"thread_id": thread_id, "title": "hijacked"}),
            ("threads.delete", {"thread_id": thread_id}),
        ]
        tried = 0
        for credential in (token("bob"), minted.json()["client_secret"]):
            bob = {"Authorization": f"Bearer {credential}", **FORGED}
            for type_, params in requests:
                r = await browser.post(
                    "/chatkit/example", json={"type": type_, "params": params}, headers=bob
                )
                tried += 1
                assert r.status_code == 404, (type_, r.status_code, r.text[:300])
                assert "alice's secret" not in r.text and "Hello alice" not in r.text
            r = await browser.post(
                "/chatkit/example", json={"type": "threads.list", "params": {}}, headers=bob
            )
            assert thread_id not in r.text and "alice" not in r.text, r.text
            if credential.startswith("cks_"):  # (the stack allows 3 messages a minute)
                # a turn of bob's own is answered to bob, whatever the forged headers say
                r = await browser.post("/chatkit/example", json=create("hi"), headers=bob)
                assert reply_text(r.content) == "Hello bob, you said: hi", r.text
        assert tried == 2 * len(requests)

        after = await browser.post(
            "/chatkit/example",
            json={"type": "threads.get_by_id", "params": {"thread_id": thread_id}},
            headers=alice,
        )
        assert after.status_code == 200 and after.json()["title"] != "hijacked"
        items_after = (
            await browser.post(
                "/chatkit/example",
                json={"type": "items.list", "params": {"thread_id": thread_id}},
                headers=alice,
            )
        ).json()
        assert items_after == items_before
    assert watch.check(caplog.text) > 0  # JWTs, session secrets, assertions: in no log line
    assert "Traceback" not in caplog.text


async def test_messages_the_backend_refused_do_not_use_up_the_message_limit(stack: Stack) -> None:
    """bob's messages to alice's thread are the example server's 404s: they start no turn,
    so they leave his ``max_messages_per_minute`` (3 here) whole — his own 3 turns are
    answered, the 4th is the broker's 429 (docs/reliability.md)."""
    async with httpx.AsyncClient(base_url=stack.broker, timeout=10) as browser:
        alice = {"Authorization": f"Bearer {token('alice')}"}
        await browser.post("/chatkit/example", json=create("mine"), headers=alice)
        listed = await browser.post(
            "/chatkit/example", json={"type": "threads.list", "params": {}}, headers=alice
        )
        thread_id = listed.json()["data"][0]["id"]
        bob = {"Authorization": f"Bearer {token('bob')}"}
        message = create("x")["params"]["input"]
        for _ in range(5):
            r = await browser.post(
                "/chatkit/example",
                json={
                    "type": "threads.add_user_message",
                    "params": {"thread_id": thread_id, "input": message},
                },
                headers=bob,
            )
            assert r.status_code == 404, r.text
        for n in range(3):
            r = await browser.post("/chatkit/example", json=create(f"hi {n}"), headers=bob)
            assert reply_text(r.content) == f"Hello bob, you said: hi {n}", r.text
        r = await browser.post("/chatkit/example", json=create("one more"), headers=bob)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
