"""Check 4: every hosted workflow mints (as the throwaway user ``doctor-check``), cancelled at once.

Minted through the service's own ``HostedSessions`` and ``build_session_request``, so a pass
here is a pass in the service. Gateway and agent workflows are not OpenAI's to mint: they are
listed as checked by their backend (see ``checks.backend_checks``). A 404 is explained with what
checks 2 and 3 found (``KeyFacts``, ``KeyWorks``): the key's project, a stray shell key.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass

from ...auth import Identity
from ...backends.hosted import HostedSessions, UpstreamConfig, build_session_request
from ...backends.hosted.retired import RETIRED_ON, retirement_warning
from ...errors import (
    BrokerError,
    UpstreamAuthFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamWorkflowNotFound,
)
from ...settings import Settings
from ...workflow import Workflow
from ..context import DoctorContext
from ..report import Check, Status
from .key import KeyFacts
from .openai import KeyWorks

DOCTOR_USER = "doctor-check"
CANCEL_GRACE = 5.0  # a minted session is always given this long to be cancelled
MINTED_KINDS = frozenset({"hosted"})
_MIGRATE_FIX = (
    "export it from Agent Builder (Code → Agents SDK → Python) and run "
    "`chatkit-broker migrate EXPORT.py --name {name}`"
)


@dataclass(frozen=True)
class Minted:
    """What OpenAI answered for one workflow: the JSON report's per-workflow facts."""

    http_status: int | None = None
    request_id: str | None = None
    session_id: str | None = None
    expires_in_s: int | None = None
    cancelled: bool = False


async def check(ctx: DoctorContext, key: KeyFacts, works: KeyWorks) -> Check:
    check = Check("workflows", "Workflows")
    check.data = {"workflows": []}
    s = ctx.settings
    if s is None:
        return check.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    if s.mock:
        return check.set(
            Status.SKIP,
            "skipped: mock mode makes no OpenAI calls (run doctor without BROKER_MOCK)",
        )
    if any(wf.kind in MINTED_KINDS for wf in s.workflows) and not works.passed:
        return check.set(Status.SKIP, "skipped: check 3 (key and project) did not pass")

    rows: list[tuple[Workflow, Check, Minted]] = []
    for wf in s.workflows:
        item = Check(wf.name, f"{wf.name} ({wf.target})")
        if wf.kind not in MINTED_KINDS:
            a = "an" if wf.kind[:1] in "aeiou" else "a"
            item.set(Status.SKIP, f"skipped: {a} {wf.kind} workflow, checked by its backend")
            fact = Minted()
        elif ctx.budget.exhausted:
            item.set(Status.SKIP, ctx.budget.skipped())
            fact = Minted()
        else:
            fact = await _mint_and_cancel(ctx, s, wf, item)
        rows.append((wf, item, fact))
    check.items = [item for _, item, _ in rows]

    hosted = [item for wf, item, _ in rows if wf.kind in MINTED_KINDS]
    for wf, item, fact in rows:  # first, while the others' statuses say who minted
        if fact.http_status == 404:
            _explain_not_found(wf, item, hosted, key, works)
    for wf, item, fact in rows:
        if wf.kind in MINTED_KINDS:  # minting or not, it is on borrowed time: say so
            item.details.append("warning: " + retirement_warning(wf))
            if item.status is Status.PASS:  # it minted today: a visible warning, not a pass
                item.set(
                    Status.WARN,
                    f"{item.summary}, but hosted workflows stopped running on {RETIRED_ON}",
                    _MIGRATE_FIX.format(name=wf.name),
                )
        item.data = {
            "name": wf.name,
            "id": wf.id,
            "status": str(item.status),
            "summary": item.summary,
            "details": item.details,
            "fix": item.fix,
            **asdict(fact),
        }
        check.data["workflows"].append(item.data)
        check.details.append(f"{item.status.symbol} {item.title}: {item.summary}")
    return _verdict(check, hosted, [wf for wf in s.workflows if wf.kind not in MINTED_KINDS])


def _verdict(check: Check, hosted: list[Check], others: list[Workflow]) -> Check:
    """The check's own line from its hosted items; other kinds neither pass nor fail it."""
    elsewhere = ""
    if others:
        n = len(others)
        kinds = " and ".join(dict.fromkeys(wf.kind for wf in others))
        by = "its backend" if n == 1 else "their backends"
        elsewhere = f"; {n} {kinds} workflow{'s' * (n != 1)} checked by {by}"
    if not hosted:
        return check.set(Status.SKIP, f"no hosted workflow to mint{elsewhere}")
    n = len(hosted)
    failed = sum(i.status is Status.FAIL for i in hosted)
    skipped = sum(i.status is Status.SKIP for i in hosted)
    fixes = list(dict.fromkeys(i.fix for i in hosted if i.status is not Status.PASS and i.fix))
    fix = " | ".join(fixes) or None
    if failed or skipped:
        summary = f"{failed} of {n} failed" + (f", {skipped} skipped" if skipped else "")
        return check.set(Status.FAIL, summary + elsewhere, fix)
    if any(i.status is Status.WARN for i in hosted):
        return check.set(Status.WARN, f"{n} of {n} minted, with warnings{elsewhere}", fix)
    return check.set(Status.PASS, f"{n} of {n} minted and cancelled{elsewhere}")


def _hosted(ctx: DoctorContext, s: Settings, timeout: float) -> HostedSessions:
    return HostedSessions(
        UpstreamConfig.from_settings(s, timeout=max(0.1, min(s.upstream_timeout, timeout))),
        ctx.http,
    )


async def _mint_and_cancel(ctx: DoctorContext, s: Settings, wf: Workflow, item: Check) -> Minted:
    budget = ctx.budget
    body = build_session_request(wf, Identity(user=DOCTOR_USER, claims={}))
    limit, by_budget = budget.limit(s.upstream_timeout)
    try:
        # HostedSessions keeps its own deadline (retries included); this is a backstop
        async with asyncio.timeout(limit + 1.0):
            created = await _hosted(ctx, s, limit).create(
                body, workflow_label=f"{wf.name!r} ({wf.id})"
            )
    except (TimeoutError, UpstreamTimeout) as exc:
        if not by_budget and isinstance(exc, UpstreamTimeout):
            return _mint_failed(wf, item, exc)
        item.set(
            Status.FAIL,
            budget.ran_out(f"check 4 (workflow {wf.name})"),
            "raise --timeout, or check why OpenAI is slow (status.openai.com)",
        )
        item.details.append(
            f"if OpenAI created the session anyway it expires by itself (user {DOCTOR_USER})"
        )
        return Minted()
    except BrokerError as exc:
        return _mint_failed(wf, item, exc)

    item.secrets.add(created.client_secret)
    lasts = max(0, created.expires_at - int(ctx.now()))
    minted = Minted(session_id=created.session_id or None, expires_in_s=lasts)
    said = f"minted (a session lasts {lasts} s)"
    if not created.session_id:
        item.set(
            Status.WARN,
            f"{said}, but OpenAI gave no session id to cancel",
            "nothing to do: it expires by itself",
        )
        return minted
    try:
        grace = max(budget.remaining, CANCEL_GRACE)
        async with asyncio.timeout(grace):
            await _hosted(ctx, s, grace).cancel(created.session_id)
    except (BrokerError, TimeoutError) as exc:
        reason = exc.message if isinstance(exc, BrokerError) else "no answer in time"
        item.set(
            Status.WARN,
            f"{said}, but cancelling it failed ({reason})",
            f"nothing to do: session {created.session_id} expires by itself in {lasts} s",
        )
        return minted
    item.set(Status.PASS, f"{said} and cancelled")
    return Minted(session_id=minted.session_id, expires_in_s=lasts, cancelled=True)


def _mint_failed(wf: Workflow, item: Check, exc: BrokerError) -> Minted:
    up = exc.upstream
    if up is not None:
        said = f'OpenAI: "{up.message}" (HTTP {up.status}, request {up.request_id})'
    else:
        said = exc.message
    if isinstance(exc, UpstreamWorkflowNotFound):
        item.details.append(said)
        item.set(Status.FAIL, "OpenAI says this workflow was not found (HTTP 404)")  # see below
    elif isinstance(exc, UpstreamAuthFailed):
        item.set(
            Status.FAIL,
            f"the key was refused for ChatKit — {said}",
            "put an API key of the workflow's project that may use ChatKit (check its "
            "permissions) in CHATKIT_OPENAI_API_KEY",
        )
    elif isinstance(exc, UpstreamTimeout):
        item.set(
            Status.FAIL,
            exc.message.rstrip("."),
            "try again; if it persists raise BROKER_UPSTREAM_TIMEOUT",
        )
    elif isinstance(exc, UpstreamUnavailable):
        item.set(Status.FAIL, said, "OpenAI is unreachable or busy: try again shortly")
    elif up is not None and up.status == 400:
        item.set(
            Status.FAIL,
            f"OpenAI rejected the session request — {said}",
            f"correct the option the message names for workflow {wf.name!r} "
            "(BROKER_WORKFLOWS_FILE), or the workflow id",
        )
    else:
        item.set(Status.FAIL, said, "see the message; try again, and check OPENAI_BASE_URL")
    if up is None:
        return Minted()
    return Minted(http_status=up.status, request_id=up.request_id)


def _explain_not_found(
    wf: Workflow, item: Check, items: list[Check], key: KeyFacts, works: KeyWorks
) -> None:
    """Why a key may not see a workflow, from what checks 2 and 3 learned about the key."""
    project = (
        f"belongs to project {works.project}"
        if works.project
        else "belongs to a project the API did not name"
    )
    item.details.append(
        f"An API key only sees the workflows of its own project. The key in use "
        f"({key.label}) {project}; this workflow is not visible to it."
    )
    if key.stray_note:
        note = key.stray_note
        item.details.append(note[0].upper() + note[1:] + ".")
    others_work = any(i.status is Status.PASS for i in items)
    if others_work and not key.stray_note:
        item.details.append(
            "The same key minted the other workflow(s), so the key itself works: this "
            "workflow lives in another project, is not published, or its id is mistyped."
        )
    elif not key.stray_note:
        item.details.append(
            "Most likely cause since 2026-11-30: OpenAI shut Agent Builder down, so hosted "
            "wf_ workflows no longer run. Move it to a gateway workflow (server = "
            '"https://…", your own ChatKit server) or an agent workflow (agent = '
            '"package.module:attr", e.g. the Agents SDK code Agent Builder exported) — see '
            "'chatkit-broker migrate' (docs/migrating.md). Older causes: the key belongs to "
            "another project than the workflow (often a stray shell OPENAI_API_KEY), or the "
            "workflow is not published."
        )
    if key.stray_variable:
        fix = f"run 'unset {key.stray_variable}' so the .env key is used, and run doctor again"
    else:
        fix = (
            _MIGRATE_FIX.format(name=wf.name)
            + f" (hosted workflows stopped running on 2026-11-30); if {wf.id} should still "
            "run, check it is published in the key's project and the id is right"
        )
    item.fix = fix
