"""Check 6: the origins of ``BROKER_ALLOWED_ORIGINS``, and which need OpenAI's domain allowlist.

Hosted ChatKit only loads on allowlisted hostnames, a failure no log on this side shows; so
the check names each public hostname to add. It reads the settings only (no network).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ...loopback import LOOPBACK_HOSTS
from ..context import DoctorContext
from ..report import Check, Status

DOMAIN_ALLOWLIST_URL = "https://platform.openai.com/settings/organization/security/domain-allowlist"


async def check(ctx: DoctorContext) -> Check:
    check = Check("domains", "Domains")
    check.data = {"origins": []}
    s = ctx.settings
    if s is None:
        return check.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    public = []
    wildcard = []
    for origin in s.allowed_origins:
        host = urlsplit(origin).hostname or ""
        local = host in LOOPBACK_HOSTS or host.endswith(".localhost")
        check.data["origins"].append({"origin": origin, "needs_allowlist": not local})
        if "*" in host:
            wildcard.append(origin)
        if local:
            check.details.append(f"{origin}: localhost, needs no allowlist entry")
        else:
            public.append(host)
            check.details.append(f"{origin}: {host} must be on OpenAI's domain allowlist")
    if not s.allowed_origins:
        check.details.append(
            "BROKER_ALLOWED_ORIGINS is empty: only pages served from the broker's own origin "
            "may call it (no CORS)"
        )
    check.details.append(
        "Hosted ChatKit only loads on hostnames listed at "
        f"{DOMAIN_ALLOWLIST_URL} (exact names, no wildcards; localhost needs none) — "
        "including the broker's own hostname if it serves the page."
    )
    if wildcard:
        return check.set(
            Status.WARN,
            f"{', '.join(wildcard)}: wildcards match no origin",
            "list every origin in BROKER_ALLOWED_ORIGINS (OpenAI's allowlist has no "
            "wildcards either)",
        )
    if public:
        names = list(dict.fromkeys(public))
        n = len(names)
        return check.set(
            Status.PASS,
            f"{n} public hostname{'s' * (n != 1)} to put on OpenAI's domain allowlist: "
            + ", ".join(names),
        )
    if s.allowed_origins:
        return check.set(Status.PASS, "localhost only: no allowlist entry needed")
    return check.set(
        Status.PASS, "same origin only: its public hostname must be on OpenAI's allowlist"
    )
