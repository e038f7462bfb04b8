"""Check 1: the configuration is valid, by the same ``load_settings`` the service runs."""

from __future__ import annotations

from ..context import DoctorContext
from ..report import Check, Status


async def check(ctx: DoctorContext) -> Check:
    """Report what ``DoctorContext.load`` found: the problems, or the mode and warnings."""
    check = Check("config", "Configuration")
    s = ctx.settings
    if s is None:
        problems = list(ctx.problems)
        check.details = list(problems)
        check.data = {"valid": False, "mode": None, "problems": problems, "warnings": []}
        n = len(problems)
        return check.set(
            Status.FAIL,
            f"invalid ({n} problem{'s' * (n != 1)}); the service would refuse to start",
            "fix each variable listed (environment or .env; every one is described in "
            ".env.example), then run 'chatkit-broker doctor' again",
        )
    mode = "mock" if s.mock else "live"
    check.data = {"valid": True, "mode": mode, "problems": [], "warnings": list(s.warnings)}
    n = len(s.workflows)
    summary = f"valid ({mode} mode, {n} workflow{'s' * (n != 1)}, OpenAI API {s.openai_base_url})"
    if s.warnings:
        check.details = list(s.warnings)
        return check.set(Status.WARN, summary, "see the warning above; the service runs as it is")
    return check.set(Status.PASS, summary)
