"""Service keys: how a team's back end (which holds no user's sign-in token) calls the runs API.

A key is ``ckb_sk_`` and 32 random bytes, shown once by ``chatkit-broker keys create``; the
database keeps only its SHA-256 (a hash of a high-entropy secret needs no slow KDF), looked up
by hash and compared in constant time. A key names the workflows it may run and whether it
may act for users (name the user in the body, so runs land in that user's history).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequest, Unauthenticated, WorkflowNotAllowed

if TYPE_CHECKING:
    from .backends.agent.store import SQLStore

PREFIX = "ckb_sk_"
_KEY_RE = re.compile(r"ckb_sk_[A-Za-z0-9_-]{43}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_RATE_RE = re.compile(r"([1-9][0-9]{0,5})/(second|minute|hour)")
_PER_MINUTE = {"second": 60.0, "minute": 1.0, "hour": 1 / 60}
USER_MAX = 200
KEY_USER_PREFIX = "key:"  # whom a key without --act-for-users runs as: key:<name>

log = logging.getLogger("broker.service_keys")

_REFUSED = "The service key is not valid."


def is_service_key(token: str) -> bool:
    return token.startswith(PREFIX)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_rate(value: str) -> int:
    """``60/minute`` as requests per minute (at least 1)."""
    match = _RATE_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError("--rate must look like 60/minute (per second, minute or hour)")
    return max(1, round(int(match[1]) * _PER_MINUTE[match[2]]))


@dataclass(frozen=True)
class ServiceKey:
    """A key's record, never the key itself."""

    name: str
    workflows: tuple[str, ...]
    act_for_users: bool
    rate_per_minute: int | None
    created_at: float
    last_used_at: float | None
    revoked_at: float | None

    @property
    def caller(self) -> str:
        """Who a key without ``act_for_users`` runs as (its own history, its own limits)."""
        return f"{KEY_USER_PREFIX}{self.name}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workflows": list(self.workflows),
            "act_for_users": self.act_for_users,
            "rate_per_minute": self.rate_per_minute,
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "revoked": self.revoked_at is not None,
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _record(row: Any) -> ServiceKey:
    return ServiceKey(
        name=row.name,
        workflows=tuple(json.loads(row.workflows)),
        act_for_users=bool(row.act_for_users),
        rate_per_minute=row.rate_per_minute,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class ServiceKeys:
    """The keys in the thread database."""

    def __init__(self, store: SQLStore) -> None:
        # imported here: a process without a thread database (hosted, gateway) never loads
        # SQLAlchemy (12.8 MB of RSS)
        from sqlalchemy import select

        from .backends.agent.store import service_keys

        self.store = store
        self.table = service_keys
        self._select = select

    async def create(
        self,
        name: str,
        workflows: list[str],
        *,
        act_for_users: bool = False,
        rate_per_minute: int | None = None,
    ) -> str:
        """Store a new key's hash; the key, to be shown once. ``ValueError`` for a used name."""
        if not NAME_RE.fullmatch(name):
            raise ValueError("--name must be 1-100 letters, digits, '_', '.', '-'")
        key = new_key()

        async def work(conn: Any) -> None:
            taken = await conn.scalar(
                self._select(self.table.c.name).where(self.table.c.name == name)
            )
            if taken is not None:
                raise ValueError(f"a key named {name!r} exists (or did: names are not reused)")
            await conn.execute(
                self.table.insert().values(
                    name=name,
                    key_hash=key_hash(key),
                    workflows=json.dumps(workflows),
                    act_for_users=act_for_users,
                    rate_per_minute=rate_per_minute,
                    created_at=time.time(),
                )
            )

        await self.store.write(work)
        return key

    async def list(self) -> list[ServiceKey]:
        async with self.store.transaction() as conn:
            rows = (await conn.execute(self._select(self.table).order_by(self.table.c.name))).all()
        return [_record(row) for row in rows]

    async def revoke(self, name: str) -> bool:
        async def work(conn: Any) -> int:
            result = await conn.execute(
                self.table.update()
                .where(self.table.c.name == name, self.table.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return int(result.rowcount)

        return bool(await self.store.write(work))

    async def authenticate(self, key: str) -> ServiceKey:
        """The live key ``key`` is, else 401 with one message whatever was wrong."""
        if not _KEY_RE.fullmatch(key):
            raise Unauthenticated(_REFUSED)
        digest = key_hash(key)
        async with self.store.transaction() as conn:
            row = (
                await conn.execute(self._select(self.table).where(self.table.c.key_hash == digest))
            ).first()
        if (
            row is None
            or not hmac.compare_digest(row.key_hash, digest)
            or row.revoked_at is not None
        ):
            raise Unauthenticated(_REFUSED)
        now = time.time()
        if row.last_used_at is None or now - row.last_used_at > 1:

            async def touch(conn: Any) -> None:
                await conn.execute(
                    self.table.update()
                    .where(self.table.c.name == row.name)
                    .values(last_used_at=now)
                )

            await self.store.write(touch)
        return _record(row)


def acting_user(key: ServiceKey, workflow: str, user: Any) -> str:
    """Who a run by ``key`` on ``workflow`` is for: the named ``user`` (``act_for_users``
    keys only) or the key itself. 403 for a workflow the key does not name."""
    if workflow not in key.workflows:
        raise WorkflowNotAllowed(f"This service key may not use workflow {workflow[:80]!r}.")
    if user is None:
        return key.caller
    if not key.act_for_users:
        raise WorkflowNotAllowed(
            'This service key may not act for users: drop "user" (create the key with '
            "--act-for-users to name users)."
        )
    if not isinstance(user, str) or not user or len(user) > USER_MAX or "\x00" in user:
        raise InvalidRequest(f'"user" must be a user id string of 1-{USER_MAX} characters.')
    if user.startswith(KEY_USER_PREFIX):
        raise InvalidRequest(f'"user" must not start with "{KEY_USER_PREFIX}".')
    return user
