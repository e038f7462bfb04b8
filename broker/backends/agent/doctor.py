"""The agent backend's ``doctor`` check: each agent workflow checked for real.

Registered by the agent's ``KindSpec`` (``kind.py``) like the gateway's; it runs after the
six built-in checks, within the same time budget. Per workflow: it imports (the loader's
own ``load_target``); its guardrails instantiate with their packages and models
(``checks.guardrail_findings``); every OpenAI endpoint it uses answers the configured key
(``checks.probe_endpoints``); with ``--smoke``, one message goes through the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from ...doctor.report import Check, Status
from ...logs import failure
from ...settings import Settings, api_key_in_effect
from ...workflow import Workflow

if TYPE_CHECKING:  # types only: the doctor's runner imports this module, not the reverse
    from ...doctor.checks import CheckFn
    from ...doctor.context import DoctorContext
from .checks import endpoints_of, guardrail_findings, probe_endpoints, smoke
from .queue import waiting_jobs
from .targets import Target, TargetError, load_target

__all__ = ["check", "checks", "queue_check"]


def checks(settings: Settings) -> Sequence[CheckFn]:
    """What the agent backend adds to a doctor run: its workflows, and the background-run
    queue when background runs execute on it (a PostgreSQL thread database)."""
    return [check, queue_check] if _queue_url(settings) else [check]


def _queue_url(settings: Settings) -> str | None:
    """The thread database's URL when background runs use the queue (``queue.py``'s rule)."""
    url = settings.agent.database_url if settings.agent else ""
    auto = getattr(getattr(settings, "environment", None), "run_queue", "auto") == "auto"
    return url if auto and url.startswith("postgresql") else None


async def queue_check(ctx: DoctorContext) -> Check:
    """The background-run queue is reachable and its tables exist (procrastinate's, made by
    the first ``serve``): a deploy learns before its first run that none could be queued."""
    result = Check("queue", "Background-run queue")
    s = ctx.settings
    url = _queue_url(s) if s is not None else None
    if url is None:
        return result.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    if ctx.budget.exhausted:
        return result.set(Status.SKIP, ctx.budget.skipped())
    password = make_url(url).password
    if password:
        result.secrets.add(str(password))
    limit, _ = ctx.budget.limit(5.0)
    try:
        waiting = await waiting_jobs(url, timeout=max(0.5, limit))
    except Exception as exc:  # any failure to connect or read is "not reachable"
        return result.set(
            Status.FAIL,
            f"the thread database cannot be reached: {failure(exc)}",
            "start PostgreSQL or correct BROKER_DATABASE_URL",
        )
    if waiting is None:
        return result.set(
            Status.WARN,
            "procrastinate's tables are not there yet; the first chatkit-broker serve creates them",
            "start chatkit-broker serve once (or set BROKER_RUN_QUEUE=in-process)",
        )
    return result.set(Status.PASS, f"reachable, its tables exist; {waiting} runs waiting")


async def check(ctx: DoctorContext) -> Check:
    """Every agent workflow imports, can run its guardrails, reaches its endpoints (and, with
    ``--smoke``, answers one message)."""
    result = Check("agent", "Agent workflows")
    s = ctx.settings
    if s is None:
        return result.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    agents = [wf for wf in s.workflows if wf.kind == "agent" and wf.agent]
    result.data = {"workflows": [], "smoke": ctx.smoke}
    for wf in agents:
        item = Check(wf.name, f"{wf.name} ({wf.agent})")
        result.items.append(item)
        if ctx.budget.exhausted:
            item.set(Status.SKIP, ctx.budget.skipped())
        else:
            await _check_one(ctx, s, wf, item)
        item.data = {
            "name": wf.name,
            "agent": wf.agent,
            "status": str(item.status),
            "summary": item.summary,
            "details": item.details,
            "fix": item.fix,
        }
        result.data["workflows"].append(item.data)
        result.details.append(f"{item.status.symbol} {item.title}: {item.summary}")
    n = len(agents)
    failed = [i for i in result.items if i.status in (Status.FAIL, Status.SKIP)]
    if failed:
        first = failed[0]
        fix = f"{first.id}: {first.fix}" if first.fix else None
        return result.set(Status.FAIL, f"{len(failed)} of {n} did not pass", fix)
    said = "answer a test message" if ctx.smoke else "are ready (doctor --smoke sends a message)"
    return result.set(Status.PASS, f"{n} of {n} import, reach OpenAI and {said}")


async def _check_one(ctx: DoctorContext, s: Settings, wf: Workflow, item: Check) -> None:
    try:
        target: Target = load_target(wf.agent or "")
    except TargetError as exc:
        item.set(Status.FAIL, f"does not import: {exc.problem}", "fix the module, then run check")
        return
    findings = guardrail_findings(target)
    if findings:
        item.details += [f"{f.problem} (fix: {f.fix})" for f in findings[1:]]
        item.set(Status.FAIL, findings[0].problem, findings[0].fix)
        return
    key = api_key_in_effect(ctx.env)[1] or ""
    item.secrets.add(key)
    endpoints = endpoints_of(target)
    limit, _ = ctx.budget.limit(s.upstream_timeout)
    problems = await probe_endpoints(
        endpoints, api_key=key, base_url=s.openai_base_url, timeout=max(0.5, limit)
    )
    reached = ", ".join(f"/{e}" for e in endpoints)
    if problems:
        item.details += [f"{p.problem} (fix: {p.fix})" for p in problems[1:]]
        item.set(Status.FAIL, problems[0].problem, problems[0].fix)
        return
    if not ctx.smoke:
        item.set(Status.PASS, f"imports; guardrails ready; {reached} answer the key")
        return
    limit, _ = ctx.budget.limit(s.agent.run_timeout if s.agent else 120.0)
    try:
        said = await smoke(target, api_key=key, base_url=s.openai_base_url, timeout=limit)
    except Exception as exc:
        item.set(
            Status.FAIL,
            f"the test message failed: {exc}",
            "fix the cause named above, then run doctor --smoke again",
        )
        return
    item.set(Status.PASS, f"imports; {reached} answer; a test message got: {said}")
