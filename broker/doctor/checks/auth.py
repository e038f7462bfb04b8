"""Check 5: sign-in tokens: the HMAC secret, the PEM key or the JWKS, and ``--token`` verified.

The token is verified by the service's own ``Verifier`` and ``JWKSCache``, so "verified" here
means the service would accept it; the token itself is never printed, only its claims.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from ...auth import Verifier
from ...errors import BrokerError, Unauthenticated
from ...gate import unmet_requirements
from ...httpread import read_capped
from ...jwks import MAX_JWKS_BYTES, JWKSCache, signing_keys
from ...settings import Settings
from ..context import DoctorContext
from ..report import Check, Status

JWKS_TIMEOUT = 5.0
_JWKS_FIX = (
    "check BROKER_JWT_JWKS_URL (Supabase: https://<ref>.supabase.co/auth/v1/.well-known/"
    "jwks.json); a project still on the legacy JWT secret needs BROKER_JWT_SECRET instead"
)


async def check(ctx: DoctorContext) -> Check:
    check = Check("auth", "Sign-in tokens")
    check.data = {
        "methods": [],
        "algorithms": [],
        "secret_bytes": None,
        "jwks_url": None,
        "jwks_keys": None,
        "token": None,
    }
    s = ctx.settings
    if s is None:
        return check.set(Status.SKIP, "skipped: the configuration is invalid (check 1)")
    j = s.jwt
    check.data.update(
        algorithms=list(j.hmac_algorithms + j.asymmetric_algorithms), jwks_url=j.jwks_url
    )
    methods = check.data["methods"]
    status, fix = Status.PASS, None
    if j.secret:
        methods.append("secret")
        size = len(j.secret.encode())
        check.data["secret_bytes"] = size
        check.details.append(
            f"HMAC secret (BROKER_JWT_SECRET): {size} bytes (at least 32 required), "
            f"algorithms {', '.join(j.hmac_algorithms)}"
        )
    if j.public_key:
        methods.append("public_key")
        check.details.append(
            "PEM public key (BROKER_JWT_PUBLIC_KEY): algorithms "
            + ", ".join(j.asymmetric_algorithms)
        )
    if j.jwks_url:
        methods.append("jwks")
        jwks_ok, fix = await _list_jwks(ctx, check, j.jwks_url, j.asymmetric_algorithms)
        if not jwks_ok:
            status = Status.FAIL
    if j.configured:
        check.details.append(
            f"audience: {j.audience or '- (tokens with an aud claim are refused)'}; "
            f"issuer: {j.issuer or '-'}; user claim: {j.user_claim}; leeway: {j.leeway} s"
        )
    names = {"secret": "HMAC secret", "public_key": "PEM key", "jwks": "JWKS"}
    summary = ", ".join(names[m] for m in methods) or (
        "no key configured (mock mode reads tokens without verifying them)"
    )

    if ctx.token is None:
        if j.configured:
            check.details.append(
                "pass --token <jwt> (or --token - to read it from stdin) to verify a real "
                "sign-in token"
            )
    else:
        ok, token_fix = await _verify_token(ctx, check, s, ctx.token)
        if not ok:
            status, fix = Status.FAIL, fix or token_fix
        summary += "; --token " + ("verified" if ok else "refused")
    return check.set(status, summary, fix)


async def _list_jwks(
    ctx: DoctorContext, check: Check, url: str, algorithms: tuple[str, ...]
) -> tuple[bool, str | None]:
    """Fetch the key set and list each key, saying why the broker would ignore one."""
    budget = ctx.budget
    if budget.exhausted:
        check.details.append(f"JWKS {url}: {budget.skipped()}")
        return False, None
    limit, by_budget = budget.limit(JWKS_TIMEOUT)
    try:
        async with (
            asyncio.timeout(limit),
            ctx.http().get(url, allow_redirects=False) as resp,
        ):
            status = resp.status
            body = await read_capped(resp.content, MAX_JWKS_BYTES)
        if status != 200:
            raise ValueError(f"HTTP {status}")
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError("larger than 512 KiB")
        document = json.loads(body)
    except TimeoutError:
        if by_budget:
            check.details.append(f"JWKS {url}: " + budget.ran_out("check 5 (JWKS)"))
        else:
            check.details.append(f"JWKS {url}: no answer within {JWKS_TIMEOUT:g} s")
        return False, _JWKS_FIX
    except (aiohttp.ClientError, ValueError, UnicodeDecodeError) as exc:
        reason = str(exc) or type(exc).__name__
        check.details.append(f"JWKS {url}: could not be fetched ({reason})")
        return False, _JWKS_FIX

    usable = signing_keys(document, algorithms)
    listed = []
    raw = document.get("keys") if isinstance(document, dict) else None
    for jwk in raw if isinstance(raw, list) else []:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        kty = jwk.get("kty")
        kind = f"{kty} {jwk['crv']}" if jwk.get("crv") else str(kty)
        if isinstance(kid, str) and kid in usable:
            algs = list(usable[kid].algorithms)
            listed.append({"kid": kid, "kty": kty, "algorithms": algs, "usable": True})
            check.details.append(f"JWKS key {kid!r}: {kind}, {', '.join(algs)}")
        else:
            why = (
                "symmetric keys are never taken from a JWKS"
                if kty == "oct"
                else "no kid, not a signature key, or no algorithm allowed by BROKER_JWT_ALGORITHMS"
            )
            listed.append(
                {
                    "kid": kid if isinstance(kid, str) else None,
                    "kty": kty,
                    "algorithms": [],
                    "usable": False,
                }
            )
            check.details.append(f"JWKS key {kid!r}: {kind}, ignored ({why})")
    check.data["jwks_keys"] = listed
    if not usable:
        check.details.append(f"JWKS {url}: no usable signature key")
        return False, _JWKS_FIX
    return True, None


async def _verify_token(
    ctx: DoctorContext, check: Check, s: Settings, token: str
) -> tuple[bool, str | None]:
    """Verify ``--token`` as the service would, and say whom it names and what it may use."""
    result: dict[str, Any] = {
        "valid": False,
        "verified": s.jwt.configured,
        "user": None,
        "claims": None,
        "error": None,
        "workflows": [],
    }
    check.data["token"] = result
    j = s.jwt
    jwks = (
        JWKSCache(j.jwks_url, ctx.http, algorithms=j.asymmetric_algorithms, timeout=j.jwks_timeout)
        if j.jwks_url
        else None
    )
    verifier = Verifier(j, jwks)
    try:
        async with asyncio.timeout(max(ctx.budget.remaining, 0.001)):
            if j.configured:
                identity = await verifier.verify(token)
            else:
                identity = verifier.read_unverified(token)
    except TimeoutError:
        result["error"] = ctx.budget.ran_out("check 5 (--token)")
        check.details.append(f"--token: {result['error']}")
        return False, "raise --timeout"
    except BrokerError as exc:
        result["error"] = exc.message
        check.details.append(f"--token refused: {exc.message}")
        if isinstance(exc, Unauthenticated):
            return (
                False,
                "the message says what is wrong; the service would answer 401 to this token",
            )
        return False, "the JWKS could not be fetched: see above"
    claims = dict(identity.claims)
    allowed = [w.name for w in s.workflows if not unmet_requirements(w, claims)]
    result.update(valid=True, user=identity.user, claims=claims, workflows=allowed)
    verified = "verified" if j.configured else "read WITHOUT verification (mock mode, no key)"
    exp = claims.get("exp")
    left = f", expires in {_duration(exp - ctx.now())}" if isinstance(exp, int | float) else ""
    check.details.append(
        f"--token {verified}: ChatKit user {identity.user!r} (claim {j.user_claim}){left}"
    )
    check.details.append("claims: " + json.dumps(claims, sort_keys=True, default=str)[:2000])
    check.details.append(
        "may use workflows: " + (", ".join(allowed) or "none (their 'require' claims are unmet)")
    )
    return True, None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 0:
        return f"-{_duration(-seconds)} (expired)"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"
