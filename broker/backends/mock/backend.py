"""Mock mode's backend: the agent backend with the canned agent in front of every workflow.

Same store, streaming, stop, retry and ownership checks as agent workflows, threads in
memory unless ``BROKER_DATABASE_URL`` names a database, and no OpenAI client at all.
"""

from __future__ import annotations

from typing import ClassVar

from ...gate import Gate
from ...ratelimit import RateLimits
from ...settings import Settings
from ..agent.backend import AgentBackend
from ..base import SessionMaker
from .canned import mock_target

__all__ = ["MockAgentBackend"]


class MockAgentBackend(AgentBackend):
    """Every workflow, whatever its kind, runs the canned mock agent.

    ``step`` and ``slow_step`` pace the canned replies (``/slow``'s and the others').
    """

    kind: ClassVar[str] = "mock"

    def __init__(
        self,
        settings: Settings,
        sessions: SessionMaker,
        gate: Gate,
        limits: RateLimits,
        *,
        step: float = 0.02,
        slow_step: float = 0.5,
    ) -> None:
        super().__init__(
            settings,
            sessions,
            gate,
            limits,
            mock_agent=mock_target(step=step, slow_step=slow_step),
        )
