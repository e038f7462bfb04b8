"""The backend kit: verified identity and per-user threads for a ChatKit server behind the
broker, importable without the broker's server dependencies (only PyJWT and cryptography;
chatkit for the store wrapper, Starlette for the dependency — both already in a ChatKit
server).

    from broker.backend_kit import AssertionMiddleware, UserScopedStore
    app.add_middleware(AssertionMiddleware, jwks_url=…, audience="support", issuer=…)
    store = UserScopedStore(MemoryStore())

Why a package inside the broker rather than a distribution of its own: one copy of the
verifier, which the broker re-exports (``broker.assertion``) and its tests exercise, with
nothing to version apart; ``pip install --no-deps chatkit-broker`` plus ``pyjwt[crypto]``
gives a backend exactly this (tests/backend_kit checks the import with the server's
packages blocked).
"""

from __future__ import annotations

from typing import Any

from .asgi import AssertionMiddleware, current_assertion, current_user, request_targets
from .verifier import (
    ASSERTION_HEADER,
    ASSERTION_TYP,
    DEFAULT_ISSUER,
    AssertionFailure,
    AssertionKeysUnavailable,
    AssertionVerifier,
    InvalidAssertion,
    KeySet,
    VerifiedAssertion,
    body_digest,
    check_body,
    check_request,
    check_target,
    verify,
    verify_with_key,
)

__all__ = [
    "ASSERTION_HEADER",
    "ASSERTION_TYP",
    "DEFAULT_ISSUER",
    "AssertionFailure",
    "AssertionKeysUnavailable",
    "AssertionMiddleware",
    "AssertionVerifier",
    "InvalidAssertion",
    "KeySet",
    "UserScopedAttachmentStore",
    "UserScopedStore",
    "VerifiedAssertion",
    "body_digest",
    "check_body",
    "check_request",
    "check_target",
    "current_assertion",
    "current_user",
    "request_targets",
    "require_assertion",
    "verify",
    "verify_with_key",
]

_LAZY = {
    "UserScopedStore": "store",  # needs chatkit
    "UserScopedAttachmentStore": "store",
    "require_assertion": "starlette",  # needs Starlette
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
