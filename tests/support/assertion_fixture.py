"""Real broker assertions for the Node verifier's tests (kits/node): the broker's own signer,
its JWKS document as ``GET /.well-known/jwks.json`` serves it, and one token per case.

``python -m tests.support.assertion_fixture`` prints one JSON object; the Node tests serve
``jwks`` on a local port and expect ``valid`` to pass and every ``refused`` case to fail.
"""

from __future__ import annotations

import json
import time

from broker.assertion import AssertionSigner, HMACAssertionSigner

ISSUER = "https://broker.example"
AUDIENCE = "support"
BODY = '{"type":"threads.list","params":{"limit":20}}'
SECRET = "an-hs256-secret-of-more-than-32-bytes!"
# where the broker's file relay streamed an upload: another host than the backend sees
UPLOAD_URL = "http://backend.internal:8001/support/attachments/atc_1/upload?sig=a%20b&v=1"


def fixture() -> dict[str, object]:
    signer = AssertionSigner(issuer=ISSUER)
    body = BODY.encode()

    def sign(s: AssertionSigner | HMACAssertionSigner = signer, **kw: object) -> str:
        args: dict[str, object] = {"audience": AUDIENCE, "workflow": "support", "body": body}
        return s.sign("alice", **{**args, **kw})  # type: ignore[arg-type]

    other_issuer = AssertionSigner(issuer="https://evil.example")
    other_issuer._key, other_issuer.kid = signer._key, signer.kid  # the broker's own key
    other_issuer._headers = dict(signer._headers)
    hs = HMACAssertionSigner(SECRET, issuer=ISSUER)
    return {
        "jwks": signer.jwks(),
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "body": BODY,
        "valid": [sign(extra={"email": "alice@example.com"}), sign()],
        "within_leeway": sign(issued_at=time.time() - 62),  # expired 2 s ago, leeway 5 s
        "refused": {
            "signed by another key": sign(AssertionSigner(issuer=ISSUER)),
            "for another audience": sign(audience="billing"),
            "from another issuer": sign(other_issuer),
            "expired beyond the leeway": sign(issued_at=time.time() - 120),
            "for another body": sign(body=b'{"type":"threads.list","params":{}}'),
            "without a body hash": sign(body=None),
            "HS256 under a JWKS verifier": sign(hs),
            "not a JWT": "not-a-jwt",
        },
        "hs256": {"secret": SECRET, "token": sign(hs)},
        # the file relay's assertions: no req_sha256, bound to the method and URL instead
        "upload": {
            "url": UPLOAD_URL,
            "tokens": [sign(body=None, extra={"htm": "POST", "htu": UPLOAD_URL}) for _ in range(3)],
            "htu_only": sign(body=None, extra={"htu": UPLOAD_URL}),
        },
    }


if __name__ == "__main__":
    print(json.dumps(fixture()))
