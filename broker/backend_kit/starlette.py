"""The assertion check as a Starlette / FastAPI dependency: ``Depends(require_assertion(v))``.

No ``from __future__ import annotations`` here: FastAPI reads the ``Request`` annotation of
the dependency to know what to inject.
"""

from starlette.exceptions import HTTPException
from starlette.requests import Request

from .asgi import request_targets, set_current
from .verifier import (
    ASSERTION_HEADER,
    AssertionKeysUnavailable,
    AssertionVerifier,
    InvalidAssertion,
    VerifiedAssertion,
)


def require_assertion(verifier: AssertionVerifier):
    """A dependency that returns the verified caller or raises 401 (503 without keys).

    Behind ``AssertionMiddleware`` it returns what the middleware verified (an assertion is
    single-use, so it is not checked twice).
    """

    async def dependency(request: Request) -> VerifiedAssertion:
        already = request.scope.get("state", {}).get("chatkit_assertion")
        if isinstance(already, VerifiedAssertion):
            return already
        body = await request.body()  # Starlette keeps it: the endpoint can read it again
        try:
            verified = await verifier.verify(
                request.headers.get(ASSERTION_HEADER),
                body=body,
                method=request.method,
                target=request_targets(request.scope),
            )
        except InvalidAssertion as exc:
            raise HTTPException(401, f"Refused: {exc}.") from None
        except AssertionKeysUnavailable as exc:
            raise HTTPException(503, f"{exc}.") from None
        request.scope.setdefault("state", {})["chatkit_assertion"] = verified
        set_current(verified)
        return verified

    return dependency
