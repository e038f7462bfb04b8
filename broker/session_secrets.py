"""The broker's own session secrets (``cks_…``) for workflows it serves itself or proxies.

Hosted workflows get OpenAI's ``client_secret``; every other kind gets one of these: an
itsdangerous-signed payload naming the session, the user, the workflow and the expiry, plus
the token claims the workflow forwards. The browser holds it instead of the app's JWT, so a
leaked secret is good for one workflow, for minutes, and can be cancelled.

Keys come from ``BROKER_SESSION_SECRET`` (a comma list: the first signs, all verify, so a key
can be rotated without logging anyone out); mock mode signs with a per-process key, so its
secrets are worthless to any other process. A secret is accepted only while its session is
in the registry: cancel and expiry both remove it there.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from .auth import Identity
from .backends.base import Admission, CreatedSession
from .errors import StoreUnavailable, Unauthenticated
from .registry import SessionRegistry
from .workflow import Workflow

log = logging.getLogger("broker.sessions")

PREFIX = "cks_"
SESSION_PREFIX = "bsess_"  # session ids the broker issued (hosted ones are OpenAI's cksess_…)
DEFAULT_TTL = 600
MAX_SECRET_CHARS = 8192
_SALT = "chatkit-broker.session-secret.v1"


def is_session_secret(token: str) -> bool:
    return token.startswith(PREFIX)


def is_broker_session(session_id: str) -> bool:
    return session_id.startswith(SESSION_PREFIX)


class SessionSecrets:
    """Mints, verifies and cancels ``cks_`` secrets; a ``SessionMaker`` for custom backends."""

    def __init__(
        self,
        keys: Sequence[str | bytes],
        registry: SessionRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        # itsdangerous signs with the *last* key of the list and verifies with any
        self._serializer = URLSafeSerializer(list(reversed(keys)), salt=_SALT)
        self._registry = registry
        self._clock = clock

    async def create(self, admission: Admission) -> CreatedSession:
        workflow, identity = admission.workflow, admission.identity
        expires_at = int(self._clock()) + (workflow.expires_after or DEFAULT_TTL)
        session_id = SESSION_PREFIX + secrets.token_hex(12)
        # forwarded claims, and those that choose an agent workflow's budget tier
        tiers = workflow.budget.tiers.values() if workflow.budget is not None else ()
        keep = [*workflow.forward_claims, *(c for tier in tiers for c, _ in tier.require)]
        claims = {c: identity.claims[c] for c in keep if c in identity.claims}
        payload: dict[str, Any] = {
            "s": session_id,
            "u": identity.user,
            "w": workflow.name,
            "e": expires_at,
        }
        if claims:
            payload["c"] = claims
        return CreatedSession(PREFIX + self._serializer.dumps(payload), expires_at, session_id)

    async def cancel(self, session_id: str) -> bool:
        # nothing to call: a secret is honoured only while its session is in the registry,
        # and the session service removes it there
        return True

    async def admit(self, secret: str, workflow: Workflow) -> Admission:
        """The admission a secret grants for ``workflow``, or a 401 that says why not."""
        payload = self._payload(secret)
        if payload["w"] != workflow.name:
            raise Unauthenticated(
                f"This session secret was issued for another workflow, not {workflow.name!r}; "
                "mint one for this workflow at /api/chatkit/session."
            )
        if payload["e"] <= self._clock():
            raise Unauthenticated(
                "This session secret has expired; mint a new one at /api/chatkit/session."
            )
        if not await self._registered(payload["u"], payload["s"]):
            raise Unauthenticated(
                "This session was cancelled (or ended); mint a new one at /api/chatkit/session."
            )
        claims = payload.get("c") or {}
        return Admission(Identity(payload["u"], claims), workflow, payload["s"])

    async def holds_session(self, user: str, session_id: str | None) -> bool:
        """Whether ``user`` still holds a live session at this broker: ``session_id``, or
        another one (a renewal replaces a session: the front-end kit names the previous one,
        which is cancelled). False once all were cancelled (sign-out) or ended."""
        return await self._registered(user, session_id, or_any=True)

    async def _registered(self, user: str, session_id: str | None, *, or_any: bool = False) -> bool:
        """Whether the registry has ``session_id`` for ``user`` (``or_any``: or any session
        of theirs). True while the shared store cannot say: signatures and expiries hold;
        only an early cancel cannot be seen during the outage."""
        try:
            if session_id and await self._registry.owner(session_id) == user:
                return True
            return or_any and bool(await self._registry.sessions_of(user))
        except StoreUnavailable:
            log.warning("session %s accepted unchecked: shared store unavailable", session_id)
            return True

    def workflow_of(self, secret: str) -> str | None:
        """The workflow a valid secret was issued for (for endpoints that serve several)."""
        try:
            return self._payload(secret)["w"]
        except Unauthenticated:
            return None

    def _payload(self, secret: str) -> dict[str, Any]:
        refused = Unauthenticated(
            "This session secret is not valid here: it was altered, is truncated, or was signed "
            "with a key this broker no longer has (BROKER_SESSION_SECRET); mint a new one."
        )
        if not is_session_secret(secret) or len(secret) > MAX_SECRET_CHARS:
            raise refused
        try:
            payload = self._serializer.loads(secret[len(PREFIX) :])
        except (BadSignature, UnicodeError, ValueError):
            raise refused from None
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("s"), str)
            and isinstance(payload.get("u"), str)
            and isinstance(payload.get("w"), str)
            and isinstance(payload.get("e"), int)
            and isinstance(payload.get("c", {}), dict)
        ):
            raise refused
        return payload
