"""Shared fixtures: the fake OpenAI, settings built from explicit env mappings, an in-process
client, real ``chatkit-broker serve`` processes, Redis, and tokens. Helpers that are not
fixtures live in ``tests/support/``."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from broker.config import Settings, load_settings

from .support import (
    REDIS_URL,
    BrokerProcess,
    RedisServer,
    app_client,
    jwt_kit,
    need,
    redis_reachable,
    wait_until_serving,
)
from .support.env import hosted_env, overridden
from .support.fake_openai import FakeOpenAI, FakeOpenAIServer
from .support.processes import start_broker

# every log line of the session (in-process records, subprocess log files) scanned for
# secrets when it ends; a leak fails the run (tests/support/log_audit.py); the fake Responses
# API's fixtures for agent workflows (tests/support/responses_fixtures.py)
pytest_plugins = ["tests.support.log_audit", "tests.support.responses_fixtures", "pytester"]

# hypothesis profiles, for the property tests that do not pin their own count (tests/test_api.py
# and others): "default" is hypothesis' own (100 examples, what the suite runs);
# HYPOTHESIS_PROFILE=thorough searches ten times deeper, for a change to a request model.
# The fuzz suites against live brokers keep their own counts (FUZZ_EXAMPLES, HOSTILE_EXAMPLES).
hypothesis_settings.register_profile("thorough", max_examples=1000)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAIServer()
    fake = server.start()
    yield fake
    server.stop()


@pytest.fixture
def openai(fake_server: FakeOpenAI) -> FakeOpenAI:
    """The fake OpenAI, reset for this test."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def base_env(openai: FakeOpenAI) -> dict[str, str]:
    """A valid live configuration pointing at the fake OpenAI."""
    return hosted_env(openai.base_url)


@pytest.fixture
def make_settings(base_env: dict[str, str]) -> Callable[..., Settings]:
    """``make_settings(BROKER_X="…", OPENAI_API_KEY=None)``: base env with overrides (None deletes)."""

    def make(**overrides: str | None) -> Settings:
        return load_settings(overridden(base_env, **overrides))

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the default live configuration."""
    async with app_client(make_settings()) as c:
        yield c


@pytest.fixture
def token() -> Callable[..., str]:
    """``token(sub="alice", exp=…, aud=…, headers={…}, key=…, algorithm=…)``; None deletes a claim
    (``tests.support.jwt_kit.token``)."""
    return jwt_kit.token


@pytest.fixture
def run_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start real broker processes (``serve`` + args) with an exact environment; stopped after the test."""
    started: list[BrokerProcess] = []

    def start(
        env: dict[str, str], *args: str, port: int | None = None, ready: bool = True
    ) -> BrokerProcess:
        bp = start_broker(env, tmp_path, *args, port=port)
        started.append(bp)
        if ready:
            wait_until_serving(bp)
        return bp

    yield start
    for bp in started:
        bp.stop()


@pytest.fixture
def redis_env() -> Iterator[dict[str, str]]:
    """Env for a broker on the shared Redis under a key prefix of its own; keys deleted after."""
    import secrets

    import redis

    need(redis_reachable(REDIS_URL), f"no Redis at {REDIS_URL}")
    prefix = f"test-{secrets.token_hex(6)}:"
    yield {"BROKER_REDIS_URL": REDIS_URL, "BROKER_REDIS_PREFIX": prefix}
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server, started; killed after the test."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


# --- browser tests: Debian's Chromium through Playwright (tests/support/browser.py) ---------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module; skips (fails under CI) without playwright or the binary."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the playwright package is not installed")
    from .support.browser import launch

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Any]:
    """A fresh tab; the test fails if the page logged uncaught errors or CSP violations."""
    from .support.browser import open_tab

    context, t = open_tab(browser)
    yield t
    context.close()
    assert not t.problems, "the page logged errors or CSP violations"
