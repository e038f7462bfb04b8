"""Verifies the caller's JWT and turns it into the ChatKit ``user``.

PyJWT does the cryptography; this module decides *which* key and *which* algorithms may
verify a token — from configuration only, never from the token's own header (RFC 8725).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from .errors import Unauthenticated
from .jwks import JWKSCache
from .settings import JWTSettings

MAX_TOKEN_BYTES = 8 * 1024
VERIFIED_CACHE_SIZE = 4096
VERIFIED_CACHE_SECONDS = 60.0
MAX_USER_CHARS = 512
MAX_KID_CHARS = 256
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
_HMAC_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}
HEADER_CACHE_SIZE = 256  # distinct token headers: an IdP issues a handful (one per key and alg)


class _PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, with the broker's one secret checked once instead of per token.

    PyJWT re-validates an HMAC key on every decode (PEM, SSH, DER and JWK probes: about 18 µs,
    a quarter of verifying a token); the secret never changes, so its prepared form is kept.
    Any other key still goes through PyJWT's own checks.
    """

    def __init__(self, hash_alg: Any, secret: bytes) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        self._prepared = super().prepare_key(secret)

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret:
            return self._prepared
        return super().prepare_key(key)


def _decoder(secret: bytes | None) -> jwt.PyJWT:
    """A PyJWT of the broker's own (the module-level one stays untouched for everyone else),
    its HMAC algorithms holding the prepared secret."""
    decoder = jwt.PyJWT()
    if secret is not None:
        jws = decoder._jws  # PyJWT keeps its PyJWS here (PyJWT 2.x)
        for name, hash_alg in _HMAC_HASHES.items():
            jws.unregister_algorithm(name)
            jws.register_algorithm(name, _PreparedHMAC(hash_alg, secret))
    return decoder


@dataclass(frozen=True)
class Identity:
    """Who is calling: the ChatKit user id and the verified claims it came with."""

    user: str
    claims: Mapping[str, Any]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none.

    The scheme is case-insensitive (RFC 7235) and may be followed by several spaces
    (RFC 6750: ``"Bearer" 1*SP b64token``); surrounding whitespace is ignored. Anything
    else malformed is a 401, so a caller learns why rather than being treated as anonymous.
    """
    if authorization is None or authorization == "":
        return None
    if len(authorization) > MAX_TOKEN_BYTES + 16:
        raise Unauthenticated("The Authorization header is larger than 8 KiB.")
    scheme, _, token = authorization.strip(" \t").partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated(
            "The Authorization header must use the Bearer scheme: 'Authorization: Bearer <JWT>'.",
            invalid_token=False,
        )
    if not token:
        raise Unauthenticated(
            "The Authorization header has no token after 'Bearer'.", invalid_token=False
        )
    return token


class Verifier:
    """Verifies tokens against the configured HMAC secret, PEM key or JWKS."""

    def __init__(
        self,
        settings: JWTSettings,
        jwks: JWKSCache | None = None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = VERIFIED_CACHE_SIZE,
        cache_seconds: float = VERIFIED_CACHE_SECONDS,
    ) -> None:
        self._s = settings
        self._jwks = jwks
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_seconds = cache_seconds
        self._secret = settings.secret.encode() if settings.secret else None
        self._jwt = _decoder(self._secret)
        self._pem = (
            load_pem_public_key(settings.public_key.encode()) if settings.public_key else None
        )
        self._require = ["exp", settings.user_claim]
        if settings.issuer:
            self._require.append("iss")

    @property
    def configured(self) -> bool:
        return self._s.configured

    async def verify(self, token: str) -> Identity:
        """A verified ``Identity``, or ``Unauthenticated`` saying what is wrong (never echoing the token).

        A token that verified recently is answered from a small cache (the same access token
        usually comes back for the workflow list, the mint and each refresh): until its
        ``exp`` (+ leeway) and at most ``cache_seconds``, so a key removed from the JWKS is
        honoured at most that much longer. Refused tokens are never cached.
        """
        cached = self._cache.get(token)
        if cached is not None:
            if self._clock() < cached[0]:
                return cached[1]
            del self._cache[token]
        identity = await self._verify(token)
        self._remember(token, identity)
        return identity

    def _remember(self, token: str, identity: Identity) -> None:
        if self._cache_size <= 0:
            return
        exp = identity.claims.get("exp")
        now = self._clock()
        good_until = min(float(exp) + self._s.leeway, now + self._cache_seconds)
        if good_until <= now:
            return
        self._cache[token] = (good_until, identity)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _verify(self, token: str) -> Identity:
        header = _header(token)
        alg = header.get("alg")
        if alg in self._s.hmac_algorithms and self._secret is not None:
            key: Any = self._secret
            algorithms = [alg]
        elif alg in self._s.asymmetric_algorithms:
            key, algorithms = await self._public_key(header, alg)
        else:
            raise Unauthenticated(
                f"The token's algorithm {_printable(alg)} is not accepted by this broker."
            )
        try:
            claims = self._jwt.decode(
                token,
                key=key,
                algorithms=algorithms,
                audience=self._s.audience,
                issuer=self._s.issuer,
                leeway=self._s.leeway,
                options={"require": self._require, "verify_aud": True},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(self._explain(exc)) from None
        _check_numeric_dates(claims)
        self._check_lifetime(claims)
        return self._identity(claims)

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        """What PyJWT leaves open: an ``aud`` of any value (even ``""`` or ``[]``) with no
        audience configured, an ``iat`` in the future, and lifetimes of centuries."""
        s = self._s
        if s.audience is None and "aud" in claims:
            raise Unauthenticated(
                "The token carries an 'aud' claim but this broker has no audience configured "
                "(set BROKER_JWT_AUDIENCE)."
            )
        now = self._clock()
        iat = claims.get("iat")
        if iat is not None and iat > now + s.leeway:
            raise Unauthenticated(
                "The token is not valid yet (its nbf or iat is in the future); check the clocks."
            )
        exp = claims["exp"]
        if exp - now > s.max_age or (iat is not None and exp - iat > s.max_age):
            raise Unauthenticated(
                f"The token's lifetime is longer than this broker accepts ({s.max_age} s, "
                "BROKER_JWT_MAX_AGE): issue shorter-lived tokens."
            )

    def read_unverified(self, token: str) -> Identity:
        """The token's user *without* checking its signature — mock mode on loopback only."""
        _header(token)
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise Unauthenticated("The token is malformed: it is not a JWT.") from None
        return self._identity(claims)

    async def _public_key(self, header: Mapping[str, Any], alg: str) -> tuple[Any, list[str]]:
        if self._pem is not None:
            return self._pem, [alg]
        if self._jwks is None:  # pragma: no cover - config guarantees one of them
            raise Unauthenticated("No public key is configured for this token's algorithm.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS:
            raise Unauthenticated(
                "The token has no usable 'kid' header, which a JWKS key set needs."
            )
        signing_key = await self._jwks.key(kid)
        if signing_key is None:
            raise Unauthenticated(
                "The token was signed with a key ('kid') this broker does not know."
            )
        if alg not in signing_key.algorithms:
            raise Unauthenticated(f"The token's algorithm {alg} does not match its key.")
        return signing_key.key, [alg]

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        claim = self._s.user_claim
        user = claims.get(claim)
        if not isinstance(user, str) or not user.strip():
            raise Unauthenticated(f"The token's '{claim}' claim must be a non-empty string.")
        if len(user) > MAX_USER_CHARS:
            raise Unauthenticated(
                f"The token's '{claim}' claim is longer than {MAX_USER_CHARS} characters."
            )
        if not user.isprintable() or not _encodable(user):
            raise Unauthenticated(
                f"The token's '{claim}' claim holds control characters or invalid Unicode."
            )
        return Identity(user=user, claims=claims)

    def _explain(self, exc: jwt.InvalidTokenError) -> str:
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "The token has expired; sign in again to get a fresh one."
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "The token is not valid yet (its nbf or iat is in the future); check the clocks."
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"The token lacks the required '{exc.claim}' claim."
        if isinstance(exc, jwt.InvalidAudienceError):
            if self._s.audience is None:
                return (
                    "The token carries an 'aud' claim but this broker has no audience configured "
                    "(set BROKER_JWT_AUDIENCE)."
                )
            return "The token's audience ('aud') is not the one this broker accepts."
        if isinstance(exc, jwt.InvalidIssuerError):
            return "The token's issuer ('iss') is not the one this broker accepts."
        if isinstance(exc, jwt.InvalidSignatureError):
            return "The token's signature is invalid."
        if isinstance(exc, jwt.InvalidIssuedAtError):
            return _NOT_A_NUMERIC_DATE.format("iat")
        if isinstance(exc, jwt.exceptions.InvalidSubjectError):
            return "The token's 'sub' claim must be a non-empty string."
        if isinstance(exc, jwt.exceptions.InvalidJTIError):
            return "The token's 'jti' claim must be a string."
        if isinstance(exc, jwt.DecodeError):
            # PyJWT reports a non-numeric exp/nbf as a DecodeError naming the claim
            for claim in ("exp", "nbf"):
                if f"({claim})" in str(exc):
                    return _NOT_A_NUMERIC_DATE.format(claim)
            return "The token is malformed or its claims are not valid JSON."
        return "The token is invalid."


_NOT_A_NUMERIC_DATE = "The token's '{}' claim must be a number of seconds since the epoch."


def _check_numeric_dates(claims: Mapping[str, Any]) -> None:
    """``exp``/``nbf``/``iat`` must be JSON numbers (RFC 7519 NumericDate).

    PyJWT converts them with ``int()``, so it accepts ``"1900000000"`` (a string) and
    ``true``; neither is a valid time, and a token that carries one is refused.
    """
    for claim in ("exp", "nbf", "iat"):
        if claim in claims:
            value = claims[claim]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unauthenticated(_NOT_A_NUMERIC_DATE.format(claim))


_headers: dict[str, dict[str, Any]] = {}


def _header(token: str) -> dict[str, Any]:
    """The token's header, after the checks that must happen before any cryptography.

    Parsed here rather than by PyJWT so that each problem gets its own message (PyJWT
    reports a non-string ``kid`` or an unknown ``crit`` as a generic header error). Headers
    that passed are remembered by their encoded text — every token of an IdP key carries the
    same one — in a small table emptied when full, so a spray of odd headers cannot grow it.
    """
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated("The token is larger than 8 KiB.")
    if token.startswith(("mock_", "ek_")):
        raise Unauthenticated("That is a ChatKit client secret, not a sign-in token (JWT).")
    if not _TOKEN_RE.fullmatch(token):
        raise Unauthenticated(
            "The token is malformed: a JWT is three base64url parts joined by dots."
        )
    segment = token.split(".", 1)[0]
    known = _headers.get(segment)
    if known is not None:
        return known
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise Unauthenticated("The token is malformed: its header is not a JSON object.")
    if "crit" in header:
        raise Unauthenticated(
            "The token uses critical header extensions this broker does not support."
        )
    if "kid" in header and not isinstance(header["kid"], str):
        raise Unauthenticated("The token's 'kid' header must be a string.")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise Unauthenticated(f"The token's type {_printable(typ)} is not an access token (JWT).")
    if len(_headers) >= HEADER_CACHE_SIZE:
        _headers.clear()
    _headers[segment] = header
    return header


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates from a \udxxx escape in the token's JSON
        return False
    return True


def _printable(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:32]) if text.isprintable() else "(unprintable)"
