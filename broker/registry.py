"""Which user each minted session belongs to, until it expires.

Cancel requests and ``previous_session_id`` are honoured only for the caller's own
sessions, so the broker must remember ownership; the API offers no way to ask.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol


class SessionRegistry(Protocol):
    async def add(self, session_id: str, user: str, expires_at: int) -> None: ...
    async def owner(self, session_id: str) -> str | None: ...
    async def sessions_of(self, user: str) -> list[str]: ...
    async def remove(self, session_id: str) -> None: ...


class MemoryRegistry:
    """Per-process registry; entries vanish at their session's expiry."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._owner: dict[str, tuple[str, int]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._expiry: list[tuple[int, str]] = []

    async def add(self, session_id: str, user: str, expires_at: int) -> None:
        self._prune()
        self._owner[session_id] = (user, expires_at)
        self._by_user.setdefault(user, set()).add(session_id)
        heapq.heappush(self._expiry, (expires_at, session_id))

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

    def _remove_sync(self, session_id: str) -> None:
        user, _ = self._owner.pop(session_id)
        sessions = self._by_user[user]
        sessions.discard(session_id)
        if not sessions:
            del self._by_user[user]
