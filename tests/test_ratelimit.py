"""Rate limits: per user on mints, per address before any JWT work, in memory and in Redis,
across real broker processes, with trusted proxies and spoofed X-Forwarded-For."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from broker.config import ConfigError, load_settings
from broker.ratelimit import ClientAddress, Limit, LocalCounters, bucket

from .support import app_client, auth
from .support.mint import MINT, SUPPORT, mint_sync


def assert_429(r: httpx.Response, *, limit: int, window: int) -> None:
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["request_id"] == r.headers["x-request-id"]
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= window
    assert window - retry_after <= 5  # the window started moments ago
    assert r.headers["ratelimit-limit"] == str(limit)
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-reset"] == str(retry_after)
    assert r.headers["ratelimit-policy"] == f"{limit};w={window}"
    assert r.headers["cache-control"] == "no-store"


async def test_user_limit_in_memory(make_settings, openai, token):
    async with app_client(make_settings(BROKER_RATE_LIMIT="3/hour")) as c:
        alice = auth(token("alice"))
        for _ in range(3):
            r = await c.post(MINT, json=SUPPORT, headers=alice)
            assert r.status_code == 200, r.text
        r = await c.post(MINT, json=SUPPORT, headers=alice)
        assert_429(r, limit=3, window=3600)
        assert "BROKER_RATE_LIMIT" in r.json()["error"]["message"]
        assert len(openai.session_requests()) == 3  # the refused mint never went upstream
        # another user has a count of their own
        r = await c.post(MINT, json=SUPPORT, headers=auth(token("bob")))
        assert r.status_code == 200


async def test_every_authenticated_mint_counts_whatever_its_outcome(make_settings, openai, token):
    async with app_client(make_settings(BROKER_RATE_LIMIT="3/hour")) as c:
        alice = auth(token("alice"))
        assert (await c.post(MINT, json={"workflow": "nope"}, headers=alice)).status_code == 403
        assert (await c.post(MINT, content=b"{", headers=alice)).status_code == 400
        openai.then("status", status=400)
        assert (await c.post(MINT, json=SUPPORT, headers=alice)).status_code == 502
        # unauthenticated attempts are not the user's: they do not count
        for _ in range(3):
            assert (await c.post(MINT, json=SUPPORT)).status_code == 401
        assert_429(await c.post(MINT, json=SUPPORT, headers=alice), limit=3, window=3600)


async def test_address_limit_comes_before_any_jwt_work(make_settings, openai, token):
    async with app_client(make_settings(BROKER_IP_RATE_LIMIT="3/hour")) as c:
        verifier = c.app.state.broker.gate._verifier
        calls = 0
        original = verifier.verify

        async def counting_verify(tok: str):
            nonlocal calls
            calls += 1
            return await original(tok)

        verifier.verify = counting_verify
        bad = auth(token("alice", key="another-secret-that-is-32-bytes-long!!"))
        for _ in range(3):
            assert (await c.post(MINT, json=SUPPORT, headers=bad)).status_code == 401
        r = await c.post(MINT, json=SUPPORT, headers=bad)
        assert_429(r, limit=3, window=3600)
        assert "BROKER_IP_RATE_LIMIT" in r.json()["error"]["message"]
        assert calls == 3  # the fourth token was never looked at
        # every /api/ route counts; health, metrics and the page do not
        assert (await c.get("/api/chatkit/config")).status_code == 429
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert (await c.get(path)).status_code in (200, 404), path
        m = await c.get("/metrics")
        assert 'broker_rate_limited_total{limit="address"} 2.0' in m.text


async def test_address_limit_with_trusted_proxy(make_settings, openai):
    settings = make_settings(BROKER_IP_RATE_LIMIT="2/hour", BROKER_TRUSTED_PROXIES="10.0.0.0/8")
    async with app_client(settings, peer="10.0.0.5") as c:

        async def config(xff: str) -> int:
            r = await c.get("/api/chatkit/config", headers={"X-Forwarded-For": xff})
            return r.status_code

        # the proxy appends the real client on the right; what the client wrote is left of it
        assert await config("203.0.113.7") == 200
        assert await config("198.51.100.1, 203.0.113.7") == 200  # spoofed entry ignored
        assert await config("192.0.2.99, 203.0.113.7") == 429  # still 203.0.113.7
        assert await config("203.0.113.8") == 200  # another client behind the proxy
        # a chain of trusted proxies: the right-most untrusted hop is the client
        assert await config("203.0.113.9, 10.1.1.1, 10.2.2.2") == 200
        assert await config("203.0.113.9:5555, 10.1.1.1") == 200
        assert await config("203.0.113.9") == 429


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_settings, openai):
    settings = make_settings(BROKER_IP_RATE_LIMIT="2/hour", BROKER_TRUSTED_PROXIES="10.0.0.5")
    async with app_client(settings, peer="192.0.2.10") as c:
        statuses = [
            (
                await c.get("/api/chatkit/config", headers={"X-Forwarded-For": f"203.0.113.{i}"})
            ).status_code
            for i in range(3)
        ]
    assert statuses == [200, 200, 429]  # all counted against the peer, 192.0.2.10


async def test_mock_mode_never_believes_forwarded_for(openai):
    settings = load_settings(
        {
            "BROKER_MOCK": "1",
            "BROKER_IP_RATE_LIMIT": "2/hour",
            "BROKER_TRUSTED_PROXIES": "127.0.0.1",
        }
    )
    async with app_client(settings) as c:
        statuses = [
            (
                await c.get("/api/chatkit/config", headers={"X-Forwarded-For": f"203.0.113.{i}"})
            ).status_code
            for i in range(3)
        ]
    assert statuses == [200, 200, 429]


def test_client_address_rules():
    addresses = ClientAddress(["10.0.0.0/8", "fd00::/8"])

    def of(peer: str, *xff: str) -> str:
        headers = [(b"x-forwarded-for", v.encode()) for v in xff]
        return addresses({"client": (peer, 1234), "headers": headers})

    assert of("192.0.2.1") == "192.0.2.1"
    assert of("192.0.2.1", "203.0.113.1") == "192.0.2.1"
    assert of("10.0.0.1", "203.0.113.1") == "203.0.113.1"
    assert of("10.0.0.1", "1.1.1.1", "203.0.113.1, 10.9.9.9") == "203.0.113.1"  # two headers
    assert of("10.0.0.1", "[2001:db8::1]:443") == "2001:db8::/64"
    assert of("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"  # all trusted: left-most
    assert of("10.0.0.1", "") == "10.0.0.1"
    assert of("fd00::1", "203.0.113.5") == "203.0.113.5"
    # IPv6 clients are counted per /64; IPv4-mapped addresses as IPv4
    assert bucket("2001:db8:1:2:aaaa::1") == bucket("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert bucket("::ffff:192.0.2.4") == "192.0.2.4"
    assert bucket("") == "unknown"
    assert ClientAddress(["127.0.0.1"], mock=True)(
        {"client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"203.0.113.1")]}
    ) == ("127.0.0.1")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROKER_TRUSTED_PROXIES", "*"),
        ("BROKER_TRUSTED_PROXIES", "10.0.0.1,proxy.internal"),
        ("BROKER_REDIS_PREFIX", "has space"),
        ("BROKER_RATE_LIMIT", "lots"),
    ],
)
def test_bad_limit_and_proxy_config_is_refused(base_env, name, value):
    with pytest.raises(ConfigError) as info:
        load_settings({**base_env, name: value})
    assert any(name in p for p in info.value.problems)


# --- shared through Redis --------------------------------------------------------------


async def test_user_limit_shared_by_two_apps_on_redis(make_settings, redis_env, openai, token):
    settings = make_settings(BROKER_RATE_LIMIT="3/hour", **redis_env)
    async with app_client(settings) as a, app_client(settings) as b:
        alice = auth(token("alice"))
        assert (await a.post(MINT, json=SUPPORT, headers=alice)).status_code == 200
        assert (await b.post(MINT, json=SUPPORT, headers=alice)).status_code == 200
        assert (await a.post(MINT, json=SUPPORT, headers=alice)).status_code == 200
        assert_429(await b.post(MINT, json=SUPPORT, headers=alice), limit=3, window=3600)


def test_user_limit_across_two_broker_processes(base_env, redis_env, run_broker, token):
    env = {**base_env, **redis_env, "BROKER_RATE_LIMIT": "4/hour"}
    first, second = run_broker(env), run_broker(env)
    alice = token("alice")

    assert [mint_sync(first.url, alice).status_code for _ in range(3)] == [200, 200, 200]
    # the second process sees the first one's three
    assert mint_sync(second.url, alice).status_code == 200
    assert_429(mint_sync(second.url, alice), limit=4, window=3600)
    assert mint_sync(first.url, alice).status_code == 429
    # bob has his own count in both
    assert mint_sync(second.url, token("bob")).status_code == 200


def test_forwarded_for_through_real_uvicorn(base_env, run_broker):
    """uvicorn's proxy handling and the broker's agree: trusted peer → real client counted."""
    env = {**base_env, "BROKER_IP_RATE_LIMIT": "2/hour"}
    trusting = run_broker({**env, "BROKER_TRUSTED_PROXIES": "127.0.0.1"})
    plain = run_broker(env)

    def config(bp, xff: str) -> int:
        r = httpx.get(bp.url + "/api/chatkit/config", headers={"X-Forwarded-For": xff})
        return r.status_code

    assert [config(trusting, "203.0.113.1") for _ in range(3)] == [200, 200, 429]
    assert config(trusting, "203.0.113.2") == 200
    assert config(trusting, "203.0.113.2, 203.0.113.1") == 429  # spoofed left part ignored
    # with no trusted proxy the header changes nothing: it is all 127.0.0.1
    assert [config(plain, f"203.0.113.{i}") for i in range(3)] == [200, 200, 429]


async def test_window_expiry_lets_requests_through_again(make_settings, openai, token):
    async with app_client(make_settings(BROKER_RATE_LIMIT="1/second")) as c:
        alice = auth(token("alice"))
        assert (await c.post(MINT, json=SUPPORT, headers=alice)).status_code == 200
        r = await c.post(MINT, json=SUPPORT, headers=alice)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        deadline = time.monotonic() + 5
        while (await c.post(MINT, json=SUPPORT, headers=alice)).status_code == 429:
            assert time.monotonic() < deadline, "the 1 s window never ended"
            await asyncio.sleep(0.05)


def test_local_window_starts_at_the_first_hit_and_resets_after_it():
    now = [1000.0]
    counters = LocalCounters(clock=lambda: now[0])
    limit = Limit.parse("user", "3/minute", "BROKER_RATE_LIMIT")
    assert [counters.hit(limit, "alice") for _ in range(3)] == [None, None, None]
    now[0] += 20
    assert counters.hit(limit, "alice") == pytest.approx(40)  # refused: 40 s of the window left
    assert counters.hit(limit, "bob") is None  # a count of its own
    now[0] += 40  # the window that began at the first hit is over
    assert counters.hit(limit, "alice") is None


def test_local_counters_forget_expired_windows():
    now = [0.0]
    counters = LocalCounters(clock=lambda: now[0], sweep_every=100)
    limit = Limit.parse("address", "5/second", "BROKER_IP_RATE_LIMIT")
    for second in range(20):
        now[0] = float(second)
        for i in range(90):
            counters.hit(limit, f"10.0.{second}.{i}")
    # 1,800 addresses seen, but only the last second's (plus one sweep's worth) are kept
    assert len(counters) <= 90 + 100


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_a_refunded_message_gives_its_count_back(make_settings, request, where):
    """``refund_per_minute`` undoes one ``hit_per_minute`` where it was counted: the gateway
    gives back a message its backend refused (README "Reliability and security")."""
    from broker.errors import RateLimited
    from broker.metrics import Metrics
    from broker.ratelimit import RateLimits
    from broker.store import RedisStore

    redis_env = request.getfixturevalue("redis_env") if where == "redis" else {}
    settings = make_settings(**redis_env)
    store = (
        RedisStore(redis_env["BROKER_REDIS_URL"], redis_env["BROKER_REDIS_PREFIX"])
        if redis_env
        else None
    )
    limits = RateLimits(settings, metrics=Metrics(), store=store)
    args = ("workflow_messages", "support:alice", 2)
    what = "messages to workflow 'support'"
    await limits.refund_per_minute(*args, what=what)  # nothing counted yet: nothing to give
    await limits.hit_per_minute(*args, what=what)
    await limits.hit_per_minute(*args, what=what)
    await limits.refund_per_minute(*args, what=what)
    await limits.hit_per_minute(*args, what=what)  # the refunded one's place
    with pytest.raises(RateLimited):
        await limits.hit_per_minute(*args, what=what)
    await limits.hit_per_minute("workflow_messages", "support:bob", 2, what=what)  # per user
    if store is not None:
        await store.pool.disconnect()
