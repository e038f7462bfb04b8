"""Memory after failures, in a real ``chatkit-broker serve``: the collector settings ``serve``
uses (``app._settle_heap``: the startup heap frozen, the young generation collected every
50,000 allocations) leave a reference cycle that holds a large buffer alive for a very long
time, so every path that fails with a large buffer in a frame must leave none behind.

Each test drives one failure path a hundred or more times and asserts the broker's RSS comes
back to about where it stood after a warm-up of the same requests (a leak of the 1-8 MB each
such request used to leave is several times the growth allowed: with the cycles put back, 150
requests grew the broker by hundreds of MiB). In-process tests can't show this: pytest's
process has CPython's default collector settings.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker.assertion import generate_private_key_pem
from broker.backends.gateway.proxy import MAX_JSON_BYTES
from tests.support import ROOT
from tests.support.adversarial import broker_process, live_env, make_token, rss_mib
from tests.support.aioserver import ThreadedServer
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.fake_responses import FakeResponsesServer, http_error

pytestmark = pytest.mark.slow

SESSION_SECRET = "memory-session-secret-that-is-32-bytes-or-more"
# growth allowed after the run: the allocator keeps some freed memory; a leak is gigabytes
ALLOWED_GROWTH_MIB = 96
CONCURRENCY = 4


def oversize_json() -> bytes:
    """Valid JSON just over the gateway's relay limit."""
    filler = "x" * (MAX_JSON_BYTES + 1024)
    return json.dumps({"filler": filler}).encode()


class GatewayBackend(ThreadedServer):
    """A workflow's ChatKit server that answers ``answers[path]`` as application/json, in a
    thread of its own (the broker behind it is shared by the module's tests)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        super().__init__()
        self.answers = answers

    def routes(self, app: web.Application) -> None:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=self.answers[request.path], content_type="application/json")

        app.router.add_post("/{name}", handle)


async def drive(
    count: int, one: Callable[[aiohttp.ClientSession], Awaitable[int]], expect: int
) -> None:
    """``count`` requests, ``CONCURRENCY`` at a time; each must answer ``expect``."""
    queue = iter(range(count))
    timeout = aiohttp.ClientTimeout(total=60)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for _ in queue:
                assert await one(session) == expect

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def settled_rss(pid: int) -> float:
    """RSS once requests stopped: the lowest of a few samples over two seconds."""
    samples = []
    for _ in range(5):
        await asyncio.sleep(0.4)
        samples.append(rss_mib(pid))
    return min(samples)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A serving broker with gateway workflows ``big`` (answers JSON over the relay limit)
    and ``bad`` (7 MB that is not JSON), one for the module (each test measures its own
    baseline after its own warm-up); yields the broker's URL and pid."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    backend = GatewayBackend({"/big": oversize_json(), "/bad": b"{" * (7 * 1024 * 1024)})
    backend_url = backend.serve()
    try:
        (tmp_path / "workflows.toml").write_text(
            f'[workflows.big]\nserver = "{backend_url}/big"\n'
            f'[workflows.bad]\nserver = "{backend_url}/bad"\n'
        )
        env = live_env(
            "http://127.0.0.1:9/v1",
            BROKER_WORKFLOWS=None,
            BROKER_WORKFLOWS_FILE=str(tmp_path / "workflows.toml"),
            BROKER_SESSION_SECRET=SESSION_SECRET,
            BROKER_ASSERTION_KEY=generate_private_key_pem(),
            BROKER_LOG_LEVEL="warning",
        )
        with broker_process(env, tmp_path) as bp:
            yield bp.url, bp.proc.pid
    finally:
        backend.shutdown()


@pytest.fixture(scope="module")
def hosted(fake_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A broker minting from the fake OpenAI, one for the module: each test sets the fake's
    failure (through ``openai``, which resets it) and measures its own baseline."""
    env = live_env(fake_server.base_url, BROKER_UPSTREAM_RETRIES="1", BROKER_LOG_LEVEL="warning")
    with broker_process(env, tmp_path_factory.mktemp("hosted")) as bp:
        yield bp


def chatkit_post(url: str, workflow: str) -> Callable[[aiohttp.ClientSession], Awaitable[int]]:
    headers = {"Authorization": f"Bearer {make_token('mem-user')}"}
    body = {"type": "threads.list", "params": {"limit": 100}}

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(f"{url}/chatkit/{workflow}", json=body, headers=headers) as r:
            await r.read()
            return r.status

    return one


@pytest.mark.parametrize("workflow", ["big", "bad"])
async def test_rss_returns_to_baseline_after_150_failed_gateway_json_answers(
    gateway: tuple[str, int], workflow: str
) -> None:
    url, pid = gateway
    one = chatkit_post(url, workflow)
    await drive(40, one, 502)  # warm-up: pools, allocator arenas
    baseline = await settled_rss(pid)
    await drive(150, one, 502)
    after = await settled_rss(pid)
    assert after - baseline < ALLOWED_GROWTH_MIB, (
        f"RSS {baseline:.0f} MiB → {after:.0f} MiB after 150 failed answers"
    )


@pytest.mark.parametrize("kind", ["status", "huge"])
async def test_rss_returns_to_baseline_after_150_failed_hosted_answers(
    hosted: Any, openai: FakeOpenAI, kind: str
) -> None:
    """OpenAI failing with a body near the 1 MiB it reads: a 500 (retried, then given up:
    ``hosted.client``'s retry loop; ``Retry-After: 0``, so the retry is not a back-off's
    sleep) and a body over the cap."""
    if kind == "status":
        openai.default = Behaviour(
            kind="status", status=500, body=b"x" * (1024 * 1024 - 64), retry_after="0"
        )
    else:
        openai.default = Behaviour(kind="huge", size=1024 * 1024 + 65536, chunked=True)
    bp = hosted
    headers = {"Authorization": f"Bearer {make_token('mem-user')}"}

    async def one(session: aiohttp.ClientSession) -> int:
        async with session.post(
            f"{bp.url}/api/chatkit/session", json={"workflow": "support"}, headers=headers
        ) as r:
            await r.read()
            return r.status

    expect = 502
    await drive(30, one, expect)
    baseline = await settled_rss(bp.proc.pid)
    await drive(150, one, expect)
    after = await settled_rss(bp.proc.pid)
    assert after - baseline < 48, f"RSS {baseline:.0f} MiB → {after:.0f} MiB"


async def test_rss_returns_to_baseline_after_300_failed_agent_runs(
    run_broker, tmp_path: Path
) -> None:
    """A run with a 200 KiB input whose model call fails (HTTP 400, not retried): the input
    sits in the frames of the run, the engine and chatkit's stream when the error is raised."""
    server = FakeResponsesServer()
    responses = server.start()
    try:
        responses.script(*[http_error(400) for _ in range(400)])
        bp = run_broker(
            live_env(
                responses.base_url,
                BROKER_WORKFLOWS=f"support={ROOT}/examples/agent/support_agent.py:agent",
                BROKER_DATABASE_URL=f"sqlite:///{tmp_path / 'threads.sqlite3'}",
                BROKER_SESSION_SECRET=SESSION_SECRET,
                BROKER_LOG_LEVEL="warning",
            )
        )
        headers = {"Authorization": f"Bearer {make_token('mem-user')}"}
        body = {"input": "y" * (200 * 1024)}

        async def one(session: aiohttp.ClientSession) -> int:
            async with session.post(
                f"{bp.url}/api/workflows/support/runs", json=body, headers=headers
            ) as r:
                await r.read()
                return r.status

        await drive(40, one, 502)
        baseline = await settled_rss(bp.proc.pid)
        await drive(300, one, 502)
        after = await settled_rss(bp.proc.pid)
    finally:
        server.stop()
    assert after - baseline < 48, f"RSS {baseline:.0f} MiB → {after:.0f} MiB"
