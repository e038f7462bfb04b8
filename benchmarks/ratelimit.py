"""Rate-limit checks: the broker's own counters against the ``limits`` package, side by side.

    python -m benchmarks.ratelimit [--checks 20000] [--redis redis://127.0.0.1:6379/15]

Each row is one way to count a request against a per-address limit, driven the way the
broker drives it (one awaited check per request, 200 distinct keys, limits high enough that
nothing is refused, then a refused check for ``Retry-After``): CPU µs per check of this
process (``time.process_time``, median of 5 batches) and, for Redis, the commands Redis ran
per check: the requests this process sent, each one a round trip. Redis rows are skipped when no
Redis answers at ``--redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from broker.config import load_settings
from broker.metrics import Metrics
from broker.ratelimit import RateLimits

KEYS = [f"10.0.{i // 250}.{i % 250}" for i in range(200)]
ENV = {
    "BROKER_WORKFLOWS": "bench=wf_" + "0" * 48,
    "OPENAI_API_KEY": "sk-bench-" + "0" * 40,
    "BROKER_JWT_SECRET": "bench-ratelimit-secret-" + "x" * 32,
    "BROKER_IP_RATE_LIMIT": "100000000/minute",
}


async def _batch(check: Callable[[str], Awaitable[Any]], n: int) -> float:
    started = time.process_time()
    for i in range(n):
        await check(KEYS[i % len(KEYS)])
    return (time.process_time() - started) / n * 1e6


async def _measure(check: Callable[[str], Awaitable[Any]], n: int) -> float:
    await _batch(check, 500)
    return statistics.median([await _batch(check, n) for _ in range(5)])


def _limits_checks(storage: Any) -> dict[str, Callable[[str], Awaitable[Any]]]:
    from limits import RateLimitItemPerMinute
    from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    item = RateLimitItemPerMinute(100_000_000)
    fixed, moving = FixedWindowRateLimiter(storage), MovingWindowRateLimiter(storage)

    def of(limiter: Any, space: str) -> Callable[[str], Awaitable[Any]]:
        async def check(key: str) -> Any:
            if not await limiter.hit(item, space, key):
                await limiter.get_window_stats(item, space, key)

        return check

    return {"fixed window": of(fixed, "fixed"), "moving window": of(moving, "moving")}


class RoundTrips:
    """Counts what this process sends to Redis: one ``send_packed_command`` is one request
    (a script's inner commands never leave Redis)."""

    def __init__(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.count = 0
        original = AbstractConnection.send_packed_command
        counter = self

        async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


async def run(checks: int, redis_url: str | None) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    settings = load_settings(ENV)
    ours = RateLimits(settings, metrics=Metrics())
    rows.append(("broker, in process (dict)", await _measure(ours.hit_address, checks), "-"))
    try:
        from limits.aio.storage import MemoryStorage
    except ImportError:
        MemoryStorage = None
    if MemoryStorage is not None:
        for name, check in _limits_checks(MemoryStorage()).items():
            rows.append((f"limits {name}, memory", await _measure(check, checks), "-"))
    if redis_url is None:
        return rows
    from redis.asyncio import Redis

    probe = Redis.from_url(redis_url)
    try:
        await probe.ping()
    except Exception:
        print(f"(no Redis at {redis_url}: Redis rows skipped)")
        return rows
    trips = RoundTrips()
    from broker.store import RedisStore

    store = RedisStore(redis_url, "bench-ratelimit:", metrics=Metrics())
    shared = RateLimits(
        load_settings({**ENV, "BROKER_REDIS_URL": redis_url}), metrics=Metrics(), store=store
    )
    candidates: dict[str, Callable[[str], Awaitable[Any]]] = {
        "broker, Redis (one Lua script)": shared.hit_address
    }
    if MemoryStorage is not None:
        from limits.aio.storage import RedisStorage

        storage = RedisStorage(
            "async+redis://", implementation="redispy", connection_pool=store.pool
        )
        for name, check in _limits_checks(storage).items():
            candidates[f"limits {name}, Redis"] = check
    for name, check in candidates.items():
        before = trips.count
        cpu = await _measure(check, checks // 4)
        per = (trips.count - before) / (checks // 4 * 5 + 500)
        rows.append((name, cpu, f"{per:.2f}"))
    # and a refused check: the answer needs the time left in the window
    refused = RateLimits(
        load_settings({**ENV, "BROKER_REDIS_URL": redis_url, "BROKER_IP_RATE_LIMIT": "1/minute"}),
        metrics=Metrics(),
        store=store,
    )
    await refused.hit_address("refused")
    refusals = {"broker, Redis": refused.hit_address}
    if MemoryStorage is not None:
        from limits import RateLimitItemPerMinute
        from limits.aio.strategies import FixedWindowRateLimiter

        one = RateLimitItemPerMinute(1)
        fixed = FixedWindowRateLimiter(storage)

        async def limits_refused(key: str) -> None:
            if not await fixed.hit(one, "refused", key):
                await fixed.get_window_stats(one, "refused", key)

        refusals["limits fixed window, Redis"] = limits_refused
    for name, check in refusals.items():
        await check("refused")
        before = trips.count
        for _ in range(100):
            await check("refused")
        per = (trips.count - before) / 100
        rows.append((f"{name}, a refused check (429 + Retry-After)", float("nan"), f"{per:.2f}"))
    await probe.flushdb()
    await store.close()
    await probe.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ratelimit", description=__doc__)
    parser.add_argument("--checks", type=int, default=20_000, help="per batch (Redis: a quarter)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args(argv)
    rows = asyncio.run(run(args.checks, args.redis or None))
    print("| rate-limit check | CPU µs per check | Redis round trips per check |")
    print("| --- | ---: | ---: |")
    for name, cpu, per in rows:
        print(f"| {name} | {'-' if cpu != cpu else f'{cpu:.1f}'} | {per} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
