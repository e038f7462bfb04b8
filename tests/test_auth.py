"""SECURITY.md's must-reject table, row by row, through the HTTP API against the fake OpenAI.

Every refused request must: answer 401 ``unauthenticated`` (403 ``workflow_not_allowed`` for
claim policies), carry the RFC 6750 challenge, say which problem it found without echoing the
token, and send nothing upstream. Rows 19-24 (the JWKS cache) live in ``test_jwks.py``. Last,
the verified-token cache: a token that just verified is not verified again, within bounds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web

from broker.auth import Verifier
from broker.config import JWTSettings, Settings
from broker.errors import Unauthenticated

from .support import SECRET, WF_SALES, WF_SUPPORT, app_client, auth
from .support.jwt_kit import (
    EC_KEY,
    FIXED_EXP,
    RSA_KEY,
    TinyServer,
    attacker_key,
    b64url,
    claims,
    fixed_claims,
    forge,
    jwk,
    public_forms,
    public_pem,
    sign,
)
from .support.mint import MINT, SUPPORT

INVALID = 'Bearer error="invalid_token"'
SUPA_REF = "qwertyuiopasdfghjklz"
SUPA_ISS = f"https://{SUPA_REF}.supabase.co/auth/v1"
AUTH0_ISS = "https://example-tenant.eu.auth0.com/"
AUTH0_AUD = "https://api.example.com"
OTHER_SECRET = "another-secret-that-is-also-32-bytes-long!!"
LONG_SECRET = "a-64-byte-secret-enables-hs384-and-hs512-by-default-0123456789ab"

# ---------------------------------------------------------------------------------------------
# Key-source configurations. Each is a set of env overrides on the default live config.


def _configs(jwks_url: str) -> dict[str, dict[str, str | None]]:
    return {
        "hs": {},
        "hs-64-byte-secret": {"BROKER_JWT_SECRET": LONG_SECRET},
        "supabase-legacy": {
            "BROKER_JWT_AUDIENCE": "authenticated",
            "BROKER_JWT_ISSUER": SUPA_ISS,
        },
        "rsa-pem": {"BROKER_JWT_SECRET": None, "BROKER_JWT_PUBLIC_KEY": public_pem(RSA_KEY)},
        "ec-pem": {"BROKER_JWT_SECRET": None, "BROKER_JWT_PUBLIC_KEY": public_pem(EC_KEY)},
        "secret+rsa-pem": {"BROKER_JWT_PUBLIC_KEY": public_pem(RSA_KEY)},
        "jwks": {"BROKER_JWT_SECRET": None, "BROKER_JWT_JWKS_URL": jwks_url},
        # Supabase mid-migration: legacy HS secret and the new signing keys side by side.
        "supabase-migration": {
            "BROKER_JWT_JWKS_URL": jwks_url,
            "BROKER_JWT_AUDIENCE": "authenticated",
            "BROKER_JWT_ISSUER": SUPA_ISS,
        },
        "auth0": {
            "BROKER_JWT_SECRET": None,
            "BROKER_JWT_JWKS_URL": jwks_url,
            "BROKER_JWT_AUDIENCE": AUTH0_AUD,
            "BROKER_JWT_ISSUER": AUTH0_ISS,
        },
    }


JWKS_DOC = {"keys": [jwk(RSA_KEY, "rsa-1"), jwk(EC_KEY, "ec-1")]}


@pytest.fixture
def configured(openai, make_settings) -> Callable[[str], Settings]:
    """``configured("rsa-pem")``: settings for a named key source; JWKS served by the fake."""
    openai.jwks = json.loads(json.dumps(JWKS_DOC))

    def build(name: str) -> Settings:
        return make_settings(**_configs(openai.url + "/jwks.json")[name])

    return build


# ---------------------------------------------------------------------------------------------
# Token builders. Each case is a zero-argument callable so that times are taken at run time.


def hs(**overrides: Any) -> Callable[[], str]:
    return lambda: sign(claims(**overrides))


def rs(kid: str | None = "rsa-1", algorithm: str = "RS256", **overrides: Any) -> Callable[[], str]:
    headers = {"kid": kid} if kid is not None else None
    return lambda: sign(claims(**overrides), RSA_KEY, algorithm, headers)


def es(kid: str | None = "ec-1", **overrides: Any) -> Callable[[], str]:
    headers = {"kid": kid} if kid is not None else None
    return lambda: sign(claims(**overrides), EC_KEY, "ES256", headers)


def forged(header: dict[str, Any] | bytes, payload: Any = None, **kw: Any) -> Callable[[], str]:
    """A token forged when the test runs; a callable ``payload`` is built then too, so its
    ``exp`` is not hours old on a slow run (claims made at import expired mid-suite)."""

    def make() -> str:
        body = claims() if payload is None else payload() if callable(payload) else payload
        return forge(header, body, **kw)

    return make


def lone_surrogate_sub() -> Callable[[], str]:
    """A validly signed token whose JSON spells ``sub`` as an unpaired UTF-16 surrogate."""

    def make() -> str:
        payload = json.dumps(claims(sub="@SUB@")).replace('"@SUB@"', '"\\ud800"')
        return forge({"alg": "HS256", "typ": "JWT"}, payload.encode())

    return make


def supa(**overrides: Any) -> dict[str, Any]:
    """Claims of a Supabase user access token."""
    base = {
        "iss": SUPA_ISS,
        "aud": "authenticated",
        "role": "authenticated",
        "is_anonymous": False,
        "email": "alice@example.com",
        "session_id": "5f1c6c1a-0000-4000-8000-000000000000",
    }
    return claims(**{**base, **overrides})


def supa_hs(**overrides: Any) -> Callable[[], str]:
    return lambda: sign(supa(**overrides))


def _huge() -> str:
    return sign(claims(pad="x" * 9000))


def _unsigned_copy() -> str:
    good = sign(claims())
    return good.rsplit(".", 1)[0] + "."


def _payload_bytes(raw: bytes) -> Callable[[], str]:
    return lambda: forge({"alg": "HS256", "typ": "JWT"}, raw)


# id -> (configuration, token, fragment the message must contain). Rows refer to SECURITY.md.
def supabase_api_key(role: str) -> Callable[[], str]:
    """A legacy Supabase API key (anon / service_role): a JWT from the project secret, no sub/aud."""
    claims_ = {
        "iss": "supabase",
        "ref": SUPA_REF,
        "role": role,
        "iat": 1700000000,
        "exp": FIXED_EXP,
    }
    return lambda: sign(claims_)


REJECT: dict[str, tuple[str, Callable[[], str], str]] = {
    # HS384/HS512 need a secret as long as their hash; a 43-byte secret only allows HS256
    "hs384-with-short-secret": ("hs", lambda: sign(claims(), algorithm="HS384"), "'HS384'"),
    # 1 alg none
    "r01-alg-none": ("hs", forged({"alg": "none", "typ": "JWT"}, signature=""), "'none'"),
    "r01-alg-none-with-signature": ("hs", forged({"alg": "none"}), "'none'"),
    "r01-alg-none-on-pem": ("rsa-pem", forged({"alg": "none"}, signature=""), "'none'"),
    "r01-alg-none-on-jwks": (
        "jwks",
        forged({"alg": "none", "kid": "rsa-1"}, signature=""),
        "'none'",
    ),
    "r01-alg-missing": ("hs", forged({"typ": "JWT"}), "algorithm"),
    "r01-alg-null": ("hs", forged({"alg": None}), "algorithm"),
    "r01-alg-list": ("hs", forged({"alg": ["HS256"]}), "algorithm"),
    # 2 wrong case
    "r02-alg-hs256-lowercase": ("hs", forged({"alg": "hs256"}), "'hs256'"),
    "r02-alg-Hs256": ("hs", forged({"alg": "Hs256"}), "'Hs256'"),
    "r02-alg-NONE": ("hs", forged({"alg": "NONE"}, signature=""), "'NONE'"),
    "r02-alg-None": ("hs", forged({"alg": "None"}, signature=""), "'None'"),
    "r02-alg-rs256-lowercase": ("rsa-pem", forged({"alg": "rs256"}), "'rs256'"),
    # 4 asymmetric-only config vs HS256, and the reverse
    "r04-hs256-on-rsa-pem": ("rsa-pem", hs(), "'HS256'"),
    "r04-hs256-on-ec-pem": ("ec-pem", hs(), "'HS256'"),
    "r04-hs256-on-jwks": ("jwks", forged({"alg": "HS256", "kid": "rsa-1"}), "'HS256'"),
    "r04-rs256-on-secret": ("hs", rs(), "'RS256'"),
    "r04-es256-on-secret": ("hs", es(), "'ES256'"),
    "r04-es256-on-rsa-pem": ("rsa-pem", es(kid=None), "'ES256'"),
    "r04-rs256-on-ec-pem": ("ec-pem", rs(kid=None), "'RS256'"),
    "r04-es256-with-rsa-kid": (
        "jwks",
        lambda: sign(claims(), EC_KEY, "ES256", {"kid": "rsa-1"}),
        "does not match",
    ),
    "r04-rs256-other-key-on-pem": (
        "rsa-pem",
        lambda: sign(claims(), attacker_key(), "RS256"),
        "signature",
    ),
    # 5/6 kid (JWKS mode; the fetch counts are asserted in test_jwks.py)
    "r05-kid-unknown": ("jwks", rs(kid="nobody"), "'kid'"),
    "r05-kid-path": ("jwks", rs(kid="../../dev/null"), "'kid'"),
    "r05-kid-sql": ("jwks", rs(kid="' OR 1=1 --"), "'kid'"),
    "r05-kid-int": ("jwks", forged({"alg": "RS256", "kid": 7}, signature="AAAA"), "'kid'"),
    "r05-kid-long": ("jwks", rs(kid="k" * 5000), "'kid'"),
    "r05-kid-empty": ("jwks", rs(kid=""), "'kid'"),
    "r06-kid-missing": ("jwks", rs(kid=None), "'kid'"),
    # 8 crit
    "r08-crit-unknown": (
        "hs",
        forged({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}),
        "critical",
    ),
    "r08-crit-b64": ("hs", forged({"alg": "HS256", "crit": ["b64"], "b64": True}), "critical"),
    # 9 exp
    "r09-expired": ("hs", hs(exp=int(time.time()) - 3600), "expired"),
    "r09-exp-missing": ("hs", hs(exp=None), "'exp'"),
    "r09-exp-text": ("hs", hs(exp="tomorrow"), "'exp'"),
    "r09-exp-numeric-string": (
        "hs",
        lambda: sign(claims(exp=str(int(time.time()) + 300))),
        "'exp'",
    ),
    "r09-exp-bool": ("hs", hs(exp=True), "exp"),
    "r09-exp-object": ("hs", hs(exp={"t": 1}), "'exp'"),
    # 10 nbf / iat
    "r10-nbf-future": ("hs", lambda: sign(claims(nbf=int(time.time()) + 3600)), "not valid yet"),
    "r10-iat-future": ("hs", lambda: sign(claims(iat=int(time.time()) + 3600)), "not valid yet"),
    "r10-nbf-text": ("hs", hs(nbf="now"), "'nbf'"),
    "r10-iat-text": ("hs", hs(iat="now"), "'iat'"),
    "r10-iat-numeric-string": ("hs", lambda: sign(claims(iat=str(int(time.time())))), "'iat'"),
    # 11 iss
    "r11-iss-wrong": (
        "supabase-legacy",
        supa_hs(iss="https://someoneelse.supabase.co/auth/v1"),
        "issuer",
    ),
    "r11-iss-prefix-attack": ("supabase-legacy", supa_hs(iss=SUPA_ISS + "evil"), "issuer"),
    "r11-iss-partial": ("supabase-legacy", supa_hs(iss=SUPA_ISS[: -len("/v1")]), "issuer"),
    "r11-iss-trailing-slash": ("supabase-legacy", supa_hs(iss=SUPA_ISS + "/"), "issuer"),
    "r11-iss-missing": ("supabase-legacy", supa_hs(iss=None), "'iss'"),
    "r11-iss-list": (
        "supabase-legacy",
        forged({"alg": "HS256"}, lambda: supa(iss=[SUPA_ISS])),
        "issuer",
    ),
    "r11-auth0-iss-without-slash": (
        "auth0",
        rs(iss=AUTH0_ISS.rstrip("/"), aud=AUTH0_AUD),
        "issuer",
    ),
    # 12 aud
    "r12-aud-wrong": ("supabase-legacy", supa_hs(aud="anon"), "audience"),
    "r12-aud-missing": ("supabase-legacy", supa_hs(aud=None), "'aud'"),
    "r12-aud-empty": ("supabase-legacy", supa_hs(aud=""), "'aud'"),
    "r12-aud-list-without-ours": ("supabase-legacy", supa_hs(aud=["anon", "service"]), "audience"),
    "r12-aud-non-string-member": ("supabase-legacy", supa_hs(aud=["authenticated", 1]), "audience"),
    "r12-aud-object": ("supabase-legacy", supa_hs(aud={"authenticated": True}), "audience"),
    "r12-aud-sent-but-none-configured": ("hs", hs(aud="authenticated"), "no audience configured"),
    # 13 Supabase API keys (legacy-secret JWTs without sub/aud)
    "r13-supabase-anon-key": (
        "supabase-legacy",
        supabase_api_key("anon"),
        "'sub'",
    ),
    "r13-supabase-service-role-key": (
        "supabase-legacy",
        supabase_api_key("service_role"),
        "'sub'",
    ),
    "r13-anon-key-no-aud-config": (
        "hs",
        supabase_api_key("anon"),
        "'sub'",
    ),
    # 14 sub
    "r14-sub-missing": ("hs", hs(sub=None), "'sub'"),
    "r14-sub-empty": ("hs", hs(sub=""), "'sub'"),
    "r14-sub-blank": ("hs", hs(sub="   "), "'sub'"),
    "r14-sub-int": ("hs", hs(sub=123), "'sub'"),
    "r14-sub-list": ("hs", hs(sub=["alice"]), "'sub'"),
    "r14-sub-too-long": ("hs", hs(sub="a" * 513), "512"),
    "r14-sub-control-chars": ("hs", hs(sub="alice\nadmin"), "control characters"),
    "r14-sub-lone-surrogate": ("hs", lone_surrogate_sub(), "invalid Unicode"),
    # 16 token-type confusion
    "r16-id-token-for-another-client": (
        "supabase-legacy",
        supa_hs(aud="my-spa-client-id", nonce="n-0S6_WzA2Mj"),
        "audience",
    ),
    "r16-firebase-custom-token": (
        "supabase-legacy",
        lambda: sign(
            claims(
                iss="sa@project.iam.gserviceaccount.com",
                sub="sa@project.iam.gserviceaccount.com",
                aud="https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit",
                uid="alice",
            )
        ),
        "issuer",
    ),
    "r16-typ-logout-token": ("hs", lambda: sign(claims(), headers={"typ": "logout+jwt"}), "type"),
    "r16-typ-secevent": ("hs", lambda: sign(claims(), headers={"typ": "secevent+jwt"}), "type"),
    "r16-typ-non-string": ("hs", forged({"alg": "HS256", "typ": 1}), "type"),
    "r16-jti-non-string": ("hs", hs(jti=5), "'jti'"),
    # 17 malformed
    "r17-two-segments": ("hs", lambda: sign(claims()).rsplit(".", 1)[0], "three"),
    "r17-four-segments": ("hs", lambda: sign(claims()) + ".AAAA", "three"),
    "r17-empty-segments": ("hs", lambda: "..", "three"),
    "r17-bad-header-padding": (
        "hs",
        lambda: "eyJhbGciOiJIUzI1NiJ9x." + sign(claims()).split(".", 1)[1],
        "header",
    ),
    "r17-header-not-json": ("hs", forged(b"not json"), "header"),
    "r17-header-array": ("hs", forged(b'["HS256"]'), "header"),
    "r17-header-string": ("hs", forged(b'"HS256"'), "header"),
    "r17-header-non-utf8": ("hs", forged(b'{"alg":"HS256","x":"\xff\xfe"}'), "header"),
    "r17-header-deep": ("hs", forged(b"[" * 100000 + b"]" * 100000), "header"),
    "r17-payload-not-object": ("hs", _payload_bytes(b'"alice"'), "malformed"),
    "r17-payload-not-json": ("hs", _payload_bytes(b"sub=alice"), "malformed"),
    "r17-payload-non-utf8": ("hs", _payload_bytes(b'{"sub":"\xff","exp":4102444800}'), "malformed"),
    "r17-padding-chars": ("hs", lambda: sign(claims()) + "==", "three"),
    "r17-non-ascii": ("hs", lambda: "é" + sign(claims()), "three"),
    "r17-signature-stripped": ("hs", _unsigned_copy, "signature"),
    "r17-bad-signature": ("hs", lambda: sign(claims(), OTHER_SECRET), "signature"),
    # 18 oversized (a correctly signed token: refused for its size alone)
    "r18-token-over-8k": ("hs", _huge, "8 KiB"),
    # not JWTs at all: ChatKit secrets and API keys used as bearer tokens
    "ek-client-secret": ("hs", lambda: "ek_" + "a1b2" * 12, "client secret"),
    "mock-client-secret": (
        "hs",
        lambda: "mock_eyJzIjoiY2tzZXNzX21vY2sifQ.Zx1.abcdefghijkl",
        "client secret",
    ),
    "openai-api-key": ("hs", lambda: "sk-proj-" + "A" * 40, "three"),
    "broker-session-secret": (
        "hs",
        lambda: "cks_eyJzIjoiYnNlc3NfeCJ9.abcdefghijkl",
        "session secret",
    ),
    # gaps PyJWT leaves open: lifetimes of centuries, an empty aud, an iat in the future
    "exp-1e300": ("hs", lambda: sign(claims(exp=1e300)), "BROKER_JWT_MAX_AGE"),
    "exp-two-days-away": (
        "hs",
        lambda: sign(claims(exp=int(time.time()) + 2 * 86400)),
        "BROKER_JWT_MAX_AGE",
    ),
    "exp-minus-iat-over-max-age": (
        "hs",
        lambda: sign(claims(iat=int(time.time()) - 3 * 86400, exp=int(time.time()) + 60)),
        "BROKER_JWT_MAX_AGE",
    ),
    "aud-empty-string-no-audience": ("hs", lambda: sign(claims(aud="")), "no audience configured"),
    "aud-empty-list-no-audience": ("hs", lambda: sign(claims(aud=[])), "no audience configured"),
    "iat-in-the-future": ("hs", lambda: sign(claims(iat=int(time.time()) + 3600)), "not valid yet"),
}


def bearer(tok: str) -> dict[str, bytes]:
    """``Authorization: Bearer <tok>`` as raw bytes, so non-ASCII test tokens go out as sent."""
    return {"Authorization": f"Bearer {tok}".encode("latin-1")}


def broker_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the broker itself logged (the test client's own request log is not the broker's)."""
    return "\n".join(
        r.getMessage() + " " + repr(r.__dict__)
        for r in caplog.records
        if r.name.startswith(("broker", "uvicorn"))
    )


def assert_refused(
    r: httpx.Response,
    tok: str | None,
    *,
    status: int = 401,
    code: str = "unauthenticated",
    fragment: str | None = None,
    challenge: str | None = INVALID,
) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    if fragment is not None:
        assert fragment in err["message"], err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    if challenge is None:
        assert "www-authenticate" not in r.headers
    else:
        assert r.headers["www-authenticate"] == challenge
    if tok:
        assert tok not in r.text
        # no recognisable piece of the token either (its signature or its payload)
        for part in tok.split("."):
            if len(part) >= 16:
                assert part not in r.text


@pytest.mark.parametrize("case", list(REJECT.values()), ids=list(REJECT))
async def test_must_reject(case, configured, openai, caplog):
    config, make_token, fragment = case
    caplog.set_level(logging.DEBUG)
    tok = make_token()
    async with app_client(configured(config)) as c:
        r = await c.post(MINT, json=SUPPORT, headers=bearer(tok))
    assert_refused(r, tok, fragment=fragment)
    assert openai.requests == []
    assert tok not in broker_log(caplog)


# The positive controls: the same configurations accept well-formed tokens, so every refusal
# above is for the reason the case names, not for a broken setup.
ACCEPT: dict[str, tuple[str, Callable[[], str], str]] = {
    "hs256": ("hs", hs(), "alice"),
    "hs384": ("hs-64-byte-secret", lambda: sign(claims(), LONG_SECRET, "HS384"), "alice"),
    "hs512-typ-at+jwt": (
        "hs-64-byte-secret",
        lambda: sign(claims(), LONG_SECRET, "HS512", {"typ": "at+jwt"}),
        "alice",
    ),
    # times are read when the test runs, not at collection: a suite that takes longer than
    # the leeway (or 300 s) before reaching these would otherwise see expired tokens
    "exp-within-leeway": ("hs", lambda: sign(claims(exp=int(time.time()) - 10)), "alice"),
    "float-times": (
        "hs",
        lambda: sign(claims(exp=time.time() + 300.5, iat=time.time())),
        "alice",
    ),
    "sub-512-chars": ("hs", hs(sub="u" * 512), "u" * 512),
    "supabase-user": (
        "supabase-legacy",
        supa_hs(sub="8d0fd2b3-9ca5-4e2c-8d4c-5b1bd0ac7ef1"),
        "8d0fd2b3-9ca5-4e2c-8d4c-5b1bd0ac7ef1",
    ),
    "supabase-aud-list": ("supabase-legacy", supa_hs(aud=["authenticated", "other"]), "alice"),
    "rs256-pem": ("rsa-pem", rs(kid=None), "alice"),
    "ps256-pem": ("rsa-pem", rs(kid=None, algorithm="PS256"), "alice"),
    "rs256-pem-kid-ignored": ("rsa-pem", rs(kid="whatever"), "alice"),
    "es256-pem": ("ec-pem", es(kid=None), "alice"),
    "rs256-jwks": ("jwks", rs(), "alice"),
    "es256-jwks": ("jwks", es(), "alice"),
    "migration-hs-secret": ("supabase-migration", supa_hs(), "alice"),
    "migration-es256-jwks": (
        "supabase-migration",
        lambda: sign(supa(), EC_KEY, "ES256", {"kid": "ec-1"}),
        "alice",
    ),
    "auth0-trailing-slash-iss": (
        "auth0",
        rs(iss=AUTH0_ISS, aud=[AUTH0_AUD, AUTH0_ISS + "userinfo"], azp="spa-client"),
        "alice",
    ),
}


@pytest.mark.parametrize("case", list(ACCEPT.values()), ids=list(ACCEPT))
async def test_accepts_well_formed_tokens(case, configured, openai):
    config, make_token, user = case
    async with app_client(configured(config)) as c:
        r = await c.post(MINT, json=SUPPORT, headers=auth(make_token()))
    assert r.status_code == 200, r.text
    [req] = openai.session_requests()
    assert req.body["user"] == user


# ---------------------------------------------------------------------------------------------
# 3: algorithm confusion with the public key as the HMAC secret. Fixed vectors: fixed keys,
# fixed claims, deterministic HMAC. Each vector is tried against every configuration that
# holds that public key; none may pass, whichever form of the key was used as the secret.

CONFUSION_CONFIGS = {
    "rsa": ("rsa-pem", "secret+rsa-pem", "jwks", "supabase-migration"),
    "ec": ("ec-pem", "jwks", "supabase-migration"),
}
CONFUSION: dict[str, tuple[str, str, str]] = {}
for _family, _key in (("rsa", RSA_KEY), ("ec", EC_KEY)):
    _kid = f"{_family}-1"
    for _form, _secret in public_forms(_key).items():
        for _config in CONFUSION_CONFIGS[_family]:
            _payload = (
                fixed_claims(iss=SUPA_ISS, aud="authenticated")
                if "supabase" in _config
                else fixed_claims()
            )
            CONFUSION[f"{_family}-{_form}-as-hmac-{_config}"] = (
                _config,
                forge({"alg": "HS256", "typ": "JWT", "kid": _kid}, _payload, hmac_key=_secret),
                # with no HS secret configured the algorithm itself is refused; with one, the
                # token is checked against the secret only and its signature fails
                "'HS256'" if _config in ("rsa-pem", "ec-pem", "jwks") else "signature",
            )

# A fixed vector written out: HS256 over {"sub":"alice","iat":1700000000,"exp":4102444800}
# keyed with the RSA public key's PEM. It must stay exactly what the forger produces.
RSA_PEM_CONFUSION_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0"
    ".eyJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ"
    ".Nwu_lNyyZhR3S-3Lp7rtBqgTHQhcCnoyNCHh1caU4pU"
)


def test_fixed_confusion_vector_is_stable():
    tok = CONFUSION["rsa-pem-as-hmac-rsa-pem"][1]
    assert tok == RSA_PEM_CONFUSION_TOKEN
    assert tok == forge(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        fixed_claims(),
        hmac_key=public_forms(RSA_KEY)["pem"],
    )


@pytest.mark.parametrize("case", list(CONFUSION.values()), ids=list(CONFUSION))
async def test_public_key_as_hmac_secret_is_refused(case, configured, openai):
    config, tok, fragment = case
    jwks_hits_before = openai.jwks_hits
    async with app_client(configured(config)) as c:
        hits_after_start = openai.jwks_hits
        r = await c.post(MINT, json=SUPPORT, headers=auth(tok))
    assert_refused(r, tok, fragment=fragment)
    assert openai.requests == []
    # an HS token is never looked up in the JWKS
    assert openai.jwks_hits == hits_after_start
    assert hits_after_start - jwks_hits_before == (0 if config.endswith("pem") else 1)


# Fixed vectors for the two header advisories, written out in full.
ALG_NONE_TOKEN = (  # {"alg":"none","typ":"JWT"} . fixed claims . (no signature)
    "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"
    ".eyJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ."
)
WRONG_CASE_TOKEN = (  # {"alg":"hs256","typ":"JWT"} . fixed claims . HMAC-SHA256 with SECRET
    "eyJhbGciOiJoczI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ"
    ".ak9GsFEN38Z9txau61ZR7Z0qPjnCD98PXprJa2mxoTg"
)


@pytest.mark.parametrize(
    ("tok", "fragment"),
    [(ALG_NONE_TOKEN, "'none'"), (WRONG_CASE_TOKEN, "'hs256'")],
    ids=["alg-none", "alg-wrong-case"],
)
async def test_fixed_header_advisory_vectors(tok, fragment, configured, openai):
    assert forge({"alg": "none", "typ": "JWT"}, fixed_claims(), signature="") == ALG_NONE_TOKEN
    # the wrong-case vector carries a signature that is valid for the configured secret
    assert (
        forge({"alg": "hs256", "typ": "JWT"}, fixed_claims(), hmac_key=SECRET) == WRONG_CASE_TOKEN
    )
    async with app_client(configured("hs")) as c:
        r = await c.post(MINT, json=SUPPORT, headers=auth(tok))
    assert_refused(r, tok, fragment=fragment)
    assert openai.requests == []


# ---------------------------------------------------------------------------------------------
# Secret + JWKS together: HS tokens are checked with the secret only, others with the JWKS only.


async def test_migration_hs_token_never_touches_the_jwks(configured, openai):
    async with app_client(configured("supabase-migration")) as c:
        hits = openai.jwks_hits
        ok = await c.post(
            MINT,
            json=SUPPORT,
            headers=auth(sign(supa(), headers={"kid": "random-kid-123"})),
        )
        bad = await c.post(
            MINT,
            json=SUPPORT,
            headers=auth(sign(supa(), OTHER_SECRET, headers={"kid": "another-random-kid"})),
        )
    assert ok.status_code == 200, ok.text
    assert_refused(bad, None, fragment="signature")
    assert openai.jwks_hits == hits
    assert len(openai.session_requests()) == 1


async def test_migration_asymmetric_token_is_checked_with_jwks_only(configured, openai):
    # An RS256 token whose signature is really an HMAC with the legacy secret must fail.
    tok = forge({"alg": "RS256", "kid": "rsa-1"}, supa(), hmac_key=SECRET)
    async with app_client(configured("supabase-migration")) as c:
        r = await c.post(MINT, json=SUPPORT, headers=auth(tok))
    assert_refused(r, tok, fragment="signature")
    assert openai.requests == []


# ---------------------------------------------------------------------------------------------
# 7: jku / x5u / embedded jwk headers are ignored: no outbound request, only configured keys.


@pytest.mark.parametrize("config", ["rsa-pem", "jwks"])
async def test_jku_x5u_and_embedded_jwk_are_ignored(config, configured, openai):
    attacker = attacker_key()
    elsewhere = await TinyServer().start()
    attacker_jwks = {"keys": [jwk(attacker, "attacker")]}

    async def serve_keys(request: web.Request) -> web.Response:
        return web.json_response(attacker_jwks)

    elsewhere.handler = serve_keys
    pointers = {
        "jku": elsewhere.url + "/jwks.json",
        "x5u": elsewhere.url + "/cert.pem",
        "jwk": jwk(attacker, "attacker"),
    }
    try:
        async with app_client(configured(config)) as c:
            forged_tok = sign(claims(), attacker, "RS256", {"kid": "attacker", **pointers})
            refused = await c.post(MINT, json=SUPPORT, headers=auth(forged_tok))
            # a genuine token carrying the same pointers still verifies, with the configured key
            genuine = sign(claims(), RSA_KEY, "RS256", {"kid": "rsa-1", **pointers})
            accepted = await c.post(MINT, json=SUPPORT, headers=auth(genuine))
    finally:
        await elsewhere.stop()
    assert_refused(refused, forged_tok)
    assert accepted.status_code == 200, accepted.text
    assert elsewhere.hits == []
    assert openai.jwks_hits == (1 if config == "jwks" else 0)  # only the configured JWKS


# ---------------------------------------------------------------------------------------------
# 15: role / is_anonymous are policy, not authentication: a workflow `require` answers 403.


@pytest.fixture
def supabase_policy(configured, tmp_path, make_settings, openai):
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text(
        f'[workflows.members]\nid = "{WF_SALES}"\nlabel = "Members"\n'
        'require = { role = "authenticated", is_anonymous = false }\n'
    )
    return make_settings(
        BROKER_WORKFLOWS=f"support={WF_SUPPORT}",
        BROKER_WORKFLOWS_FILE=str(wf_file),
        BROKER_JWT_AUDIENCE="authenticated",
        BROKER_JWT_ISSUER=SUPA_ISS,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"is_anonymous": True},
        {"role": "anon"},
        {"role": "service_role"},
        {"is_anonymous": None},
        {"is_anonymous": 0},
    ],
    ids=[
        "anonymous-user",
        "role-anon",
        "role-service-role",
        "is_anonymous-missing",
        "is_anonymous-0",
    ],
)
async def test_claims_policy_is_403(overrides, supabase_policy, openai):
    tok = sign(supa(**overrides))
    async with app_client(supabase_policy) as c:
        mint = await c.post(MINT, json={"workflow": "members"}, headers=auth(tok))
        listed = await c.get("/api/chatkit/workflows", headers=auth(tok))
        # the same caller may still use an unrestricted workflow: it is authenticated
        plain = await c.post(MINT, json={"workflow": "support"}, headers=auth(tok))
    assert_refused(
        mint, tok, status=403, code="workflow_not_allowed", fragment="members", challenge=None
    )
    assert [w["name"] for w in listed.json()["workflows"]] == ["support"]
    assert plain.status_code == 200
    assert [r.body["workflow"]["id"] for r in openai.session_requests()] == [WF_SUPPORT]


async def test_claims_policy_admits_a_signed_in_member(supabase_policy, openai):
    tok = sign(supa())
    async with app_client(supabase_policy) as c:
        r = await c.post(MINT, json={"workflow": "members"}, headers=auth(tok))
    assert r.status_code == 200, r.text
    assert openai.session_requests()[0].body["workflow"]["id"] == WF_SALES


# ---------------------------------------------------------------------------------------------
# 25: Bearer scheme variants. The defined behaviour:
#  - the scheme is case-insensitive (RFC 7235 §2.1) and may be followed by one or more spaces
#    (RFC 6750 §2.1: "Bearer" 1*SP b64token);
#  - no Authorization header → 401 with a bare `Bearer` challenge (no error code, RFC 6750 §3.1);
#  - another scheme (Basic, Token, a bare token) → 401 with a bare `Bearer` challenge;
#  - a token only in the query string (RFC 6750 §2.3) is not accepted: URLs end up in logs
#    and browser history; the request is treated as carrying no token.


@pytest.mark.parametrize(
    "template",
    ["Bearer {t}", "bearer {t}", "BEARER {t}", "Bearer  {t}", "Bearer   {t}", "Bearer {t} "],
    ids=["canonical", "lowercase", "uppercase", "two-spaces", "three-spaces", "trailing-space"],
)
async def test_bearer_variants_accepted(template, configured, openai):
    tok = sign(claims())
    async with app_client(configured("hs")) as c:
        r = await c.post(MINT, json=SUPPORT, headers={"Authorization": template.format(t=tok)})
    assert r.status_code == 200, r.text


BEARER_REJECT: dict[str, tuple[str | None, str, str]] = {
    # id -> (Authorization header with {t} for the token, challenge, message fragment)
    "missing": (None, "Bearer", "Sign-in required"),
    "empty": ("", "Bearer", "Sign-in required"),
    "basic": ("Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer scheme"),
    "basic-with-jwt": ("Basic {t}", "Bearer", "Bearer scheme"),
    "token-scheme": ("Token {t}", "Bearer", "Bearer scheme"),
    "no-scheme": ("{t}", "Bearer", "Bearer scheme"),
    "scheme-only": ("Bearer", "Bearer", "no token"),
    "scheme-and-space": ("Bearer ", "Bearer", "no token"),
    "tab-separator": ("Bearer\t{t}", "Bearer", "Bearer scheme"),
    "two-tokens": ("Bearer {t} {t}", INVALID, "three"),
    "header-over-8k": ("Bearer " + "a" * 9000, INVALID, "8 KiB"),
}


@pytest.mark.parametrize("case", list(BEARER_REJECT.values()), ids=list(BEARER_REJECT))
@pytest.mark.parametrize("route", ["POST /api/chatkit/session", "GET /api/chatkit/workflows"])
async def test_bearer_variants_refused(case, route, configured, openai, caplog):
    template, challenge, fragment = case
    tok = sign(claims())
    headers = {} if template is None else {"Authorization": template.format(t=tok)}
    method, path = route.split()
    async with app_client(configured("hs")) as c:
        r = await c.request(
            method, path, json=SUPPORT if method == "POST" else None, headers=headers
        )
    assert_refused(r, tok, fragment=fragment, challenge=challenge)
    assert openai.requests == []
    assert tok not in broker_log(caplog)


@pytest.mark.parametrize("param", ["access_token", "token", "jwt"])
async def test_token_in_query_string_is_not_accepted(param, configured, openai, caplog):
    caplog.set_level(logging.DEBUG)
    tok = sign(claims())
    async with app_client(configured("hs")) as c:
        mint = await c.post(f"/api/chatkit/session?{param}={tok}", json=SUPPORT)
        listed = await c.get(f"/api/chatkit/workflows?{param}={tok}")
    for r in (mint, listed):
        # still refused, but told where the token belongs
        assert_refused(r, tok, fragment="not in the query string", challenge="Bearer")
        assert "Authorization header" in r.json()["error"]["message"]
    assert openai.requests == []
    assert tok not in broker_log(caplog)


# ---------------------------------------------------------------------------------------------
# 18: oversized tokens are refused before any cryptography or key lookup.


async def test_oversized_token_refused_before_any_key_lookup(configured, openai, monkeypatch):
    import jwt as pyjwt

    calls: list[str] = []
    real_decode = pyjwt.PyJWT.decode

    def spy(*args: Any, **kw: Any) -> Any:
        calls.append("decode")
        return real_decode(*args, **kw)

    monkeypatch.setattr(pyjwt.PyJWT, "decode", spy)
    big = sign(claims(pad="p" * 9000), RSA_KEY, "RS256", {"kid": "unknown-kid"})
    assert len(big) > 8 * 1024
    async with app_client(configured("jwks")) as c:
        hits = openai.jwks_hits
        r = await c.post(MINT, json=SUPPORT, headers=auth(big))
        small = await c.post(
            MINT,
            json=SUPPORT,
            headers=auth(sign(claims(), RSA_KEY, "RS256", {"kid": "rsa-1"})),
        )
    assert_refused(r, big, fragment="8 KiB")
    assert openai.jwks_hits == hits  # the unknown kid did not trigger a fetch
    assert small.status_code == 200
    assert calls == ["decode"]  # only the small token reached PyJWT


# ---------------------------------------------------------------------------------------------
# Secrets never reach a log line or a body, across success and every refusal above.


async def test_no_token_in_logs_or_bodies_across_a_full_run(configured, openai, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = [make() for config, make, _ in REJECT.values() if config == "hs"]
    good = sign(claims())
    seen: list[str] = []
    async with app_client(configured("hs")) as c:
        for tok in [*tokens, good]:
            r = await c.post(MINT, json=SUPPORT, headers=bearer(tok))
            seen.append(r.text)
    secret = json.loads(seen[-1])["client_secret"]
    logged = broker_log(caplog)
    assert "POST /api/chatkit/session 401" in logged  # the capture did see the broker's log
    for tok in [*tokens, good]:
        if len(tok) < 8:
            continue
        assert tok not in logged
        assert all(tok not in body for body in seen)
    assert secret not in logged
    assert SECRET not in logged
    assert b64url(SECRET.encode()) not in logged


async def test_the_prepared_secret_is_the_brokers_own(configured):
    """The HMAC key is checked once by a PyJWT of the broker's own; the module-level PyJWT
    that other code in the process uses keeps its stock algorithms, and a wrong signature is
    still refused."""
    import jwt as pyjwt

    from broker.auth import Verifier, _PreparedHMAC
    from broker.errors import Unauthenticated

    settings = configured("hs")
    verifier = Verifier(settings.jwt)
    assert isinstance(verifier._jwt._jws.get_algorithm_by_name("HS256"), _PreparedHMAC)
    assert type(pyjwt.api_jws.get_algorithm_by_name("HS256")) is pyjwt.algorithms.HMACAlgorithm
    good = sign(claims())
    assert (await verifier.verify(good)).user == "alice"
    forged = sign(claims(sub="mallory"), "another-secret-that-is-32-bytes-long!!", "HS256")
    with pytest.raises(Unauthenticated):
        await verifier.verify(forged)


# --- the verified-token cache: a token that just verified is not verified again, within bounds


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every token that reached PyJWT's decode."""
    seen: list[str] = []
    real = jwt.PyJWT.decode

    def counting(self, token, *args, **kwargs):
        seen.append(token)
        return real(self, token, *args, **kwargs)

    monkeypatch.setattr(jwt.PyJWT, "decode", counting)
    return seen


def verifier(clock: Clock, **kw) -> Verifier:
    return Verifier(
        JWTSettings(secret=SECRET, hmac_algorithms=("HS256",), leeway=30), clock=clock, **kw
    )


async def test_workflow_list_and_mint_verify_the_token_once(make_settings, openai, token, decodes):
    tok = token("alice")
    async with app_client(make_settings()) as c:
        assert (await c.get("/api/chatkit/workflows", headers=auth(tok))).status_code == 200
        assert (await c.post(MINT, json=SUPPORT, headers=auth(tok))).status_code == 200
        assert (
            await c.post(MINT, json={"workflow": "sales"}, headers=auth(tok))
        ).status_code == 200
    assert decodes == [tok]
    assert [r.body["user"] for r in openai.session_requests()] == ["alice", "alice"]


async def test_cache_never_outlives_exp_plus_leeway(token, decodes):
    clock = Clock()
    v = verifier(clock)
    tok = token("bob", ttl=-10)  # expired 10 s ago, inside the 30 s leeway: still valid
    assert (await v.verify(tok)).user == "bob"
    clock.now += 19
    await v.verify(tok)
    assert len(decodes) == 1  # served from the cache
    clock.now += 2  # past exp + leeway: the cache must not answer
    await v.verify(tok)
    assert len(decodes) == 2


async def test_cache_entries_last_at_most_cache_seconds(token, decodes):
    clock = Clock()
    v = verifier(clock, cache_seconds=60)
    tok = token("carol", ttl=3600)
    await v.verify(tok)
    clock.now += 59
    await v.verify(tok)
    assert len(decodes) == 1
    clock.now += 2
    await v.verify(tok)
    assert len(decodes) == 2


async def test_refused_tokens_are_never_cached(token, decodes):
    v = verifier(Clock())
    bad = token("dave", key="z" * 40)
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await v.verify(bad)
    assert decodes == [bad, bad]


async def test_cache_is_bounded(token, decodes):
    v = verifier(Clock(), cache_size=2)
    a, b, c = token("a"), token("b"), token("c")
    for t in (a, b, c, c, b):
        await v.verify(t)
    assert decodes == [a, b, c]  # c and b were cached
    await v.verify(a)  # a was evicted when c arrived
    assert decodes == [a, b, c, a]


async def test_cache_can_be_switched_off(token, decodes):
    v = verifier(Clock(), cache_size=0)
    tok = token("erin")
    await v.verify(tok)
    await v.verify(tok)
    assert decodes == [tok, tok]
