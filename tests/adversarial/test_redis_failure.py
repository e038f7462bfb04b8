"""Redis failure policy (docs/operating/redis-failure-policy.md): a dead, unreachable or silent Redis never hangs a
request; mints still succeed, rate limits fall back to per-process counts, cancels answer 503,
and ``/readyz`` waits for the first contact only."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support import RedisServer, app_client, auth, free_port
from tests.support.mint import CANCEL, MINT, SUPPORT


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def timed(coro):
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


async def test_redis_killed_mid_run(make_settings, own_redis, openai, token):
    settings = make_settings(
        BROKER_REDIS_URL=own_redis.url, BROKER_RATE_LIMIT="3/hour", BROKER_REDIS_PREFIX="t:"
    )
    alice = auth(token("alice"))
    async with app_client(settings) as c:
        r = await c.post(MINT, json=SUPPORT, headers=alice)
        assert r.status_code == 200
        assert (await c.get("/readyz")).status_code == 200

        own_redis.kill()

        # mints still succeed, quickly; the limit now counts per process (from zero)
        statuses = []
        for _ in range(4):
            r, took = await timed(c.post(MINT, json=SUPPORT, headers=alice))
            statuses.append(r.status_code)
            assert took < 2.5, f"a mint took {took:.2f}s with Redis dead"
        assert statuses == [200, 200, 200, 429]
        assert r.headers["retry-after"]

        # cancels cannot check ownership: a clear 503, not a hang and not a 404
        r, took = await timed(c.post(CANCEL, json={"all": True}, headers=alice))
        assert r.status_code == 503 and took < 2.5
        assert r.json()["error"]["code"] == "store_unavailable"
        assert "Redis" in r.json()["error"]["message"]
        r = await c.post(CANCEL, json={"session_id": "cksess_x"}, headers=alice)
        assert r.status_code == 503
        assert openai.cancel_requests() == []

        # a refresh still mints; the old session just is not cancelled
        r = await c.post(
            MINT, json={**SUPPORT, "previous_session_id": "cksess_x"}, headers=auth(token("bob"))
        )
        assert r.status_code == 200

        # readiness is about first contact: a later outage does not take the instance out
        assert (await c.get("/readyz")).status_code == 200
        m = (await c.get("/metrics")).text
        assert metric(m, 'broker_redis_errors_total{op="ratelimit"}') >= 1
        assert metric(m, 'broker_rate_limit_fallbacks_total{limit="user"}') >= 4
        assert metric(m, 'broker_rate_limit_fallbacks_total{limit="address"}') >= 4

        # Redis back (empty: it kept nothing): cancels work again once the cooldown passed
        own_redis.start()  # the same server object, so the fixture stops it after the test
        deadline = time.monotonic() + 60  # generous: a busy machine is slow, not wrong
        while True:
            r = await c.post(CANCEL, json={"all": True}, headers=alice)
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            await asyncio.sleep(0.1)
        assert r.json() == {"cancelled": []}


async def test_redis_unreachable_at_start_then_ready_when_it_comes(
    make_settings, tmp_path, openai, token, caplog
):
    port = free_port()
    settings = make_settings(BROKER_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    async with app_client(settings) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert any(f"127.0.0.1:{port}" in m and "Redis" in m for m in r.json()["missing"])
        # serving anyway: mints work, cancels say why they cannot
        assert (await c.post(MINT, json=SUPPORT, headers=auth(token("alice")))).status_code == 200
        r = await c.post(CANCEL, json={"all": True}, headers=auth(token("alice")))
        assert r.status_code == 503
        assert (await c.get("/healthz")).status_code == 200

        server = RedisServer(tmp_path, port).start()
        try:
            deadline = time.monotonic() + 60  # generous: a busy machine is slow, not wrong
            while (r := await c.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.1)
            assert r.json() == {"status": "ready"}
        finally:
            server.kill()
    assert any("Redis at redis://127.0.0.1" in r.getMessage() for r in caplog.records)


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung or black-holed Redis."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield s.getsockname()[1]


def redis_errors(metrics_text: str) -> float:
    """Failed Redis calls so far, over every operation: a call skipped by the breaker is none."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("broker_redis_errors_total{")
    )


class StoppedClock:
    """The breaker's clock, moved only by the test: the cooldown cannot run out while a busy
    machine is slow between two requests (a real 2 s cooldown did, and the test waited on
    Redis again)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_silent_redis_costs_one_timeout_then_nothing(
    make_settings, silent_redis, openai, token
):
    from broker.metrics import Metrics
    from broker.store import CALL_DEADLINE, COOLDOWN, RedisStore

    url = f"redis://127.0.0.1:{silent_redis}/0"
    settings = make_settings(BROKER_REDIS_URL=url)
    clock, metrics = StoppedClock(), Metrics()
    store = RedisStore(url, settings.redis_prefix, metrics=metrics, clock=clock)
    alice = auth(token("alice"))
    async with app_client(settings, store=store, metrics=metrics) as c:
        # one bounded wait (the call's deadline), not a hang: generous for a busy machine
        r, took = await timed(c.post(MINT, json=SUPPORT, headers=alice))
        assert r.status_code == 200
        assert took < CALL_DEADLINE + 4, f"first mint took {took:.2f}s"
        failed = redis_errors((await c.get("/metrics")).text)
        assert failed >= 1
        # the breaker is open now: no request tries Redis (no failure counted) or waits on it
        # (a call that tried would have waited out the deadline on the silent socket)
        r, took = await timed(c.post(MINT, json=SUPPORT, headers=alice))
        assert r.status_code == 200 and took < CALL_DEADLINE, f"second mint took {took:.2f}s"
        r, took = await timed(c.post(CANCEL, json={"all": True}, headers=alice))
        assert r.status_code == 503 and took < CALL_DEADLINE, f"cancel took {took:.2f}s"
        r, took = await timed(c.get("/readyz"))
        assert r.status_code == 503 and took < CALL_DEADLINE + 4
        assert redis_errors((await c.get("/metrics")).text) == failed
        # after the cooldown Redis is tried again: one more bounded failure, counted
        clock.now += COOLDOWN
        r = await c.post(MINT, json=SUPPORT, headers=alice)
        assert r.status_code == 200
        assert redis_errors((await c.get("/metrics")).text) > failed


async def test_password_never_shown(make_settings, openai, caplog):
    port = free_port()
    settings = make_settings(BROKER_REDIS_URL=f"redis://user:hunter2secret@127.0.0.1:{port}/0")
    async with app_client(settings) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    assert "hunter2secret" not in r.text
    assert "user:***@127.0.0.1" in r.text
    assert all("hunter2secret" not in rec.getMessage() for rec in caplog.records)
