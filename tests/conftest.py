"""Shared fixtures: the fake OpenAI, settings built from explicit env mappings, an in-process
client, real ``chatkit-broker serve`` processes, Redis, and tokens. Helpers that are not
fixtures live in ``tests/support/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from broker.config import Settings, load_settings

from .support import (
    API_KEY,
    REDIS_URL,
    SECRET,
    WF_SALES,
    WF_SUPPORT,
    BrokerProcess,
    RedisServer,
    app_client,
    cli_command,
    free_port,
    need,
    redis_reachable,
    wait_until_serving,
)
from .support.fake_openai import FakeOpenAI, FakeOpenAIServer

# every log line of the session (in-process records, subprocess log files) scanned for
# secrets when it ends; a leak fails the run (tests/support/log_audit.py)
pytest_plugins = ["tests.support.log_audit", "pytester"]


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
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": openai.base_url,
        "BROKER_WORKFLOWS": f"support={WF_SUPPORT},sales={WF_SALES}",
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_UPSTREAM_TIMEOUT": "3",
        "BROKER_LOG_FORMAT": "json",
    }


@pytest.fixture
def make_settings(base_env: dict[str, str]) -> Callable[..., Settings]:
    """``make_settings(BROKER_X="…", OPENAI_API_KEY=None)``: base env with overrides (None deletes)."""

    def make(**overrides: str | None) -> Settings:
        env = dict(base_env)
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return load_settings(env)

    return make


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    """A client for the default live configuration."""
    async with app_client(make_settings()) as c:
        yield c


@pytest.fixture
def token() -> Callable[..., str]:
    """``token(sub="alice", exp=…, aud=…, headers={…}, key=…, algorithm=…)``; None deletes a claim."""

    def make(
        sub: str | None = "alice",
        *,
        key: Any = SECRET,
        algorithm: str = "HS256",
        headers: dict[str, Any] | None = None,
        ttl: int = 300,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signed = jwt.encode(payload, key, algorithm=algorithm, headers=headers)
        from .support import log_audit  # (imported late: pytest loads it as a plugin first)

        log_audit.add_secret(signed)
        return signed

    return make


@pytest.fixture
def run_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Start real broker processes (``serve`` + args) with an exact environment; stopped after the test."""
    started: list[BrokerProcess] = []

    def start(
        env: dict[str, str], *args: str, port: int | None = None, ready: bool = True
    ) -> BrokerProcess:
        port = port or free_port()
        log_path = tmp_path / f"broker-{port}.log"
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            **env,
        }
        from .support import log_audit

        log_audit.add_env(full_env)
        proc = subprocess.Popen(
            [*cli_command(), "serve", "--port", str(port), *args],
            env=full_env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("wb"),
        )
        bp = BrokerProcess(f"http://127.0.0.1:{port}", proc, log_path)
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
