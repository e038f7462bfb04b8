"""Streamed uploads through the kit's ``AssertionMiddleware``, over real HTTP (uvicorn).

The broker relays a file upload as a stream, so its assertion cannot carry ``req_sha256``;
it names the request instead (``htm``: the method, ``htu``: the backend URL). The kit lets
such a request through — body unread, uncapped, streamed to the app — only when ``htm`` and
``htu`` are this request's method and path; an assertion with neither binding is refused as
before, and one issued for another path, query or method is refused too.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from broker.assertion import ASSERTION_HEADER, HMACAssertionSigner
from broker.backend_kit import AssertionMiddleware, AssertionVerifier, current_user
from broker.backend_kit import require_assertion as require
from tests.support.asgi_server import bound_socket, run_asgi

# a value no other test logs (the log audit looks for it in every log: "u" * 40 was inside a
# 512-character user id that another test logs on purpose)
SECRET = "kit-uploads-assertion-secret-7d1c0b5e9a4f3e2d"
SIGNER = HMACAssertionSigner(SECRET)
BIG = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: three times the kit's body cap


def upload_assertion(url: str, method: str = "POST", user: str = "alice", **extra: Any) -> str:
    """What the broker's file relay sends: no ``req_sha256``, the method and backend URL."""
    claims = {"htm": method, "htu": url, **extra}
    return SIGNER.sign(user, audience="support", workflow="support", extra=claims)


def headers(assertion: str) -> dict[str, str]:
    return {ASSERTION_HEADER: assertion, "content-type": "application/octet-stream"}


async def receive_upload(request: Request) -> Response:
    """Reads the body as it arrives, counting the pieces: one piece would mean someone
    buffered it whole before the app."""
    digest, size, pieces = hashlib.sha256(), 0, 0
    async for chunk in request.stream():
        if chunk:
            digest.update(chunk)
            size += len(chunk)
            pieces += 1
    return JSONResponse(
        {"user": current_user(), "size": size, "sha256": digest.hexdigest(), "pieces": pieces}
    )


def app() -> Starlette:
    return Starlette(
        routes=[
            Route("/support/attachments/{attachment_id}/upload", receive_upload, methods=["POST"]),
            Route("/support/attachments/{attachment_id}/upload", receive_upload, methods=["PUT"]),
        ]
    )


@pytest.fixture
async def kit() -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    async with (
        run_asgi(AssertionMiddleware(app(), verifier)) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as client,
    ):
        yield url, client


async def test_an_upload_bound_to_its_method_and_url_streams_past_the_body_cap(
    kit: tuple[str, httpx.AsyncClient],
) -> None:
    url, client = kit
    target = f"{url}/support/attachments/atc_1/upload"
    answer = await client.post(target, content=BIG, headers=headers(upload_assertion(target)))
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["user"] == "alice"
    assert seen["size"] == len(BIG) and seen["sha256"] == hashlib.sha256(BIG).hexdigest()
    assert seen["pieces"] > 1  # streamed to the app, not read whole first


async def test_scheme_and_host_may_differ_but_not_the_path_query_or_method(
    kit: tuple[str, httpx.AsyncClient],
) -> None:
    url, client = kit
    path = "/support/attachments/atc_2/upload"
    # behind a proxy the broker dials another host and scheme than the backend sees
    proxied = upload_assertion(f"https://backend.internal:8443{path}")
    assert (await client.post(path, content=b"x", headers=headers(proxied))).status_code == 200

    refusals = {
        "another path": upload_assertion(f"{url}/support/attachments/atc_other/upload"),
        "another method": upload_assertion(f"{url}{path}", method="PUT"),
        "another query": upload_assertion(f"{url}{path}?sig=abc"),
        "no htm": SIGNER.sign(
            "alice", audience="support", workflow="support", extra={"htu": f"{url}{path}"}
        ),
        "neither binding": SIGNER.sign("alice", audience="support", workflow="support"),
    }
    for why, assertion in refusals.items():
        refused = await client.post(path, content=BIG, headers=headers(assertion))
        assert refused.status_code == 401, why
        assert refused.json()["error"]["code"] == "invalid_assertion"

    signed_query = f"{url}{path}?b=2&a=%20x"  # the order of pairs and their encoding do not matter
    good = await client.post(
        f"{path}?a=+x&b=2", content=b"y", headers=headers(upload_assertion(signed_query))
    )
    assert good.status_code == 200, good.text


async def test_an_upload_assertion_works_once_and_not_on_another_path_first(
    kit: tuple[str, httpx.AsyncClient],
) -> None:
    url, client = kit
    mine = f"{url}/support/attachments/atc_3/upload"
    assertion = upload_assertion(mine)
    elsewhere = await client.post(
        "/support/attachments/atc_4/upload", content=b"z", headers=headers(assertion)
    )
    assert elsewhere.status_code == 401
    assert "another URL" in elsewhere.json()["error"]["message"]
    as_put = await client.put(mine, content=b"z", headers=headers(assertion))
    assert as_put.status_code == 401
    first = await client.post(mine, content=b"z", headers=headers(assertion))
    assert first.status_code == 200  # the refusals above did not spend it
    again = await client.post(mine, content=b"z", headers=headers(assertion))
    assert again.status_code == 401 and "replayed" in again.json()["error"]["message"]


async def test_a_chatkit_request_still_needs_its_body_hash_and_the_cap(
    kit: tuple[str, httpx.AsyncClient],
) -> None:
    """``req_sha256`` still binds the body where the broker sent one, also beside ``htm``/
    ``htu`` (the preview relay's assertions carry both), and such bodies are still capped."""
    url, client = kit
    path = "/support/attachments/atc_5/upload"
    both = SIGNER.sign(
        "alice",
        audience="support",
        workflow="support",
        body=b"right",
        extra={"htm": "POST", "htu": f"{url}{path}"},
    )
    assert (await client.post(path, content=b"wrong", headers=headers(both))).status_code == 401
    hashed_big = SIGNER.sign("alice", audience="support", workflow="support", body=BIG)
    too_big = await client.post(path, content=BIG, headers=headers(hashed_big))
    assert too_big.status_code == 413


async def test_a_backend_mounted_under_a_root_path_matches_its_full_path() -> None:
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    sock = bound_socket()
    async with (
        run_asgi(AssertionMiddleware(app(), verifier), sock=sock, root_path="/backend") as url,
        httpx.AsyncClient(base_url=url, timeout=20) as client,
    ):
        path = "/support/attachments/atc_6/upload"
        for signed_for in (f"https://proxy.example/backend{path}", f"{url}{path}"):
            answer = await client.post(
                path, content=b"r", headers=headers(upload_assertion(signed_for))
            )
            assert answer.status_code == 200, (signed_for, answer.text)
        other = upload_assertion(f"https://proxy.example/other{path}")
        assert (await client.post(path, content=b"r", headers=headers(other))).status_code == 401


async def test_the_starlette_dependency_applies_the_same_rule() -> None:
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    dependency = require(verifier)

    async def endpoint(request: Request) -> Response:
        verified = await dependency(request)
        return JSONResponse({"user": verified.user, "size": len(await request.body())})

    served = Starlette(routes=[Route("/up/{name}", endpoint, methods=["POST"])])
    async with run_asgi(served) as url, httpx.AsyncClient(base_url=url, timeout=20) as client:
        good = await client.post(
            "/up/a", content=BIG, headers=headers(upload_assertion(f"{url}/up/a"))
        )
        wrong = await client.post(
            "/up/b", content=b"x", headers=headers(upload_assertion(f"{url}/up/a"))
        )
    assert good.status_code == 200 and good.json() == {"user": "alice", "size": len(BIG)}
    assert wrong.status_code == 401
