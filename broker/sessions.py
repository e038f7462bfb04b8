"""The session logic: which workflow a caller may use, what to ask for, and who owns what.

It knows nothing of HTTP or of the hosted API: it talks to any ``SessionBackend`` (the hosted
sessions API, the mock), so the same rules can later front a self-hosted ChatKit server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .auth import Identity
from .config import Settings, Workflow
from .errors import NotFound, StoreUnavailable, WorkflowNotAllowed
from .registry import SessionRegistry
from .upstream import CreatedSession

log = logging.getLogger("broker.sessions")


class SessionBackend(Protocol):
    async def create(self, body: Mapping[str, Any], *, workflow_label: str) -> CreatedSession: ...
    async def cancel(self, session_id: str) -> bool: ...


def unmet_requirements(workflow: Workflow, claims: Mapping[str, Any]) -> list[str]:
    """The names of the ``require`` claims this caller does not satisfy."""
    unmet = []
    for claim, want in workflow.require:
        have = claims.get(claim)
        options = want if isinstance(want, tuple) else (want,)
        if not any(_same(have, option) for option in options):
            unmet.append(claim)
    return unmet


def _same(have: Any, want: Any) -> bool:
    # True == 1 in Python; a claim of 1 must not satisfy `require = { admin = true }`
    return type(have) is type(want) and have == want


def build_session_request(workflow: Workflow, identity: Identity) -> dict[str, Any]:
    """The ``POST /chatkit/sessions`` body for this workflow; ``user`` comes from the token only."""
    wf: dict[str, Any] = {"id": workflow.id}
    if workflow.version is not None:
        wf["version"] = workflow.version
    state: dict[str, Any] = {}
    for name, value in workflow.state_variables:
        if isinstance(value, tuple):
            claim = identity.claims.get(value[1])
            if isinstance(claim, str | int | float | bool):
                state[name] = claim
        else:
            state[name] = value
    if state:
        wf["state_variables"] = state
    if workflow.tracing is not None:
        wf["tracing"] = {"enabled": workflow.tracing}
    body: dict[str, Any] = {"workflow": wf, "user": identity.user}
    if workflow.expires_after is not None:
        body["expires_after"] = {"anchor": "created_at", "seconds": workflow.expires_after}
    if workflow.max_requests_per_minute is not None:
        body["rate_limits"] = {"max_requests_per_1_minute": workflow.max_requests_per_minute}
    chatkit: dict[str, Any] = {}
    if workflow.automatic_thread_titling is not None:
        chatkit["automatic_thread_titling"] = {"enabled": workflow.automatic_thread_titling}
    if workflow.file_upload is not None:
        fu = workflow.file_upload
        chatkit["file_upload"] = {"enabled": fu.enabled} | _present(
            max_file_size=fu.max_file_size, max_files=fu.max_files
        )
    if workflow.history is not None:
        h = workflow.history
        chatkit["history"] = {"enabled": h.enabled} | _present(recent_threads=h.recent_threads)
    if chatkit:
        body["chatkit_configuration"] = chatkit
    return body


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class MintedSession:
    client_secret: str
    expires_at: int
    session_id: str
    workflow: Workflow


class SessionService:
    """Mints and cancels sessions for verified callers, against any ``SessionBackend``."""

    def __init__(
        self, settings: Settings, backend: SessionBackend, registry: SessionRegistry
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._registry = registry

    @property
    def backend(self) -> SessionBackend:
        return self._backend

    def allowed_workflows(self, identity: Identity) -> list[Workflow]:
        return [
            wf for wf in self._settings.workflows if not unmet_requirements(wf, identity.claims)
        ]

    def resolve(self, ref: str, identity: Identity) -> Workflow:
        """The allowlisted workflow ``ref`` names, if this caller may use it."""
        workflow = self._settings.workflow(ref)
        if workflow is None:
            raise WorkflowNotAllowed(
                f"Workflow {ref[:80]!r} is not on this broker's allowlist "
                "(BROKER_WORKFLOWS / BROKER_WORKFLOWS_FILE)."
            )
        unmet = unmet_requirements(workflow, identity.claims)
        if unmet:
            raise WorkflowNotAllowed(
                f"Your account may not use workflow {workflow.name!r}: it requires the "
                f"claim(s) {', '.join(unmet)} with other values."
            )
        return workflow

    async def mint(
        self, identity: Identity, workflow: Workflow, previous_session_id: str | None = None
    ) -> MintedSession:
        body = build_session_request(workflow, identity)
        created = await self._backend.create(
            body, workflow_label=f"{workflow.name!r} ({workflow.id})"
        )
        if created.session_id:
            try:
                await self._registry.add(created.session_id, identity.user, created.expires_at)
            except StoreUnavailable:
                # the secret is minted: hand it out; it only cannot be cancelled early
                log.warning(
                    "session %s minted but not recorded (shared store unavailable): it cannot "
                    "be cancelled through the broker and simply expires",
                    created.session_id,
                )
        if previous_session_id and previous_session_id != created.session_id:
            await self._cancel_quietly(identity, previous_session_id)
        return MintedSession(
            created.client_secret, created.expires_at, created.session_id, workflow
        )

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
            await self._backend.cancel(sid)
            try:
                await self._registry.remove(sid)
            except StoreUnavailable:  # cancelled upstream; the entry expires with the session
                log.warning("session %s cancelled but still in the registry", sid)
            cancelled.append(sid)
        return cancelled

    async def _cancel_quietly(self, identity: Identity, session_id: str) -> None:
        """Cancel a refreshed session; a failure is logged, never fails the mint."""
        try:
            if await self._registry.owner(session_id) != identity.user:
                log.info("previous_session_id not cancelled: not issued to this user")
                return
            await self._backend.cancel(session_id)
            await self._registry.remove(session_id)
        except Exception as exc:  # the new session is already minted; never lose it
            log.warning("could not cancel previous session %s: %s", session_id, type(exc).__name__)
