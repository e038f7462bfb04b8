"""What every backend shares: the admission the gate hands it, and the shape of a backend.

A backend is one way ChatKit is served (OpenAI's hosted workflows, a gateway to the user's
own ChatKit server, an agent the broker hosts, the mock). The gate decides *who* may use
*which* workflow; a backend only ever sees callers the gate has admitted, so sign-in,
allowlist and limits are written once for all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from ..auth import Identity
from ..workflow import Workflow

Check = Callable[[], Awaitable[str | None]]  # None when ready, else what is missing


@dataclass(frozen=True)
class Admission:
    """A caller the gate let through for one workflow.

    ``session_id`` is the broker session a ``cks_`` secret named, when one was used; with an
    app JWT it is None. ``identity.claims`` are then the token's claims (a session secret
    carries only the claims its workflow forwards).
    """

    identity: Identity
    workflow: Workflow
    session_id: str | None = None


@dataclass(frozen=True)
class CreatedSession:
    """A minted session: the secret the browser gets, its expiry and the session id."""

    client_secret: str
    expires_at: int
    session_id: str


class SessionMaker(Protocol):
    """Mints and cancels the sessions of one backend (OpenAI's, or the broker's own)."""

    async def create(self, admission: Admission) -> CreatedSession: ...
    async def cancel(self, session_id: str) -> bool: ...


class Backend:
    """One way ChatKit is served. Subclasses set ``kind`` and ``sessions`` and override the rest.

    A backend that serves the ChatKit protocol itself (every kind but hosted) answers
    ``POST /chatkit/<name>`` through ``serve``, a pure-ASGI call so streams and client
    disconnects pass straight through.
    """

    kind: ClassVar[str]
    sessions: SessionMaker
    #: whether ``POST /chatkit/<name>`` reaches this backend (hosted: ChatKit talks to OpenAI)
    serves_chatkit: ClassVar[bool] = True

    def routes(self) -> Sequence[BaseRoute]:
        """Routes of its own besides ``/chatkit/<name>`` (server-side runs, key sets …)."""
        return ()

    def readiness(self) -> Sequence[Check]:
        return ()

    def degraded(self) -> Sequence[Check]:
        """Checks that name a degraded mode ``/readyz`` reports without turning unready."""
        return ()

    async def startup(self) -> None:
        """Called once in the lifespan, before the first request."""

    async def shutdown(self) -> None:
        """Called once at shutdown, after the last request."""

    def endpoint(self, workflow: Workflow, domain_key: str) -> Mapping[str, Any] | None:
        """The ``backend`` field of a mint answer: where ChatKit should send its requests."""
        if not self.serves_chatkit:
            return None
        return {"url": f"/chatkit/{workflow.name}", "domain_key": domain_key}

    def session_endpoint(
        self, endpoint: Mapping[str, Any] | None, admission: Admission, session_id: str | None
    ) -> Mapping[str, Any] | None:
        """The mint answer's ``backend`` for one minted session: ``endpoint`` with anything
        bound to that user and session (the gateway's signed direct-upload URL)."""
        return endpoint

    async def serve(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one ChatKit request (``POST /chatkit/<name>``) for an admitted caller."""
        raise NotImplementedError
