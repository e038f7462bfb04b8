"""Test material for the verifier: fixed keys, a token forger, JWK helpers and a tiny server.

The keys are fixed (generated once, test-only) so that attack tokens built from them are
fixed vectors: the same bytes on every run. ``forge`` signs whatever header and payload it
is given, including ones PyJWT refuses to produce (``alg: none``, wrong-case algorithms, a
public key used as an HMAC secret).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .env import SECRET

# Far-future expiry for fixed vectors: 2100-01-01T00:00:00Z.
FIXED_EXP = 4102444800
FIXED_IAT = 1700000000

RSA_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDp/QHvk3pDPlCf
gvCHnrYugjw8tLCZOpM/sAvJ1oOd8hpw7J30ZxYTdSkPlDhux3zO+e5AH95d245x
ptxDI55424Y0h6Gf0mswHbb5Sue8py/jP7Uiymgqq86LMNdMVUOyfRI4j1Gv7Aiv
UJ+IsJqojL7GflxHJjacjtLT98V1f+OwqK4iQLcoH3bcoBe4WT8QsI6njq8b4xap
3OlzrT4ojuBe3pgSsEazjG6mGz8avfpqXwXQ+fLQ0qsgVqLI0M9iqpRpx4WJ+S7Q
V9O2h4RYzX+hCgqz+Tl0zYFEmFkqEG0zRMgbSpawBanSk2AXosEHadRE2jGeBBA4
7NhpYWh/AgMBAAECggEANuL3akhQ3KcoaFJhs55iI8S+9op4Bml8EutryHu+QfWB
iE2ou6TWw9euuw3MsweuWiq8XWRcV+3hmv1GG6WmTblI4NeT7RaBuDawLggJFfKt
xAO0rKWIC8JjX7kkN66kg6Dc/lF4GukmHGGwGnM6xCDHu232nWX0V4MVJ02ujuHv
HJaXz3wNEjRU9FUowpS0M9v90wPv+czs52PcjnyYfFIpGtDiMqxs6jL7TYhrg+Qc
EOIgBhKBx4t2QahAmk8t8vKH3EEvi//SJVxMy1BQ7egK/fxM81f+5jupA0CkUH3E
MoyNdSiPnc/tJ91At6SBaql5mXusEKflG4vhGJtMCQKBgQD7hmC050nhq5vvEMAC
YuSYfZPANhGnx5l0ZXStlYTe0PV98U0kKr/kHT0WJhSna6/kgyJjyEtqgsFZIKpq
jc70plL7h+bOedKJC1+/0X1GE9N7GiUj2N0BMJyXI2YqaNlBT6U9FUrQngFBath+
fXA+YRqx6vbLT57J3R9W4s08wwKBgQDuJsF2zlvBhARzuA6PIpMHURTzoN5yQoEb
xpnTe9Jcwy5AW3NLcpg3clNROyOAJgb5wrKq/V2nQt+ECafiuhHrfHAyPUy12Cit
Pk8Vt1w0AfvZ5Ve46tkKDTpvjTGXIX/U8Nl6LQQKX34a+WZgXQub5GRHUg6am0O5
TdCXtyoZlQKBgQDYDw5zV1p3p9pC+bh2VEzZUMXijo+L+EExYxVfJtkELaszjFwf
fTlo0lTu+bc0OaTWPm8EF8HwtHEyBoVdEoN8VINj3dG9+5eGcWbGd0WNNOqtDEBr
EpaFtyRMD/Rq6bX2DFx8pBWoLpIVh5qAzW/lpbQwsQ1eh/52mKObFygF0QKBgQCa
ens95IeyVD9LDNYs1KGIunibu/rvJOJ4sO+xNf1zfIvw5SE5jIDeXoNbCsBxbLlT
o46fya/JQmCYVmcXc9kR5msku4yZ3DgugF9uV70wYyUJ53FqmrPkiEYie/Tx8qHn
778yOCcJz32OY76bvV89ZP4DIWAlu5dHiQlIkGB3rQKBgD1uYjy9HqyupCRE82XW
/ushflGGf5stY2QSxv5JpHL2XeUdrrswH+I8Zg/ryLz/Pl3VK2dVJE3H60ULETHI
NdDy1fmxIaMtA53nFMPBqeJz9XZZJZ/cQ9tCx7/1u4C6papJhjf6vnUUGhbJWlDa
5ZIwnBJOHd4XEXC/Iw0whyE4
-----END PRIVATE KEY-----
"""

EC_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQggd252HCE+Yk2BHAS
HS9BjLXTfjYxL65vrTk57ZVV2LehRANCAASTvXADa9lg4XccYfxHRFQhezBZ+ksX
hLB7E2BUo5z89YQLXTw8Kjt16hUjSfgyk43/QbiNMAOoDpMsLU2GLGEr
-----END PRIVATE KEY-----
"""

RSA_KEY = serialization.load_pem_private_key(RSA_PRIVATE_PEM, password=None)
EC_KEY = serialization.load_pem_private_key(EC_PRIVATE_PEM, password=None)
assert isinstance(RSA_KEY, rsa.RSAPrivateKey) and isinstance(EC_KEY, ec.EllipticCurvePrivateKey)


@functools.cache
def attacker_key() -> rsa.RSAPrivateKey:
    """An RSA key nobody configured: what an attacker signs with."""
    return rsa.generate_private_key(65537, 2048)


def public_forms(private: Any) -> dict[str, bytes]:
    """The public key in every form an attacker might feed to HMAC as the "secret"."""
    pub = private.public_key()
    P = serialization.PublicFormat
    E = serialization.Encoding
    algo = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(pub, rsa.RSAPublicKey)
        else jwt.algorithms.ECAlgorithm
    )
    return {
        "pem": pub.public_bytes(E.PEM, P.SubjectPublicKeyInfo),
        "ssh": pub.public_bytes(E.OpenSSH, P.OpenSSH),
        "jwk-json": algo.to_jwk(pub).encode(),
        "der": pub.public_bytes(E.DER, P.SubjectPublicKeyInfo),
    }


def public_pem(private: Any) -> str:
    return public_forms(private)["pem"].decode()


def jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``private`` with a ``kid`` (and ``use``/``alg`` unless overridden)."""
    pub = private.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(pub, as_dict=True)
        data.setdefault("alg", "RS256")
    else:
        data = jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)
        data.setdefault("alg", "ES256")
    data.update({"kid": kid, "use": "sig"})
    data.update(extra)
    return {k: v for k, v in data.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(part: dict[str, Any] | bytes) -> str:
    raw = part if isinstance(part, bytes) else json.dumps(part, separators=(",", ":")).encode()
    return b64url(raw)


def forge(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    *,
    hmac_key: bytes | str | None = SECRET,
    signature: str | None = None,
) -> str:
    """A compact JWS with exactly this header and payload, HMAC-SHA256-signed with ``hmac_key``
    (any bytes, including a public key), or carrying ``signature`` verbatim."""
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    if signature is None:
        key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        assert key is not None
        signature = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid default claims with overrides; an override of None deletes the claim."""
    now = int(time.time())
    data: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 300}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def fixed_claims(**overrides: Any) -> dict[str, Any]:
    """Claims with fixed times, so tokens built from them are fixed vectors."""
    return claims(iat=FIXED_IAT, exp=FIXED_EXP, **overrides)


def sign(
    payload: dict[str, Any],
    key: Any = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    """A properly signed token (PyJWT does the signing)."""
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def token(
    sub: str | None = "alice",
    *,
    key: Any = SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    ttl: int = 300,
    **overrides: Any,
) -> str:
    """A sign-in token: ``claims`` for ``sub`` living ``ttl`` seconds, signed; an override of
    None deletes a claim. The one token minter behind the ``token`` fixture and
    ``adversarial.make_token``; every token is handed to the log audit, which fails the run if
    one reaches a log."""
    from . import log_audit  # (imported late: pytest loads it as a plugin first)

    now = int(time.time())
    payload = claims(**{"sub": sub, "iat": now, "exp": now + ttl, **overrides})
    signed = sign(payload, key, algorithm, headers)
    log_audit.add_secret(signed)
    return signed


@dataclass
class TinyServer:
    """A loopback aiohttp server in the test's own loop that counts hits per path and answers
    with a scripted handler (default: 404). Used as a second, "elsewhere" server."""

    handler: Callable[[web.Request], Any] | None = None
    hits: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> TinyServer:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            if self.handler is None:
                return web.Response(status=404)
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
