"""Which user each minted session belongs to, until it expires.

Cancel requests and ``previous_session_id`` are honoured only for the caller's own
sessions, so the broker must remember ownership; the API offers no way to ask.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .store import RedisStore


log = logging.getLogger("broker.sessions")


def log_unrecorded(session_id: str) -> None:
    """The one line for a minted session the shared store could not record."""
    log.warning(
        "session %s minted but not recorded (shared store unavailable): it cannot "
        "be cancelled through the broker and simply expires",
        session_id,
    )


class SessionRegistry(Protocol):
    async def add(self, session_id: str, user: str, expires_at: int) -> None:
        """Record a session; done when every worker and instance sees it (a secret is handed
        out only after this returns, so a cancel anywhere never misses a session)."""

    async def owner(self, session_id: str) -> str | None: ...
    async def sessions_of(self, user: str) -> list[str]: ...
    async def remove(self, session_id: str) -> None: ...


MAX_MEMORY_SESSIONS = 100_000
# Live sessions one user may hold; the next evicts that user's oldest. Above what a person
# uses (a session per tab, refreshed with previous_session_id) and below what a loop minting
# at the default BROKER_RATE_LIMIT holds (30 a minute for 10 minutes).
MAX_SESSIONS_PER_USER = 100


class MemoryRegistry:
    """Per-process registry; entries vanish at their session's expiry.

    Bounded twice (``on_evict`` counts each drop): a user past ``max_per_user`` live sessions
    loses their own oldest, so one user minting in a loop cannot push anyone else's out; and
    past ``max_sessions`` in all (only as many users as ``max_sessions / max_per_user`` reach
    it) the oldest entry goes, so memory stays bounded. A dropped session can no longer be
    cancelled early — or, for the broker's own secrets, be used — and simply ends.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        max_sessions: int = MAX_MEMORY_SESSIONS,
        max_per_user: int = MAX_SESSIONS_PER_USER,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._max = max_sessions
        self._max_per_user = max_per_user
        self._on_evict = on_evict
        self._owner: dict[str, tuple[str, int]] = {}  # insertion-ordered: oldest first
        self._by_user: dict[str, dict[str, None]] = {}  # per user, oldest first
        self._expiry: list[tuple[int, str]] = []

    async def add(self, session_id: str, user: str, expires_at: int) -> None:
        self._prune()
        if session_id not in self._owner:
            own = self._by_user.get(user, {})
            while len(own) >= self._max_per_user:
                self._evict(next(iter(own)))
            while len(self._owner) >= self._max:
                self._evict(next(iter(self._owner)))
        self._owner[session_id] = (user, expires_at)
        self._by_user.setdefault(user, {})[session_id] = None
        heapq.heappush(self._expiry, (expires_at, session_id))
        if len(self._expiry) > 2 * self._max:  # evicted entries linger in the heap: compact
            self._expiry = [(exp, sid) for sid, (_, exp) in self._owner.items()]
            heapq.heapify(self._expiry)

    async def owner(self, session_id: str) -> str | None:
        self._prune()
        entry = self._owner.get(session_id)
        return entry[0] if entry else None

    async def sessions_of(self, user: str) -> list[str]:
        self._prune()
        return sorted(self._by_user.get(user, ()))

    async def remove(self, session_id: str) -> None:
        if session_id in self._owner:
            self._remove_sync(session_id)

    def _prune(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, session_id = heapq.heappop(self._expiry)
            entry = self._owner.get(session_id)
            if entry is not None and entry[1] == expires_at:
                self._remove_sync(session_id)

    def _evict(self, session_id: str) -> None:
        self._remove_sync(session_id)
        if self._on_evict is not None:
            self._on_evict()

    def _remove_sync(self, session_id: str) -> None:
        user, _ = self._owner.pop(session_id)
        sessions = self._by_user[user]
        sessions.pop(session_id, None)
        if not sessions:
            del self._by_user[user]


# --- Redis: shared by every worker and instance ------------------------------------------

# ARGV: user, expires_at, session id, per-user cap, now, the session keys' prefix
_ADD = """
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  for _, sid in ipairs(oldest) do
    redis.call('DEL', ARGV[6] .. sid)
    redis.call('ZREM', KEYS[2], sid)
  end
end
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[2], last[2])
return over > 0 and over or 0
"""
_SESSIONS_OF = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class RedisRegistry:
    """The registry in Redis, so a cancel reaches sessions minted by any worker or instance.

    ``<prefix>sess:<id>`` holds the owner and expires with the session (``EXAT``);
    ``<prefix>user:<user>`` is a sorted set of that user's session ids scored by expiry,
    pruned on read and expiring with its last session. Every call goes through
    ``RedisStore.call``: bounded, and ``StoreUnavailable`` (503) when Redis is down. A user
    past ``max_per_user`` live sessions loses the one expiring soonest (their oldest, for
    one workflow), as in memory.
    """

    def __init__(
        self,
        store: RedisStore,
        clock: Callable[[], float] = time.time,
        *,
        max_per_user: int = MAX_SESSIONS_PER_USER,
    ) -> None:
        self._store = store
        self._clock = clock
        self._max_per_user = max_per_user
        self._add = store.client.register_script(_ADD)
        self._sessions_of = store.client.register_script(_SESSIONS_OF)

    async def add(self, session_id: str, user: str, expires_at: int) -> None:
        if expires_at <= self._clock():
            return
        keys = [self._store.key("sess", session_id), self._store.key("user", user)]
        args = [
            user,
            expires_at,
            session_id,
            self._max_per_user,
            int(self._clock()),
            self._store.key("sess", ""),
        ]
        await self._store.call("registry", lambda: self._add(keys=keys, args=args))

    async def owner(self, session_id: str) -> str | None:
        key = self._store.key("sess", session_id)
        value = await self._store.call("registry", lambda: self._store.client.get(key))
        return value.decode() if value is not None else None

    async def sessions_of(self, user: str) -> list[str]:
        key = self._store.key("user", user)
        now = int(self._clock())
        ids = await self._store.call("registry", lambda: self._sessions_of(keys=[key], args=[now]))
        return sorted(i.decode() for i in ids)

    async def remove(self, session_id: str) -> None:
        user = await self.owner(session_id)
        if user is None:
            return

        async def remove_both() -> None:
            async with self._store.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._store.key("sess", session_id))
                pipe.zrem(self._store.key("user", user), session_id)
                await pipe.execute()

        await self._store.call("registry", remove_both)
