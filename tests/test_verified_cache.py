"""The verified-token cache: a token that just verified is not verified again, within bounds."""

from __future__ import annotations

import time

import jwt
import pytest

from broker.auth import Verifier
from broker.config import JWTSettings
from broker.errors import Unauthenticated

from .support import SECRET, app_client, auth


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every token that reached PyJWT's decode."""
    seen: list[str] = []
    real = jwt.PyJWT.decode

    def counting(self, token, *args, **kwargs):
        seen.append(token)
        return real(self, token, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWT, "decode", counting)
    return seen


def verifier(clock: Clock, **kw) -> Verifier:
    return Verifier(
        JWTSettings(secret=SECRET, hmac_algorithms=("HS256",), leeway=30), clock=clock, **kw
    )


async def test_workflow_list_and_mint_verify_the_token_once(make_settings, openai, token, decodes):
    tok = token("alice")
    async with app_client(make_settings()) as c:
        assert (await c.get("/api/chatkit/workflows", headers=auth(tok))).status_code == 200
        assert (
            await c.post("/api/chatkit/session", json={"workflow": "support"}, headers=auth(tok))
        ).status_code == 200
        assert (
            await c.post("/api/chatkit/session", json={"workflow": "sales"}, headers=auth(tok))
        ).status_code == 200
    assert decodes == [tok]
    assert [r.body["user"] for r in openai.session_requests()] == ["alice", "alice"]


async def test_cache_never_outlives_exp_plus_leeway(token, decodes):
    clock = Clock()
    v = verifier(clock)
    tok = token("bob", ttl=-10)  # expired 10 s ago, inside the 30 s leeway: still valid
    assert (await v.verify(tok)).user == "bob"
    clock.now += 19
    await v.verify(tok)
    assert len(decodes) == 1  # served from the cache
    clock.now += 2  # past exp + leeway: the cache must not answer
    await v.verify(tok)
    assert len(decodes) == 2


async def test_cache_entries_last_at_most_cache_seconds(token, decodes):
    clock = Clock()
    v = verifier(clock, cache_seconds=60)
    tok = token("carol", ttl=3600)
    await v.verify(tok)
    clock.now += 59
    await v.verify(tok)
    assert len(decodes) == 1
    clock.now += 2
    await v.verify(tok)
    assert len(decodes) == 2


async def test_refused_tokens_are_never_cached(token, decodes):
    v = verifier(Clock())
    bad = token("dave", key="z" * 40)
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await v.verify(bad)
    assert decodes == [bad, bad]


async def test_cache_is_bounded(token, decodes):
    v = verifier(Clock(), cache_size=2)
    a, b, c = token("a"), token("b"), token("c")
    for t in (a, b, c, c, b):
        await v.verify(t)
    assert decodes == [a, b, c]  # c and b were cached
    await v.verify(a)  # a was evicted when c arrived
    assert decodes == [a, b, c, a]


async def test_cache_can_be_switched_off(token, decodes):
    v = verifier(Clock(), cache_size=0)
    tok = token("erin")
    await v.verify(tok)
    await v.verify(tok)
    assert decodes == [tok, tok]
