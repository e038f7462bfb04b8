"""The JWKS cache through the HTTP API, against a JWKS server that counts its hits.

SECURITY.md rows 5, 19-24: rotation, kid sprays, outages, cold starts, unusable key sets,
slow endpoints, and the staleness bound. The cache's clock is injected, so cooldowns and
ages are crossed by advancing it rather than by sleeping. Row 7 (jku / x5u / embedded jwk
pointing at a second counting server) runs in test_auth.py for both PEM and JWKS modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from broker.app import build_broker, create_app
from broker.auth import Verifier
from broker.config import Settings
from broker.http import HttpPool
from broker.jwks import JWKSCache

from .support.jwt_kit import EC_KEY, RSA_KEY, TinyServer, b64url, claims, jwk, sign
from .support.mint import mint

COOLDOWN = 60.0
COLD_COOLDOWN = 5.0
MAX_AGE = 600.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def jwks_client(
    settings: Settings, clock: Clock, **cache_kw: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, JWKSCache]]:
    """The app with its JWKS cache on ``clock`` (lifespan run: the start-up fetch happens)."""
    assert settings.jwt.jwks_url
    http = HttpPool()
    cache = JWKSCache(
        settings.jwt.jwks_url,
        http,
        algorithms=settings.jwt.asymmetric_algorithms,
        clock=clock,
        **cache_kw,
    )
    # the verified-token cache is off here: these tests are about the key cache alone
    verifier = Verifier(settings.jwt, cache, cache_size=0)
    broker = build_broker(settings, http=http, jwks=cache, verifier=verifier)
    app = create_app(settings, broker=broker)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
    ):
        yield client, cache


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jwks_settings(openai, make_settings) -> Settings:
    """JWKS-only live config against the fake's counting ``/jwks.json`` (key A published)."""
    openai.jwks = {"keys": [jwk(RSA_KEY, "key-a")]}
    return make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=openai.url + "/jwks.json")


def rs(kid: Any, key: Any = RSA_KEY, algorithm: str = "RS256") -> str:
    return sign(claims(), key, algorithm, {"kid": kid})


# --- 22: rotation; cache hits cost nothing -----------------------------------------------------


async def test_start_fetches_once_and_cache_hits_cost_nothing(jwks_settings, openai, clock):
    async with jwks_client(jwks_settings, clock) as (c, cache):
        assert openai.jwks_hits == 1
        results = [await mint(c, rs("key-a")) for _ in range(20)]
        ready = await c.get("/readyz")
    assert [r.status_code for r in results] == [200] * 20
    assert ready.status_code == 200
    assert openai.jwks_hits == 1
    assert cache.fetches == 1


async def test_rotation_new_kid_accepted_after_exactly_one_refresh(jwks_settings, openai, clock):
    key_b = EC_KEY
    async with jwks_client(jwks_settings, clock) as (c, _):
        openai.jwks = {"keys": [jwk(RSA_KEY, "key-a"), jwk(key_b, "key-b")]}
        clock.advance(COOLDOWN + 1)
        first = await mint(c, sign(claims(), key_b, "ES256", {"kid": "key-b"}))
        hits_after_rotation = openai.jwks_hits
        again = await mint(c, sign(claims(), key_b, "ES256", {"kid": "key-b"}))
        old = await mint(c, rs("key-a"))
    assert first.status_code == 200, first.text
    assert hits_after_rotation == 2
    assert again.status_code == 200 and old.status_code == 200
    assert openai.jwks_hits == 2


async def test_rotation_within_the_cooldown_waits_for_it(jwks_settings, openai, clock):
    """The documented trade-off: a kid first seen within the cooldown of the last fetch is
    refused (401) until the cooldown has passed; then one fetch picks it up."""
    async with jwks_client(jwks_settings, clock) as (c, _):
        openai.jwks = {"keys": [jwk(RSA_KEY, "key-a"), jwk(EC_KEY, "key-b")]}
        tok = sign(claims(), EC_KEY, "ES256", {"kid": "key-b"})
        clock.advance(COOLDOWN - 1)
        early = await mint(c, tok)
        clock.advance(2)
        late = await mint(c, tok)
    assert early.status_code == 401
    assert early.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "'kid'" in early.json()["error"]["message"]
    assert late.status_code == 200
    assert openai.jwks_hits == 2


# --- 5: kid spray -------------------------------------------------------------------------------


async def test_random_kid_spray_is_at_most_one_fetch_per_cooldown(jwks_settings, openai, clock):
    def spray(n: int = 40) -> list[str]:
        odd = ["../../dev/null", "' OR '1'='1", "%00", "k" * 200, "kid with spaces"]
        return [rs(str(uuid.uuid4())) for _ in range(n)] + [rs(k) for k in odd]

    async def burst(c: httpx.AsyncClient) -> list[int]:
        responses = await asyncio.gather(*(mint(c, tok) for tok in spray()))
        return sorted({r.status_code for r in responses})

    async with jwks_client(jwks_settings, clock) as (c, _):
        assert openai.jwks_hits == 1
        assert await burst(c) == [401]  # right after the start-up fetch: no fetch at all
        assert openai.jwks_hits == 1
        clock.advance(COOLDOWN + 1)
        assert await burst(c) == [401]  # 45 concurrent unknown kids: one fetch
        assert openai.jwks_hits == 2
        clock.advance(COOLDOWN / 2)
        assert await burst(c) == [401]
        assert openai.jwks_hits == 2
        clock.advance(COOLDOWN / 2 + 1)
        assert await burst(c) == [401]
        assert openai.jwks_hits == 3
        # kids that can never be in a key set are refused without any lookup
        clock.advance(COOLDOWN + 1)
        unusable = [
            rs("k" * 257),
            sign(claims(), RSA_KEY, "RS256"),  # no kid
            rs(""),
        ]
        codes = [(await mint(c, tok)).status_code for tok in unusable]
        valid = await mint(c, rs("key-a"))
    assert codes == [401, 401, 401]
    assert valid.status_code == 200
    assert openai.jwks_hits == 3
    assert len(openai.session_requests()) == 1  # only the valid token reached OpenAI


# --- 19: outage after a good fetch --------------------------------------------------------------


async def test_outage_after_warm_up_keeps_cached_keys(jwks_settings, openai, clock, caplog):
    caplog.set_level(logging.INFO)
    async with jwks_client(jwks_settings, clock) as (c, _):
        openai.jwks_up = False
        clock.advance(COOLDOWN + 1)
        unknown = await mint(c, rs("key-new"))  # tries a refresh, which fails
        assert openai.jwks_hits == 2
        known = [await mint(c, rs("key-a")) for _ in range(5)]
        clock.advance(10 * MAX_AGE)  # far past the key set's age limit: still served
        late = await mint(c, rs("key-a"))
        ready = await c.get("/readyz")
    assert unknown.status_code == 401  # the caller's kid is unknown: not an outage error
    assert [r.status_code for r in known] == [200] * 5
    assert late.status_code == 200
    assert ready.status_code == 200
    assert openai.jwks_hits <= 3  # at most the one age-triggered refresh attempt
    assert "keeping the cached keys" in caplog.text


# --- 20: cold start with the endpoint down ------------------------------------------------------


async def test_cold_start_endpoint_down_is_503_and_not_ready(jwks_settings, openai, clock):
    openai.jwks_up = False
    async with jwks_client(jwks_settings, clock) as (c, _):
        assert openai.jwks_hits == 1
        refused = [await mint(c, rs("key-a")) for _ in range(10)]
        ready = await c.get("/readyz")
        assert openai.jwks_hits == 1  # within the cold cooldown: no fetch storm
        openai.jwks_up = True
        clock.advance(COLD_COOLDOWN + 0.1)
        recovered = await mint(c, rs("key-a"))
        ready_after = await c.get("/readyz")
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "auth_unavailable"
        assert "BROKER_JWT_JWKS_URL" in r.json()["error"]["message"]
        assert "www-authenticate" not in r.headers
    assert ready.status_code == 503
    body = ready.json()
    assert body["error"]["code"] == "not_ready"
    assert any("JWKS" in m for m in body["missing"])
    assert recovered.status_code == 200, recovered.text
    assert ready_after.status_code == 200
    assert len(openai.session_requests()) == 1  # nothing was sent upstream while refusing


# --- 21: unusable key sets ----------------------------------------------------------------------

OCT = {"kty": "oct", "kid": "sym", "k": b64url(b"s" * 32), "alg": "HS256", "use": "sig"}
UNUSABLE: dict[str, tuple[int, dict[str, str], bytes]] = {
    # id -> (status, headers, body)
    "non-json": (200, {"Content-Type": "text/html"}, b"<html>sign in</html>"),
    "json-string": (200, {}, b'"keys"'),
    "json-list": (200, {}, json.dumps([jwk(RSA_KEY, "key-a")]).encode()),
    "empty-object": (200, {}, b"{}"),
    "empty-keys": (200, {}, b'{"keys": []}'),
    "keys-not-a-list": (200, {}, b'{"keys": {"key-a": 1}}'),
    "keys-without-kid": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, None)]}).encode()),
    "kid-not-string": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, 7)]}).encode()),
    "only-use-enc": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, "key-a", use="enc")]}).encode()),
    "only-oct": (200, {}, json.dumps({"keys": [OCT]}).encode()),
    "alg-mismatch": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, "key-a", alg="ES256")]}).encode()),
    "kty-list": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, "key-a", kty=["RSA"])]}).encode()),
    "crv-object": (
        200,
        {},
        json.dumps({"keys": [jwk(EC_KEY, "key-a", crv={"P-256": 1})]}).encode(),
    ),
    "broken-modulus": (200, {}, json.dumps({"keys": [jwk(RSA_KEY, "key-a", n="!!")]}).encode()),
    "deeply-nested": (200, {}, b'{"keys": ' + b"[" * 50000 + b"]" * 50000 + b"}"),
    "too-large": (
        200,
        {},
        json.dumps({"keys": [jwk(RSA_KEY, "key-a")], "pad": "x" * 600_000}).encode(),
    ),
    "http-404": (404, {}, json.dumps({"keys": [jwk(RSA_KEY, "key-a")]}).encode()),
    "http-500": (500, {}, b"oops"),
}


@pytest.fixture
async def jwks_server() -> AsyncIterator[TinyServer]:
    server = await TinyServer().start()
    yield server
    await server.stop()


@pytest.mark.parametrize("case", list(UNUSABLE.values()), ids=list(UNUSABLE))
async def test_unusable_key_set_at_cold_start_is_503(
    case, jwks_server, make_settings, openai, clock
):
    status, headers, body = case

    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            status=status, body=body, headers={"Content-Type": "application/json", **headers}
        )

    jwks_server.handler = answer
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=jwks_server.url + "/jwks")
    async with jwks_client(settings, clock) as (c, cache):
        r = await mint(c, rs("key-a"))
        ready = await c.get("/readyz")
    assert jwks_server.hits == ["/jwks"]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "auth_unavailable"
    assert ready.status_code == 503
    assert cache.kids == ()
    assert openai.requests == []


@pytest.mark.parametrize("case", list(UNUSABLE.values()), ids=list(UNUSABLE))
async def test_unusable_key_set_after_warm_up_keeps_the_good_keys(
    case, jwks_server, make_settings, openai, clock
):
    status, headers, body = case
    serving = {"good": True}
    good = json.dumps({"keys": [jwk(RSA_KEY, "key-a")]}).encode()

    async def answer(request: web.Request) -> web.Response:
        if serving["good"]:
            return web.json_response(body=good)
        return web.Response(
            status=status, body=body, headers={"Content-Type": "application/json", **headers}
        )

    jwks_server.handler = answer
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=jwks_server.url + "/jwks")
    async with jwks_client(settings, clock) as (c, cache):
        serving["good"] = False
        clock.advance(COOLDOWN + 1)
        unknown = await mint(c, rs("key-new"))
        known = await mint(c, rs("key-a"))
    assert len(jwks_server.hits) == 2
    assert unknown.status_code == 401
    assert known.status_code == 200, known.text
    assert cache.kids == ("key-a",)


async def test_mixed_key_set_uses_only_the_signature_keys(
    jwks_server, make_settings, openai, clock
):
    doc = {
        "keys": [
            OCT,
            jwk(RSA_KEY, "enc-key", use="enc"),
            {"kty": "RSA", "kid": "broken"},
            "not-a-key",
            jwk(RSA_KEY, "key-a"),
            jwk(EC_KEY, "key-ec"),
        ]
    }

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(doc)

    jwks_server.handler = answer
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=jwks_server.url + "/jwks")
    async with jwks_client(settings, clock) as (c, cache):
        rs_ok = await mint(c, rs("key-a"))
        es_ok = await mint(c, sign(claims(), EC_KEY, "ES256", {"kid": "key-ec"}))
        # the symmetric key is public in the JWKS: a token signed with it must not pass
        hs_with_oct = await mint(c, sign(claims(), b"s" * 32, "HS256", {"kid": "sym"}))
        enc = await mint(c, rs("enc-key"))
    assert cache.kids == ("key-a", "key-ec")
    assert rs_ok.status_code == 200 and es_ok.status_code == 200
    assert hs_with_oct.status_code == 401 and "'HS256'" in hs_with_oct.json()["error"]["message"]
    assert enc.status_code == 401


async def test_key_set_sent_in_several_chunks_is_read_whole(
    jwks_server, make_settings, openai, clock
):
    doc = json.dumps({"keys": [jwk(RSA_KEY, "key-a"), jwk(EC_KEY, "key-ec")]}).encode()

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(doc), 200):
            await resp.write(doc[i : i + 200])
            await asyncio.sleep(0.01)  # let each chunk reach the client on its own
        await resp.write_eof()
        return resp

    jwks_server.handler = answer
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=jwks_server.url + "/jwks")
    async with jwks_client(settings, clock) as (c, cache):
        r = await mint(c, rs("key-a"))
    assert cache.kids == ("key-a", "key-ec")
    assert r.status_code == 200, r.text


async def test_redirects_are_not_followed(jwks_server, make_settings, openai, clock):
    elsewhere = await TinyServer().start()

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk(RSA_KEY, "key-a")]})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(elsewhere.url + "/jwks")

    elsewhere.handler = keys
    jwks_server.handler = redirect
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=jwks_server.url + "/jwks")
    try:
        async with jwks_client(settings, clock) as (c, _):
            r = await mint(c, rs("key-a"))
    finally:
        await elsewhere.stop()
    assert r.status_code == 503
    assert elsewhere.hits == []


# --- 23: a key removed from the set stops verifying within the cache's age limit --------------


async def test_revoked_key_stops_verifying_within_max_age(jwks_settings, openai, clock):
    openai.jwks = {"keys": [jwk(RSA_KEY, "key-a"), jwk(EC_KEY, "key-b")]}
    async with jwks_client(jwks_settings, clock) as (c, cache):
        openai.jwks = {"keys": [jwk(EC_KEY, "key-b")]}  # key-a revoked at the source
        clock.advance(MAX_AGE - 1)
        still = await mint(c, rs("key-a"))  # within the documented staleness bound
        hits_within = openai.jwks_hits
        clock.advance(2)
        revoked = await mint(c, rs("key-a"))
        other = await mint(c, sign(claims(), EC_KEY, "ES256", {"kid": "key-b"}))
    assert cache.max_age == MAX_AGE
    assert still.status_code == 200
    assert hits_within == 1
    assert revoked.status_code == 401
    assert other.status_code == 200
    assert openai.jwks_hits == 2


# --- 24: a slow JWKS fails fast and stalls nobody else ------------------------------------------


async def test_slow_jwks_at_cold_start_fails_fast(jwks_settings, openai, clock, caplog):
    caplog.set_level(logging.INFO)
    openai.jwks_delay = 2.0
    started = time.monotonic()
    async with jwks_client(jwks_settings, clock, timeout=0.3) as (c, _):
        start_up = time.monotonic() - started
        r = await mint(c, rs("key-a"))
    assert start_up < 2.0
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "auth_unavailable"
    assert "failed (TimeoutError); no keys yet" in caplog.text  # the log says why


async def test_slow_refresh_does_not_stall_other_requests(jwks_settings, openai, clock):
    async with jwks_client(jwks_settings, clock, timeout=0.5) as (c, _):
        openai.jwks_delay = 2.0
        clock.advance(COOLDOWN + 1)
        started = time.monotonic()
        slow = asyncio.ensure_future(mint(c, rs("key-unknown")))
        fast = asyncio.ensure_future(mint(c, rs("key-a")))
        health = asyncio.ensure_future(c.get("/healthz"))
        done, _ = await asyncio.wait({slow, fast, health}, return_when=asyncio.FIRST_COMPLETED)
        assert slow not in done  # the others finished while the fetch was still running
        await asyncio.gather(fast, health)
        slow_r = await slow
        slow_took = time.monotonic() - started
    assert fast.result().status_code == 200
    assert health.result().status_code == 200
    assert slow_r.status_code == 401  # the cache is warm: an unknown kid stays a 401
    assert slow_took < 2.0  # the short timeout, not the endpoint's 2 s


# --- single flight ------------------------------------------------------------------------------


async def test_a_cancelled_caller_does_not_cancel_or_hide_the_fetch(jwks_settings, openai, clock):
    """A client that hangs up mid-fetch must not leave later callers without the result."""
    broker = build_broker(jwks_settings)
    cache = JWKSCache(
        jwks_settings.jwt.jwks_url or "",
        broker.http,
        algorithms=jwks_settings.jwt.asymmetric_algorithms,
        clock=clock,
    )
    openai.jwks_delay = 0.3
    try:
        first = asyncio.ensure_future(cache.key("key-a"))
        while cache.fetches == 0:  # let the first caller start the fetch
            await asyncio.sleep(0)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first  # the caller is gone before the fetch has answered
        second = await cache.key("key-a")  # same instant: within the cold cooldown
    finally:
        await broker.http.close()
    assert first.cancelled()
    assert second is not None and second.kid == "key-a"
    assert cache.fetches == 1
    assert openai.jwks_hits == 1
