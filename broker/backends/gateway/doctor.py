"""The gateway backend's ``doctor`` check: each gateway workflow probed with a signed request.

Registered by the gateway's ``KindSpec`` (``kind.py``); it runs after the six built-in checks,
within the same time budget. The probe itself (``checks.probe``) explains each answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...doctor.report import Check, Status
from ...settings import Settings

if TYPE_CHECKING:  # types only: the doctor's runner imports this module, not the reverse
    from ...doctor.checks import CheckFn
    from ...doctor.context import DoctorContext
from .backend import GatewayBackend, GatewaySettings, audience_of
from .checks import check_keys, probe

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
            item.set(_STATUS[finding.status], summary)
        item.data = {
            "name": wf.name,
            "server": wf.server,
            "audience": audience_of(wf),
            "assertion": wf.assertion,
            "status": str(item.status),
            "summary": item.summary,
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
    return result.set(Status.PASS, f"{n} of {n} answer and accept the broker's signed identity")
