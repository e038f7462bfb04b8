"""Shared fixtures: the fake OpenAI, settings built from explicit env mappings, an in-process
client (ASGI transport, lifespan run), real ``chatkit-broker serve`` processes, and tokens."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from broker.app import build_broker, create_app
from broker.config import Settings, load_settings

from .fake_openai import FakeOpenAI, FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
SECRET = "test-secret-that-is-at-least-32-bytes-long!"
API_KEY = "sk-proj-TESTKEYtestkey0123456789abcdefXYZ"
WF_SUPPORT = "wf_" + "a1" * 24
WF_SALES = "wf_" + "b2" * 24


def need(condition: bool, reason: str) -> None:
    """Skip a test whose real component is missing — except in CI, where it must run."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason)


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


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, *, peer: str = "127.0.0.1", **broker_kw: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in-process, with the app's lifespan running."""
    app = create_app(settings, broker=build_broker(settings, **broker_kw))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client


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
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)

    return make


def auth(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class BrokerProcess:
    """A real ``chatkit-broker serve`` process on a free port; its stderr goes to ``log_path``."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def cli_command() -> list[str]:
    exe = shutil.which("chatkit-broker", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "broker.cli"]


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


def wait_until_serving(bp: BrokerProcess, timeout: float = 20) -> None:
    """Poll /healthz until the process answers (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bp.proc.poll() is not None:
            raise AssertionError(f"broker exited with {bp.proc.returncode}:\n{bp.logs()}")
        try:
            if httpx.get(bp.url + "/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"broker did not start within {timeout}s:\n{bp.logs()}")


# --- Redis: the machine's server (own key prefix per test), or a private redis-server -------

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


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


class RedisServer:
    """A private ``redis-server`` on a free port that a test may kill and restart."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = f"--port {self.port} --bind 127.0.0.1 --appendonly no --dir {self.workdir}"
        self.proc = subprocess.Popen(
            ["redis-server", *args.split(), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_reachable(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server, started; killed after the test."""
    need(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()
