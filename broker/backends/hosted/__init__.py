"""Hosted workflows (``id = "wf_…"``): OpenAI serves ChatKit; the broker mints its sessions.

The browser talks to OpenAI directly with the ``client_secret`` minted here, so this backend
has no ChatKit endpoint of its own (``"backend": null`` in the mint answer).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from ...http import HttpPool
from ...settings import Settings
from ..base import Admission, Backend, CreatedSession
from .client import HostedSessions, UpstreamConfig
from .wire import build_session_request

__all__ = ["HostedBackend", "HostedSessions", "UpstreamConfig", "build_session_request"]


class _Client(Protocol):
    async def create(self, body: dict, *, workflow_label: str) -> CreatedSession: ...
    async def cancel(self, session_id: str) -> bool: ...


class _HostedMaker:
    """Turns an admission into the sessions API's body and lets the client mint it."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    async def create(self, admission: Admission) -> CreatedSession:
        workflow = admission.workflow
        body = build_session_request(workflow, admission.identity)
        return await self.client.create(body, workflow_label=f"{workflow.name!r} ({workflow.id})")

    async def cancel(self, session_id: str) -> bool:
        return await self.client.cancel(session_id)


class HostedBackend(Backend):
    kind: ClassVar[str] = "hosted"
    serves_chatkit: ClassVar[bool] = False

    def __init__(self, client: _Client) -> None:
        self.sessions = _HostedMaker(client)

    @classmethod
    def from_settings(cls, settings: Settings, http: HttpPool, *, observe=None) -> HostedBackend:
        return cls(HostedSessions(UpstreamConfig.from_settings(settings), http, observe=observe))
