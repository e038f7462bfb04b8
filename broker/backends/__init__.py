"""The backends, side by side: hosted (OpenAI), gateway, agent and mock, behind one seam.

``Backends`` answers the two questions the rest of the broker asks: which backend serves a
workflow, and which one can cancel a session. Nothing outside this package asks which mode
is running; mock mode simply puts the mock backend in front of every workflow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from ..config import Workflow
from ..errors import WorkflowNotAllowed
from .base import Admission, Backend, CreatedSession, SessionMaker

__all__ = ["Admission", "Backend", "Backends", "CreatedSession", "SessionMaker"]


class Backends:
    """The backends of one broker. ``every`` (mock mode) serves all workflows, whatever kind."""

    def __init__(
        self,
        by_kind: Mapping[str, Backend],
        *,
        every: Backend | None = None,
        broker_sessions: SessionMaker | None = None,
    ) -> None:
        self._by_kind = dict(by_kind)
        self._every = every
        self._broker_sessions = broker_sessions

    def for_workflow(self, workflow: Workflow) -> Backend:
        if self._every is not None:
            return self._every
        backend = self._by_kind.get(workflow.kind)
        if backend is None:  # config refuses unserved kinds; this guards a hand-built broker
            raise WorkflowNotAllowed(
                f"Workflow {workflow.name!r} is a {workflow.kind} workflow, "
                "which this broker does not serve."
            )
        return backend

    def for_session(self, session_id: str) -> SessionMaker | None:
        """Who cancels ``session_id``: the broker's own sessions, or OpenAI's hosted ones."""
        from ..session_secrets import is_broker_session

        if is_broker_session(session_id) or "hosted" not in self._by_kind:
            return self._broker_sessions
        return self._by_kind["hosted"].sessions

    def __iter__(self) -> Iterator[Backend]:
        seen: list[Backend] = [self._every] if self._every is not None else []
        for backend in self._by_kind.values():
            if all(backend is not other for other in seen):
                seen.append(backend)
        return iter(seen)
