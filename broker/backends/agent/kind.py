"""The agent kind's registration: ``agent = "module:attr"`` workflows the broker hosts; each
agent imported at configuration time, the thread store's schema checked before serving."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..kinds import BuildContext, KindSpec
from .workflow import AgentWorkflow

if TYPE_CHECKING:
    from ...settings import Settings
    from ...workflow import Workflow
    from ..base import Backend


def build(ctx: BuildContext) -> Backend:
    # imported here: chatkit, the Agents SDK and SQLAlchemy load only when needed
    from .backend import AgentBackend

    assert ctx.secrets is not None  # config requires BROKER_SESSION_SECRET
    return AgentBackend(ctx.settings, ctx.secrets, ctx.gate, ctx.limits)


def check(
    settings: Settings,
    workflows: Sequence[Workflow],
    cwd: Path | None,
    problems: list[str],
    warnings: list[str],
) -> None:
    """Import each agent workflow's module now, so a typo or a missing dependency is a
    configuration error naming the workflow, not a failure at the first chat."""
    agents = [wf for wf in workflows if wf.kind == "agent"]
    if not agents:
        return
    from .targets import TargetError, load_target  # the Agents SDK: only if needed

    for wf in agents:
        try:
            load_target(wf.agent, base_dir=cwd)
        except TargetError as exc:
            problems.append(f"workflow {wf.name!r}: {exc}")


def doctor(settings: Settings) -> Sequence[Any]:
    from . import doctor as checks  # imported when an agent workflow is configured

    return checks.checks(settings)


def preflight(settings: Settings) -> str | None:
    """The thread database must be reachable and not from a newer broker before serving."""
    from ...settings import MEMORY_URL

    if settings.agent is None or settings.agent.database_url == MEMORY_URL:
        return None
    import asyncio

    from .store import check_database

    return asyncio.run(check_database(settings.agent.database_url))


SPEC = KindSpec(
    "agent",
    build,
    workflow=AgentWorkflow,
    shorthand=lambda value: ":" in value,
    calls_openai=True,
    check=check,
    preflight=preflight,
    doctor=doctor,
)
