"""The gateway kind's registration: ``server = "https://…"`` workflows, proxied with a signed
identity; its configuration rules (the assertion keys) and its doctor checks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..kinds import BuildContext, KindSpec
from .workflow import GatewayWorkflow

if TYPE_CHECKING:
    from ...settings import Settings
    from ...workflow import Workflow
    from ..base import Backend


def build(ctx: BuildContext) -> Backend:
    from .backend import GatewayBackend, GatewaySettings, message_limiter
    from .metrics import GatewayMetrics

    return GatewayBackend(
        GatewaySettings.from_settings(ctx.settings),
        ctx.secrets,
        metrics=GatewayMetrics(ctx.metrics.registry),
        limiter=message_limiter(ctx.limits),
        workflows=ctx.settings.workflows,
        gate=ctx.gate,
        limits=ctx.limits,
        file_keys=ctx.settings.session_secrets,
    )


def check(
    settings: Settings,
    workflows: Sequence[Workflow],
    cwd: Path | None,
    problems: list[str],
    warnings: list[str],
) -> None:
    """The assertion keys the gateway workflows need."""
    mine = [wf for wf in workflows if wf.kind == "gateway"]
    if not settings.assertion_key and any(wf.assertion == "es256" for wf in mine):
        warnings.append(
            "BROKER_ASSERTION_KEY is not set: gateway assertions are signed with a key made at "
            "start-up, so every instance (and every restart) has its own and backends must "
            "refetch the JWKS; set it (a P-256 PEM, or @path) for production"
        )
    for wf in mine:
        files = getattr(wf, "files", None)
        if wf.direct_upload_url and not (files is not None and files.enabled):
            warnings.append(
                f"workflow {wf.name}: direct_upload_url is set but files are off; add a "
                f"[workflows.{wf.name}.files] table to offer the attach button"
            )
    hs256 = [wf.name for wf in mine if wf.assertion == "hs256"]
    if hs256 and not settings.assertion_secret:
        problems.append(
            f"BROKER_ASSERTION_SECRET is required: workflow(s) {', '.join(hs256)} use "
            'assertion = "hs256" (a shared secret of 32+ bytes the backend verifies with)'
        )


def doctor(settings: Settings) -> Sequence[Any]:
    from . import doctor as checks

    return checks.checks(settings)


def describe(s: Settings) -> list[str]:
    """The assertion key in use and what each gateway workflow's assertion carries."""
    from ...assertion import AssertionSigner

    lines: list[str] = []
    gateways = [wf for wf in s.workflows if wf.kind == "gateway"]
    if gateways:
        signer = AssertionSigner.from_config(s.assertion_key, s.assertion_previous_keys)
        key = (
            f"key {signer.kid} (BROKER_ASSERTION_KEY)"
            if s.assertion_key
            else "a key made at start-up (set BROKER_ASSERTION_KEY)"
        )
        previous = len(signer.jwks()["keys"]) - 1
        lines.append(
            f"gateway assertions: ES256, {key}"
            + (f", {previous} previous key(s) still published" if previous else "")
        )
        base = s.public_url or "http://<this broker>"
        lines.append(
            f"  issuer: {s.public_url or 'chatkit-broker'}; keys at {base}/.well-known/jwks.json"
        )
        for wf in gateways:
            lines.append(
                f"  {wf.name}: audience {wf.audience or wf.name}, {wf.assertion}"
                + (f", forwards {', '.join(wf.forward_claims)}" if wf.forward_claims else "")
                + (
                    f", passes headers {', '.join(wf.forward_headers)}"
                    if wf.forward_headers
                    else ""
                )
                + (
                    f", files relayed ({'direct' if wf.direct_upload_url else 'two-phase'}, "
                    f"at most {wf.files.max_size} bytes)"
                    if wf.files is not None and wf.files.enabled
                    else ""
                )
                + (", dictation" if wf.dictation else "")
            )
    return lines


SPEC = KindSpec(
    "gateway",
    build,
    workflow=GatewayWorkflow,
    shorthand=lambda value: "://" in value,
    check=check,
    doctor=doctor,
    describe=describe,
)
