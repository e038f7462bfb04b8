"""The budget check per message: off, in-process and in Redis, side by side.

    python -m benchmarks.budgets [--messages 20000] [--redis redis://127.0.0.1:6379/15]

Each row drives what the engine does for one message of a workflow with a per-user daily
token budget (``tokens_per_user_per_day``, 200 distinct users, limits high enough that nothing
is refused): the budgets that apply, the reservation before the run (``BudgetBook.begin``),
one model call's use within the hold, and the settle after the reply. Columns: CPU µs per
message of this process (``time.process_time``, median of 5 batches), wall µs per message,
and the Redis calls per message, each one round trip (the reservation is the only one before
the run starts; the settle runs after the reply, in a task of its own). Redis rows are skipped
when no Redis answers at ``--redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from broker.backends.agent.workflow import Budget
from broker.budgets import Applied, BudgetBook, applicable
from broker.metrics import Metrics

USERS = [f"user-{i}" for i in range(200)]


async def _zero(_: Applied) -> int:
    return 0


class _Counting:
    """Counts the RedisStore calls (each one round trip)."""

    def __init__(self, store: Any) -> None:
        self.store, self.calls = store, 0
        original = store.call

        async def call(op: str, fn: Any) -> Any:
            self.calls += 1
            return await original(op, fn)

        store.call = call


async def _message(book: BudgetBook, budget: Budget | None, user: str) -> None:
    applied = applicable(budget, "bench", user)
    hold = await book.begin(applied, 4000 if budget else 0, 0.0)
    await hold.before_call()
    await hold.after_call(1500, 0.001)
    await hold.settle()


async def _batch(book: BudgetBook, budget: Budget | None, n: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        await _message(book, budget, USERS[i % len(USERS)])
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def _measure(book: BudgetBook, budget: Budget | None, n: int) -> tuple[float, float]:
    await _batch(book, budget, 500)
    runs = [await _batch(book, budget, n) for _ in range(5)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


async def main_async(messages: int, redis_url: str) -> None:
    budget = Budget(tokens_per_user_per_day=10**15)
    rows: list[tuple[str, float, float, str]] = []
    off = BudgetBook(_zero)
    rows.append(("budgets off", *await _measure(off, None, messages), "0"))
    local = BudgetBook(_zero, metrics=Metrics())
    rows.append(("in-process", *await _measure(local, budget, messages), "0"))
    from broker.store import RedisStore

    store = RedisStore(redis_url, "bench-budgets:")
    if await store.ping():
        counting = _Counting(store)
        shared = BudgetBook(_zero, metrics=Metrics(), store=store)
        await _measure(shared, budget, 200)
        counting.calls = 0
        cpu, wall = await _batch(shared, budget, messages // 4)
        per = counting.calls / (messages // 4)
        rows.append(("Redis", cpu, wall, f"{per:g} (1 before the run)"))
        await store.client.delete(*[k async for k in store.client.scan_iter("bench-budgets:*")])
    else:
        rows.append(("Redis", float("nan"), float("nan"), f"skipped: no Redis at {redis_url}"))
    await store.close()
    print(f"{'budget check per message':<26}{'CPU µs':>10}{'wall µs':>10}  Redis round trips")
    for name, cpu, wall, trips in rows:
        print(f"{name:<26}{cpu:>10.1f}{wall:>10.1f}  {trips}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    asyncio.run(main_async(args.messages, args.redis))


if __name__ == "__main__":
    main()
