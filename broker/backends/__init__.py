"""The backends, side by side: hosted (OpenAI), gateway, agent and mock, behind one seam,
and the one registry of kinds (``KINDS``, ``MOCK``) that the loader, ``app``, doctor and the
CLI loop over. Adding a kind is its folder (a workflow model, a ``kind.py`` with its ``SPEC``)
and one line in ``KINDS``.

``Backends`` answers the two questions the rest of the broker asks: which backend serves a
workflow, and which one can cancel a session. Nothing outside this package asks which mode
is running; mock mode simply puts the mock backend in front of every workflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from ..errors import WorkflowNotAllowed
from ..workflow import Workflow
from .agent.kind import SPEC as AGENT
from .base import Admission, Backend, CreatedSession, SessionMaker
from .gateway.kind import SPEC as GATEWAY
from .hosted.kind import SPEC as HOSTED
from .kinds import BuildContext, KindSpec
from .mock.kind import SPEC as MOCK

__all__ = [
    "KINDS",
    "MOCK",
    "Admission",
    "Backend",
    "Backends",
    "BuildContext",
    "CreatedSession",
    "KindSpec",
    "SessionMaker",
    "kind_of",
    "specs_for",
]

#: the workflow kinds, in the order a ``BROKER_WORKFLOWS`` value's shape is tried
KINDS: Mapping[str, KindSpec] = {spec.kind: spec for spec in (HOSTED, GATEWAY, AGENT)}


def kind_of(value: str) -> str | None:
    """The kind a ``BROKER_WORKFLOWS`` value names by its shape: wf_…, http(s)://…, module:attr."""
    for spec in KINDS.values():
        if spec.shorthand is not None and spec.shorthand(value):
            return spec.kind
    return None


def specs_for(mock: bool, workflows: Iterable[Workflow]) -> list[KindSpec]:
    """The specs a broker runs: mock mode's alone, else each kind in use, in first-use order."""
    if mock:
        return [MOCK]
    return [KINDS[kind] for kind in dict.fromkeys(wf.kind for wf in workflows) if kind in KINDS]


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
