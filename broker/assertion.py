"""The signed identity the broker hands a gateway backend with every request, and its verifier.

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
             ...forwarded claims of the user's own token (e.g. email, org)}

The backend side is ``AssertionVerifier`` (or the ``verify`` shortcut)::

    from broker.assertion import AssertionVerifier
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
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import AuthUnavailable
from .jwks import JWKSCache

ASSERTION_HEADER = "ChatKit-Broker-Assertion"
ASSERTION_TYP = "chatkit-broker-assertion+jwt"
DEFAULT_ISSUER = "chatkit-broker"
LIFETIME_SECONDS = 60
MIN_SECRET_BYTES = 32
MAX_ASSERTION_BYTES = 8 * 1024
MAX_USER_CHARS = 512
# claims the broker sets itself: a forwarded claim of the same name never overrides them
RESERVED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "wf", "sid", "req_sha256"}
)
MAX_REMEMBERED_JTIS = 100_000
_REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti"]


class AssertionFailure(Exception):
    """An assertion could not be verified; ``str(exc)`` says why without echoing the token."""


class InvalidAssertion(AssertionFailure):
    """The assertion is missing, forged, expired or meant for someone else: answer 401."""


class AssertionKeysUnavailable(AssertionFailure):
    """The broker's JWKS has never been fetched, so nobody can be verified yet: answer 503."""


@dataclass(frozen=True)
class VerifiedAssertion:
    """Who the broker says is calling, and the verified claims it said it with."""

    user: str
    claims: Mapping[str, Any]

    @property
    def workflow(self) -> str | None:
        return self.claims.get("wf")

    @property
    def session_id(self) -> str | None:
        return self.claims.get("sid")


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


def body_digest(body: bytes) -> str:
    """``req_sha256``: base64url SHA-256 of the exact request body the broker forwarded."""
    return _b64url(hashlib.sha256(body).digest())


def forwarded_claims(claims: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The named claims of the user's verified token, minus the ones the broker sets itself."""
    return {n: claims[n] for n in names if n in claims and n not in RESERVED_CLAIMS}


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
    ) -> dict[str, Any]:
        now = int(self.clock())
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


class _Signer:
    """What both signers share: fresh claims per request, signed with the subclass's key."""

    algorithm: str
    _key: Any
    _claims: _Claims
    _headers: dict[str, str]

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
    ) -> str:
        """A fresh assertion for one request (a new ``jti`` every time); with ``body``, the
        claim ``req_sha256`` binds it to that request body."""
        claims = self._claims.build(
            user,
            audience=audience,
            workflow=workflow,
            session_id=session_id,
            extra=extra,
            body=body,
        )
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=self._headers)


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

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": []}


# --- verifying (the backend side) ----------------------------------------------------------


def _header(token: str) -> dict[str, Any]:
    if not isinstance(token, str) or not token:
        raise InvalidAssertion(f"no {ASSERTION_HEADER} header")
    if len(token) > MAX_ASSERTION_BYTES:
        raise InvalidAssertion("the assertion is larger than 8 KiB")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidAssertion("the assertion is not a JWT") from None
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != ASSERTION_TYP:
        raise InvalidAssertion(f"the token is not a broker assertion (typ must be {ASSERTION_TYP})")
    if "crit" in header:
        raise InvalidAssertion("the assertion uses critical header extensions")
    return header


def _decode(
    token: str, key: Any, algorithm: str, *, audience: str, issuer: str, leeway: float
) -> VerifiedAssertion:
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[algorithm],  # pinned per key: never the token's own choice
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": _REQUIRED, "verify_aud": True, "strict_aud": True},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidAssertion("the assertion has expired") from None
    except jwt.InvalidAudienceError:
        raise InvalidAssertion(f"the assertion is not meant for audience {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise InvalidAssertion(f"the assertion was not issued by {issuer!r}") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidAssertion(f"the assertion is not signed with {algorithm}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidAssertion(f"the assertion lacks the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise InvalidAssertion("the assertion's signature is invalid") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidAssertion(f"the assertion is invalid ({type(exc).__name__})") from None
    user = claims.get("sub")
    if not isinstance(user, str) or not user or len(user) > MAX_USER_CHARS:
        raise InvalidAssertion("the assertion's 'sub' must be a non-empty string")
    return VerifiedAssertion(user=user, claims=claims)


def verify_with_key(
    token: str,
    *,
    audience: str,
    issuer: str = DEFAULT_ISSUER,
    key: ec.EllipticCurvePublicKey | str | Mapping[str, Any] | None = None,
    secret: str | bytes | None = None,
    leeway: float = 5.0,
    body: bytes | None = None,
) -> VerifiedAssertion:
    """Verify against one known key: an ES256 public key (object, PEM or JWK dict), or an
    HS256 ``secret`` — exactly one, and the token's algorithm must match it.

    For a backend that pins the broker's public key instead of fetching the JWKS, and for
    ``assertion = "hs256"`` workflows.
    """
    if (key is None) == (secret is None):
        raise TypeError("pass exactly one of key= (ES256) or secret= (HS256)")
    header = _header(token)
    if secret is not None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"the assertion secret must be at least {MIN_SECRET_BYTES} bytes")
        if header.get("alg") != "HS256":
            raise InvalidAssertion("the assertion is not signed with HS256")
        verified = _decode(token, raw, "HS256", audience=audience, issuer=issuer, leeway=leeway)
    else:
        if header.get("alg") != "ES256":
            raise InvalidAssertion("the assertion is not signed with ES256")
        verified = _decode(
            token, _public_key(key), "ES256", audience=audience, issuer=issuer, leeway=leeway
        )
    if body is not None:
        check_body(verified, body)
    return verified


def check_body(verified: VerifiedAssertion, body: bytes) -> None:
    """Refuse an assertion whose ``req_sha256`` is missing or not that of ``body``."""
    claimed = verified.claims.get("req_sha256")
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, body_digest(body)):
        raise InvalidAssertion("the assertion was not issued for this request body")


def _public_key(key: Any) -> ec.EllipticCurvePublicKey:
    if isinstance(key, Mapping):
        key = jwt.PyJWK(dict(key), algorithm="ES256").key
    elif isinstance(key, str | bytes):
        key = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("key= must be an EC P-256 public key (object, PEM or JWK)")
    return key


class _OneShotHTTP:
    """The one ``ClientSession`` call ``JWKSCache`` makes, each on its own short-lived session.

    Key-set fetches are rare (once per cooldown), so a backend that did not hand in a pool
    gets no session bound to one event loop and nothing to close.
    """

    @contextlib.asynccontextmanager
    async def get(self, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        async with (
            aiohttp.ClientSession(trust_env=False) as session,
            session.get(url, **kwargs) as response,
        ):
            yield response


@dataclass
class AssertionVerifier:
    """Verifies broker assertions against the broker's JWKS, for a backend to import.

    The key set is cached; an unknown ``kid`` (after a rotation) refetches it at most once
    per ``cooldown`` seconds, so a spray of forged ``kid`` values cannot become a fetch
    storm; while the broker is unreachable the last good keys keep working. Only ES256 is
    accepted (or only HS256 when ``secret`` is given, and then no JWKS is used).
    """

    jwks_url: str | None = None
    audience: str = ""
    issuer: str = DEFAULT_ISSUER
    secret: str | bytes | None = None
    leeway: float = 5.0
    cooldown: float = 30.0
    http: Callable[[], Any] | None = None
    clock: Callable[[], float] = time.monotonic
    # refuse a second use of the same assertion (jti) in this process until it expires
    single_use: bool = False
    wall_clock: Callable[[], float] = time.time
    _keys: JWKSCache | None = field(default=None, init=False, repr=False)
    _spent: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.audience:
            raise TypeError("audience= is required: the workflow's audience (default its name)")
        if (self.jwks_url is None) == (self.secret is None):
            raise TypeError("pass exactly one of jwks_url= (ES256) or secret= (HS256)")
        if self.jwks_url is not None:
            shot = _OneShotHTTP()
            self._keys = JWKSCache(
                self.jwks_url,
                self.http or (lambda: shot),
                algorithms=("ES256",),
                cooldown=self.cooldown,
                cold_cooldown=min(self.cooldown, 2.0),
                clock=self.clock,
            )

    async def verify(self, token: str | None, *, body: bytes | None = None) -> VerifiedAssertion:
        """The verified user and claims, or ``InvalidAssertion`` / ``AssertionKeysUnavailable``.

        With ``body`` (the raw request body), the assertion must carry the matching
        ``req_sha256``, so a captured assertion cannot be replayed with another request.
        """
        verified = await self._verified(token)
        if body is not None:
            check_body(verified, body)
        if self.single_use:
            self._spend(verified)
        return verified

    def _spend(self, verified: VerifiedAssertion) -> None:
        now = self.wall_clock()
        while self._spent:
            jti, expires = next(iter(self._spent.items()))
            if expires + self.leeway >= now and len(self._spent) < MAX_REMEMBERED_JTIS:
                break
            del self._spent[jti]
        jti = verified.claims["jti"]
        if jti in self._spent:
            raise InvalidAssertion("the assertion was already used (replayed)")
        self._spent[jti] = float(verified.claims["exp"])

    async def _verified(self, token: str | None) -> VerifiedAssertion:
        if self._keys is None:
            return verify_with_key(
                token or "",
                audience=self.audience,
                issuer=self.issuer,
                secret=self.secret,
                leeway=self.leeway,
            )
        header = _header(token or "")
        if header.get("alg") != "ES256":
            raise InvalidAssertion("the assertion is not signed with ES256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise InvalidAssertion("the assertion has no usable 'kid' header")
        try:
            signing_key = await self._keys.key(kid)
        except AuthUnavailable:
            raise AssertionKeysUnavailable(
                f"the broker's key set at {self.jwks_url} could not be fetched yet"
            ) from None
        if signing_key is None:
            raise InvalidAssertion(
                "the assertion was signed with a key the broker does not publish"
            )
        return _decode(
            token or "",
            signing_key.key,
            "ES256",
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
        )


_VERIFIERS: dict[tuple[Any, ...], AssertionVerifier] = {}


async def verify(
    token: str | None,
    *,
    audience: str,
    jwks_url: str | None = None,
    issuer: str = DEFAULT_ISSUER,
    secret: str | bytes | None = None,
    leeway: float = 5.0,
    body: bytes | None = None,
) -> VerifiedAssertion:
    """One-call verification for a backend: ``await verify(header, jwks_url=…, audience=…)``.

    Keeps one ``AssertionVerifier`` (and so one cached key set) per set of arguments for the
    life of the process; build an ``AssertionVerifier`` yourself to control its lifetime.
    """
    cache_key = (jwks_url, audience, issuer, secret, leeway)
    verifier = _VERIFIERS.get(cache_key)
    if verifier is None:
        verifier = _VERIFIERS[cache_key] = AssertionVerifier(
            jwks_url=jwks_url, audience=audience, issuer=issuer, secret=secret, leeway=leeway
        )
    return await verifier.verify(token, body=body)
