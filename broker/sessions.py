"""Minting and cancelling sessions for admitted callers, whichever backend serves them.

It knows nothing of HTTP or of any backend's wire format: the gate has admitted the caller,
the workflow's backend mints, and this module keeps the registry of who owns which session,
so ``previous_session_id`` and cancel work the same for OpenAI's sessions and the broker's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .auth import Identity
from .backends import Admission, Backends
from .errors import NotFound, StoreUnavailable
from .registry import SessionRegistry, log_unrecorded
from .workflow import Workflow

log = logging.getLogger("broker.sessions")


@dataclass(frozen=True)
class MintedSession:
    client_secret: str
    expires_at: int
    session_id: str
    workflow: Workflow
    kind: str  # the backend that serves it: hosted, gateway, agent or mock
    backend: Mapping[str, Any] | None  # where ChatKit sends its requests; None for hosted


class SessionService:
    """Mints and cancels sessions for admitted callers, against each workflow's backend."""

    def __init__(self, backends: Backends, registry: SessionRegistry, *, domain_key: str) -> None:
        self._backends = backends
        self._registry = registry
        self._domain_key = domain_key

    async def mint(
        self, admission: Admission, previous_session_id: str | None = None
    ) -> MintedSession:
        backend = self._backends.for_workflow(admission.workflow)
        created = await backend.sessions.create(admission)
        identity = admission.identity
        if created.session_id:
            await self._record(created.session_id, identity.user, created.expires_at)
        if previous_session_id and previous_session_id != created.session_id:
            await self._cancel_quietly(identity, previous_session_id)
        return MintedSession(
            created.client_secret,
            created.expires_at,
            created.session_id,
            admission.workflow,
            backend.kind,
            backend.session_endpoint(
                backend.endpoint(admission.workflow, self._domain_key),
                admission,
                created.session_id,
            ),
        )

    async def _record(self, session_id: str, user: str, expires_at: int) -> None:
        """Record a session before its secret is handed out, whichever backend minted it: a
        cancel on any worker or instance must find every session whose secret is out (and the
        broker's own secrets are honoured only while their session is in the registry).

        (Issue 24: OpenAI's sessions used to be written after the answer, and a cancel sent to
        another instance right after the mint could miss them.)"""
        try:
            await self._registry.add(session_id, user, expires_at)
        except StoreUnavailable:
            # the secret is minted: hand it out; it only cannot be cancelled early
            log_unrecorded(session_id)

    async def cancel(
        self, identity: Identity, session_id: str | None, *, all_: bool = False
    ) -> list[str]:
        """Cancel the caller's own sessions; someone else's or an unknown one is a 404."""
        if all_:
            targets = await self._registry.sessions_of(identity.user)
        else:
            assert session_id is not None
            if await self._registry.owner(session_id) != identity.user:
                raise NotFound("No session with that id was issued to you (or it has expired).")
            targets = [session_id]
        cancelled = []
        for sid in targets:
            await self._cancel_one(sid)
            try:
                await self._registry.remove(sid)
            except StoreUnavailable:  # cancelled upstream; the entry expires with the session
                log.warning("session %s cancelled but still in the registry", sid)
            cancelled.append(sid)
        return cancelled

    async def _cancel_one(self, session_id: str) -> None:
        maker = self._backends.for_session(session_id)
        if maker is not None:
            await maker.cancel(session_id)

    async def _cancel_quietly(self, identity: Identity, session_id: str) -> None:
        """Cancel a refreshed session; a failure is logged, never fails the mint."""
        try:
            if await self._registry.owner(session_id) != identity.user:
                log.info("previous_session_id not cancelled: not issued to this user")
                return
            await self._cancel_one(session_id)
            await self._registry.remove(session_id)
        except Exception as exc:  # the new session is already minted; never lose it
            log.warning("could not cancel previous session %s: %s", session_id, type(exc).__name__)
