"""The signed identity the broker hands a gateway backend with every request: the signer.

A backend behind the gateway must not trust a plain ``X-User-Id`` header: anyone who can
reach it directly, or who finds a header spelling the proxy forgot to strip, can claim to be
anyone. So per request the broker mints a short-lived JWT (ES256 by default) bound to one
backend by ``aud``, sends it as ``ChatKit-Broker-Assertion``, and publishes its public keys
at ``/.well-known/jwks.json`` — the design of Google IAP and Pomerium.

The token::

    header  {"alg": "ES256", "kid": <RFC 7638 thumbprint>, "typ": "chatkit-broker-assertion+jwt"}
    claims  {"iss": <BROKER_PUBLIC_URL>, "aud": <workflow audience>, "sub": <user>,
             "iat", "exp": iat + 60, "jti": <unique>, "wf": <workflow>, "sid"?: <session id>,
             "req_sha256": <base64url SHA-256 of the forwarded request body>,
             — or, for an upload the file relay streams: "htm": <method>, "htu": <backend URL>
             (and no req_sha256),
             ...forwarded claims of the user's own token (e.g. email, org)}

The backend side is the backend kit's ``AssertionVerifier`` (re-exported here; or its
``AssertionMiddleware``, or the ``verify`` shortcut)::

    from broker.backend_kit import AssertionVerifier
    verifier = AssertionVerifier(jwks_url="http://127.0.0.1:8000/.well-known/jwks.json",
                                 audience="support", issuer="chatkit-broker")
    verified = await verifier.verify(request.headers.get("chatkit-broker-assertion"),
                                     body=await request.body())
    verified.user  # the signed-in user, as the broker verified them

A backend in another language needs only a JWT library: pin ``ES256``, require ``exp``,
``iat``, ``sub``, check ``iss``, ``aud`` and the ``typ`` header, take keys from the JWKS by
``kid``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .backend_kit.verifier import (
    ASSERTION_HEADER,
    ASSERTION_TYP,
    DEFAULT_ISSUER,
    MIN_SECRET_BYTES,
    body_digest,
)

LIFETIME_SECONDS = 60
# claims the broker sets itself: a forwarded claim of the same name never overrides them
RESERVED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "wf", "sid", "req_sha256"}
)
# the request an upload's assertion is bound to (the file relay sets them): never forwarded
# from a user's token, where they would make every ChatKit request of that user a 401
REQUEST_CLAIMS = frozenset({"htm", "htu"})


# --- keys --------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7518 public JWK of a P-256 key, with its RFC 7638 thumbprint as ``kid``."""
    numbers = key.public_numbers()
    members = {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }
    # RFC 7638 §3: the required members only, sorted, no whitespace, SHA-256, base64url
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    kid = _b64url(hashlib.sha256(canonical).digest())
    return {**members, "kid": kid, "use": "sig", "alg": "ES256"}


def load_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM text, or from the file named by ``@path``.

    Raises ``ValueError`` naming the problem (never the key material).
    """
    pem = _read_maybe_file(text)
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an unencrypted PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the assertion key must be an EC P-256 (prime256v1) private key")
    return key


def _read_maybe_file(text: str) -> str:
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return text.replace("\\n", "\n")  # a PEM squeezed onto one line of a .env file


def generate_private_key_pem() -> str:
    """A fresh P-256 private key as PKCS#8 PEM, e.g. for ``BROKER_ASSERTION_KEY``."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def forwarded_claims(claims: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The named claims of the user's verified token, minus the ones the broker sets itself."""
    return {
        n: claims[n]
        for n in names
        if n in claims and n not in RESERVED_CLAIMS and n not in REQUEST_CLAIMS
    }


# --- signing (the broker side) -------------------------------------------------------------


@dataclass
class _Claims:
    issuer: str
    lifetime: int
    clock: Callable[[], float]

    def build(
        self,
        user: str,
        *,
        audience: str,
        workflow: str,
        session_id: str | None,
        extra: Mapping[str, Any] | None,
        body: bytes | None,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        now = int(self.clock() if issued_at is None else issued_at)
        claims: dict[str, Any] = {
            k: v for k, v in (extra or {}).items() if k not in RESERVED_CLAIMS
        }
        claims.update(
            iss=self.issuer,
            aud=audience,
            sub=user,
            iat=now,
            exp=now + self.lifetime,
            jti=secrets.token_urlsafe(16),
            wf=workflow,
        )
        if session_id is not None:
            claims["sid"] = session_id
        if body is not None:
            claims["req_sha256"] = body_digest(body)
        return claims


# the claims as PyJWT encodes them (compact JSON, ASCII), with one encoder for every token
_encode_claims = json.JSONEncoder(separators=(",", ":")).encode
_ES256 = ec.ECDSA(hashes.SHA256())


def _header_segment(algorithm: str, headers: Mapping[str, str]) -> bytes:
    """The token's first segment and its dot, as PyJWT writes it (keys sorted): built once."""
    header = {"typ": "JWT", "alg": algorithm, **headers}
    return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()).encode()


class _Signer:
    """What both signers share: fresh claims per request, signed with the subclass's key.

    A token is the JWS compact form PyJWT would write for the same claims (a test holds them
    equal), assembled here: PyJWT's ``encode`` spent about as long on checking and
    re-encoding the header per call as the ES256 signature itself, on every gateway request's
    path to its first event (issue 24)."""

    algorithm: str
    _key: Any
    _claims: _Claims
    _headers: dict[str, str]
    _segment: bytes = b""  # the encoded header, set on first use

    def _signature(self, signing_input: bytes) -> bytes:
        raise NotImplementedError

    @property
    def issuer(self) -> str:
        return self._claims.issuer

    def sign(
        self,
        user: str,
        *,
        audience: str,
        workflow: str,
        session_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        issued_at: float | None = None,
    ) -> str:
        """A fresh assertion for one request (a new ``jti`` every time); with ``body``, the
        claim ``req_sha256`` binds it to that request body. ``issued_at`` backdates it (the
        doctor's expired probe)."""
        claims = self._claims.build(
            user,
            audience=audience,
            workflow=workflow,
            session_id=session_id,
            extra=extra,
            body=body,
            issued_at=issued_at,
        )
        if not self._segment:
            self._segment = _header_segment(self.algorithm, self._headers)
        payload = base64.urlsafe_b64encode(_encode_claims(claims).encode()).rstrip(b"=")
        signing_input = self._segment + b"." + payload
        signature = base64.urlsafe_b64encode(self._signature(signing_input)).rstrip(b"=")
        return (signing_input + b"." + signature).decode()


class AssertionSigner(_Signer):
    """Mints ES256 assertions with the current key; publishes it and the previous keys.

    Rotation: put the new key in ``BROKER_ASSERTION_KEY`` and the old one in
    ``BROKER_ASSERTION_PREVIOUS_KEYS``. Backends that cached the old JWKS refetch on the new
    ``kid``; tokens signed with the old key stay verifiable until they expire (60 s), and
    the old key can be dropped from the list once every backend refetched.

    Without a configured key an ephemeral one is generated (``ephemeral`` is True): fine
    for one process on a laptop, wrong for several instances (each would sign with its own
    key) and after a restart (backends holding the old JWKS refetch once per cooldown).
    """

    algorithm = "ES256"

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey | None = None,
        *,
        previous: Sequence[ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey] = (),
        issuer: str = DEFAULT_ISSUER,
        lifetime: int = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ephemeral = key is None
        self._key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        self._jwk = public_jwk(self._key.public_key())
        self.kid = self._jwk["kid"]
        self._previous = [
            public_jwk(k.public_key() if isinstance(k, ec.EllipticCurvePrivateKey) else k)
            for k in previous
        ]
        self._claims = _Claims(issuer, lifetime, clock)
        self._headers = {"kid": self.kid, "typ": ASSERTION_TYP}

    @classmethod
    def from_config(
        cls,
        key: str | None,
        previous: Sequence[str] = (),
        *,
        issuer: str = DEFAULT_ISSUER,
        lifetime: int = LIFETIME_SECONDS,
    ) -> AssertionSigner:
        """From ``BROKER_ASSERTION_KEY`` (PEM text or ``@path``) and previous ``@path`` PEMs."""
        current = load_private_key(key) if key else None
        old = [load_previous_key(text) for text in previous]
        return cls(current, previous=old, issuer=issuer, lifetime=lifetime)

    def _signature(self, signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(self._key.sign(signing_input, _ES256))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r || s (RFC 7518 §3.4)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public key set for ``GET /.well-known/jwks.json``: current key first."""
        keys = [self._jwk]
        keys += [k for k in self._previous if k["kid"] != self.kid]
        return {"keys": keys}


def load_previous_key(text: str) -> ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey:
    """A previous key may be the old private PEM (as it was configured) or its public half."""
    pem = _read_maybe_file(text)
    if "PRIVATE KEY" in pem:
        return load_private_key(pem)
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM key ({type(exc).__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("a previous assertion key must be an EC P-256 key")
    return key


class HMACAssertionSigner(_Signer):
    """HS256 assertions under one shared secret, for ``assertion = "hs256"`` workflows.

    Simpler to verify (no JWKS), but the backend holding the secret could mint assertions
    itself, so use it only for one backend you fully trust. Nothing is published.
    """

    algorithm = "HS256"
    ephemeral = False

    def __init__(
        self,
        secret: str | bytes,
        *,
        issuer: str = DEFAULT_ISSUER,
        lifetime: int = LIFETIME_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = self._secret
        if len(self._secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the assertion secret must be at least {MIN_SECRET_BYTES} bytes")
        self._claims = _Claims(issuer, lifetime, clock)
        # RFC 7638 thumbprint of the oct JWK: lets a backend tell secrets apart during a change
        canonical = json.dumps({"k": _b64url(self._secret), "kty": "oct"}, separators=(",", ":"))
        self.kid = _b64url(hashlib.sha256(canonical.encode()).digest())
        self._headers = {"kid": self.kid, "typ": ASSERTION_TYP}

    def _signature(self, signing_input: bytes) -> bytes:
        return hmac.new(self._secret, signing_input, hashlib.sha256).digest()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": []}


# --- verifying (the backend side) ----------------------------------------------------------
# one copy, in the backend kit (PyJWT and cryptography only); re-exported here
from .backend_kit.verifier import (  # noqa: E402
    AssertionFailure,
    AssertionKeysUnavailable,
    AssertionVerifier,
    InvalidAssertion,
    VerifiedAssertion,
    check_body,
    verify,
    verify_with_key,
)

__all__ = [
    "ASSERTION_HEADER",
    "ASSERTION_TYP",
    "AssertionFailure",
    "AssertionKeysUnavailable",
    "AssertionSigner",
    "AssertionVerifier",
    "HMACAssertionSigner",
    "InvalidAssertion",
    "VerifiedAssertion",
    "body_digest",
    "check_body",
    "forwarded_claims",
    "generate_private_key_pem",
    "load_previous_key",
    "load_private_key",
    "public_jwk",
    "verify",
    "verify_with_key",
]
