"""The agent path side by side with a bare chatkit-python server (issue 24), in one run.

    python -m benchmarks.agentpath [--quick] [--users 32] [--turns 10] [--rounds 2]
                                   [--targets broker-sqlite,broker-postgres,peer-memory,peer-sqlite]
                                   [--profile DIR]

Every target answers with the same agent (``examples/agent/support_agent.py``) against the same
fake Responses API, in a process of its own (``tests/support/fake_responses.py``, no delay, an
echo cut into 3 text deltas). The load is the same for each: ``users`` users at once, each
``threads.create`` then ``turns - 1`` x ``threads.add_user_message`` on its thread, every stream
read to its end, the first text delta timed from the request's start. Reported per target
(medians over rounds): turns/s, first delta p50/p90/p99, the server's CPU ms per turn (its
process tree, from ``/proc``), peak RSS and errors; then broker ÷ peer.

Targets:

* ``broker-sqlite``, ``broker-postgres``: ``chatkit-broker serve`` with one agent workflow,
  each user signed in with a JWT, minted a session secret (``cks_…``) once, and sending it on
  every ChatKit request — sign-in, isolation checks and durable threads included;
* ``peer-memory``, ``peer-sqlite``: ``benchmarks/peer_chatkit.py``, the bare server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import jwt

from . import profiling
from .procs import Child, Sampler, free_port, raise_nofile, wait_http_ok

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "agentpath-benchmark-jwt-secret-32-bytes!"
SESSION_SECRET = "agentpath-benchmark-session-secret-32b!"
TARGETS = ("broker-sqlite", "broker-postgres", "peer-memory", "peer-sqlite")
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DELTA = b'"assistant_message.content_part.text_delta"'

_started: list[Child] = []


@dataclass
class Round:
    target: str
    turns: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    first_delta_ms: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


def _body(kind: str, text: str, thread: str | None) -> bytes:
    content = {"content": [{"type": "input_text", "text": text}], "attachments": []}
    content["inference_options"] = {}
    if kind == "threads.create":
        return json.dumps({"type": kind, "params": {"input": content}}).encode()
    return json.dumps({"type": kind, "params": {"thread_id": thread, "input": content}}).encode()


async def _turn(
    session: aiohttp.ClientSession, url: str, headers: dict, body: bytes, rnd: Round
) -> str | None:
    """One turn, its stream read to the end; the thread id; the first delta's delay recorded."""
    started = time.perf_counter()
    first: float | None = None
    thread: str | None = None
    buf = b""
    try:
        async with session.post(url, data=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
            async for chunk in r.content.iter_any():
                if first is None and DELTA in chunk:
                    first = time.perf_counter() - started
                buf += chunk
    except Exception as exc:  # a failed turn is counted, the load goes on
        rnd.errors += 1
        if len(rnd.error_samples) < 3:
            rnd.error_samples.append(f"{type(exc).__name__}: {exc}")
        return None
    if first is None or b'"type":"error"' in buf or b'"type": "error"' in buf:
        rnd.errors += 1
        if len(rnd.error_samples) < 3:
            rnd.error_samples.append(buf[-300:].decode(errors="replace"))
        return None
    rnd.turns += 1
    rnd.first_delta_ms.append(first * 1000)
    for line in buf.split(b"\n"):
        if line.startswith(b"data:") and b'"thread.created"' in line:
            thread = json.loads(line[5:])["thread"]["id"]
            break
    return thread


async def _user(
    session: aiohttp.ClientSession, url: str, headers: dict, n: int, turns: int, rnd: Round
) -> None:
    thread = await _turn(session, url, headers, _body("threads.create", f"hi {n}", None), rnd)
    if thread is None:
        return
    for t in range(1, turns):
        body = _body("threads.add_user_message", f"turn {t} of user {n}", thread)
        await _turn(session, url, headers, body, rnd)


async def _mint(session: aiohttp.ClientSession, base: str, user: int) -> dict[str, str]:
    token = jwt.encode({"sub": f"bench-{user}", "exp": int(time.time()) + 3600}, JWT_SECRET)
    async with session.post(
        f"{base}/api/chatkit/session",
        json={"workflow": "support"},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        answer = await r.json()
    if r.status != 200:
        raise RuntimeError(f"mint: HTTP {r.status} {answer}")
    return {"Authorization": f"Bearer {answer['client_secret']}"}


def _spy(pid: int, raw: Path) -> Child:
    """py-spy on the server until stopped (SIGINT makes it write what it sampled)."""
    argv = [profiling.pyspy() or "py-spy", "record", "--pid", str(pid), "--gil", "--rate", "250"]
    argv += ["--format", "raw", "--output", str(raw)]
    spy = Child("py-spy", argv, raw.with_suffix(".log")).start()
    _started.append(spy)
    time.sleep(0.5)  # attached before the load starts
    return spy


def _unspy(spy: Child, raw: Path) -> None:
    assert spy.proc is not None
    spy.proc.send_signal(signal.SIGINT)
    try:
        spy.proc.wait(30)
    finally:
        spy.stop(grace=1.0)
        _started.remove(spy)
    if raw.exists():
        print(f"## {raw.stem}\n{profiling.summarize(raw, top=30)}\n", file=sys.stderr, flush=True)


async def _drive(
    target: str, base: str, pid: int, users: int, turns: int, profile: Path | None = None
) -> Round:
    rnd = Round(target)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        is_broker = target.startswith("broker")
        url = f"{base}/chatkit/support" if is_broker else f"{base}/chatkit"
        plain = {"Content-Type": "application/json"}
        heads = [
            {**plain, **(await _mint(session, base, u))} if is_broker else plain
            for u in range(users)
        ]
        warm = Round(target)
        await asyncio.gather(*(_user(session, url, heads[u], u, 2, warm) for u in range(4)))
        spy = _spy(pid, profile / f"{target}.txt") if profile else None
        with Sampler(pid, interval=0.1) as sampler:
            cpu0 = sampler.cpu()
            started = time.perf_counter()
            await asyncio.gather(
                *(_user(session, url, heads[u], u, turns, rnd) for u in range(users))
            )
            rnd.seconds = time.perf_counter() - started
            await asyncio.sleep(0.2)
            rnd.cpu_s = sampler.cpu() - cpu0
        if spy is not None and profile is not None:
            _unspy(spy, profile / f"{target}.txt")
        rnd.peak_rss_mb = sampler.peak_tree_rss / 2**20
    return rnd


async def _pg_database() -> str:
    import asyncpg

    name = f"ckb_bench_{os.getpid()}"
    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"


def _start(target: str, workdir: Path, fake_url: str) -> tuple[Child, str]:
    port = free_port()
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sk-benchmark",
        "OPENAI_BASE_URL": fake_url,
        "PYTHONPATH": str(ROOT),
    }
    bin_dir = Path(sys.executable).parent
    if target.startswith("broker"):
        db = (
            asyncio.run(_pg_database())
            if target == "broker-postgres"
            else f"sqlite:///{workdir / f'{target}.sqlite3'}"
        )
        env |= {
            "BROKER_WORKFLOWS": "support=examples.agent.support_agent:agent",
            "BROKER_JWT_SECRET": JWT_SECRET,
            "BROKER_SESSION_SECRET": SESSION_SECRET,
            "BROKER_DATABASE_URL": db,
            "BROKER_PORT": str(port),
            "BROKER_IP_RATE_LIMIT": "100000000/minute",
            "BROKER_RATE_LIMIT": "100000000/minute",
            "BROKER_LOG_FORMAT": "json",
        }
        argv = [str(bin_dir / "chatkit-broker"), "serve"]
    else:
        store = target.split("-", 1)[1]
        argv = [sys.executable, "-m", "benchmarks.peer_chatkit", "--port", str(port)]
        argv += ["--store", store, "--db", str(workdir / f"{target}.sqlite3")]
    child = Child(target, argv, workdir / f"{target}.log").start(env=env, cwd=ROOT)
    _started.append(child)
    base = f"http://127.0.0.1:{port}"
    wait_http_ok(f"{base}/healthz", child)
    return child, base


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(rounds: list[Round]) -> list[dict]:
    out = []
    for target in dict.fromkeys(r.target for r in rounds):
        mine = [r for r in rounds if r.target == target]
        med = statistics.median
        out.append(
            {
                "target": target,
                "turns_per_s": med(r.turns / r.seconds for r in mine),
                "first_p50_ms": med(_pct(r.first_delta_ms, 0.5) for r in mine),
                "first_p90_ms": med(_pct(r.first_delta_ms, 0.9) for r in mine),
                "first_p99_ms": med(_pct(r.first_delta_ms, 0.99) for r in mine),
                "cpu_ms_per_turn": med(1000 * r.cpu_s / max(r.turns, 1) for r in mine),
                "peak_rss_mb": max(r.peak_rss_mb for r in mine),
                "errors": max(r.errors for r in mine),
                "error_samples": [s for r in mine for s in r.error_samples][:3],
            }
        )
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| target | turns/s | first delta p50 / p90 / p99 ms | CPU ms per turn | peak RSS MB "
        "| errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        lines.append(
            f"| {s['target']} | {s['turns_per_s']:.1f} | {s['first_p50_ms']:.0f} / "
            f"{s['first_p90_ms']:.0f} / {s['first_p99_ms']:.0f} | {s['cpu_ms_per_turn']:.1f} "
            f"| {s['peak_rss_mb']:.0f} | {s['errors']} |"
        )
    by = {s["target"]: s for s in summary}
    peer = by.get("peer-memory")
    if peer:
        lines.append("")
        for s in summary:
            if not s["target"].startswith("broker"):
                continue
            tput = s["turns_per_s"] / peer["turns_per_s"]
            cpu = s["cpu_ms_per_turn"] / peer["cpu_ms_per_turn"]
            ok = "PASS" if tput >= 1.0 and cpu <= 1.0 and s["errors"] == 0 else "MISS"
            lines.append(
                f"- {ok} {s['target']} ÷ peer-memory: turns/s {tput:.2f}x (target ≥ 1.0x), "
                f"CPU per turn {cpu:.2f}x (target ≤ 1.0x)"
            )
    return "\n".join(lines)


def run(
    quick: bool = False,
    *,
    users: int | None = None,
    turns: int | None = None,
    rounds: int | None = None,
    targets: tuple[str, ...] = TARGETS,
    profile: Path | None = None,
) -> dict:
    """Every target ``rounds`` times, interleaved, each in one process started at the outset.

    ``profile``: a directory where py-spy's samples of each target's first measured round go
    (collapsed stacks, ``<target>.txt``), summarised on stderr; that round's figures then
    include py-spy's sampling cost."""
    users = users or (16 if quick else 32)
    turns = turns or (5 if quick else 10)
    rounds = rounds or (1 if quick else 2)
    raise_nofile()
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="agentpath-bench-") as tmp:
        workdir = Path(tmp)
        fake_port = free_port()
        fake = Child(
            "fake-responses",
            [sys.executable, "-m", "tests.support.fake_responses", "--port", str(fake_port)],
            workdir / "fake.log",
        ).start(env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
        _started.append(fake)
        try:
            wait_http_ok(f"http://127.0.0.1:{fake_port}/_fake/turns", fake)
            fake_url = f"http://127.0.0.1:{fake_port}/v1"
            # every target up at once, the rounds interleaved (A B C, then C B A, …): load
            # from elsewhere on the machine falls on all targets alike, not on whichever
            # happened to run while it lasted
            servers = {target: _start(target, workdir, fake_url) for target in targets}
            for n in range(rounds):
                order = targets if n % 2 == 0 else tuple(reversed(targets))
                for target in order:
                    child, base = servers[target]
                    spy = profile if n == 0 else None
                    rnd = asyncio.run(_drive(target, base, child.pid, users, turns, spy))
                    print(
                        f"# {target}: {rnd.turns} turns in {rnd.seconds:.1f} s, "
                        f"{rnd.errors} errors",
                        file=sys.stderr,
                        flush=True,
                    )
                    results.append(rnd)
        finally:
            while _started:
                _started.pop().stop(grace=3.0)
    summary = summarize(results)
    return {
        "options": {"users": users, "turns": turns, "rounds": rounds},
        "summary": summary,
        "rounds": [asdict(r) | {"first_delta_ms": None} for r in results],
        "markdown": markdown(summary),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.agentpath", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--users", type=int)
    ap.add_argument("--turns", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each target into DIR")
    args = ap.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    out = run(
        args.quick,
        users=args.users,
        turns=args.turns,
        rounds=args.rounds,
        targets=targets,
        profile=args.profile,
    )
    print(out["markdown"])
    return 0 if all(s["errors"] == 0 for s in out["summary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
