"""What a stream costs the broker: CPU per relayed event and per stream, gateway and agent.

    python -m benchmarks.streams [--quick] [--events 1000] [--streams 200]

Each path is driven twice with the same number of streams, once with 1 event per stream and
once with ``--events``; the server process's CPU time (``/proc``, all its processes) is read
before and after. The difference between the two runs divided by the extra events is the
**CPU per event**, and what is left of the 1-event run is the **CPU per stream** (request,
auth, assertion or thread bookkeeping). Fixed costs thus never leak into the per-event figure.

Gateway (``benchmarks.gateway``'s servers and trivial SSE backend, 8 streams at a time),
with the events sent back to back (the relay reads many per chunk) and 1 ms apart (one per
chunk, as a model writes them, so the figure is the cost of each relayed chunk):

* ``direct``: the backend's own CPU: what producing an event costs, for scale;
* ``broker``: ``chatkit-broker serve`` with one gateway workflow: the broker process only,
  that is, what relaying adds on top of the direct path;
* ``relay``: ``GatewayProxy`` alone under uvicorn: the relay's share of that.

Agent: ``chatkit-broker serve`` with ``examples/agent/support_agent.py`` against the tests'
fake Responses API (no delay between events; it runs in this process, not in the broker's),
threads in SQLite; one text delta per event. Its per-event figure is the whole stack's
(openai-python parsing the Responses SSE, the Agents SDK, chatkit-python building and
encoding each ``thread.item.updated``, the broker's id remap, the ASGI response and edge).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import jwt

from . import gateway, profiling
from .procs import Child, cpu_seconds, free_port, process_tree, raise_nofile, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 8
PACED_GAP = 0.001  # seconds between events in the paced gateway runs
PACED_EVENTS = 200


@dataclass
class Cost:
    path: str
    spacing: str  # how the backend sends the events
    events: int  # per stream, in the long run
    streams: int
    us_per_event: float
    us_per_stream: float
    events_per_s: float  # in the long run, all streams together


_started: list[Child] = []  # stopped by run(); never procs.stop_all(), which would also end
# the processes of the benchmark that runs this as an extra (its nginx)


def _stop_mine() -> None:
    while _started:
        _started.pop().stop(grace=3.0)


def _cpu(pid: int) -> float:
    return cpu_seconds(process_tree(pid))


async def _drive(streams: int, one: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> float:
    """Run ``streams`` streams, ``CONCURRENCY`` at a time; the wall time taken."""
    left = streams
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(session)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started


async def _measure(
    name: str,
    spacing: str,
    pid: int,
    streams: int,
    events: int,
    one: Callable[[int], Callable[[aiohttp.ClientSession], Awaitable[None]]],
) -> Cost:
    """The per-event and per-stream CPU of the process ``pid`` for one path."""
    await _drive(max(20, streams // 10), one(events))  # warm-up: connections, caches
    cpu: dict[int, float] = {}
    wall = 0.0
    for n in (1, events):
        before = _cpu(pid)
        wall = await _drive(streams, one(n))
        await asyncio.sleep(0.3)  # let the server finish its teardown of the last streams
        cpu[n] = _cpu(pid) - before
    per_event = (cpu[events] - cpu[1]) / (streams * (events - 1))
    per_stream = cpu[1] / streams - per_event
    if PROFILE_DIR is not None and name in ("broker", "relay", "agent"):
        await _profile(f"{name}-{spacing.split()[0]}", pid, one(events))
    return Cost(
        name, spacing, events, streams, per_event * 1e6, per_stream * 1e6, streams * events / wall
    )


PROFILE_DIR: Path | None = None  # --profile: py-spy the long runs (8 s each) into this dir


async def _profile(
    name: str, pid: int, one: Callable[[aiohttp.ClientSession], Awaitable[None]]
) -> None:
    """Sample ``pid`` with py-spy for 8 s of long streams and print where its CPU went."""
    assert PROFILE_DIR is not None
    raw = PROFILE_DIR / f"{name}.txt"
    # --gil: only the thread running Python; aiosqlite's worker threads blocked on their
    # queue would otherwise show as busy
    argv = [profiling.pyspy() or "py-spy", "record", "--pid", str(pid), "--gil", "--rate", "200"]
    argv += ["--duration", "8", "--format", "raw", "--output", str(raw)]
    spy = Child("py-spy", argv, PROFILE_DIR / f"{name}-py-spy.log").start()
    _started.append(spy)
    while spy.alive():
        await _drive(CONCURRENCY * 2, one)
    print(f"## {name}\n{profiling.summarize(raw, top=25)}\n", file=sys.stderr, flush=True)


# --- gateway ------------------------------------------------------------------------------


def _gateway_stream(
    url: str, extra: dict[str, str], gap: float
) -> Callable[..., Callable[..., Awaitable[None]]]:
    def with_events(n: int) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
        headers = {**extra, "x-events": str(n), "x-gap": str(gap)}

        async def one(session: aiohttp.ClientSession) -> None:
            async with session.post(url, data=gateway.BODY, headers=headers) as r:
                body = await r.read()
            got = body.count(b"\n\n")
            if r.status != 200 or got != n:
                raise RuntimeError(f"{url}: HTTP {r.status}, {got} of {n} events")

        return one

    return with_events


async def gateway_costs(workdir: Path, *, events: int, streams: int) -> list[Cost]:
    backend_port = free_port()
    backend = gateway._start("backend", backend_port, None, workdir)
    _started.append(backend)
    upstream = f"http://127.0.0.1:{backend_port}/chatkit"
    broker_port = free_port()
    broker = gateway._start_broker(broker_port, upstream, workdir)
    _started.append(broker)
    relay_port = free_port()
    relay = gateway._start("relay", relay_port, upstream, workdir)
    _started.append(relay)
    token = jwt.encode({"sub": "bench-user", "exp": int(time.time()) + 3600}, gateway.JWT_SECRET)
    paths = [
        ("direct", upstream, backend.pid, {}),
        (
            "broker",
            f"http://127.0.0.1:{broker_port}/chatkit/bench",
            broker.pid,
            {"Authorization": f"Bearer {token}"},
        ),
        ("relay", f"http://127.0.0.1:{relay_port}/chatkit", relay.pid, {}),
    ]
    costs = []
    for spacing, gap, n, count in (
        ("back to back", 0.0, events, streams),
        # one event per read, as when a model writes them: what each relayed chunk costs
        (f"{PACED_GAP * 1000:g} ms apart", PACED_GAP, PACED_EVENTS, max(32, streams // 2)),
    ):
        for name, url, pid, extra in paths:
            stream = _gateway_stream(url, extra, gap)
            costs.append(await _measure(name, spacing, pid, count, n, stream))
    return costs


# --- agent --------------------------------------------------------------------------------


AGENT_SECRET = "benchmark-jwt-secret-that-is-32-bytes-long"


def _agent_request() -> bytes:
    import json

    return json.dumps(
        {
            "type": "threads.create",
            "params": {
                "input": {
                    "content": [{"type": "input_text", "text": "Tell me a long story."}],
                    "attachments": [],
                    "inference_options": {},
                }
            },
        }
    ).encode()


async def agent_cost(workdir: Path, *, events: int, streams: int) -> Cost:
    sys.path.insert(0, str(ROOT))  # the tests' fake Responses API
    from tests.support.fake_responses import FakeResponsesServer, text

    server = FakeResponsesServer()
    fake = server.start()
    try:
        port = free_port()
        env = {
            **os.environ,
            "OPENAI_API_KEY": "sk-benchmark",
            "OPENAI_BASE_URL": fake.base_url,
            "BROKER_WORKFLOWS": f"support={ROOT}/examples/agent/support_agent.py:agent",
            "BROKER_JWT_SECRET": AGENT_SECRET,
            "BROKER_SESSION_SECRET": "benchmark-session-secret-32-bytes-long!",
            "BROKER_DATABASE_URL": f"sqlite:///{workdir / 'threads.sqlite3'}",
            "BROKER_PORT": str(port),
            "BROKER_IP_RATE_LIMIT": "100000000/minute",
            "BROKER_LOG_FORMAT": "json",
        }
        argv = [str(Path(sys.executable).parent / "chatkit-broker"), "serve"]
        broker = Child("agent-broker", argv, workdir / "agent-broker.log").start(
            env=env, cwd=workdir
        )
        _started.append(broker)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", broker)
        token = jwt.encode({"sub": "bench-user", "exp": int(time.time()) + 3600}, AGENT_SECRET)
        url = f"http://127.0.0.1:{port}/chatkit/support"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = _agent_request()

        def with_events(n: int) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
            async def one(session: aiohttp.ClientSession) -> None:
                fake.script(text("x" * n, chunks=n))
                async with session.post(url, data=body, headers=headers) as r:
                    answer = await r.read()
                deltas = answer.count(b'"assistant_message.content_part.text_delta"')
                if r.status != 200 or deltas != n:
                    raise RuntimeError(f"agent: HTTP {r.status}, {deltas} of {n} deltas")

            return one

        return await _measure("agent", "back to back", broker.pid, streams, events, with_events)
    finally:
        server.stop()


# --- report -------------------------------------------------------------------------------


def markdown(costs: Sequence[Cost]) -> str:
    lines = [
        "| stream path | events | events per stream | CPU µs per event | CPU µs per stream "
        "| events/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in costs:
        # from the back-to-back runs only: a paced run's few short streams are too few
        # clock ticks (10 ms) to split their CPU into a per-stream part
        per_stream = f"{c.us_per_stream:.0f}" if c.spacing == "back to back" else "—"
        lines.append(
            f"| {c.path} | {c.spacing} | {c.events:,} | {c.us_per_event:.1f} | {per_stream} "
            f"| {c.events_per_s:,.0f} |"
        )
    return "\n".join(lines)


def run(
    quick: bool = False,
    *,
    events: int | None = None,
    streams: int | None = None,
    parts: Sequence[str] = ("gateway", "agent"),
) -> dict:
    """Both measurements, for ``python -m benchmarks`` (the ``streams`` extra) and the CLI."""
    gw_events = events or 1000
    gw_streams = streams or (60 if quick else 200)
    agent_events = min(gw_events, 300)  # the whole Agents SDK stack per delta: slower
    agent_streams = max(10, gw_streams // 4)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        workdir = Path(tmp)
        try:
            costs = []
            if "gateway" in parts:
                costs += asyncio.run(gateway_costs(workdir, events=gw_events, streams=gw_streams))
                _stop_mine()
            if "agent" in parts:
                costs.append(
                    asyncio.run(agent_cost(workdir, events=agent_events, streams=agent_streams))
                )
        finally:
            _stop_mine()
    return {"costs": [asdict(c) for c in costs], "markdown": markdown(costs)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streams")
    parser.add_argument("--quick", action="store_true", help="fewer streams (60 and 15)")
    parser.add_argument("--events", type=int, help="events per stream (default 1000)")
    parser.add_argument("--streams", type=int, help="streams per run (default 200)")
    parser.add_argument("--only", choices=["gateway", "agent"], help="one of the two")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the long runs into DIR")
    args = parser.parse_args(argv)
    if args.profile:
        global PROFILE_DIR
        PROFILE_DIR = Path(args.profile)
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    parts = [args.only] if args.only else ["gateway", "agent"]
    result = run(args.quick, events=args.events, streams=args.streams, parts=parts)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
