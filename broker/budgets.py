"""Budgets: which apply to a run, the counters they are checked against, and a run's hold.

A run *reserves* before it starts (``reserve_tokens``, ``reserve_usd`` of the workflow's
budget table) on every counter that applies, if each still has something left; each model
call adds what it used beyond the hold, and the run *settles* at the end (the unused part of
the hold is given back). So parallel runs of one user see each other's holds, and together
overspend a budget by at most one run's use beyond its hold. Before each model call after
the first, the run checks that the others' holds and its own use leave something: a call
that would start past the budget does not start.

Counters are keyed by budget, scope and window (``tokens:u:coach:alice:2026-12-06``), so a
window that turns mid-run settles on the window it reserved in. They live in Redis when
``BROKER_REDIS_URL`` is set (one Lua script per check: every key read, compared and
incremented in one round trip), else in this process; either way a counter not yet there is
seeded from the usage table, so a restart or an emptied Redis loses nothing recorded. When
Redis fails, counting goes on per process (``broker_budget_fallbacks_total``), the rate
limits' policy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import BudgetExceeded, StoreUnavailable

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import RedisStore

__all__ = ["Applied", "BudgetBook", "RunHold", "applicable", "window_bounds"]

log = logging.getLogger("broker.budgets")

MICRO = 1_000_000  # dollar budgets are counted in micro-dollars (integers, for INCRBY)

# Every key present and under its limit → all incremented, {1}; a key missing → {-1, i} (the
# caller seeds it from the database and asks again); a key spent → {0, i, value}.
RESERVE_SCRIPT = """
local n = #KEYS
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if not v then return {-1, i} end
  if tonumber(v) >= tonumber(ARGV[i]) then return {0, i, tonumber(v)} end
end
for i = 1, n do
  if tonumber(ARGV[n + i]) ~= 0 then redis.call('INCRBY', KEYS[i], ARGV[n + i]) end
end
return {1}
"""

# Add to counters that exist (a vanished one is reseeded from the database, which has the row).
ADD_SCRIPT = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[i]) end
end
return 1
"""

_NAMES = {
    ("tokens", "user", "day"): "tokens_per_user_per_day",
    ("tokens", "user", "month"): "tokens_per_user_per_month",
    ("tokens", "user_all", "day"): "tokens_per_user_per_day_all_workflows",
    ("tokens", "user_all", "month"): "tokens_per_user_per_month_all_workflows",
    ("tokens", "workflow", "day"): "tokens_per_day",
    ("tokens", "workflow", "month"): "tokens_per_month",
    ("usd", "user", "day"): "usd_per_user_per_day",
    ("usd", "user", "month"): "usd_per_user_per_month",
    ("usd", "workflow", "day"): "usd_per_day",
    ("usd", "workflow", "month"): "usd_per_month",
}


def window_bounds(window: str, now: datetime) -> tuple[str, datetime, datetime]:
    """The window's label, start and end (naive UTC): a UTC day or a calendar month."""
    now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    if window == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start.strftime("%Y-%m"), start, end


@dataclass(frozen=True)
class Applied:
    """One budget that applies to a run: its counter and limit (tokens or micro-dollars)."""

    name: str  # the workflow-file key, e.g. tokens_per_user_per_day
    unit: str  # tokens | usd
    scope: str  # user | user_all | workflow
    window: str  # day | month
    limit: int
    key: str
    workflow: str
    user: str
    start: datetime
    end: datetime

    def shown(self, amount: int) -> float | int:
        return round(amount / MICRO, 6) if self.unit == "usd" else amount

    def report(self, used: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "limit": self.shown(self.limit),
            "used": self.shown(used),
            "remaining": self.shown(max(0, self.limit - used)),
            "resets_at": self.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


_plans: dict[tuple[int, int], tuple[Any, Any, list[tuple[str, str, str, str, int]]]] = {}
_windows: tuple[int, dict[str, tuple[str, datetime, datetime]]] = (-1, {})


def _plan(limits: Any, tier: Any) -> list[tuple[str, str, str, str, int]]:
    """The set budgets of a (frozen) budget table and tier, worked out once per pair."""
    cached = _plans.get((id(limits), id(tier)))
    if cached is not None and cached[0] is limits and cached[1] is tier:
        return cached[2]
    plan = []
    for (unit, scope, window), name in _NAMES.items():
        value = getattr(tier, name, None) if tier is not None else None
        if value is None:
            value = getattr(limits, name, None)
        if value is not None:
            amount = int(value) if unit == "tokens" else round(value * MICRO)
            plan.append((name, unit, scope, window, amount))
    _plans[(id(limits), id(tier))] = (limits, tier, plan)
    return plan


def _bounds_now() -> dict[str, tuple[str, datetime, datetime]]:
    """Today's and this month's windows, worked out once per UTC day."""
    global _windows
    day = int(time.time() // 86400)
    if _windows[0] != day:
        now = datetime.now(UTC)
        _windows = (day, {w: window_bounds(w, now) for w in ("day", "month")})
    return _windows[1]


def applicable(
    limits: Any, workflow: str, user: str, tier: Any = None, *, now: datetime | None = None
) -> list[Applied]:
    """The budgets of a workflow's ``Budget`` (with the tier's values over it) for one user."""
    if limits is None:
        return []
    plan = _plan(limits, tier)
    if not plan:
        return []
    bounds = _bounds_now() if now is None else {w: window_bounds(w, now) for w in ("day", "month")}
    who = {"user": f"u:{workflow}:{user}", "user_all": f"a:{user}", "workflow": f"w:{workflow}"}
    out = []
    for name, unit, scope, window, amount in plan:
        label, start, end = bounds[window]
        key = f"{unit}:{who[scope]}:{label}"
        out.append(Applied(name, unit, scope, window, amount, key, workflow, user, start, end))
    return out


Seed = Callable[[Applied], Awaitable[int]]


class LocalCounters:
    """Counters of this process (also the fallback while Redis is down)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def missing(self, applied: Sequence[Applied]) -> list[Applied]:
        return [a for a in applied if a.key not in self.counts]

    def reserve(self, applied: Sequence[Applied], amounts: Sequence[int]) -> Applied | None:
        for a in applied:
            if self.counts[a.key] >= a.limit:
                return a
        for a, amount in zip(applied, amounts, strict=True):
            self.counts[a.key] += amount
        return None

    def add(self, applied: Sequence[Applied], deltas: Sequence[int]) -> None:
        for a, delta in zip(applied, deltas, strict=True):
            if a.key in self.counts:
                self.counts[a.key] += delta

    def sweep(self, now: datetime) -> None:
        """Drop counters whose window ended (their keys name the window)."""
        today, month = window_bounds("day", now)[0], window_bounds("month", now)[0]
        self.counts = {k: v for k, v in self.counts.items() if k.endswith((today, month))}


class BudgetBook:
    """The counters of every budget, shared through Redis when there is a store."""

    def __init__(
        self,
        seed: Seed,
        *,
        metrics: Metrics | None = None,
        store: RedisStore | None = None,
    ) -> None:
        self.seed = seed
        self.metrics = metrics
        self.store = store
        self.local = LocalCounters()
        self._day = -1
        self.local_since: datetime | None = None  # when counting fell back to this process
        if store is not None:
            self._prefix = store.key("budget") + ":"
            self._reserve = store.client.register_script(RESERVE_SCRIPT)
            self._add = store.client.register_script(ADD_SCRIPT)

    # --- counters ------------------------------------------------------------------------

    async def _seed_local(self, applied: Sequence[Applied]) -> None:
        day = int(time.time() // 86400)
        if self._day != day:
            self._day = day
            self.local.sweep(datetime.now(UTC))
        for a in self.local.missing(applied):
            value = await self.seed(a)
            self.local.counts.setdefault(a.key, value)

    def _fallback(self) -> None:
        if self.local_since is None:
            self.local_since = datetime.now(UTC)
        if self.metrics is not None:
            self.metrics.budget_fallback()

    async def degraded(self) -> str | None:
        """For ``/readyz``: why budgets are counted per process now, else None.

        Said, not failed: the rate limits' policy keeps the instance serving, and an operator
        running several instances needs to know each one enforces its budgets on its own.
        Cleared by a ping once the breaker lets Redis be tried again.
        """
        if self.local_since is None or self.store is None:
            return None
        if self.store.available and await self.store.ping():
            self.local_since = None
            return None
        since = self.local_since.strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            f"budgets counted per process since {since}: Redis at {self.store.url} is "
            "unreachable, so each instance holds users to its budgets on its own"
        )

    async def reserve(self, applied: Sequence[Applied], amounts: Sequence[int]) -> Applied | None:
        """Hold ``amounts`` on every counter if none is spent; else the spent budget."""
        if self.store is not None:
            try:
                return await self._shared_reserve(applied, amounts)
            except StoreUnavailable:
                self._fallback()
        await self._seed_local(applied)
        return self.local.reserve(applied, amounts)

    async def _shared_reserve(
        self, applied: Sequence[Applied], amounts: Sequence[int]
    ) -> Applied | None:
        assert self.store is not None
        keys = [self._prefix + a.key for a in applied]
        args = [a.limit for a in applied] + list(amounts)
        for _ in range(3):
            answer = await self.store.call("budget", lambda: self._reserve(keys=keys, args=args))
            status = int(answer[0])
            if status == 1:
                return None
            if status == 0:
                return applied[int(answer[1]) - 1]
            await self._seed_shared(applied)
        raise StoreUnavailable("The budget counters could not be seeded.")

    async def _seed_shared(self, applied: Sequence[Applied]) -> None:
        """Rebuild missing counters from the usage table (SET NX: another broker may race)."""
        assert self.store is not None
        values = [await self.seed(a) for a in applied]
        client = self.store.client

        async def put() -> None:
            async with client.pipeline(transaction=False) as pipe:
                for a, value in zip(applied, values, strict=True):
                    ttl = int((a.end - a.start).total_seconds() * 1000) + 86_400_000
                    pipe.set(self._prefix + a.key, value, nx=True, px=ttl)
                await pipe.execute()

        await self.store.call("budget", put)

    async def add(self, applied: Sequence[Applied], deltas: Sequence[int]) -> None:
        """Add to counters (a call's use beyond the hold; the unused hold given back)."""
        if not any(deltas):
            return
        if self.store is not None:
            keys = [self._prefix + a.key for a in applied]
            try:
                await self.store.call("budget", lambda: self._add(keys=keys, args=list(deltas)))
                return
            except StoreUnavailable:
                self._fallback()
        self.local.add(applied, deltas)

    async def values(self, applied: Sequence[Applied]) -> list[int]:
        """What each counter holds now (used and held)."""
        if not applied:
            return []
        if self.store is not None:
            keys = [self._prefix + a.key for a in applied]
            try:
                raw = await self.store.call("budget", lambda: self.store.client.mget(keys))  # type: ignore[union-attr]
                if all(v is not None for v in raw):
                    return [int(v) for v in raw]
                await self._seed_shared(applied)
                raw = await self.store.call("budget", lambda: self.store.client.mget(keys))  # type: ignore[union-attr]
                return [int(v or 0) for v in raw]
            except StoreUnavailable:
                self._fallback()
        await self._seed_local(applied)
        return [self.local.counts.get(a.key, 0) for a in applied]

    # --- runs ----------------------------------------------------------------------------

    async def begin(
        self, applied: list[Applied], reserve_tokens: int, reserve_usd: float
    ) -> RunHold:
        """Reserve for one run; ``BudgetExceeded`` when a budget is spent (or 0)."""
        hold = RunHold(self, applied, reserve_tokens, round(reserve_usd * MICRO))
        closed = next((a for a in applied if a.limit == 0), None)
        if closed is not None:
            raise self.refusal(closed, 0, closed_=True)
        if not applied:
            return hold
        spent = await self.reserve(applied, hold.charged)
        if spent is not None:
            used = (await self.values([spent]))[0]
            raise self.refusal(spent, used)
        return hold

    def refusal(self, a: Applied, used: int, *, closed_: bool = False) -> BudgetExceeded:
        if self.metrics is not None:
            self.metrics.budget_refused(a.name)
        now = datetime.now(UTC).replace(tzinfo=None)
        wait = max(1, math.ceil((a.end - now).total_seconds()))
        if closed_:
            message = (
                f"Workflow {a.workflow!r} is closed: its budget {a.name} is 0 "
                "(BROKER_WORKFLOWS_FILE)."
            )
            return BudgetExceeded(message, a.report(used), None)
        whose = {"user": "Your", "user_all": "Your", "workflow": "This workflow's"}[a.scope]
        scope = {
            "user": f"for workflow {a.workflow!r}",
            "user_all": "across all workflows",
            "workflow": f"({a.workflow!r}, all users)",
        }[a.scope]
        period = "daily" if a.window == "day" else "monthly"
        limit = f"{a.shown(a.limit)} {'tokens' if a.unit == 'tokens' else 'USD'}"
        hours, minutes = divmod(wait // 60, 60)
        message = (
            f"{whose} {period} budget {scope} is spent ({limit}, {a.name}). "
            f"It resets at {a.end:%Y-%m-%d %H:%M} UTC (in {hours} h {minutes} min)."
        )
        return BudgetExceeded(message, a.report(used), wait)


@dataclass
class RunHold:
    """One run's reservation: what it holds on each counter, and what it used."""

    book: BudgetBook
    applied: list[Applied]
    reserve_tokens: int
    reserve_micro: int
    used_tokens: int = 0
    used_micro: int = 0
    calls: int = 0
    charged: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.charged = [self._hold(a) for a in self.applied]

    def _hold(self, a: Applied) -> int:
        return self.reserve_tokens if a.unit == "tokens" else self.reserve_micro

    def _own(self, a: Applied) -> int:
        return self.used_tokens if a.unit == "tokens" else self.used_micro

    async def before_call(self) -> None:
        """Refuse a model call (after the first) when the budget is spent meanwhile."""
        self.calls += 1
        if self.calls == 1 or not self.applied:
            return
        values = await self.book.values(self.applied)
        for a, value, charged in zip(self.applied, values, self.charged, strict=True):
            if value - charged + self._own(a) >= a.limit:
                raise self.book.refusal(a, value - charged + self._own(a))

    async def after_call(self, tokens: int, cost_usd: float) -> None:
        """Count one call's use; what goes beyond the hold is added to the counters now."""
        self.used_tokens += tokens
        self.used_micro += round(cost_usd * MICRO)
        deltas = []
        for i, a in enumerate(self.applied):
            target = max(self._own(a), self._hold(a))
            deltas.append(max(0, target - self.charged[i]))
            self.charged[i] += deltas[-1]
        if self.applied:
            await self.book.add(self.applied, deltas)

    async def settle(self) -> None:
        """Give back the unused part of the hold (the counters then hold exactly the use)."""
        deltas = [self._own(a) - c for a, c in zip(self.applied, self.charged, strict=True)]
        self.charged = [self._own(a) for a in self.applied]
        if self.applied:
            await self.book.add(self.applied, deltas)
