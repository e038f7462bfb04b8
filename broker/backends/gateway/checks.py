"""What ``doctor`` can tell about a gateway workflow before a user meets the problem.

One signed ``threads.list`` (for a synthetic user) shows at once whether the server answers,
whether it speaks ChatKit JSON, and whether it accepts the broker's assertion — and when it
does not, the message says which of the JWKS URL, audience or issuer to look at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from ...assertion import ASSERTION_HEADER, AssertionSigner, HMACAssertionSigner
from ...httpread import read_capped

PROBE_USER = "chatkit-broker-doctor"
PROBE_BODY = json.dumps({"type": "threads.list", "params": {"limit": 1}}).encode()


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: ``ok``, ``warn`` or ``fail``, and what to do."""

    status: str
    message: str


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
    """POST one signed ``threads.list`` to the workflow's server and explain the answer."""
    assertion = signer.sign(PROBE_USER, audience=audience, workflow=workflow, body=PROBE_BODY)
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
        json.loads(body)
    except ValueError:
        return Finding("fail", f"{url} answered invalid JSON to a threads.list.")
    return Finding("ok", f"{url} answers and accepts the broker's signed identity.")
