"""The shared Redis connection: short timeouts, and a breaker so a dead Redis costs nothing.

Rate limits and the session registry share one connection pool. Every call is bounded (connect
and read timeouts, plus a hard deadline around the whole call), and after a failure Redis is
left alone for a short cooldown: calls fail at once instead of each request paying a timeout.
What a failure *means* is decided by the callers (docs/operating/redis-failure-policy.md):
rate limits fall back to per-process counts, ownership checks answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("broker.redis")
T = TypeVar("T")

SOCKET_TIMEOUT = 0.5  # seconds, connect and each read
CALL_DEADLINE = 1.0  # seconds, a whole call including one reconnect
COOLDOWN = 2.0  # seconds Redis is not tried again after a failure
MAX_CONNECTIONS = 32  # per process


def display_url(url: str) -> str:
    """The URL without its password, for logs and readiness messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisStore:
    """One pooled Redis client with bounded calls and a failure breaker."""

    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        metrics: Metrics | None = None,
        socket_timeout: float = SOCKET_TIMEOUT,
        deadline: float = CALL_DEADLINE,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = display_url(url)
        self.prefix = prefix
        # bounded: a burst of requests queues for 32 connections (each call is ~0.1 ms)
        # instead of opening one connection per request, which costs ten times the CPU
        self.pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=deadline,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            # one immediate reconnect: a pooled connection may be stale after a Redis restart
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        self.client = Redis(connection_pool=self.pool)
        self._metrics = metrics
        self._deadline = deadline
        self._cooldown = cooldown
        self._clock = clock
        self._down_until = 0.0
        self._down = False
        self.reached = False

    @property
    def available(self) -> bool:
        """False during the cooldown after a failure: callers should not wait on Redis then."""
        return not self._down or self._clock() >= self._down_until

    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` against Redis within the deadline; ``StoreUnavailable`` on any failure."""
        if not self.available:
            raise StoreUnavailable(self._unavailable_message())
        try:
            async with asyncio.timeout(self._deadline):
                result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(op, exc)
            raise StoreUnavailable(self._unavailable_message()) from None
        if self._down:
            self._down = False
            log.warning(
                "Redis at %s is reachable again; shared limits and registry resumed", self.url
            )
        self.reached = True
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.redis_error(op)
        self._down_until = self._clock() + self._cooldown
        if not self._down:
            self._down = True
            detail = str(exc)[:200] or "no answer within the deadline"
            log.warning(
                "Redis at %s failed during %s (%s: %s): rate limits fall back to per-process "
                "counts and session cancels answer 503 until it is back",
                self.url,
                op,
                type(exc).__name__,
                detail,
            )

    def _unavailable_message(self) -> str:
        return (
            "The broker's shared store (Redis) is unreachable, so it cannot check which "
            "sessions are yours; try again shortly."
        )

    async def ping(self) -> bool:
        try:
            await self.call("ping", self.client.ping)
        except StoreUnavailable:
            return False
        return True

    async def start(self) -> None:
        """At startup: one bounded ping, so the log says at once whether Redis is there."""
        if await self.ping():
            log.info("Redis at %s reachable; rate limits and sessions are shared", self.url)

    async def readiness(self) -> str | None:
        """For ``/readyz``: a problem while Redis was never reached (SPEC §2), else None.

        Once reached, a later outage does not make the broker unready: it keeps serving in
        the degraded mode the docs describe, and taking every instance out of the load
        balancer would turn a Redis outage into a full one.
        """
        if self.reached or await self.ping():
            return None
        return f"Redis at {self.url} (BROKER_REDIS_URL) has never been reachable"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def close(self) -> None:
        await self.client.aclose()
        await self.pool.aclose()
