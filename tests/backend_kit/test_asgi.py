"""The middleware's edges and the Starlette/FastAPI dependency, over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from broker.assertion import ASSERTION_HEADER, HMACAssertionSigner
from broker.backend_kit import (
    AssertionMiddleware,
    AssertionVerifier,
    current_user,
    require_assertion,
)
from tests.support.asgi_server import run_asgi

SECRET = "k" * 40
SIGNER = HMACAssertionSigner(SECRET)
BODY = b'{"type":"threads.list","params":{}}'


def signed(user: str = "alice", body: bytes = BODY) -> dict[str, str]:
    return {ASSERTION_HEADER: SIGNER.sign(user, audience="support", workflow="s", body=body)}


async def boom(request: Request) -> Response:
    raise RuntimeError("a bug in the server, not an ownership question")


async def who(request: Request) -> Response:
    return PlainTextResponse(current_user() or "-")


async def test_a_server_error_is_still_a_500_behind_the_middleware() -> None:
    app = Starlette(routes=[Route("/boom", boom, methods=["POST"])])
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    async with (
        run_asgi(AssertionMiddleware(app, verifier)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        answer = await client.post("/boom", content=BODY, headers=signed())
    assert answer.status_code == 500


async def test_the_verified_user_is_visible_to_the_app_and_not_after() -> None:
    app = Starlette(routes=[Route("/who", who, methods=["POST"])])
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    async with (
        run_asgi(AssertionMiddleware(app, verifier)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        assert (await client.post("/who", content=BODY, headers=signed("bob"))).text == "bob"
        assert (await client.post("/who", content=BODY, headers=signed("eve"))).text == "eve"
    assert current_user() is None


@pytest.mark.parametrize("behind_middleware", [False, True])
async def test_the_dependency_verifies_or_reuses_the_middlewares_result(
    behind_middleware: bool,
) -> None:
    verifier = AssertionVerifier(secret=SECRET, audience="support")
    dependency = require_assertion(verifier)

    async def endpoint(request: Request) -> Response:
        verified = await dependency(request)  # what FastAPI's Depends() would call
        return JSONResponse({"user": verified.user, "body": (await request.body()).decode()})

    app = Starlette(routes=[Route("/chatkit", endpoint, methods=["POST"])])
    served = AssertionMiddleware(app, verifier) if behind_middleware else app
    async with run_asgi(served) as url, httpx.AsyncClient(base_url=url) as client:
        good = await client.post("/chatkit", content=BODY, headers=signed("carol"))
        bare = await client.post("/chatkit", content=BODY)
        altered = await client.post("/chatkit", content=BODY + b" ", headers=signed())
    assert good.status_code == 200
    assert good.json() == {"user": "carol", "body": BODY.decode()}
    assert bare.status_code == 401 and altered.status_code == 401
