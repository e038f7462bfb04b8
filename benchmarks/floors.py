"""The floors: bare Starlette apps on the broker's server stack, no auth and no checks.

Served by `python -m uvicorn benchmarks.floors:<app> --loop uvloop --http httptools
--no-access-log` (see runner.py). `BENCH_UPSTREAM_URL` is the full URL of the fake
`POST /v1/chatkit/sessions`.

* `const_app`          floor (a): constant JSON, the cost of the server and the framework.
* `aiohttp_app`        floor (b): the upstream POST through one shared aiohttp.ClientSession
                       created in the lifespan (pool settings as the broker's), body returned.
* `httpx_app`          floor (b) with one shared httpx.AsyncClient.
* `httpx_aiohttp_app`  floor (b) with httpx on httpx-aiohttp's AiohttpTransport.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM_URL = os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:9/v1/chatkit/sessions")
UPSTREAM_HEADERS = {
    "Authorization": "Bearer sk-bench-floor",
    "OpenAI-Beta": "chatkit_beta=v1",
    "Content-Type": "application/json",
}
UPSTREAM_BODY = json.dumps(
    {"workflow": {"id": "wf_" + "0" * 48}, "user": "bench-user"}, separators=(",", ":")
).encode()
TIMEOUT_S = 10.0

# Pool settings of the aiohttp-based floors: the broker's own (broker.app.HttpPool) when
# the broker is installed, so they cannot drift apart; else these, which mirror them.
POOL_LIMIT = 256
KEEPALIVE_S = 30.0

CONST_BODY = json.dumps(
    {
        "client_secret": "ek_" + "0" * 48,
        "expires_at": 1763400600,
        "session_id": "cksess_" + "0" * 48,
        "workflow": {"name": "bench", "id": "wf_" + "0" * 48},
        "mock": False,
    }
).encode()


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def _app(endpoint, lifespan=None) -> Starlette:
    return Starlette(
        routes=[
            Route("/api/chatkit/session", endpoint, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


# ------------------------------------------------------------------ floor (a)


async def const_endpoint(request: Request) -> Response:
    return Response(CONST_BODY, media_type="application/json")


const_app = _app(const_endpoint)


# ---------------------------------------------------------- floor (b): aiohttp


def _aiohttp_session():
    try:
        from broker.http import HttpPool
    except ImportError:
        import aiohttp

        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_LIMIT, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
        )
    return HttpPool()()


@contextlib.asynccontextmanager
async def _aiohttp_lifespan(app: Starlette) -> AsyncIterator[None]:
    async with _aiohttp_session() as session:
        app.state.session = session
        yield


async def aiohttp_endpoint(request: Request) -> Response:
    async with request.app.state.session.post(
        UPSTREAM_URL, data=UPSTREAM_BODY, headers=UPSTREAM_HEADERS
    ) as resp:
        body = await resp.read()
    return Response(body, media_type="application/json")


aiohttp_app = _app(aiohttp_endpoint, _aiohttp_lifespan)


# ------------------------------------------------------------ floor (b): httpx


def _httpx_limits():
    import httpx

    return httpx.Limits(
        max_connections=POOL_LIMIT,
        max_keepalive_connections=POOL_LIMIT,
        keepalive_expiry=KEEPALIVE_S,
    )


@contextlib.asynccontextmanager
async def _httpx_lifespan(app: Starlette) -> AsyncIterator[None]:
    import httpx

    async with httpx.AsyncClient(limits=_httpx_limits(), timeout=TIMEOUT_S) as client:
        app.state.client = client
        yield


@contextlib.asynccontextmanager
async def _httpx_aiohttp_lifespan(app: Starlette) -> AsyncIterator[None]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    async with _aiohttp_session() as session:
        transport = AiohttpTransport(client=session, limits=_httpx_limits())
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT_S) as client:
            app.state.client = client
            yield


async def httpx_endpoint(request: Request) -> Response:
    resp = await request.app.state.client.post(
        UPSTREAM_URL, content=UPSTREAM_BODY, headers=UPSTREAM_HEADERS
    )
    return Response(resp.content, media_type="application/json")


httpx_app = _app(httpx_endpoint, _httpx_lifespan)
httpx_aiohttp_app = _app(httpx_endpoint, _httpx_aiohttp_lifespan)
