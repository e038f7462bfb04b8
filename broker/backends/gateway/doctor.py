"""The gateway backend's ``doctor`` check: each gateway workflow must prove isolation.

Registered by the gateway's ``KindSpec`` (``kind.py``); it runs after the six built-in checks,
within the same time budget. Per workflow: a signed ``threads.list`` for a brand-new user
(``checks.probe``: answers, accepts the assertion, shows that user no threads), then five
forged requests that must be refused (``checks.probe_refusals``). A backend that is down,
slow or failing is named as such, and is never ✔.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...assertion import ASSERTION_HEADER
from ...doctor.report import Check, Status
from ...settings import Settings
from ...workflow import Workflow

if TYPE_CHECKING:  # types only: the doctor's runner imports this module, not the reverse
    from ...doctor.checks import CheckFn
    from ...doctor.context import DoctorContext
from .backend import GatewayBackend, GatewaySettings, audience_of
from .checks import KIT_FIX, Finding, check_keys, probe, probe_refusals

_STATUS = {"ok": Status.PASS, "warn": Status.WARN, "fail": Status.FAIL}


def checks(settings: Settings) -> Sequence[CheckFn]:
    """What the gateway adds to a doctor run for these settings: one check."""
    return [check]


async def check(ctx: DoctorContext) -> Check:
    """Every gateway workflow answers a signed ``threads.list`` and accepts the assertion."""
    result = Check("gateway", "Gateway workflows")
    s = ctx.settings
    if s is None:
        return result.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    gateways = [wf for wf in s.workflows if wf.kind == "gateway"]
    backend = GatewayBackend(GatewaySettings.from_settings(s), pool=ctx.http)
    key_fix = None
    for finding in check_keys(backend.signer):
        if finding.status == "warn":
            result.details.append(finding.message)
            key_fix = (
                "set BROKER_ASSERTION_KEY (a P-256 PEM, or @path) so every instance signs alike"
            )
    result.data = {"jwks_url": backend.settings.jwks_url, "issuer": backend.settings.issuer}
    result.data["workflows"] = []
    for wf in gateways:
        item = Check(wf.name, f"{wf.name} ({wf.server})")
        result.items.append(item)
        if ctx.budget.exhausted:
            item.set(Status.SKIP, ctx.budget.skipped())
        else:
            limit, by_budget = ctx.budget.limit(wf.connect_timeout + wf.idle_timeout)
            finding = await probe(
                ctx.http(),
                workflow=wf.name,
                url=wf.server or "",
                audience=audience_of(wf),
                signer=backend.signer_for(wf),
                jwks_url=backend.settings.jwks_url,
                timeout=max(0.1, limit),
            )
            summary = finding.message
            if finding.status == "fail" and by_budget and "did not answer" in summary:
                summary = ctx.budget.ran_out(f"the probe of gateway workflow {wf.name}")
            if not finding.answered:
                item.set(_STATUS[finding.status], summary, finding.fix)
                item.details.append("the forged-request checks did not run (fix this first)")
            else:
                await _refusals(ctx, item, wf, backend, limit, finding)
        item.data = {
            "name": wf.name,
            "server": wf.server,
            "audience": audience_of(wf),
            "assertion": wf.assertion,
            "status": str(item.status),
            "summary": item.summary,
            "fix": item.fix,
            "details": list(item.details),
        }
        result.data["workflows"].append(item.data)
        result.details.append(f"{item.status.symbol} {item.title}: {item.summary}")
    n = len(gateways)
    failed = sum(i.status in (Status.FAIL, Status.SKIP) for i in result.items)
    if failed:
        return result.set(Status.FAIL, f"{failed} of {n} did not pass", key_fix)
    if key_fix:
        return result.set(
            Status.WARN, f"{n} of {n} answered; the signing key is ephemeral", key_fix
        )
    return result.set(
        Status.PASS,
        f"{n} of {n} accept the broker's signed identity, refuse forged requests and show a "
        "new user no threads",
    )


async def _refusals(
    ctx: DoctorContext,
    item: Check,
    wf: Workflow,
    backend: GatewayBackend,
    limit: float,
    answered: Finding,
) -> None:
    """The five forged requests; the item fails on the new-user check or the first forged
    request the backend accepted, and its details list every one."""
    if ctx.budget.exhausted:
        item.set(Status.SKIP, ctx.budget.skipped())
        return
    findings = await probe_refusals(
        ctx.http(),
        workflow=wf.name,
        url=wf.server or "",
        audience=audience_of(wf),
        signer=backend.signer_for(wf),
        timeout=max(0.1, min(limit, ctx.budget.limit(limit)[0])),
    )
    failed = [f for f in findings if f.status != "ok"]
    if answered.status != "ok":
        item.details.append(f"✖ {answered.message}; fix: {answered.fix}")
    for finding in findings:
        if finding.status == "ok":
            item.details.append("✔ " + finding.message)
        else:
            item.details.append(f"✖ {finding.message}; fix: {finding.fix}")
    if answered.status != "ok":
        more = f" (and {len(failed)} forged request(s) got through)" if failed else ""
        fixes = [answered.fix or ""] + ([KIT_FIX.format(header=ASSERTION_HEADER)] if failed else [])
        item.set(Status.FAIL, answered.message + more, "; and ".join(fixes))
    elif failed:
        more = (
            f" (and {len(failed) - 1} more forged request(s) got through)"
            if len(failed) > 1
            else ""
        )
        item.set(Status.FAIL, failed[0].message + more, KIT_FIX.format(header=ASSERTION_HEADER))
    else:
        item.set(
            Status.PASS,
            f"{wf.server} accepts the broker's signed identity, refuses {len(findings)} forged "
            "requests and shows a new user no threads",
        )
