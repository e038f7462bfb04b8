"""Redis killed under a gateway workflow (issue 15): the same policy as for an agent workflow
(tests/backends/agent/test_redis_down.py), through the whole broker in front of the example
ChatKit server. ``max_messages_per_minute`` falls back to a per-process count — still enforced,
a refused message still given back, never a hang; a valid ``cks_`` secret is relayed unchecked
(its assertion still names its user), a forged one is 401, a cancel is 503."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx

from broker.app import create_app
from broker.assertion import generate_private_key_pem
from broker.config import load_settings
from examples.chatkit_server.app import Options
from examples.chatkit_server.app import create_app as create_example
from tests.support.asgi_server import bound_socket, run_asgi

from .test_broker_gateway import JWT_SECRET, SESSION_SECRET, create, reply_text, token


async def test_the_gateway_with_redis_killed(own_redis, tmp_path: Path, caplog) -> None:
    broker_sock, example_sock = bound_socket(), bound_socket()
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    (tmp_path / "workflows.toml").write_text(
        f'[workflows.example]\nserver = "http://127.0.0.1:{example_sock.getsockname()[1]}'
        '/chatkit"\nmax_messages_per_minute = 2\n'
    )
    settings = load_settings(
        {
            "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_ASSERTION_KEY": generate_private_key_pem(),
            "BROKER_PUBLIC_URL": broker_url,
            "BROKER_REDIS_URL": own_redis.url,
            "BROKER_REDIS_PREFIX": "gw15:",
        }
    )
    example = create_example(
        Options(broker=broker_url, audience="example", issuer=broker_url, delay=0.01)
    )
    async with (
        run_asgi(create_app(settings), sock=broker_sock, lifespan="on"),
        run_asgi(example, sock=example_sock),
        httpx.AsyncClient(base_url=broker_url, timeout=10) as browser,
    ):
        alice_jwt = {"Authorization": f"Bearer {token('alice')}"}
        minted = await browser.post(
            "/api/chatkit/session", json={"workflow": "example"}, headers=alice_jwt
        )
        secret, session_id = minted.json()["client_secret"], minted.json()["session_id"]
        alice = {"Authorization": f"Bearer {secret}"}
        r = await browser.post("/chatkit/example", json=create("before"), headers=alice)
        assert reply_text(r.content) == "Hello alice, you said: before"  # counted in Redis

        own_redis.kill()
        caplog.clear()
        caplog.set_level(logging.WARNING)

        # a message the backend refuses (a thread that is not alice's): given back locally
        refused = await browser.post(
            "/chatkit/example",
            json={
                "type": "threads.add_user_message",
                "params": {"thread_id": "thr_not_hers", "input": create("x")["params"]["input"]},
            },
            headers=alice,
        )
        assert refused.status_code == 404, refused.text
        codes, replies = [], []
        for n in range(3):  # per process from zero: 2 allowed, then 429, each answer quick
            started = time.monotonic()
            r = await browser.post("/chatkit/example", json=create(f"during {n}"), headers=alice)
            assert time.monotonic() - started < 5, "a message hung with Redis dead"
            codes.append(r.status_code)
            if r.status_code == 200:
                replies.append(reply_text(r.content))
        assert codes == [200, 200, 429], codes
        assert replies == ["Hello alice, you said: during 0", "Hello alice, you said: during 1"]
        assert r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]
        # the secret was relayed unchecked, and the log says so with the session id only
        unchecked = [
            m.getMessage() for m in caplog.records if "accepted unchecked" in m.getMessage()
        ]
        assert unchecked and session_id in unchecked[0] and secret not in "\n".join(unchecked)
        forged = await browser.post(
            "/chatkit/example",
            json={"type": "threads.list", "params": {}},
            headers={"Authorization": f"Bearer {secret[:-4]}AAAA"},
        )
        assert forged.status_code == 401
        cancel = await browser.post(
            "/api/chatkit/session/cancel", json={"session_id": session_id}, headers=alice_jwt
        )
        assert cancel.status_code == 503 and cancel.json()["error"]["code"] == "store_unavailable"
