"""The broker's own request path, in-process: CPU per mint with the upstream call taken out.

    python -m benchmarks.stack [--requests 20000] [--profile]
    valgrind --tool=callgrind python -m benchmarks.stack --mints 1300   # and 300: see --mints

The wrk cases measure the whole service, where the upstream call, uvicorn and wrk share two
cores and runs differ by ±20 %. This drives the ASGI app directly — no sockets, no server —
with the hosted sessions client replaced by one that answers at once, so what is left is the
broker's own work per mint: edge, routing, JWT (cached), limits, the gate, the registry, the
answer and the access log. Next to it, the same driver on a bare Starlette route answering
constant JSON: the framework's floor. Figures are CPU µs per request (``time.process_time``),
the median of five batches; ``--profile`` adds cProfile's top functions for the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.app import build_broker, create_app
from broker.backends.base import CreatedSession
from broker.config import load_settings
from broker.edge import BODY_EXTENSION
from broker.logs import setup_logging
from broker.server import BodyArrival

SECRET = "bench-stack-secret-" + "x" * 32
USERS = 200
BODY = b'{"workflow":"bench"}'
_ARRIVED = BodyArrival()
_ARRIVED.complete = True
ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class InstantSessions:
    """The hosted sessions client, answering without any I/O."""

    def __init__(self) -> None:
        self.n = 0

    async def create(self, body: dict, *, workflow_label: str) -> CreatedSession:
        self.n += 1
        return CreatedSession(f"ek_{self.n:048x}", 2_000_000_000, f"cksess_{self.n:032x}")

    async def cancel(self, session_id: str) -> bool:
        return True


def _scope(path: str, token: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        # what `serve`'s protocol says of a small POST parsed in one packet with its head
        "extensions": {BODY_EXTENSION: _ARRIVED},
    }


async def _drive(app: ASGIApp, tokens: list[str], n: int, path: str) -> None:
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    for i in range(n):
        await app(_scope(path, tokens[i % len(tokens)]), receive, send)
    if set(statuses) != {200}:
        raise SystemExit(f"not every answer was 200: {statuses}")


async def _lifespan(app: Starlette, run: Callable[[], Awaitable[None]]) -> None:
    async with app.router.lifespan_context(app):
        await run()


def _bare_app() -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"client_secret": "ek_x", "expires_at": 0, "session_id": "cksess_x"})

    return Starlette(routes=[Route("/api/chatkit/session", endpoint, methods=["POST"])])


def _broker_app(
    log_path: str, users: int = USERS, redis_url: str | None = None
) -> tuple[Starlette, list[str]]:
    env = {
        "OPENAI_API_KEY": "sk-bench-" + "0" * 40,
        "BROKER_WORKFLOWS": "bench=wf_" + "0" * 48,
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_RATE_LIMIT": "1000000/minute",
        "BROKER_IP_RATE_LIMIT": "100000000/minute",
        "BROKER_LOG_FORMAT": "json",
        "BROKER_TEST_PAGE": "0",
    }
    if redis_url:  # the registry and the rate-limit counters in Redis, as with several instances
        env["BROKER_REDIS_URL"] = redis_url
        env["BROKER_REDIS_PREFIX"] = f"bench-stack-{os.getpid()}:"
    settings = load_settings(env)
    handler_stream = open(log_path, "w")  # noqa: SIM115 - closed with the process
    setup_logging("json", "info")
    logging.getLogger().handlers[0].setStream(handler_stream)  # type: ignore[attr-defined]
    app = create_app(settings, broker=build_broker(settings, backend=InstantSessions()))
    now = int(time.time())
    claims = {"iat": now, "exp": now + 3600}
    tokens = [jwt.encode({**claims, "sub": f"user{i}"}, SECRET, "HS256") for i in range(users)]
    return app, tokens


def measure(app: Starlette, tokens: list[str], n: int, batches: int = 5) -> tuple[float, float]:
    """Median CPU µs and wall µs per request over ``batches`` batches of ``n`` requests, one
    request at a time (so the wall time includes every round trip to Redis, if any)."""
    figures, walls = [], []

    async def run() -> None:
        await _drive(app, tokens, 500, "/api/chatkit/session")  # warm caches
        for _ in range(batches):
            started, wall = time.process_time(), time.perf_counter()
            await _drive(app, tokens, n, "/api/chatkit/session")
            figures.append((time.process_time() - started) / n * 1e6)
            walls.append((time.perf_counter() - wall) / n * 1e6)

    asyncio.run(_lifespan(app, run))
    return statistics.median(figures), statistics.median(walls)


def profile(app: Starlette, tokens: list[str], n: int, top: int = 25) -> str:
    profiler = cProfile.Profile()

    async def run() -> None:
        await _drive(app, tokens, 500, "/api/chatkit/session")
        profiler.enable()
        await _drive(app, tokens, n, "/api/chatkit/session")
        profiler.disable()

    asyncio.run(_lifespan(app, run))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stack", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="per batch")
    parser.add_argument("--profile", action="store_true", help="cProfile's top functions")
    parser.add_argument(
        "--users", type=int, default=USERS, help="distinct tokens (over 4,096: none cached)"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="registry and rate limits in this Redis (BROKER_REDIS_URL)"
    )
    parser.add_argument(
        "--mints",
        type=int,
        metavar="N",
        help="only N mints after 300 to warm up, nothing printed: run under callgrind with two "
        "N, the difference in instructions divided by the difference in N is one mint's",
    )
    args = parser.parse_args(argv)
    if args.mints is not None:
        with tempfile.TemporaryDirectory() as tmp:
            app, tokens = _broker_app(os.path.join(tmp, "broker.log"), args.users, args.redis)

            async def run() -> None:
                await _drive(app, tokens, 300, "/api/chatkit/session")
                await _drive(app, tokens, args.mints, "/api/chatkit/session")

            asyncio.run(_lifespan(app, run))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "broker.log")
        bare, bare_wall = measure(_bare_app(), ["x"], args.requests)
        app, tokens = _broker_app(log_path, args.users, args.redis)
        broker, broker_wall = measure(app, tokens, args.requests)
        with open(log_path) as log:
            lines = sum(1 for _ in log)
        where = " (Redis)" if args.redis else ""
        print("| in-process, no upstream | CPU µs per mint | wall µs per mint |")
        print("| --- | ---: | ---: |")
        print(f"| bare Starlette route, constant JSON | {bare:.1f} | {bare_wall:.1f} |")
        print(
            f"| broker{where} (edge, JWT cached, limits, gate, registry, answer, access log) "
            f"| {broker:.1f} | {broker_wall:.1f} |"
        )
        print(
            f"| broker's own cost over the bare route | {broker - bare:.1f} "
            f"| {broker_wall - bare_wall:.1f} |"
        )
        print(f"\n({lines} access-log lines written)")
        if args.profile:
            app, tokens = _broker_app(log_path, args.users, args.redis)
            print(profile(app, tokens, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
