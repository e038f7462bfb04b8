"""Agent Builder's hosted workflows stopped running on 2026-11-30, said wherever one is
configured (``check``, ``serve``'s start-up log, ``doctor``), with the way out: export the
workflow as Agents SDK code and run ``chatkit-broker migrate``. Hosted stays for whoever
still has a workflow that runs."""

from __future__ import annotations

from collections.abc import Iterable

from ...workflow import Workflow

__all__ = ["RETIRED_ON", "retirement_warning", "retirement_warnings"]

RETIRED_ON = "2026-11-30"


def retirement_warning(wf: Workflow) -> str:
    return (
        f"workflow {wf.name!r} ({wf.id}) is an Agent Builder hosted workflow: they stopped "
        f"running on {RETIRED_ON}. Export it (Code → Agents SDK → Python) and run "
        f"`chatkit-broker migrate EXPORT.py --name {wf.name}` to serve it as an agent workflow."
    )


def retirement_warnings(workflows: Iterable[Workflow], *, mock: bool = False) -> list[str]:
    """One warning per ``wf_`` workflow (none in mock mode, whose demo ids are not OpenAI's)."""
    return [] if mock else [retirement_warning(wf) for wf in workflows if wf.kind == "hosted"]
