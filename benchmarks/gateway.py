"""Gateway benchmark: the broker's relay against direct access and a tutorial-style proxy.

    python -m benchmarks.gateway [--streams 1000] [--seconds 8] [--events 20]

Three paths to one trivial SSE backend (Starlette on uvicorn, no model, no delay):

* ``direct``: the client talks to the backend;
* ``broker``: ``chatkit-broker serve`` itself with one gateway workflow (JWT verified, gate,
  address limit, a fresh ES256 assertion per request, the relay, access log, metrics);
* ``relay``: ``GatewayProxy`` alone (assertion + relay) under uvicorn/httptools, to tell the
  relay's cost from the rest of the broker's;
* ``peer``: a Starlette + ``httpx.AsyncClient`` streaming proxy written the way FastAPI
  tutorials show (``client.send(req, stream=True)`` → ``StreamingResponse(r.aiter_raw())``).

For each: time to the first event (sequential requests), full streams per second (32 at a
time), and the proxy's RSS per open stream with ``--streams`` streams held open at once.
Each server runs in its own process; the load comes from this one (aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from .procs import (
    Child,
    cpu_seconds,
    free_port,
    process_tree,
    raise_nofile,
    stop_all,
    wait_http_ok,
)

EVENT = b'data: {"type":"progress_update","text":"benchmark event"}\n\n'
# how the load asks the trivial backend for a stream; the broker and the relay forward them as
# a workflow's forward_headers (the gateway forwards no other header a workflow does not list)
CONTROL_HEADERS = ("X-Events", "X-Hold", "X-Gap")
BODY = b'{"type":"threads.create","params":{"input":{"content":[],"attachments":[],"inference_options":{}}}}'


# --- the servers (each runs as `python -m benchmarks.gateway <role> …`) ---------------------


def _backend_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def chatkit(request: Request) -> Response:
        await request.body()
        events = int(request.headers.get("x-events", "20"))
        hold = float(request.headers.get("x-hold", "0"))
        gap = float(request.headers.get("x-gap", "0"))  # seconds between events

        async def stream() -> Any:
            for i in range(events):
                if gap and i:
                    await asyncio.sleep(gap)
                yield EVENT
            if hold:
                await asyncio.sleep(hold)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/chatkit", chatkit, methods=["POST"]), Route("/healthz", health)]
    )


def _broker_app(upstream: str) -> Any:
    from broker.assertion import ASSERTION_HEADER, AssertionSigner
    from broker.backends.gateway.proxy import GatewayProxy, StreamAborted, Upstream, gateway_pool
    from broker.errors import BrokerError

    pool = gateway_pool()
    proxy = GatewayProxy(pool)
    signer = AssertionSigner()
    target = Upstream(upstream, workflow="bench", idle_timeout=120, forward_headers=CONTROL_HEADERS)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        try:
            body = await proxy.read_body(scope, receive)
            if body is None:
                return
            assertion = signer.sign("bench-user", audience="bench", workflow="bench", body=body)
            own = [(ASSERTION_HEADER, assertion), ("X-Request-ID", "bench")]
            await proxy.relay(scope, receive, send, target, body, own)
        except StreamAborted:
            return
        except BrokerError as exc:
            await send({"type": "http.response.start", "status": exc.status, "headers": []})
            await send({"type": "http.response.body", "body": exc.code.encode()})

    return app


def _peer_app(upstream: str) -> Any:
    """The streaming proxy most tutorials show, on Starlette (FastAPI's StreamingResponse)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None))

    async def proxy(request: Request) -> Response:
        upstream_request = client.build_request(
            "POST",
            upstream,
            content=await request.body(),
            headers={
                "content-type": "application/json",
                "x-events": request.headers.get("x-events", "20"),
                "x-hold": request.headers.get("x-hold", "0"),
            },
        )
        response = await client.send(upstream_request, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.aclose),
        )

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/chatkit", proxy, methods=["POST"]), Route("/healthz", health)])


def serve(role: str, port: int, upstream: str | None) -> None:
    import uvicorn

    raise_nofile()
    if role == "backend":
        app = _backend_app()
    elif role == "relay":
        assert upstream
        app = _broker_app(upstream)
    else:
        assert upstream
        app = _peer_app(upstream)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop" if _has_uvloop() else "asyncio",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- the load -------------------------------------------------------------------------------


@dataclass
class BenchPath:
    name: str
    url: str
    pid: int
    headers: dict[str, str]


@dataclass
class Result:
    path: str
    ttfe_p50_ms: float
    ttfe_p99_ms: float
    streams_per_s: float
    rss_idle_mb: float
    rss_open_mb: float
    kib_per_stream: float
    opened: int


async def _first_event(
    session: aiohttp.ClientSession, url: str, events: int, extra: dict[str, str]
) -> float:
    started = time.perf_counter()
    headers = {**extra, "x-events": str(events)}
    async with session.post(url, data=BODY, headers=headers) as response:
        first = await response.content.readany()
        took = time.perf_counter() - started
        assert first.startswith(b"data: "), first[:80]
        await response.read()
    return took


async def _throughput(
    url: str, events: int, seconds: float, extra: dict[str, str], concurrency: int = 32
) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                headers = {**extra, "x-events": str(events)}
                async with session.post(url, data=BODY, headers=headers) as r:
                    body = await r.read()
                    assert body.count(b"\n\n") == events
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def _rss(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


async def _open_streams(
    url: str, count: int, pid: int | None, extra: dict[str, str]
) -> tuple[int, int, int]:
    """Hold ``count`` streams open (one event read from each): (opened, rss idle, rss open)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        rss_idle = _rss(pid) if pid else 0
        responses: list[aiohttp.ClientResponse] = []
        sem = asyncio.Semaphore(100)

        async def one() -> None:
            async with sem:
                response = await session.post(
                    url, data=BODY, headers={**extra, "x-events": "1", "x-hold": "60"}
                )
                await response.content.readany()
                responses.append(response)

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            print(f"  {len(errors)} stream(s) failed to open: {errors[0]!r}", file=sys.stderr)
        await asyncio.sleep(1.0)
        rss_open = _rss(pid) if pid else 0
        for response in responses:
            response.close()
        return len(responses), rss_idle, rss_open


async def ttfe(url: str, events: int, extra: dict[str, str]) -> tuple[float, float]:
    """p50 and p99 of the time to the first event, over 300 sequential requests."""
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm-up: connections, caches, key loading
            await _first_event(session, url, events, extra)
        samples = sorted([await _first_event(session, url, events, extra) for _ in range(300)])
    return statistics.median(samples) * 1000, samples[int(len(samples) * 0.99) - 1] * 1000


async def measure_all(
    paths: Sequence[BenchPath], *, events: int, seconds: float, streams: int
) -> list[Result]:
    """Each measurement for every path before the next, so no path inherits another's
    leftovers (the backend still tearing down a thousand held streams, say)."""
    firsts = [await ttfe(p.url, events, p.headers) for p in paths]
    rates = []
    for p in paths:
        rates.append(await _throughput(p.url, events, seconds, p.headers))
        await asyncio.sleep(1)
    held = []
    for p in paths:
        held.append(await _open_streams(p.url, streams, p.pid, p.headers))
        await asyncio.sleep(3)  # let the backend cancel the held streams
    results = []
    for p, (p50, p99), rate, (opened, idle, rss) in zip(paths, firsts, rates, held, strict=True):
        per_stream = (rss - idle) / max(1, opened) / 1024
        results.append(
            Result(p.name, p50, p99, rate, idle / 2**20, rss / 2**20, per_stream, opened)
        )
    return results


FIRST_EVENT_TARGET_MS = 1.0  # issue 24: the broker's median added time to the first event


async def _first_events(paths: Sequence[BenchPath], rounds: int, per_round: int) -> dict:
    """Side by side: in each round every path answers ``per_round`` sequential one-event
    requests, the order rotating, so a busy moment of the machine falls on every path alike.
    Returns each path's samples in ms."""
    samples: dict[str, list[float]] = {p.name: [] for p in paths}
    sessions = {p.name: aiohttp.ClientSession() for p in paths}
    try:
        for p in paths:  # warm-up: connections, caches, key loading
            for _ in range(20):
                await _first_event(sessions[p.name], p.url, 1, p.headers)
        for rnd in range(rounds):
            shift = rnd % len(paths)
            for p in [*paths[shift:], *paths[:shift]]:
                for _ in range(per_round):
                    took = await _first_event(sessions[p.name], p.url, 1, p.headers)
                    samples[p.name].append(took * 1000)
    finally:
        for session in sessions.values():
            await session.close()
    return samples


def first_event(quick: bool = False) -> dict:
    """The gateway part of ``python -m benchmarks``: time to the first event of a one-event
    stream, direct against the broker (``chatkit-broker serve``) and the bare relay, measured
    side by side in one run; the figure that counts is the broker's median minus direct's."""
    rounds, per_round = (4, 100) if quick else (10, 200)
    raise_nofile()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway-first-event-"))
    mine: list[Child] = []
    try:
        backend_port = free_port()
        mine.append(_start("backend", backend_port, None, workdir))
        upstream = f"http://127.0.0.1:{backend_port}/chatkit"
        paths = [BenchPath("direct", upstream, mine[0].pid, {})]
        port = free_port()
        mine.append(_start_broker(port, upstream, workdir))
        token = jwt.encode({"sub": "bench-user", "exp": int(time.time()) + 3600}, JWT_SECRET)
        paths.append(
            BenchPath(
                "broker",
                f"http://127.0.0.1:{port}/chatkit/bench",
                mine[-1].pid,
                {"Authorization": f"Bearer {token}"},
            )
        )
        port = free_port()
        mine.append(_start("relay", port, upstream, workdir))
        paths.append(BenchPath("relay", f"http://127.0.0.1:{port}/chatkit", mine[-1].pid, {}))
        cpu0 = {p.name: cpu_seconds(process_tree(p.pid)) for p in paths}
        samples = asyncio.run(_first_events(paths, rounds, per_round))
        # each stream plus the 20 of the warm-up; the backend serves every path's streams
        served = {name: len(v) + 20 for name, v in samples.items()}
        served["direct"] = sum(served.values())
        cpu = {
            p.name: (cpu_seconds(process_tree(p.pid)) - cpu0[p.name]) / served[p.name]
            for p in paths
        }
    finally:
        for child in reversed(mine):
            child.stop(grace=3.0)
        shutil.rmtree(workdir, ignore_errors=True)
    p50 = {name: statistics.median(v) for name, v in samples.items()}
    added = p50["broker"] - p50["direct"]
    lines = [
        f"Gateway, time to the first event ({rounds} rounds of {per_round} sequential one-event "
        f"streams per path, side by side; {time.monotonic() - started:.0f} s):",
        "",
        "| path | first event p50 ms | p90 ms | added over direct (p50) | CPU µs per stream "
        "(direct: the backend's) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in samples.items():
        values = sorted(values)
        p90 = values[int(len(values) * 0.9) - 1]
        plus = "" if name == "direct" else f"+{p50[name] - p50['direct']:.2f} ms"
        lines.append(f"| {name} | {p50[name]:.2f} | {p90:.2f} | {plus} | {cpu[name] * 1e6:,.0f} |")
    return {
        "p50_ms": p50,
        "added_ms": added,
        "cpu_us_per_stream": {k: v * 1e6 for k, v in cpu.items()},
        "seconds": time.monotonic() - started,
        "markdown": "\n".join(lines),
    }


def _start(role: str, port: int, upstream: str | None, workdir: Path) -> Child:
    argv = [sys.executable, "-m", "benchmarks.gateway", role, "--port", str(port)]
    if upstream:
        argv += ["--upstream", upstream]
    child = Child(role, argv, workdir / f"{role}.log").start(
        cwd=Path(__file__).resolve().parent.parent
    )
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", child)
    return child


JWT_SECRET = "benchmark-jwt-secret-that-is-32-bytes-long"


def _start_broker(port: int, upstream: str, workdir: Path) -> Child:
    """``chatkit-broker serve`` itself, one gateway workflow ``bench`` in front of the backend."""
    from broker.assertion import generate_private_key_pem

    workflows = workdir / "workflows.toml"
    names = ", ".join(f'"{name}"' for name in CONTROL_HEADERS)
    workflows.write_text(f'[workflows.bench]\nserver = "{upstream}"\nforward_headers = [{names}]\n')
    env = {
        **os.environ,
        "BROKER_WORKFLOWS_FILE": str(workflows),
        "BROKER_JWT_SECRET": JWT_SECRET,
        "BROKER_SESSION_SECRET": "benchmark-session-secret-32-bytes-long!",
        "BROKER_ASSERTION_KEY": generate_private_key_pem(),
        "BROKER_PORT": str(port),
        "BROKER_IP_RATE_LIMIT": "100000000/minute",
        "BROKER_LOG_FORMAT": "json",
    }
    argv = [str(Path(sys.executable).parent / "chatkit-broker"), "serve"]
    child = Child("broker", argv, workdir / "broker.log").start(env=env, cwd=workdir)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", child)
    return child


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway")
    parser.add_argument("role", nargs="?", choices=["backend", "relay", "peer"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument(
        "--first-event",
        action="store_true",
        help="only the time to the first event, direct / broker / relay side by side",
    )
    parser.add_argument("--quick", action="store_true", help="with --first-event: fewer rounds")
    args = parser.parse_args(argv)
    if args.role:
        serve(args.role, args.port, args.upstream)
        return 0
    if args.first_event:
        print(first_event(args.quick)["markdown"])
        return 0

    raise_nofile()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"gateway-bench-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        backend_port = free_port()
        backend = _start("backend", backend_port, None, workdir)
        upstream = f"http://127.0.0.1:{backend_port}/chatkit"
        paths = [BenchPath("direct", upstream, backend.pid, {})]
        port = free_port()
        broker = _start_broker(port, upstream, workdir)
        token = jwt.encode({"sub": "bench-user", "exp": int(time.time()) + 3600}, JWT_SECRET)
        paths.append(
            BenchPath(
                "broker",
                f"http://127.0.0.1:{port}/chatkit/bench",
                broker.pid,
                {"Authorization": f"Bearer {token}"},
            )
        )
        for role in ("relay", "peer"):
            port = free_port()
            child = _start(role, port, upstream, workdir)
            paths.append(BenchPath(role, f"http://127.0.0.1:{port}/chatkit", child.pid, {}))
        results = asyncio.run(
            measure_all(paths, events=args.events, seconds=args.seconds, streams=args.streams)
        )
    finally:
        stop_all()

    print(
        f"\n{args.events} events per stream; {args.seconds:g} s at 32 concurrent; "
        f"{args.streams} streams held open (RSS: the proxy process; for direct, the backend)\n"
    )
    print(
        "| path | first event p50 | p99 | streams/s | RSS idle | RSS with streams open | per stream |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.path} | {r.ttfe_p50_ms:.2f} ms | {r.ttfe_p99_ms:.2f} ms | {r.streams_per_s:.0f} "
            f"| {r.rss_idle_mb:.1f} MB | {r.rss_open_mb:.1f} MB ({r.opened} open) "
            f"| {r.kib_per_stream:.1f} KiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
