"""The signed identity: what the broker mints, and what a backend's verifier refuses."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.assertion import (
    ASSERTION_TYP,
    AssertionKeysUnavailable,
    AssertionSigner,
    AssertionVerifier,
    HMACAssertionSigner,
    InvalidAssertion,
    forwarded_claims,
    generate_private_key_pem,
    load_private_key,
    verify,
    verify_with_key,
)
from broker.auth import Verifier
from broker.config import JWTSettings
from broker.errors import Unauthenticated
from tests.support.aioserver import serve

ISSUER = "https://broker.example"
SECRET = "a-shared-assertion-secret-of-32+bytes!!"


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = now if now is not None else time.time()

    def __call__(self) -> float:
        return self.now


def signer(**kw: Any) -> AssertionSigner:
    return AssertionSigner(load_private_key(generate_private_key_pem()), issuer=ISSUER, **kw)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


class JWKSHost:
    """The broker's JWKS endpoint, serving whatever signer it is pointed at, counting fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.status = 200
        self.app = web.Application()
        self.app.router.add_get("/.well-known/jwks.json", self._jwks)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response(self.document)


# --- minting -----------------------------------------------------------------------------


def test_an_assertion_carries_the_documented_header_and_claims() -> None:
    clock = FakeClock(1_900_000_000)
    s = AssertionSigner(load_private_key(generate_private_key_pem()), issuer=ISSUER, clock=clock)
    token = s.sign(
        "alice",
        audience="support-api",
        workflow="support",
        session_id="sess_1",
        extra={"email": "alice@example.com", "sub": "mallory", "aud": "other"},
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": s.kid, "typ": ASSERTION_TYP}
    claims = claims_of(token)
    assert claims["iss"] == ISSUER
    assert claims["aud"] == "support-api"
    assert claims["sub"] == "alice"  # a forwarded claim never overrides the broker's own
    assert claims["iat"] == 1_900_000_000
    assert claims["exp"] == 1_900_000_060
    assert claims["wf"] == "support"
    assert claims["sid"] == "sess_1"
    assert claims["email"] == "alice@example.com"
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


def test_a_token_is_byte_for_byte_what_pyjwt_writes_for_the_same_claims() -> None:
    """The signers assemble the JWS themselves (PyJWT's encode cost as much as the signature
    on every gateway request): HS256 is deterministic, so its token must equal PyJWT's, and an
    ES256 one must have PyJWT's header and payload segments and verify with the public key."""
    extra = {"email": "ålice@example.com", "groups": ["a", "b"], "n": 1.5, "ok": True}
    hs = HMACAssertionSigner(SECRET, issuer=ISSUER, clock=FakeClock(1_900_000_000))
    es = AssertionSigner(load_private_key(generate_private_key_pem()), issuer=ISSUER)
    for s, key in ((hs, SECRET), (es, es._key)):
        token = s.sign("alice", audience="api", workflow="w", extra=extra, body=b"{}")
        claims = claims_of(token)
        again = jwt.encode(claims, key, algorithm=s.algorithm, headers=s._headers)
        if s is hs:
            assert token == again
        else:
            assert token.split(".")[:2] == again.split(".")[:2]
            public = es._key.public_key()
            assert jwt.decode(token, public, algorithms=["ES256"], audience="api") == claims


def test_every_assertion_has_its_own_jti_and_no_sid_without_a_session() -> None:
    s = signer()
    tokens = [s.sign("alice", audience="a", workflow="w") for _ in range(50)]
    assert len({claims_of(t)["jti"] for t in tokens}) == 50
    assert "sid" not in claims_of(tokens[0])


def test_the_kid_is_the_rfc7638_thumbprint_of_the_published_key() -> None:
    s = signer()
    (jwk,) = s.jwks()["keys"]
    required = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert jwk["kid"] == s.kid == expected
    assert jwk["alg"] == "ES256" and jwk["use"] == "sig"
    assert "d" not in jwk  # the private part is never published


def test_the_published_coordinates_are_the_keys_point_in_32_bytes() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    s = AssertionSigner(key)
    jwk = s.jwks()["keys"][0]
    numbers = key.public_key().public_numbers()
    x = base64.urlsafe_b64decode(jwk["x"] + "==")
    y = base64.urlsafe_b64decode(jwk["y"] + "==")
    assert int.from_bytes(x, "big") == numbers.x and len(x) == 32
    assert int.from_bytes(y, "big") == numbers.y and len(y) == 32


def test_no_configured_key_gives_an_ephemeral_one_and_a_configured_key_does_not() -> None:
    assert AssertionSigner.from_config(None).ephemeral is True
    configured = AssertionSigner.from_config(generate_private_key_pem())
    assert configured.ephemeral is False


def test_keys_load_from_a_file_and_previous_keys_are_published(tmp_path: Any) -> None:
    old_pem, new_pem = generate_private_key_pem(), generate_private_key_pem()
    (tmp_path / "old.pem").write_text(old_pem)
    (tmp_path / "new.pem").write_text(new_pem)
    old = AssertionSigner.from_config(f"@{tmp_path / 'old.pem'}")
    rotated = AssertionSigner.from_config(f"@{tmp_path / 'new.pem'}", [f"@{tmp_path / 'old.pem'}"])
    kids = [k["kid"] for k in rotated.jwks()["keys"]]
    assert kids == [rotated.kid, old.kid]
    assert rotated.kid != old.kid


def test_a_previous_key_may_be_given_as_its_public_half(tmp_path: Any) -> None:
    old_key = load_private_key(generate_private_key_pem())
    public_pem = old_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "old.pub").write_bytes(public_pem)
    rotated = AssertionSigner.from_config(generate_private_key_pem(), [f"@{tmp_path / 'old.pub'}"])
    assert AssertionSigner(old_key).kid in [k["kid"] for k in rotated.jwks()["keys"]]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("not a key", "PEM"),
        ("@/nonexistent/key.pem", "cannot read"),
        (
            ec.generate_private_key(ec.SECP384R1())
            .private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            .decode(),
            "P-256",
        ),
    ],
    ids=["garbage", "missing-file", "p384"],
)
def test_an_unusable_key_is_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        AssertionSigner.from_config(text)
    assert problem in str(caught.value)
    assert "BEGIN" not in str(caught.value)  # never echoes key material


def test_forwarded_claims_pick_named_claims_and_never_reserved_ones() -> None:
    claims = {"sub": "x", "email": "a@b", "org": "acme", "exp": 1, "iss": "idp", "htu": "/x"}
    names = ["email", "org", "exp", "iss", "missing", "htu"]
    assert forwarded_claims(claims, names) == {
        "email": "a@b",
        "org": "acme",
    }


def test_an_hmac_secret_shorter_than_32_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        HMACAssertionSigner("short")


# --- verifying with a known key ----------------------------------------------------------


def public_pem(s: AssertionSigner) -> str:
    return (
        s._key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_a_fresh_assertion_verifies_with_the_public_key_pem_and_jwk() -> None:
    s = signer()
    token = s.sign("alice", audience="support", workflow="support", extra={"org": "acme"})
    for key in (public_pem(s), s.jwks()["keys"][0]):
        verified = verify_with_key(token, key=key, audience="support", issuer=ISSUER)
        assert verified.user == "alice"
        assert verified.workflow == "support"
        assert verified.claims["org"] == "acme"


def test_an_hs256_assertion_verifies_with_its_secret_only() -> None:
    s = HMACAssertionSigner(SECRET, issuer=ISSUER)
    token = s.sign("bob", audience="support", workflow="support")
    assert verify_with_key(token, secret=SECRET, audience="support", issuer=ISSUER).user == "bob"
    with pytest.raises(InvalidAssertion):
        verify_with_key(token, secret=SECRET + "x", audience="support", issuer=ISSUER)
    assert s.jwks() == {"keys": []}  # a shared secret is never published


def _refusals() -> dict[str, Any]:
    """name → (token factory(signer, clock), verify kwargs): each must be refused."""
    other = load_private_key(generate_private_key_pem())

    def resign(s: AssertionSigner, mutate: Any, *, key: Any = None, alg: str = "ES256") -> str:
        token = s.sign("alice", audience="support", workflow="support")
        claims = claims_of(token)
        header = jwt.get_unverified_header(token)
        claims, header = mutate(claims, header)
        return jwt.encode(claims, key if key is not None else s._key, algorithm=alg, headers=header)

    def none_alg(s: AssertionSigner) -> str:
        token = s.sign("alice", audience="support", workflow="support")
        head = base64.urlsafe_b64encode(
            json.dumps({"alg": "none", "typ": ASSERTION_TYP, "kid": s.kid}).encode()
        ).rstrip(b"=")
        return head.decode() + "." + token.split(".")[1] + "."

    return {
        "wrong-audience": lambda s: s.sign("alice", audience="billing", workflow="billing"),
        "wrong-issuer": lambda s: AssertionSigner(s._key, issuer="https://evil").sign(
            "alice", audience="support", workflow="support"
        ),
        "prefix-issuer": lambda s: AssertionSigner(s._key, issuer=ISSUER + "evil").sign(
            "alice", audience="support", workflow="support"
        ),
        "expired": lambda s: AssertionSigner(
            s._key,
            issuer=ISSUER,
            clock=lambda: time.time() - 120,
        ).sign("alice", audience="support", workflow="support"),
        "other-key": lambda s: AssertionSigner(other, issuer=ISSUER).sign(
            "alice", audience="support", workflow="support"
        ),
        "alg-none": none_alg,
        "hs256-with-public-key": _hmac_with_public_key,
        "typ-missing": lambda s: resign(s, lambda c, h: (c, {"kid": h["kid"]})),
        "typ-plain-jwt": lambda s: resign(s, lambda c, h: (c, {**h, "typ": "JWT"})),
        "no-exp": lambda s: resign(s, lambda c, h: ({k: v for k, v in c.items() if k != "exp"}, h)),
        "no-sub": lambda s: resign(s, lambda c, h: ({k: v for k, v in c.items() if k != "sub"}, h)),
        "empty-sub": lambda s: resign(s, lambda c, h: ({**c, "sub": ""}, h)),
        "aud-list": lambda s: resign(s, lambda c, h: ({**c, "aud": ["support", "x"]}, h)),
        "crit": lambda s: resign(s, lambda c, h: (c, {**h, "crit": ["exp"]})),
        "garbage": lambda s: "not.a.jwt",
        "empty": lambda s: "",
    }


def _hmac_with_public_key(s: AssertionSigner) -> str:
    """The classic confusion: HS256 'signed' with the ES256 public key bytes as the secret.

    PyJWT refuses to HMAC with a PEM, so this builds the signature by hand, as an attacker
    would.
    """
    import hmac

    header = {"alg": "HS256", "typ": ASSERTION_TYP, "kid": s.kid}
    claims = claims_of(s.sign("alice", audience="support", workflow="support"))
    seg = [
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims)
    ]
    signing_input = ".".join(seg).encode()
    mac = hmac.new(public_pem(s).encode(), signing_input, hashlib.sha256).digest()
    return ".".join(seg) + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


REFUSALS = _refusals()


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_verify_with_key_refuses(case: str) -> None:
    s = signer()
    token = REFUSALS[case](s)
    with pytest.raises(InvalidAssertion):
        verify_with_key(token, key=public_pem(s), audience="support", issuer=ISSUER)


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
async def test_the_jwks_verifier_refuses(case: str) -> None:
    s = signer()
    host = JWKSHost(s.jwks())
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json", audience="support", issuer=ISSUER
        )
        # the real thing verifies, so the refusal below is about the case, not the setup
        good = s.sign("alice", audience="support", workflow="support")
        assert (await verifier.verify(good)).user == "alice"
        with pytest.raises(InvalidAssertion):
            await verifier.verify(REFUSALS[case](s))


def test_a_replayed_assertion_is_refused_once_it_expired() -> None:
    clock = FakeClock()
    s = AssertionSigner(load_private_key(generate_private_key_pem()), issuer=ISSUER, clock=clock)
    token = s.sign("alice", audience="support", workflow="support")
    assert verify_with_key(token, key=public_pem(s), audience="support", issuer=ISSUER).user
    # the same token presented again 61 s + leeway later
    clock.now -= 61 + 5 + 1
    stale = s.sign("alice", audience="support", workflow="support")
    with pytest.raises(InvalidAssertion) as caught:
        verify_with_key(stale, key=public_pem(s), audience="support", issuer=ISSUER)
    assert "expired" in str(caught.value)


def test_an_es256_assertion_is_refused_by_a_secret_verifier_and_the_reverse() -> None:
    es = signer().sign("alice", audience="support", workflow="support")
    hs = HMACAssertionSigner(SECRET, issuer=ISSUER).sign("alice", audience="support", workflow="s")
    with pytest.raises(InvalidAssertion):
        verify_with_key(es, secret=SECRET, audience="support", issuer=ISSUER)
    with pytest.raises(InvalidAssertion):
        verify_with_key(hs, key=public_pem(signer()), audience="support", issuer=ISSUER)


async def test_an_assertion_is_not_accepted_as_a_sign_in_token_by_the_broker() -> None:
    """Token-type confusion the other way: a backend cannot replay an assertion to the broker
    even when both share one HMAC secret."""
    settings = JWTSettings(secret=SECRET, hmac_algorithms=("HS256",))
    token = HMACAssertionSigner(SECRET).sign("alice", audience="support", workflow="support")
    with pytest.raises(Unauthenticated) as caught:
        await Verifier(settings).verify(token)
    assert "type" in caught.value.message


# --- the JWKS verifier: caching, rotation, retirement --------------------------------------


async def test_keys_are_fetched_once_and_an_unknown_kid_refetches_at_most_once_per_cooldown() -> (
    None
):
    s = signer()
    host = JWKSHost(s.jwks())
    clock = FakeClock(1000.0)
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json",
            audience="support",
            issuer=ISSUER,
            cooldown=30.0,
            clock=clock,
        )
        for _ in range(20):
            await verifier.verify(s.sign("alice", audience="support", workflow="support"))
        assert host.fetches == 1
        clock.now += 31  # past the cooldown: one unknown kid may refetch, once
        stranger = signer()
        for _ in range(20):  # a spray of tokens under keys the broker never published
            with pytest.raises(InvalidAssertion):
                await verifier.verify(
                    stranger.sign("alice", audience="support", workflow="support")
                )
        assert host.fetches == 2  # one refresh for the unknown kid, then the cooldown holds


async def test_rotation_a_new_kid_is_fetched_and_the_previous_key_still_verifies() -> None:
    old_pem = generate_private_key_pem()
    old = AssertionSigner.from_config(old_pem, issuer=ISSUER)
    host = JWKSHost(old.jwks())
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json",
            audience="support",
            issuer=ISSUER,
            cooldown=0.0,
        )
        in_flight = old.sign("alice", audience="support", workflow="support")
        assert (await verifier.verify(in_flight)).user == "alice"

        rotated = AssertionSigner.from_config(generate_private_key_pem(), [old_pem], issuer=ISSUER)
        host.document = rotated.jwks()
        fresh = rotated.sign("bob", audience="support", workflow="support")
        assert (await verifier.verify(fresh)).user == "bob"
        # another assertion under the old key (each one is single-use) still verifies
        late = old.sign("alice", audience="support", workflow="support")
        assert (await verifier.verify(late)).user == "alice"
        assert host.fetches == 2


async def test_a_retired_key_is_refused_once_the_broker_stopped_publishing_it() -> None:
    old_pem = generate_private_key_pem()
    old = AssertionSigner.from_config(old_pem, issuer=ISSUER)
    current = AssertionSigner.from_config(generate_private_key_pem(), issuer=ISSUER)
    host = JWKSHost(current.jwks())  # the old key is no longer in the previous list
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json",
            audience="support",
            issuer=ISSUER,
            cooldown=0.0,
        )
        assert (await verifier.verify(current.sign("a", audience="support", workflow="s"))).user
        with pytest.raises(InvalidAssertion) as caught:
            await verifier.verify(old.sign("alice", audience="support", workflow="support"))
        assert "does not publish" in str(caught.value)


async def test_a_broker_that_never_answered_is_a_503_not_a_401() -> None:
    s = signer()
    host = JWKSHost(s.jwks())
    host.status = 500
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json", audience="support", issuer=ISSUER
        )
        with pytest.raises(AssertionKeysUnavailable):
            await verifier.verify(s.sign("alice", audience="support", workflow="support"))


async def test_the_verify_shortcut_caches_one_verifier_per_configuration() -> None:
    s = signer()
    host = JWKSHost(s.jwks())
    async with serve(host.app) as url:
        jwks_url = f"{url}/.well-known/jwks.json"
        for _ in range(5):
            verified = await verify(
                s.sign("carol", audience="sales", workflow="sales"),
                jwks_url=jwks_url,
                audience="sales",
                issuer=ISSUER,
            )
            assert verified.user == "carol"
        assert host.fetches == 1
        with pytest.raises(InvalidAssertion):
            await verify(
                s.sign("carol", audience="support", workflow="support"),
                jwks_url=jwks_url,
                audience="sales",
                issuer=ISSUER,
            )


def test_the_plain_pyjwt_snippet_from_the_readme_verifies_and_refuses() -> None:
    """The lines a backend without the broker package copies, run against real tokens."""
    s = signer()
    jwks = s.jwks()
    body = b'{"type":"threads.list","params":{}}'

    def verified_user(token: str, body: bytes) -> str:
        if jwt.get_unverified_header(token).get("typ") != "chatkit-broker-assertion+jwt":
            raise jwt.InvalidTokenError("not a broker assertion")
        key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]].key
        claims = jwt.decode(
            token,
            key,
            algorithms=["ES256"],
            audience="support",
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "jti"]},
        )
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        if claims.get("req_sha256") != digest:
            raise jwt.InvalidTokenError("not issued for this body")
        return claims["sub"]

    token = s.sign("alice", audience="support", workflow="support", body=body)
    assert verified_user(token, body) == "alice"
    with pytest.raises(jwt.InvalidTokenError):
        verified_user(s.sign("alice", audience="billing", workflow="billing", body=body), body)
    with pytest.raises(jwt.InvalidTokenError):
        verified_user(token, body + b" ")


# --- binding to the request, single use ------------------------------------------------------


def test_an_assertion_is_bound_to_the_body_it_was_minted_for() -> None:
    s = signer()
    body = b'{"type":"threads.create","params":{}}'
    token = s.sign("alice", audience="support", workflow="support", body=body)
    key = public_pem(s)
    assert verify_with_key(token, key=key, audience="support", issuer=ISSUER, body=body).user
    with pytest.raises(InvalidAssertion) as caught:
        verify_with_key(token, key=key, audience="support", issuer=ISSUER, body=body + b" ")
    assert "body" in str(caught.value)
    unbound = s.sign("alice", audience="support", workflow="support")
    with pytest.raises(InvalidAssertion):  # a backend that checks bodies needs the claim
        verify_with_key(unbound, key=key, audience="support", issuer=ISSUER, body=body)


async def test_a_single_use_verifier_refuses_a_replay_until_it_expires() -> None:
    wall = FakeClock()  # the verifier's idea of now, for forgetting spent ids
    s = signer()
    host = JWKSHost(s.jwks())
    async with serve(host.app) as url:
        verifier = AssertionVerifier(
            jwks_url=f"{url}/.well-known/jwks.json",
            audience="support",
            issuer=ISSUER,
            single_use=True,
            wall_clock=wall,
        )
        token = s.sign("alice", audience="support", workflow="support")
        assert (await verifier.verify(token)).user == "alice"
        with pytest.raises(InvalidAssertion) as caught:
            await verifier.verify(token)
        assert "replayed" in str(caught.value)
        assert (await verifier.verify(s.sign("alice", audience="support", workflow="s"))).user
        assert len(verifier._spent) == 2
        # once those have expired they are forgotten (the signature check refuses them anyway)
        wall.now += 120
        await verifier.verify(s.sign("alice", audience="support", workflow="support"))
        assert len(verifier._spent) == 1
