"""Rate limits with the ``limits`` package's async API: per user on mints, per client address.

* ``BROKER_RATE_LIMIT`` (default 30/minute) counts every authenticated mint of a user,
  whatever its outcome; ``create_session`` checks it right after authentication.
* ``BROKER_IP_RATE_LIMIT`` (default 600/minute) counts every request under ``/api/`` and
  ``/mock/`` per client address; ``ClientRateLimit`` checks it before routing, so before any
  JWT work (it also blunts a random-``kid`` spray). Health, metrics and the page are not limited.

Both are fixed windows: one atomic increment per check in memory or Redis, whatever the limit,
and an exact ``Retry-After`` (the window's remaining time). The price is that a client can
spend up to twice the limit across a window edge. Counts live in process memory, or in Redis
when ``BROKER_REDIS_URL`` is set so all workers and instances share them. When Redis fails,
checks fall back to per-process counts (``broker_rate_limit_fallbacks_total``) instead of
either refusing everyone or limiting no one.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, RateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings, parse_rate
from .errors import RateLimited, StoreUnavailable
from .middleware import send_error

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import RedisStore

LIMITED_PREFIXES = ("/api/", "/mock/", "/chatkit/")


@dataclass(frozen=True)
class Limit:
    name: str  # "user" or "address": the metric label and the key namespace
    rate: str  # as configured, for messages
    count: int
    window: int  # seconds
    item: RateLimitItem
    variable: str
    what: str = ""  # what is counted, for the 429 message

    @classmethod
    def parse(cls, name: str, rate: str, variable: str, what: str = "") -> Limit:
        count, window = parse_rate(rate)
        item = RateLimitItemPerSecond(count, window)
        return cls(name, rate, count, window, item, variable, what)


class RateLimits:
    """The two limits, in Redis when there is a store, per process otherwise or meanwhile."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics, store: RedisStore | None = None
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
        self._local = FixedWindowRateLimiter(MemoryStorage())
        self._shared: RateLimiter | None = None
        if store is not None:
            storage = RedisStorage(
                "async+redis://",
                implementation="redispy",
                key_prefix=store.key("limits"),
                connection_pool=store.pool,
            )
            self._shared = FixedWindowRateLimiter(storage)

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
        key = quote(key, safe="")
        if self._shared is not None and self._store is not None:
            shared = self._shared
            try:
                await self._store.call(
                    "ratelimit", lambda: shared.hit(limit.item, limit.name, key, cost=-1)
                )
                return
            except StoreUnavailable:
                pass  # counted per process meanwhile, most likely: refund there
        await self._local.hit(limit.item, limit.name, key, cost=-1)

    async def _hit(self, limit: Limit, identity: str) -> RateLimited | None:
        key = quote(identity, safe="")
        limiter: RateLimiter = self._local
        allowed: bool | None = None
        if self._shared is not None and self._store is not None:
            shared = self._shared
            try:
                allowed = await self._store.call(
                    "ratelimit", lambda: shared.hit(limit.item, limit.name, key)
                )
                limiter = shared
            except StoreUnavailable:
                self._metrics.rate_limit_fallback(limit.name)
        if allowed is None:
            allowed = await self._local.hit(limit.item, limit.name, key)
        if allowed:
            return None
        self._metrics.limited(limit.name)
        retry_after = await self._retry_after(limiter, limit, key)
        return RateLimited(_message(limit, retry_after), headers=_headers(limit, retry_after))

    async def _retry_after(self, limiter: RateLimiter, limit: Limit, key: str) -> int:
        try:
            if limiter is self._local or self._store is None:
                stats = await limiter.get_window_stats(limit.item, limit.name, key)
            else:
                stats = await self._store.call(
                    "ratelimit", lambda: limiter.get_window_stats(limit.item, limit.name, key)
                )
        except StoreUnavailable:
            return limit.window
        return min(limit.window, max(1, math.ceil(stats.reset_time - time.time())))


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


class ClientRateLimit:
    """Pure-ASGI per-address limit on ``/api/`` and ``/mock/``, before routing and auth."""

    def __init__(self, app: ASGIApp, *, limits: RateLimits, addresses: ClientAddress) -> None:
        self.app = app
        self.limits = limits
        self.addresses = addresses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(LIMITED_PREFIXES):
            error = await self.limits.hit_address(self.addresses(scope))
            if error is not None:
                await send_error(send, error, scope["state"]["request_id"])
                return
        await self.app(scope, receive, send)
