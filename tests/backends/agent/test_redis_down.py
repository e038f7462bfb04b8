"""Redis down under an agent workflow (issue 15), the existing failure policy extended and
pinned: a workflow's ``max_messages_per_minute`` falls back to a per-process count (still
enforced, never a hang); a valid ``cks_`` secret is accepted unchecked — its signature and
expiry hold, only an early cancel cannot be seen — with one warning that names the session,
never the secret; a cancel during the outage is a clear 503."""

from __future__ import annotations

import logging
import time

from broker.config import load_settings

from ...support import app_client, auth
from ...support.fake_responses import FakeResponses

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_message_limits_and_session_secrets_with_redis_killed(
    base_env, own_redis, responses: FakeResponses, token, tmp_path, caplog
) -> None:
    wf_file = tmp_path / "workflows.toml"
    wf_file.write_text(
        '[workflows.support]\nagent = "examples.agent.support_agent:agent"\n'
        "max_messages_per_minute = 2\n"
    )
    settings = load_settings(
        {
            **base_env,
            "OPENAI_BASE_URL": responses.base_url,
            "BROKER_WORKFLOWS": "",
            "BROKER_WORKFLOWS_FILE": str(wf_file),
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 'threads.sqlite3'}",
            "BROKER_REDIS_URL": own_redis.url,
            "BROKER_REDIS_PREFIX": "t15:",
        }
    )
    alice = auth(token("alice"))
    run = {"input": "hi"}
    async with app_client(settings) as c:
        minted = await c.post("/api/chatkit/session", json={"workflow": "support"}, headers=alice)
        assert minted.status_code == 200, minted.text
        secret, session_id = minted.json()["client_secret"], minted.json()["session_id"]
        other = (
            await c.post("/api/chatkit/session", json={"workflow": "support"}, headers=alice)
        ).json()
        # Redis up: one message counted there; a cancelled secret is refused
        assert (
            await c.post("/api/workflows/support/runs", json=run, headers=alice)
        ).status_code == 200
        r = await c.post(
            "/api/chatkit/session/cancel", json={"session_id": other["session_id"]}, headers=alice
        )
        assert r.status_code == 200, r.text
        r = await c.post(
            "/chatkit/support",
            json={"type": "threads.list", "params": {}},
            headers=auth(other["client_secret"]),
        )
        assert r.status_code == 401 and "cancelled" in r.json()["error"]["message"]

        own_redis.kill()
        caplog.clear()

        # the message limit: per-process from zero, still enforced, each answer quick
        codes = []
        for _ in range(3):
            started = time.monotonic()
            r = await c.post("/api/workflows/support/runs", json=run, headers=alice)
            codes.append(r.status_code)
            assert time.monotonic() - started < 5, "a message hung with Redis dead"
        assert codes == [200, 200, 429], codes
        assert r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]

        # a valid secret is accepted unchecked, and the log says so without the secret
        with caplog.at_level(logging.WARNING):
            r = await c.post(
                "/chatkit/support",
                json={"type": "threads.list", "params": {}},
                headers=auth(secret),
            )
        assert r.status_code == 200, r.text
        unchecked = [
            m.getMessage() for m in caplog.records if "accepted unchecked" in m.getMessage()
        ]
        assert unchecked and session_id in unchecked[0]
        # ... the secret cancelled before the outage too: its cancel cannot be seen now
        r = await c.post(
            "/chatkit/support",
            json={"type": "threads.list", "params": {}},
            headers=auth(other["client_secret"]),
        )
        assert r.status_code == 200, r.text
        # a forged secret is still refused: the signature does not need Redis
        r = await c.post(
            "/chatkit/support",
            json={"type": "threads.list", "params": {}},
            headers=auth(secret[:-4] + "AAAA"),
        )
        assert r.status_code == 401
        # cancelling during the outage: a clear 503, not a silent success
        r = await c.post(
            "/api/chatkit/session/cancel", json={"session_id": session_id}, headers=alice
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        metrics = (await c.get("/metrics")).text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    for value in (secret, other["client_secret"], token("alice"), SESSION_SECRET):
        assert value not in logged
    assert "broker_redis_errors_total" in metrics
    assert metric(metrics, 'broker_rate_limit_fallbacks_total{limit="workflow_messages"}') >= 3, [
        line for line in metrics.splitlines() if "fallback" in line
    ]
