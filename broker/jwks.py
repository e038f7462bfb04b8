"""A JWKS key cache that fetches asynchronously and cannot be turned into a fetch storm.

PyJWT's ``PyJWKClient`` blocks the event loop and refetches on every unknown ``kid``; this
cache fetches with aiohttp, lets one refresh run at a time, refreshes at most once per
cooldown, and keeps the last good keys while the endpoint is down (SECURITY.md #5, #19-#24).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWKError, PyJWTError

from .errors import AuthUnavailable
from .httpread import read_capped

log = logging.getLogger("broker.jwks")

MAX_JWKS_BYTES = 512 * 1024
_FAMILY = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "OKP": ("EdDSA",),
}
_EC_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True)
class SigningKey:
    """A verification key and the only algorithms it may verify (pinned, never from a token)."""

    kid: str
    key: Any
    algorithms: tuple[str, ...]


def signing_keys(document: Any, allowed: tuple[str, ...]) -> dict[str, SigningKey]:
    """The usable signature keys of a JWKS document; anything odd is skipped, not trusted.

    Symmetric (``oct``) keys are never accepted: a JWKS is public, so an HMAC key from it
    would let anyone sign tokens.
    """
    keys: dict[str, SigningKey] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return keys
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid, kty, crv = jwk.get("kid"), jwk.get("kty"), jwk.get("crv")
        if not isinstance(kid, str) or not kid or jwk.get("use", "sig") != "sig":
            continue
        if not isinstance(kty, str) or not isinstance(crv, str | None):
            continue
        if kty == "EC":
            family: tuple[str, ...] = (_EC_BY_CURVE.get(crv or "", ""),)
        else:
            family = _FAMILY.get(kty, ())
        alg = jwk.get("alg")
        algorithms = tuple(a for a in family if a in allowed and (alg is None or a == alg))
        if not algorithms:
            continue
        try:
            parsed = PyJWK(jwk, algorithm=algorithms[0])
        except (PyJWTError, PyJWKError, ValueError, TypeError):  # e.g. InvalidKeyError
            continue
        keys[kid] = SigningKey(kid=kid, key=parsed.key, algorithms=algorithms)
    return keys


class JWKSCache:
    """Keys from one JWKS URL, refreshed on demand within a cooldown.

    Staleness bound (SECURITY.md #23): a key set older than ``max_age`` (default 10 min) is
    refetched before it is used again, so a key removed from the JWKS stops verifying at most
    ``max_age`` after the last fetch that still listed it — as long as the endpoint answers.
    While it does not, the last good keys keep working (stale-while-error), because refusing
    every sign-in during an identity-provider outage is the worse failure.
    """

    def __init__(
        self,
        url: str,
        http: Callable[[], aiohttp.ClientSession],
        *,
        algorithms: tuple[str, ...],
        cooldown: float = 60.0,
        cold_cooldown: float = 5.0,
        timeout: float = 3.0,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self._on_fetch = on_fetch  # called with "ok" or "error" after each fetch (metrics)
        self._http = http
        self._algorithms = algorithms
        self._cooldown = cooldown
        self._cold_cooldown = cold_cooldown
        self._timeout = timeout
        self.max_age = max_age
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_ok = False
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def ready(self) -> bool:
        """True once a key set has been fetched successfully at least once."""
        return self._fetched_ok

    async def readiness(self) -> str | None:
        """For ``/readyz``: a problem while no key set was ever fetched (one try per cooldown)."""
        if not self._fetched_ok:
            await self.refresh()
        return None if self._fetched_ok else f"the JWKS at {self.url} has never been fetched"

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    async def key(self, kid: str) -> SigningKey | None:
        """The key for ``kid``, refreshing (within the cooldown) when it is unknown.

        Raises ``AuthUnavailable`` only while no key set was ever fetched: then the
        caller did nothing wrong, the broker simply cannot verify anyone yet.
        """
        if self._fetched_ok and self._clock() - self._fetched_at >= self.max_age:
            await self.refresh()  # within the cooldown; on failure the old keys stay
        found = self._keys.get(kid)
        if found is not None:
            return found
        await self.refresh()
        if not self._fetched_ok:
            raise AuthUnavailable(
                "The sign-in key set (BROKER_JWT_JWKS_URL) could not be fetched yet; try again shortly."
            )
        return self._keys.get(kid)

    async def refresh(self, *, force: bool = False) -> None:
        """Fetch the key set unless one was fetched within the cooldown; one fetch at a time.

        Callers that arrive while a fetch is running wait for that fetch. The fetch is its
        own task, so a caller that is cancelled (a client hanging up) neither cancels it
        nor makes later callers skip it.
        """
        task = self._inflight
        if task is None:
            now = self._clock()
            wait = self._cooldown if self._fetched_ok else self._cold_cooldown
            if not force and self._last_attempt is not None and now - self._last_attempt < wait:
                return
            self._last_attempt = now
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._fetch_done)
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with self._http().get(self.url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await read_capped(resp.content, MAX_JWKS_BYTES)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("key set larger than 512 KiB")
            keys = signing_keys(json.loads(body), self._algorithms)
            if not keys:
                raise ValueError("no usable signature keys (kid, kty RSA/EC/OKP, use sig)")
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            state = "keeping the cached keys" if self._fetched_ok else "no keys yet"
            log.warning(
                "JWKS fetch from %s failed (%s); %s",
                self.url,
                str(exc) or type(exc).__name__,
                state,
            )
            if self._on_fetch is not None:
                self._on_fetch("error")
            return
        self._keys = keys
        self._fetched_ok = True
        self._fetched_at = self._clock()
        if self._on_fetch is not None:
            self._on_fetch("ok")
        log.info("JWKS fetched from %s: %d key(s)", self.url, len(keys))
