"""Mock mode's registration: the canned agent serves every workflow, whatever its kind, on the
agent engine (same store, streaming, stop and retry), with no OpenAI at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kinds import BuildContext, KindSpec

if TYPE_CHECKING:
    from ..base import Backend


def build(ctx: BuildContext) -> Backend:
    from .backend import MockAgentBackend

    if ctx.secrets is None:  # pragma: no cover - keys always exist in mock mode
        raise RuntimeError("mock mode needs session keys")
    return MockAgentBackend(
        ctx.settings, ctx.secrets, ctx.gate, ctx.limits, step=ctx.settings.mock_step
    )


def preflight(settings):  # type: ignore[no-untyped-def]
    from ..agent.kind import preflight as agent_preflight

    return agent_preflight(settings)


SPEC = KindSpec("mock", build, preflight=preflight)
