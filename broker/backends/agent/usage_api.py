"""``GET /api/usage``: the caller's own usage of agent workflows and what each budget leaves.

Read from the usage table (what was recorded) and the budget counters (what is held now,
runs in progress included), so an app can show "12,000 of 200,000 tokens left today".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from ...budgets import window_bounds
from ...errors import NotFound
from .store import usage
from .usage import tier_of

if TYPE_CHECKING:
    from .backend import AgentBackend

__all__ = ["totals", "usage_endpoint"]

_SUMS = {
    "input_tokens": usage.c.input_tokens,
    "cached_tokens": usage.c.cached_tokens,
    "output_tokens": usage.c.output_tokens,
    "reasoning_tokens": usage.c.reasoning_tokens,
    "total_tokens": usage.c.total_tokens,
    "cost_usd": usage.c.cost_usd,
}


def _sums() -> list[Any]:
    columns = [sa.func.coalesce(sa.func.sum(c), 0).label(n) for n, c in _SUMS.items()]
    columns.append(sa.func.count().label("calls"))
    columns.append(
        sa.func.coalesce(sa.func.sum(sa.case((usage.c.known.is_(False), 1), else_=0)), 0).label(
            "unknown_calls"
        )
    )
    return columns


def as_totals(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {n: int(getattr(row, n)) for n in _SUMS if n != "cost_usd"}
    out["cost_usd"] = round(float(row.cost_usd), 6)
    out["calls"] = int(row.calls)
    out["unknown_calls"] = int(row.unknown_calls)
    return out


async def totals(backend: AgentBackend, user: str, workflow: str, now: datetime) -> dict[str, Any]:
    """The user's usage of one workflow today and this month (UTC)."""
    out = {}
    async with backend.store._connect() as conn:
        for label, window in (("today", "day"), ("this_month", "month")):
            _, start, end = window_bounds(window, now)
            row = (
                await conn.execute(
                    sa.select(*_sums()).where(
                        usage.c.user_id == user,
                        usage.c.workflow == workflow,
                        usage.c.at >= start,
                        usage.c.at < end,
                    )
                )
            ).one()
            out[label] = as_totals(row)
    return out


async def usage_endpoint(backend: AgentBackend, request: Request) -> Response:
    """``GET /api/usage[?workflow=<name>]``: the caller's usage per agent workflow they may use."""
    identity = await backend.gate.identify(request.headers.get("authorization"))
    request.state.user = identity.user
    await backend._ensure_started()
    wanted = request.query_params.get("workflow")
    workflows = [w for w in backend.gate.allowed(identity) if w.name in backend.metering]
    if wanted is not None:
        workflows = [w for w in workflows if w.name == wanted]
        if not workflows:
            raise NotFound(
                f"There is no agent workflow {wanted[:80]!r} you may use on this broker."
            )
    now = datetime.now(UTC)
    report = []
    for workflow in workflows:
        metering = backend.metering[workflow.name]
        tier = tier_of(workflow.budget, identity.claims)
        applied = metering.applied(identity.user, tier)
        values = await backend.book.values(applied)
        entry = {
            "workflow": workflow.name,
            "tier": tier or None,
            **await totals(backend, identity.user, workflow.name, now),
            "budgets": [a.report(v) for a, v in zip(applied, values, strict=True)],
        }
        report.append(entry)
    body = {"user": identity.user, "workflows": report}
    return Response(
        json.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"}
    )
