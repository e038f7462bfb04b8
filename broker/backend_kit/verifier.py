"""Verifying the broker's signed identity assertion, on PyJWT and cryptography alone.

This is the one copy: a backend imports it (``broker.backend_kit``) and so do the broker's
own tests and ``broker.assertion``, which re-exports it beside the signer. Nothing here
imports the broker's server (Starlette, aiohttp, Redis): the key set is fetched with the
standard library's ``urllib`` in a thread, or with any ``fetch`` coroutine you pass.

What a verified assertion proves: the broker signed it (ES256, a ``kid`` it publishes, or
HS256 with the shared secret), for this backend (``aud``), from this broker (``iss``), not
expired (``exp``, with ``leeway`` for clock skew), for this exact request body
(``req_sha256``) — or, for a file upload the broker streams and so cannot hash in advance,
for this method and URL (``htm``/``htu``) — and, with ``single_use``, the default, never seen
before (``jti``).

How ``htu`` is compared: by path and query only, percent-decoded, the query as a multiset of
pairs. Scheme and host are left out on purpose: behind a proxy or in a container the backend
sees another host and scheme than the broker dialled, and what binds the assertion to this
backend is ``aud`` (and its signature, expiry and single use), not the host name. The path is
compared with the request's path as the ASGI server gives it, with and without its
``root_path``, so a backend mounted under a prefix (``uvicorn --root-path``) matches.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("chatkit_broker.kit")

ASSERTION_HEADER = "ChatKit-Broker-Assertion"
ASSERTION_TYP = "chatkit-broker-assertion+jwt"
DEFAULT_ISSUER = "chatkit-broker"
MIN_SECRET_BYTES = 32
MAX_ASSERTION_BYTES = 8 * 1024
MAX_USER_CHARS = 512
MAX_JWKS_BYTES = 512 * 1024
MAX_REMEMBERED_JTIS = 100_000
_REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti"]

Fetch = Callable[[str], Awaitable[bytes]]


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


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def body_digest(body: bytes) -> str:
    """``req_sha256``: base64url SHA-256 of the exact request body the broker forwarded."""
    return _b64url(hashlib.sha256(body).digest())


def check_body(verified: VerifiedAssertion, body: bytes) -> None:
    """Refuse an assertion whose ``req_sha256`` is missing or not that of ``body``."""
    claimed = verified.claims.get("req_sha256")
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, body_digest(body)):
        raise InvalidAssertion("the assertion was not issued for this request body")


def _same_target(htu: str, target: str | tuple[str, ...]) -> bool:
    """Whether ``htu`` (an absolute URL) names the request target ``target`` — a path with
    an optional ``?query`` as the backend received it, or several equivalent spellings."""
    wanted = urllib.parse.urlsplit(htu)
    path = urllib.parse.unquote(wanted.path) or "/"
    query = sorted(urllib.parse.parse_qsl(wanted.query, keep_blank_values=True))
    for candidate in (target,) if isinstance(target, str) else target:
        got_path, _, got_query = candidate.partition("?")
        if (urllib.parse.unquote(got_path) or "/") != path:
            continue
        if sorted(urllib.parse.parse_qsl(got_query, keep_blank_values=True)) == query:
            return True
    return False


def check_target(verified: VerifiedAssertion, method: str, target: str | tuple[str, ...]) -> None:
    """Refuse an assertion whose ``htm``/``htu`` are missing or not this request's method and
    path (``target``: the path and ``?query`` the backend received; see the module doc)."""
    htm, htu = verified.claims.get("htm"), verified.claims.get("htu")
    if not isinstance(htm, str) or not isinstance(htu, str):
        raise InvalidAssertion("the assertion does not name this request's method and URL")
    if htm.upper() != method.upper():
        raise InvalidAssertion(f"the assertion was issued for a {htm[:10]!r} request")
    if not _same_target(htu, target):
        raise InvalidAssertion("the assertion was issued for another URL")


def check_request(
    verified: VerifiedAssertion,
    *,
    method: str,
    target: str | tuple[str, ...],
    body: bytes | None = None,
) -> None:
    """The whole rule for one request: ``htm``/``htu``, when the assertion has them, must be
    this method and URL; ``req_sha256``, when it has it, must be that of ``body`` (which must
    then be given). An assertion with neither is refused. ``body=None`` means the body is
    streamed to the app unread: only an assertion bound to the method and URL passes.
    """
    claims = verified.claims
    targeted = "htm" in claims or "htu" in claims
    if targeted:
        check_target(verified, method, target)
    if "req_sha256" in claims:
        if body is None:
            raise InvalidAssertion("the assertion is bound to a body that was not read")
        check_body(verified, body)
    elif not targeted:
        raise InvalidAssertion("the assertion was not issued for this request body")


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
    except jwt.ImmatureSignatureError:
        raise InvalidAssertion("the assertion is not valid yet (clock skew?)") from None
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


def _public_key(key: Any) -> ec.EllipticCurvePublicKey:
    if isinstance(key, Mapping):
        key = jwt.PyJWK(dict(key), algorithm="ES256").key
    elif isinstance(key, str | bytes):
        key = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("key= must be an EC P-256 public key (object, PEM or JWK)")
    return key


def verify_with_key(
    token: str,
    *,
    audience: str,
    issuer: str = DEFAULT_ISSUER,
    key: ec.EllipticCurvePublicKey | str | Mapping[str, Any] | None = None,
    secret: str | bytes | None = None,
    leeway: float = 5.0,
    body: bytes | None = None,
    method: str | None = None,
    target: str | tuple[str, ...] | None = None,
) -> VerifiedAssertion:
    """Verify against one known key: an ES256 public key (object, PEM or JWK dict), or an
    HS256 ``secret`` — exactly one, and the token's algorithm must match it.

    For a backend that pins the broker's public key instead of fetching the JWKS, and for
    ``assertion = "hs256"`` workflows. No replay window: use ``AssertionVerifier`` for that.
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
    if method is not None and target is not None:
        check_request(verified, method=method, target=target, body=body)
    elif body is not None:
        check_body(verified, body)
    return verified


# --- the broker's key set ------------------------------------------------------------------


def es256_keys(document: Any) -> dict[str, Any]:
    """The usable ES256 verification keys of a JWKS document by ``kid``; anything else
    (``oct`` keys above all: a public HMAC key would let anyone sign) is skipped."""
    keys: dict[str, Any] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return keys
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
            continue
        if jwk.get("alg") not in (None, "ES256") or "d" in jwk:
            continue
        try:
            keys[kid] = jwt.PyJWK(jwk, algorithm="ES256").key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
    return keys


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a JWKS URL that redirects is a misconfiguration, not a hint to follow


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _get(url: str, timeout: float) -> bytes:
    with _OPENER.open(url, timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("key set larger than 512 KiB")
    return body


def urllib_fetch(timeout: float = 3.0) -> Fetch:
    """The default ``fetch``: a plain GET in a worker thread, no proxies, no redirects."""

    async def fetch(url: str) -> bytes:
        return await asyncio.to_thread(_get, url, timeout)

    return fetch


class KeySet:
    """The broker's public keys, fetched from its JWKS URL and cached.

    Refetched when older than ``max_age`` (the broker serves ``max-age=300``) and when a
    token names an unknown ``kid`` (a rotation) — at most once per ``cooldown``, one fetch
    at a time, so a spray of forged ``kid`` values is not a fetch storm. While the broker
    cannot be reached the last good keys keep working; before any fetch succeeded every
    request is refused (``AssertionKeysUnavailable``), and the log says why.
    """

    def __init__(
        self,
        url: str,
        *,
        fetch: Fetch | None = None,
        cooldown: float = 30.0,
        cold_cooldown: float = 2.0,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch_bytes = fetch or urllib_fetch()
        self._cooldown = cooldown
        self._cold_cooldown = cold_cooldown
        self._max_age = max_age
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0

    @property
    def ready(self) -> bool:
        return self._fetched_at is not None

    async def key(self, kid: str) -> Any | None:
        """The public key for ``kid`` or None; ``AssertionKeysUnavailable`` while no key set
        was ever fetched."""
        if self._fetched_at is not None and self._clock() - self._fetched_at >= self._max_age:
            await self.refresh()
        found = self._keys.get(kid)
        if found is not None:
            return found
        await self.refresh()
        if self._fetched_at is None:
            raise AssertionKeysUnavailable(
                f"the broker's key set at {self.url} could not be fetched yet"
            )
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch unless one was tried within the cooldown; callers share one fetch."""
        task = self._inflight
        if task is None:
            now = self._clock()
            wait = self._cooldown if self._fetched_at is not None else self._cold_cooldown
            if self._last_attempt is not None and now - self._last_attempt < wait:
                return
            self._last_attempt = now
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._done)
        await asyncio.shield(task)

    def _done(self, task: asyncio.Future[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            keys = es256_keys(json.loads(await self._fetch_bytes(self.url)))
            if not keys:
                raise ValueError("no ES256 signature keys in it")
        except (OSError, urllib.error.URLError, TimeoutError, ValueError, RecursionError) as exc:
            reason = str(exc) or type(exc).__name__
            if self._fetched_at is None:
                log.error(
                    "chatkit-broker kit: cannot fetch the broker's keys from %s (%s); "
                    "refusing every request (503) until it answers",
                    self.url,
                    reason,
                )
            else:
                log.warning(
                    "chatkit-broker kit: refetching the broker's keys from %s failed (%s); "
                    "keeping the cached keys",
                    self.url,
                    reason,
                )
            return
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("chatkit-broker kit: %d key(s) fetched from %s", len(keys), self.url)


@dataclass
class AssertionVerifier:
    """Verifies broker assertions: ES256 against the broker's JWKS (``jwks_url``), or HS256
    with the shared ``secret`` — exactly one.

    ``single_use`` (on by default) remembers each ``jti`` until its assertion expires and
    refuses a second use, in this process: run one verifier per process, and put a shared
    store in front of it if several processes must agree.
    """

    jwks_url: str | None = None
    audience: str = ""
    issuer: str = DEFAULT_ISSUER
    secret: str | bytes | None = None
    leeway: float = 5.0
    cooldown: float = 30.0
    fetch: Fetch | None = None
    clock: Callable[[], float] = time.monotonic
    single_use: bool = True
    wall_clock: Callable[[], float] = time.time
    _keys: KeySet | None = field(default=None, init=False, repr=False)
    _spent: OrderedDict[str, float] = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.audience:
            raise TypeError("audience= is required: the workflow's audience (default its name)")
        if (self.jwks_url is None) == (self.secret is None):
            raise TypeError("pass exactly one of jwks_url= (ES256) or secret= (HS256)")
        if self.jwks_url is not None:
            self._keys = KeySet(
                self.jwks_url,
                fetch=self.fetch,
                cooldown=self.cooldown,
                cold_cooldown=min(self.cooldown, 2.0),
                clock=self.clock,
            )

    @property
    def keys(self) -> KeySet | None:
        return self._keys

    async def verify(
        self,
        token: str | None,
        *,
        body: bytes | None = None,
        method: str | None = None,
        target: str | tuple[str, ...] | None = None,
    ) -> VerifiedAssertion:
        """The verified user and claims, or ``InvalidAssertion`` / ``AssertionKeysUnavailable``.

        With ``body`` (the raw request body) the assertion must carry the matching
        ``req_sha256``, so a captured assertion cannot be sent with another request. With
        ``method`` and ``target`` (the request's path and ``?query``) the whole rule of
        ``check_request`` applies: an upload's assertion, which has no ``req_sha256``, passes
        when its ``htm``/``htu`` name this request — then ``body`` may be None (streamed).
        """
        verified = await self._verified(token)
        if method is not None and target is not None:
            check_request(verified, method=method, target=target, body=body)
        elif body is not None:
            check_body(verified, body)
        self.spend(verified)
        return verified

    async def authenticate(self, token: str | None) -> VerifiedAssertion:
        """Signature, ``typ``, ``aud``, ``iss`` and expiry only — no body, no target, not
        spent. For a caller that checks the rest itself (``check_request``) and then calls
        ``spend``, as ``AssertionMiddleware`` does to decide whether to read the body."""
        return await self._verified(token)

    def spend(self, verified: VerifiedAssertion) -> None:
        """Mark the assertion's ``jti`` used; ``InvalidAssertion`` if it was (a replay).
        Does nothing when ``single_use`` is off."""
        if self.single_use:
            self._spend(verified)

    def _spend(self, verified: VerifiedAssertion) -> None:
        now = self.wall_clock()
        while self._spent:
            jti, expires = next(iter(self._spent.items()))
            if expires + self.leeway >= now and len(self._spent) < MAX_REMEMBERED_JTIS:
                break
            del self._spent[jti]
        jti = str(verified.claims["jti"])
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
        key = await self._keys.key(kid)
        if key is None:
            raise InvalidAssertion(
                "the assertion was signed with a key the broker does not publish"
            )
        return _decode(
            token or "",
            key,
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
    method: str | None = None,
    target: str | tuple[str, ...] | None = None,
) -> VerifiedAssertion:
    """One-call verification: ``await verify(header, jwks_url=…, audience=…, body=…)``.

    Keeps one ``AssertionVerifier`` (one cached key set, one replay window) per set of
    arguments for the life of the process.
    """
    cache_key = (jwks_url, audience, issuer, secret, leeway)
    verifier = _VERIFIERS.get(cache_key)
    if verifier is None:
        verifier = _VERIFIERS[cache_key] = AssertionVerifier(
            jwks_url=jwks_url, audience=audience, issuer=issuer, secret=secret, leeway=leeway
        )
    return await verifier.verify(token, body=body, method=method, target=target)
