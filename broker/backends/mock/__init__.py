"""Mock mode's backend: every workflow served locally with canned replies, no OpenAI at all.

Mints the broker's own session secrets with a per-process key and answers the ChatKit
protocol at ``/chatkit/<name>`` (and ``/mock/chatkit``, its older alias) from an in-memory
ChatKit server, so the real ``<openai-chatkit>`` component renders with no key.
"""

from __future__ import annotations

from typing import ClassVar

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ...session_secrets import SessionSecrets
from ..base import Admission, Backend
from .engine import ENABLE_HINT, MockChatKitBackend, mock_backend_available

__all__ = ["ENABLE_HINT", "MockBackend", "MockChatKitBackend", "mock_backend_available"]

MOCK_USER = "mock-user"


class MockBackend(Backend):
    kind: ClassVar[str] = "mock"

    def __init__(self, secrets: SessionSecrets, engine: MockChatKitBackend) -> None:
        self.sessions = secrets
        self.engine = engine

    async def serve(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        body = await Request(scope, receive).body()
        response = await self.engine.handle(body, admission.identity.user)
        await response(scope, receive, send)
