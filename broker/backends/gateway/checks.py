"""What ``doctor`` can tell about a gateway workflow before a user meets the problem.

Reachability is not safety: a server that ignores the assertion answers the broker's probe
just as well as one that checks it. So the doctor proves isolation. One signed
``threads.list`` for a brand-new probe user shows whether the server answers, speaks ChatKit
JSON and accepts the broker's assertion — and whether it shows that new user someone
else's threads. Then five forged requests (no assertion, another key, another audience,
expired, a body the assertion was not signed for) must each be refused; each one accepted is
a ✖ naming what got through and the fix.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from ...assertion import ASSERTION_HEADER, AssertionSigner, HMACAssertionSigner
from ...httpread import read_capped

PROBE_USER = "chatkit-broker-doctor"
PROBE_BODY = json.dumps({"type": "threads.list", "params": {"limit": 1}}).encode()
OTHER_BODY = json.dumps({"type": "threads.list", "params": {"limit": 2}}).encode()
KIT_FIX = (
    "verify the {header} header on every request — broker.backend_kit.AssertionMiddleware("
    "jwks_url=..., audience=..., issuer=...) checks the signature, audience, expiry, the body "
    "hash and replays (docs/gateway.md, the backend kit)"
)


def probe_user() -> str:
    """A user no backend has seen: whatever threads it is shown belong to someone else."""
    return f"{PROBE_USER}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: ``ok``, ``warn`` or ``fail``, and what to do."""

    status: str
    message: str
    fix: str | None = None  # the specific change that would make it pass
    # the server answered properly, so the forged-request checks can still run
    answered: bool = False


def check_keys(signer: AssertionSigner | HMACAssertionSigner) -> list[Finding]:
    """The signing key itself: an ephemeral key works for one process only."""
    if signer.ephemeral:
        return [
            Finding(
                "warn",
                "BROKER_ASSERTION_KEY is not set: the broker signs assertions with a key made at "
                "start-up, so each instance (and each restart) has its own, and backends must "
                "refetch the JWKS. Generate one with `openssl genpkey -algorithm EC "
                "-pkeyopt ec_paramgen_curve:P-256` and set BROKER_ASSERTION_KEY=@/path/key.pem.",
            )
        ]
    return [Finding("ok", f"assertions are signed with {signer.algorithm} key {signer.kid}")]


async def probe(
    session: aiohttp.ClientSession,
    *,
    workflow: str,
    url: str,
    audience: str,
    signer: AssertionSigner | HMACAssertionSigner,
    jwks_url: str,
    timeout: float = 5.0,
) -> Finding:
    """POST one signed ``threads.list`` for a brand-new user to the workflow's server and
    explain the answer (threads shown to that user are someone else's: a failure)."""
    assertion = signer.sign(probe_user(), audience=audience, workflow=workflow, body=PROBE_BODY)
    headers = {
        ASSERTION_HEADER: assertion,
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
    }
    expect = (
        f"It must verify the {ASSERTION_HEADER} header against {jwks_url} "
        f"with audience {audience!r} and issuer {signer.issuer!r}."
        if signer.algorithm == "ES256"
        else f"It must verify the {ASSERTION_HEADER} header with the shared secret "
        f"(HS256), audience {audience!r} and issuer {signer.issuer!r}."
    )
    try:
        async with session.post(
            url,
            data=PROBE_BODY,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            body = await read_capped(response.content, 64 * 1024)
            status, content_type = response.status, response.content_type
            location = response.headers.get("Location", "")
    except aiohttp.ClientConnectorError as exc:
        return Finding("fail", f"{url} cannot be reached ({exc.os_error or exc}).")
    except TimeoutError:
        return Finding("fail", f"{url} did not answer a threads.list within {timeout:g} s.")
    except aiohttp.ClientError as exc:
        return Finding("fail", f"{url} did not answer valid HTTP ({type(exc).__name__}).")

    said = " ".join(body[:200].decode("utf-8", "replace").split())
    if status in (401, 403):
        hint = expect
        if signer.ephemeral:
            hint += (
                " Note: without BROKER_ASSERTION_KEY this check signs with its own throw-away "
                "key, which the running broker does not publish; set BROKER_ASSERTION_KEY."
            )
        return Finding(
            "fail", f"{url} refused the broker's signed identity (HTTP {status}: {said}). {hint}"
        )
    if 300 <= status < 400:
        return Finding(
            "fail",
            f"{url} redirects (HTTP {status} to {location[:200]}); the gateway does not follow "
            "redirects: set the workflow's server to the final URL.",
        )
    if status in (404, 405):
        return Finding(
            "fail",
            f"{url} answered HTTP {status}: is this the ChatKit endpoint (often …/chatkit)?",
        )
    if status >= 400:
        return Finding("fail", f"{url} answered HTTP {status} to a signed threads.list: {said}")
    if content_type != "application/json":
        return Finding(
            "fail", f"{url} answered {content_type or 'no content type'}, not ChatKit JSON."
        )
    try:
        page = json.loads(body)
    except ValueError:
        return Finding("fail", f"{url} answered invalid JSON to a threads.list.")
    shown = page.get("data") if isinstance(page, dict) else None
    if isinstance(shown, list) and shown:
        return Finding(
            "fail",
            f"{url}: this backend shows other users' threads to a new user (a brand-new probe "
            f"user's threads.list listed {len(shown)}{'+' if page.get('has_more') else ''})",
            "scope the store by the verified user: wrap it in broker.backend_kit."
            "UserScopedStore (docs/gateway.md, the backend kit)",
            answered=True,
        )
    return Finding("ok", f"{url} answers and accepts the broker's signed identity.", answered=True)


async def _send(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], timeout: float
) -> int | str:
    """The status of one POST of ``PROBE_BODY``, or why there was none."""
    try:
        async with session.post(
            url,
            data=PROBE_BODY,
            headers={"Content-Type": "application/json", "Accept-Encoding": "identity", **headers},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as response:
            await read_capped(response.content, 64 * 1024)
            return response.status
    except aiohttp.ClientConnectorError as exc:
        return f"could not be reached ({exc.os_error or exc})"
    except TimeoutError:
        return f"did not answer within {timeout:g} s"
    except aiohttp.ClientError as exc:
        return f"did not answer valid HTTP ({type(exc).__name__})"


def forgeries(
    signer: AssertionSigner | HMACAssertionSigner, *, workflow: str, audience: str
) -> dict[str, tuple[str | None, str]]:
    """What a backend must refuse: description -> (assertion or None, the specific fix)."""
    user = probe_user()
    if isinstance(signer, HMACAssertionSigner):
        stranger: AssertionSigner | HMACAssertionSigner = HMACAssertionSigner(
            secrets.token_urlsafe(32), issuer=signer.issuer
        )
    else:
        stranger = AssertionSigner(issuer=signer.issuer)

    def sign(s: AssertionSigner | HMACAssertionSigner, **kw: object) -> str:
        args: dict[str, object] = {"audience": audience, "workflow": workflow, "body": PROBE_BODY}
        return s.sign(user, **{**args, **kw})  # type: ignore[arg-type]

    return {
        "with no assertion": (None, "refuse a request without the header (401)"),
        "signed by a key the broker does not publish": (
            sign(stranger),
            "verify the signature against the broker's JWKS, with ES256 pinned",
        ),
        "for another audience": (
            sign(signer, audience=audience + ".not-this-backend"),
            f"require audience {audience!r}",
        ),
        "whose assertion expired 10 minutes ago": (
            sign(signer, issued_at=time.time() - 660),
            "check exp (a few seconds of leeway at most)",
        ),
        "whose body is not the one the assertion was signed for": (
            sign(signer, body=OTHER_BODY),
            "compare the req_sha256 claim with the SHA-256 of the exact request body",
        ),
    }


async def probe_refusals(
    session: aiohttp.ClientSession,
    *,
    workflow: str,
    url: str,
    audience: str,
    signer: AssertionSigner | HMACAssertionSigner,
    timeout: float = 5.0,
) -> list[Finding]:
    """One finding per forged request: ``ok`` when the backend refused it (any 4xx)."""
    findings = []
    for what, (assertion, fix) in forgeries(signer, workflow=workflow, audience=audience).items():
        headers = {ASSERTION_HEADER: assertion} if assertion is not None else {}
        status = await _send(session, url, headers, timeout)
        if isinstance(status, str):
            findings.append(Finding("fail", f"{url} {status} when sent a request {what}", fix))
        elif 400 <= status < 500:
            findings.append(Finding("ok", f"refuses a request {what} (HTTP {status})"))
        elif status >= 500:
            findings.append(
                Finding(
                    "fail",
                    f"{url} failed (HTTP {status}) on a request {what}; it must refuse it "
                    "with 401, not fail",
                    fix,
                )
            )
        else:
            findings.append(
                Finding(
                    "fail",
                    f"{url} accepted a request {what} (HTTP {status}): anyone who reaches it "
                    "can act as any user",
                    fix,
                )
            )
    return findings
