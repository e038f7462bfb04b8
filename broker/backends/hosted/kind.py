"""The hosted kind's registration: ``id = "wf_…"`` workflows, minted at OpenAI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kinds import BuildContext, KindSpec
from .workflow import HostedWorkflow

if TYPE_CHECKING:
    from ..base import Backend


def build(ctx: BuildContext) -> Backend:
    from . import HostedBackend

    client = ctx.overrides.get("hosted")
    if client is not None:
        return HostedBackend(client)
    return HostedBackend.from_settings(ctx.settings, ctx.http, observe=ctx.metrics.observe_upstream)


SPEC = KindSpec(
    "hosted",
    build,
    workflow=HostedWorkflow,
    shorthand=lambda value: value.startswith("wf_"),
    calls_openai=True,
    broker_sessions=False,
)
