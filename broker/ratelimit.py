"""Rate limits: per user on mints, per client address, and the workflows' per-minute limits.

* ``BROKER_RATE_LIMIT`` (default 30/minute) counts every authenticated mint of a user,
  whatever its outcome; ``create_session`` checks it right after authentication.
* ``BROKER_IP_RATE_LIMIT`` (default 600/minute) counts every request under ``/api/``,
  ``/mock/`` and ``/chatkit/`` per client address; the edge layer checks it before routing,
  so before any JWT work (it also blunts a random-``kid`` spray).

All are fixed windows that start at a key's first hit: one atomic increment per check and an
exact ``Retry-After`` (the window's remaining time); a client can spend up to twice the limit
across a window edge. Counts live in a dict of this process, or in Redis when
``BROKER_REDIS_URL`` is set so all workers and instances share them: there one Lua script
increments, sets the expiry and answers the remaining time in a single round trip. When Redis
fails, checks fall back to per-process counts (``broker_rate_limit_fallbacks_total``) instead
of either refusing everyone or limiting no one.

Written here rather than with the ``limits`` package: its async API costs about seven times
the CPU per check in memory (a lock and a storage object per call), and a refused check takes
three Redis round trips there against one here (``python -m benchmarks.ratelimit`` measures
both side by side).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.types import Scope

from .errors import RateLimited, StoreUnavailable
from .settings import Settings, parse_rate

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import RedisStore

LIMITED_PREFIXES = ("/api/", "/mock/", "/chatkit/")

# INCR, an expiry on the first hit (or on a key that lost it), and the time left when over:
# one atomic round trip per check whatever the answer.
HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = -1
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
elseif count > tonumber(ARGV[2]) then
  ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
  end
end
return {count, ttl}
"""


# a refund only where a count is still running (never below zero, never a key without expiry)
REFUND_SCRIPT = """
if redis.call('GET', KEYS[1]) and tonumber(redis.call('GET', KEYS[1])) > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Limit:
    name: str  # "user" or "address": the metric label and the key namespace
    rate: str  # as configured, for messages
    count: int
    window: int  # seconds
    variable: str
    what: str = ""  # what is counted, for the 429 message

    @classmethod
    def parse(cls, name: str, rate: str, variable: str, what: str = "") -> Limit:
        count, window = parse_rate(rate)
        return cls(name, rate, count, window, variable, what)


class LocalCounters:
    """Fixed-window counts in a dict: a lookup and an increment per check.

    Expired windows are swept once the dict has grown by ``sweep_every`` keys since the last
    sweep, so memory follows the keys active within one window, not every key ever seen.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 10_000
    ) -> None:
        self._counts: dict[tuple[str, str], list[Any]] = {}  # key → [window end, count]
        self._clock = clock
        self._sweep_every = sweep_every
        self._sweep_at = sweep_every

    def hit(self, limit: Limit, key: str) -> float | None:
        """Count one; ``None`` when within the limit, else the seconds until the window ends."""
        now = self._clock()
        slot = (limit.name, key)
        entry = self._counts.get(slot)
        if entry is None or entry[0] <= now:
            if entry is None and len(self._counts) >= self._sweep_at:
                self._sweep(now)
            self._counts[slot] = [now + limit.window, 1]
            return None  # parse_rate guarantees a count of at least 1
        entry[1] += 1
        if entry[1] <= limit.count:
            return None
        return entry[0] - now

    def refund(self, limit: Limit, key: str) -> None:
        """Give one back to a window still running (nothing to do once it has ended)."""
        entry = self._counts.get((limit.name, key))
        if entry is not None and entry[0] > self._clock() and entry[1] > 0:
            entry[1] -= 1

    def forget(self, limit: Limit, key: str) -> None:
        """Drop a key's count, so its next hit starts a new window."""
        self._counts.pop((limit.name, key), None)

    def _sweep(self, now: float) -> None:
        self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
        self._sweep_at = len(self._counts) + self._sweep_every

    def __len__(self) -> int:
        return len(self._counts)


class RateLimits:
    """The limits, in Redis when there is a store, per process otherwise or meanwhile."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics,
        store: RedisStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user = Limit.parse(
            "user", settings.rate_limit, "BROKER_RATE_LIMIT", "session requests for this user"
        )
        self.address = Limit.parse(
            "address", settings.ip_rate_limit, "BROKER_IP_RATE_LIMIT", "requests from your address"
        )
        self._per_minute: dict[tuple[str, int, str], Limit] = {}
        self._metrics = metrics
        self._store = store
        self.local = LocalCounters(clock)
        self._script: Any = None
        if store is not None:
            self._prefix = store.key("limits") + ":"
            self._script = store.client.register_script(HIT_SCRIPT)
            self._refund = store.client.register_script(REFUND_SCRIPT)

    async def hit_user(self, user: str) -> None:
        """Count one mint for ``user``; raise ``RateLimited`` (429) when over the limit."""
        error = await self._hit(self.user, user)
        if error is not None:
            raise error

    async def hit_address(self, address: str) -> RateLimited | None:
        """Count one request from ``address``; the 429 to send when over the limit."""
        return await self._hit(self.address, address)

    async def hit_per_minute(self, name: str, key: str, count: int, *, what: str) -> None:
        """Count one of a workflow's own per-minute limits (``name`` is its namespace and
        metric label); raise ``RateLimited`` (429) when over it."""
        limit = self._per_minute.get((name, count, what))
        if limit is None:
            limit = Limit.parse(name, f"{count}/minute", "the workflow's configuration", what)
            self._per_minute[(name, count, what)] = limit
        error = await self._hit(limit, key)
        if error is not None:
            raise error

    async def refund_per_minute(self, name: str, key: str, count: int, *, what: str) -> None:
        """Give back one hit of ``hit_per_minute`` that bought nothing (a message the backend
        refused); where it was counted (Redis, else this process). Never raises: a refund
        that cannot be made leaves the count as it was, the stricter side. (A refund just
        after the window turned gives the new window one extra: at most one per refusal.)"""
        limit = self._per_minute.get((name, count, what))
        if limit is None:
            return
        if self._script is not None:
            assert self._store is not None
            shared_key = self._shared_key(limit.name, key)
            try:
                await self._store.call("ratelimit", lambda: self._refund(keys=[shared_key]))
                return
            except StoreUnavailable:
                pass  # counted per process meanwhile, most likely: refund there
        self.local.refund(limit, key)

    async def first_use(self, name: str, key: str, seconds: int) -> str | None:
        """Claim ``key`` for ``seconds`` (one-time URLs): where the claim is kept when this
        is its first use since then — ``"shared"`` (Redis, so every instance agrees) or
        ``"local"`` (this process: no store, or Redis down) — else None (already claimed)."""
        limit = Limit(name, f"1/{seconds}s", 1, seconds, "")
        if self._script is not None:
            try:
                return "shared" if await self._shared_hit(limit, key) is None else None
            except StoreUnavailable:
                self._metrics.rate_limit_fallback(limit.name)
        return "local" if self.local.hit(limit, key) is None else None

    async def forget_use(self, name: str, key: str, where: str) -> None:
        """Give back a claim of ``first_use`` whose use failed, where it was kept, so the
        next use is a first use again. Only its holder calls this (no one else can hold it
        meanwhile). Never raises: a shared claim Redis cannot drop now stays spent."""
        store = self._store
        if where == "shared" and store is not None:
            shared_key = self._shared_key(name, key)
            with contextlib.suppress(StoreUnavailable):
                await store.call("ratelimit", lambda: store.client.delete(shared_key))
        else:
            self.local.forget(Limit(name, "", 1, 1, ""), key)

    def _shared_key(self, name: str, identity: str) -> str:
        return f"{self._prefix}{name}:{quote(identity, safe='')}"

    async def _hit(self, limit: Limit, identity: str) -> RateLimited | None:
        if self._script is not None:
            try:
                wait = await self._shared_hit(limit, identity)
            except StoreUnavailable:
                self._metrics.rate_limit_fallback(limit.name)
                wait = self.local.hit(limit, identity)
        else:
            wait = self.local.hit(limit, identity)
        if wait is None:
            return None
        self._metrics.limited(limit.name)
        retry_after = min(limit.window, max(1, math.ceil(wait)))
        return RateLimited(_message(limit, retry_after), headers=_headers(limit, retry_after))

    async def _shared_hit(self, limit: Limit, identity: str) -> float | None:
        assert self._store is not None
        key = self._shared_key(limit.name, identity)
        script = self._script
        count, ttl_ms = await self._store.call(
            "ratelimit", lambda: script(keys=[key], args=[limit.window * 1000, limit.count])
        )
        if int(count) <= limit.count:
            return None
        return max(int(ttl_ms), 0) / 1000


def _message(limit: Limit, retry_after: int) -> str:
    return (
        f"Too many {limit.what}: the limit is {limit.rate} ({limit.variable}). "
        f"Try again in {retry_after} s."
    )


def _headers(limit: Limit, retry_after: int) -> dict[str, str]:
    # RateLimit-* as in draft-ietf-httpapi-ratelimit-headers (the widely deployed -0x form)
    return {
        "Retry-After": str(retry_after),
        "RateLimit-Limit": str(limit.count),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(retry_after),
        "RateLimit-Policy": f"{limit.count};w={limit.window}",
    }


# --- who is the client ------------------------------------------------------------------


class ClientAddress:
    """The client's address for the per-address limit.

    The socket peer, unless the peer is one of ``BROKER_TRUSTED_PROXIES``: then the
    right-most ``X-Forwarded-For`` entry that is not a trusted proxy (entries further left
    were written by the client and prove nothing). Never the header in mock mode. IPv6
    clients are counted per /64, the block one subscriber usually holds.
    """

    def __init__(self, trusted: Iterable[str], *, mock: bool = False) -> None:
        networks = () if mock else tuple(ipaddress.ip_network(t, strict=False) for t in trusted)
        self._networks = networks
        self._trusted = functools.lru_cache(maxsize=4096)(self._is_trusted)

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer = client[0] if client else ""
        if self._networks and self._trusted(peer):
            values = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
            hops = [
                _host_of(h.strip())
                for h in b",".join(values).decode("latin-1").split(",")
                if h.strip()
            ]
            for hop in reversed(hops):
                if not self._trusted(hop):
                    return bucket(hop)
            if hops:  # every hop a trusted proxy: the client is one of them
                return bucket(hops[0])
        return bucket(peer)

    def _is_trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)


def _host_of(hop: str) -> str:
    """``1.2.3.4:5678`` → ``1.2.3.4``; ``[::1]:443`` → ``::1``; anything else as it is."""
    if hop.startswith("["):
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


@functools.lru_cache(maxsize=4096)
def bucket(host: str) -> str:
    """The rate-limit identity of an address: IPv4 as is, IPv6 by its /64."""
    host = host[:64]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
