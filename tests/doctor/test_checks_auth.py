"""``broker.doctor.checks.auth`` (check 5): the sign-in keys, and ``--token`` verified as served."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return data | {"kid": kid, "use": "sig", "alg": alg}


def test_jwks_listing_and_a_token_verified_through_it(doctor, doctor_env, openai):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    openai.jwks = {
        "keys": [
            _jwk(ec_key, "ec-1", "ES256"),
            _jwk(rsa_key, "rsa-1", "RS256"),
            {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"},
        ]
    }
    env = {k: v for k, v in doctor_env.items() if k != "BROKER_JWT_SECRET"}
    env["BROKER_JWT_JWKS_URL"] = openai.url + "/jwks.json"
    now = int(time.time())
    tok = jwt.encode(
        {"sub": "carol", "aud": "authenticated", "exp": now + 600, "iat": now},
        ec_key,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )
    r = doctor(env, token=tok, forbidden=(tok,))
    assert r.code == 0, r.out
    assert "JWKS" in r.line("✔ 5. Sign-in tokens")
    assert "JWKS key 'ec-1': EC P-256, ES256" in r.out
    assert "JWKS key 'rsa-1': RSA, RS256" in r.out
    assert (
        "JWKS key 'hmac-1': oct, ignored (symmetric keys are never taken from a JWKS)"
        in " ".join(r.out.split())
    )
    assert "--token verified: ChatKit user 'carol' (claim sub)" in r.out

    r = doctor(env, json=True)
    assert r.check("auth")["data"]["jwks_keys"] == [
        {"kid": "ec-1", "kty": "EC", "algorithms": ["ES256"], "usable": True},
        {"kid": "rsa-1", "kty": "RSA", "algorithms": ["RS256"], "usable": True},
        {"kid": "hmac-1", "kty": "oct", "algorithms": [], "usable": False},
    ]


def test_jwks_down_fails_the_auth_check(doctor, doctor_env, openai):
    openai.jwks_up = False
    env = {k: v for k, v in doctor_env.items() if k != "BROKER_JWT_SECRET"}
    env["BROKER_JWT_JWKS_URL"] = openai.url + "/jwks.json"
    r = doctor(env)
    assert r.code == 1
    assert r.line("✖ 5. Sign-in tokens")
    assert "could not be fetched (HTTP 503)" in r.out
    assert "fix: check BROKER_JWT_JWKS_URL" in r.out


def test_token_valid_prints_claims_never_the_token(doctor, doctor_env, token):
    tok = token("alice", aud="authenticated", role="pro")
    r = doctor(doctor_env, token=tok, forbidden=(tok,))
    assert r.code == 0
    assert "HMAC secret; --token verified" in r.line("✔ 5. Sign-in tokens")
    assert "HMAC secret (BROKER_JWT_SECRET): 43 bytes" in r.out
    assert "--token verified: ChatKit user 'alice' (claim sub), expires in 5 min" in r.out
    assert '"role": "pro"' in r.out
    assert "may use workflows: support, sales" in r.out

    r = doctor(doctor_env, json=True, token=tok, forbidden=(tok,))
    data = r.check("auth")["data"]["token"]
    assert data["valid"] is True and data["user"] == "alice"
    assert data["claims"]["role"] == "pro"


def test_token_expired_is_refused_as_the_service_would(doctor, doctor_env, token):
    tok = token("alice", aud="authenticated", ttl=-120)
    r = doctor(doctor_env, token=tok, forbidden=(tok,))
    assert r.code == 1
    assert "--token refused" in r.line("✖ 5. Sign-in tokens")
    assert "--token refused: The token has expired; sign in again to get a fresh one." in r.out

    tok = token("alice", aud="somebody-else")
    r = doctor(doctor_env, token=tok, forbidden=(tok,))
    assert r.code == 1
    assert "audience ('aud') is not the one this broker accepts" in r.out
