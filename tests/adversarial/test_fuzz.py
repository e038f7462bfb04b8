"""Schema-driven and property-based fuzzing of a real ``chatkit-broker serve``.

* schemathesis generates requests from the broker's own ``/openapi.json`` (valid ones and
  deliberately invalid ones) against a live broker (fake OpenAI behind it) and a mock-mode
  broker: no 5xx, every answer matches the document, every error has the SPEC shape.
* hypothesis throws hostile ``Authorization`` headers (arbitrary header bytes, JWTs with
  arbitrary headers and claims, correctly signed or not) and hostile bodies (arbitrary bytes,
  odd unicode, huge values, deep nesting, duplicate keys, wrong content types, non-UTF-8)
  over raw sockets: always an answer within seconds, a 4xx in the SPEC shape unless the
  request was in fact valid (200), never a 5xx.
Example counts are modest so the module runs in well under two minutes; the figures are
printed (``-s``) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support import SECRET
from tests.support.adversarial import SecretWatch, broker_process, live_env, mock_env
from tests.support.contract import assert_spec_error
from tests.support.fake_openai import FakeOpenAI
from tests.support.fuzz import ANSWER_WITHIN, check_answer, examples, sign_in
from tests.support.rawhttp import exchange, request_bytes

# Examples per schemathesis run and per property: about a minute for the module on a 2-core
# machine. Raise them locally for a deeper search
# (FUZZ_EXAMPLES=5000 pytest tests/adversarial/test_fuzz.py).
FUZZ = examples(300)
PROPERTY = examples(1000)

watch = SecretWatch()
FIGURES: Counter[str] = Counter()
MESSAGES: Counter[str] = Counter()


def _jwt(claims: object, header: object, *, sign: bool = True) -> str:
    """A JWT from arbitrary JSON header and claims, HMAC-signed with the broker's secret (or
    with a wrong signature) — PyJWT itself would refuse to build most of these."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    key = SECRET.encode() if sign else b"not-the-secret-not-the-secret-not-the-secret"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    if sign:  # a credential, however hostile its claims: never to be logged
        watch.add(token)
    return token


def _token(user: str = "fuzzer") -> str:
    now = int(time.time())
    return _jwt({"sub": user, "iat": now, "exp": now + 600}, {"alg": "HS256", "typ": "JWT"})


@pytest.fixture(scope="module")
def live(fake_server: FakeOpenAI, tmp_path_factory) -> Iterator:
    fake_server.reset()
    with broker_process(live_env(fake_server.base_url), tmp_path_factory.mktemp("fuzz")) as bp:
        yield bp
    watch.add(*(s["client_secret"] for s in fake_server.sessions.values()))
    watch.check(bp.logs())


@pytest.fixture(scope="module")
def mock(tmp_path_factory) -> Iterator:
    with broker_process(mock_env(), tmp_path_factory.mktemp("fuzz-mock")) as bp:
        yield bp
    watch.check(bp.logs())


def _schema(url: str) -> schemathesis.BaseSchema:
    doc = httpx.get(url + "/openapi.json").json()
    return schemathesis.openapi.from_dict(doc)


def _run_schemathesis(bp, *, mock: bool, mode: GenerationMode) -> None:
    schema = _schema(bp.url)
    strategy = schema.as_strategy(generation_mode=mode)
    statuses: Counter[int] = Counter()
    session = httpx.Client(timeout=ANSWER_WITHIN)

    @FUZZ
    @given(case=strategy, auth=st.sampled_from(["valid", "generated", "none"]))
    def run(case, auth):
        sign_in(case, auth, _token)
        response = case.call(base_url=bp.url, timeout=ANSWER_WITHIN)
        statuses[response.status_code] += 1
        check_answer(case, response, mode, watch, mock=mock)

    try:
        run()
    finally:
        session.close()
    label = f"schemathesis {'mock' if mock else 'live'} {mode.value}"
    FIGURES[label] += sum(statuses.values())
    print(f"{label}: {dict(sorted(statuses.items()))}")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_live(live, mode):
    _run_schemathesis(live, mock=False, mode=mode)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_mock(mock, mode):
    _run_schemathesis(mock, mock=True, mode=mode)


# --- hypothesis: the Authorization header ---------------------------------------------------

# what a header value can carry on the wire (no CR, LF or NUL; uvicorn refuses those itself)
header_bytes = st.binary(max_size=300).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128).strip()
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
time_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(int(time.time()) + 600),
    st.text(max_size=12),
    json_values,
)
claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.text(max_size=600), json_values),
        "exp": time_values,
        "iat": time_values,
        "nbf": time_values,
        "aud": json_values,
        "iss": json_values,
        "role": json_values,
    },
)
jwt_headers = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["HS256", "hs256", "none", "RS256", "ES256", "HS512"]) | json_values,
        "typ": st.sampled_from(["JWT", "at+jwt", "id+jwt"]) | json_values,
        "kid": json_values,
        "crit": json_values,
        "jku": st.just("http://127.0.0.1:9/evil.json"),
    },
)
tokens = st.one_of(
    st.builds(lambda c, h, s: _jwt(c, h, sign=s), claims, jwt_headers, st.booleans()),
    st.builds(
        lambda c: _jwt({"sub": "alice", "exp": int(time.time()) + 600} | c, {"alg": "HS256"}),
        claims,
    ),
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=", max_size=200
    ),
    st.just("mock_" + "a" * 40),
    st.just("ek_" + "0" * 48),
    st.just("x" * 9000),
)
schemes = st.sampled_from(
    ["Bearer ", "bearer ", "BEARER  ", "Basic ", "Bearer", " Bearer ", "Token "]
)
valid_ish = st.builds(  # a good token with one claim or header field made hostile
    lambda c, h: _jwt({"sub": "alice", "exp": int(time.time()) + 600} | c, {"alg": "HS256"} | h),
    claims,
    jwt_headers.filter(lambda h: "alg" not in h) | st.just({}),
)
auth_values = st.one_of(
    header_bytes,
    st.builds(lambda s, t: s.encode() + t.encode(), schemes, tokens),
    st.builds(lambda t: b"Bearer " + t.encode(), tokens),
    st.builds(lambda t: b"Bearer " + t.encode(), valid_ish),
    st.builds(lambda t: b"Bearer " + t.encode(), st.builds(lambda: _token("alice"))),
)


def _ask(url: str, raw: bytes):
    r = exchange(url, raw, timeout=ANSWER_WITHIN)  # raises NoAnswer on a hang
    assert r.status < 500, (r.status, r.body[:300])
    if r.status != 200:
        assert 400 <= r.status < 500
        assert_spec_error(r.status, r.body, r.headers)
    return r


def test_authorization_header_property(live):
    statuses: Counter[int] = Counter()

    @PROPERTY
    @given(value=auth_values, path=st.sampled_from(["session", "workflows", "cancel"]))
    def run(value: bytes, path: str):
        # (the signed tokens among the values are watched as _jwt makes them; the rest is
        # fuzz, not a secret: hypothesis draws strings such as "Cache-Control" from the
        # broker's own source, which other tests' logs rightly hold)
        headers = [(b"Authorization", value), (b"Content-Type", b"application/json")]
        if path == "workflows":
            raw = request_bytes("GET", "/api/chatkit/workflows", headers)
        elif path == "cancel":
            raw = request_bytes("POST", "/api/chatkit/session/cancel", headers, b'{"all": true}')
        else:
            raw = request_bytes("POST", "/api/chatkit/session", headers, b'{"workflow": "support"}')
        r = _ask(live.url, raw)
        statuses[r.status] += 1
        if r.status == 401:
            MESSAGES[json.loads(r.body)["error"]["message"][:70]] += 1
            assert r.headers["www-authenticate"].startswith("Bearer")
        sent = value.decode("latin-1").partition(" ")[2].strip()
        if len(sent) >= 8:
            assert sent not in r.body.decode("latin-1"), "the token was echoed"

    run()
    FIGURES["authorization header"] += sum(statuses.values())
    print(f"authorization header: {dict(sorted(statuses.items()))}")
    print(f"  {len(MESSAGES)} distinct 401 messages, e.g. {MESSAGES.most_common(3)}")
    assert statuses[401] > 0 and statuses[200] > 0


# --- hypothesis: the request body -----------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(codec=None, categories=None),  # any code point, surrogates included
    max_size=50,
)


def _deep(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


json_texts = st.one_of(
    st.builds(lambda v: json.dumps(v), json_values),
    st.builds(lambda v: json.dumps({"workflow": v}), json_values | odd_text),
    st.builds(lambda v: json.dumps({"workflowId": v, "previous_session_id": v}), json_values),
    st.builds(
        lambda v, w: json.dumps({"workflow": v}, ensure_ascii=w),
        odd_text,
        st.booleans(),
    ),
    st.builds(lambda n, k: _deep(n, k), st.integers(1, 6000), st.sampled_from(["list", "dict"])),
    st.builds(  # duplicate keys: which one wins must not matter for safety
        lambda a, b: f'{{"workflow": {json.dumps(a)}, "workflow": {json.dumps(b)}}}',
        st.sampled_from(["support", "nope", 3, None]),
        st.sampled_from(["support", "sales", [], {}]),
    ),
    st.builds(lambda n: json.dumps({"workflow": "support", "pad": "x" * n}), st.integers(0, 40000)),
    st.builds(
        lambda n: json.dumps({"workflow": "support", "pad": "é" * n}, ensure_ascii=False),
        st.integers(8000, 9000),  # 16-18 KiB in UTF-8: around the limit
    ),
    st.just('{"workflow": "support"}'),
    st.just('{"workflow": {"id": "support"}, "previous_session_id": null}'),
    st.builds(lambda n: '{"workflow": "' + "\\ud800" * n + '"}', st.integers(1, 3000)),
    st.just('{"workflow": "support"'),
    st.just("NaN"),
    st.just('{"workflow": "support", "x": NaN, "y": -Infinity}'),
    st.just('{"workflow": 1e999999}'),
    st.just('{"workflow": ' + "1" * 5000 + "}"),
)
encodings = st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])
bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda t, e: t.encode(e, errors="surrogatepass" if e.startswith("utf") else "replace"),
        json_texts,
        encodings,
    ),
    st.builds(lambda t: t.encode("utf-8", errors="surrogatepass"), json_texts),
)
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/json; charset=utf-16",
        b"APPLICATION/JSON",
        b"application/json;;;",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/jsonx",
        b"",
        b"\xff\xfe",
    ]
)


def test_request_body_property(live):
    statuses: Counter[int] = Counter()
    tok = _token("body-fuzzer").encode()

    @PROPERTY
    @given(
        body=bodies,
        ctype=content_types,
        path=st.sampled_from(["/api/chatkit/session", "/api/chatkit/session/cancel"]),
        lie=st.sampled_from([None, 0, -1]),
    )
    def run(body: bytes, ctype: bytes, path: str, lie: int | None):
        headers = [(b"Authorization", b"Bearer " + tok)]
        if ctype:
            headers.append((b"Content-Type", ctype))
        if lie is None:
            raw = request_bytes("POST", path, headers, body)
        elif lie == 0:  # Content-Length 0 with a body behind it: the rest is a bad next request
            headers.append((b"Content-Length", b"0"))
            raw = request_bytes("POST", path, headers, body, content_length=False)
        else:  # chunked transfer encoding instead of a Content-Length
            headers.append((b"Transfer-Encoding", b"chunked"))
            chunked = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
            raw = request_bytes("POST", path, headers, chunked, content_length=False)
        r = _ask(live.url, raw)
        statuses[r.status] += 1
        if r.status == 413:
            assert len(body) > 16 * 1024
        if r.status == 200:
            data = json.loads(r.body)
            watch.add(data.get("client_secret"))

    run()
    FIGURES["request body"] += sum(statuses.values())
    print(f"request body: {dict(sorted(statuses.items()))}")
    assert statuses[400] > 0 and statuses[413] > 0


def test_no_secret_in_fuzzed_logs(live, mock):
    """Last in the module: nothing the fuzzers sent or received reached either log."""
    lines = watch.check(live.logs()) + watch.check(mock.logs())
    assert "Traceback" not in live.logs() + mock.logs()
    print(f"fuzz requests: {dict(FIGURES)}, total {sum(FIGURES.values())}; log lines {lines}")
