"""Upstream fault injection against a real ``chatkit-broker serve``: every way the OpenAI side
can fail maps to its SPEC error code within the deadline, and the broker is healthy afterwards
(each test ends with a normal mint). The broker's log is checked for secrets at the end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from email.utils import formatdate

import httpx
import pytest

from tests.support import WF_SUPPORT, app_client, auth
from tests.support.adversarial import SecretWatch, broker_process, live_env
from tests.support.contract import assert_spec_error, check_response
from tests.support.fake_openai import FakeOpenAI

DEADLINE = 2.0  # BROKER_UPSTREAM_TIMEOUT of the broker under test
RETRIES = 2
# scheduling and process overhead on a busy machine (a CPU-bound process beside the suite);
# still well short of the 2 DEADLINEs a second attempt past the deadline would take
SLACK = 1.2

watch = SecretWatch()
FAULTS_TRIED: list[str] = []


@pytest.fixture(scope="module")
def broker(fake_server: FakeOpenAI, tmp_path_factory) -> Iterator:
    env = live_env(
        fake_server.base_url,
        BROKER_UPSTREAM_TIMEOUT=str(DEADLINE),
        BROKER_UPSTREAM_RETRIES=str(RETRIES),
    )
    with broker_process(env, tmp_path_factory.mktemp("faults")) as bp:
        yield bp


@pytest.fixture
async def mint(broker, openai, token):
    """``await mint(**json)`` → (response, seconds); checks every answer against the contract.
    After the test, the fault is cleared and a normal mint must succeed."""
    async with httpx.AsyncClient(base_url=broker.url, timeout=30) as client:

        async def call(user: str = "alice", path: str = "/api/chatkit/session", **body):
            tok = token(user)
            watch.add(tok)
            started = time.monotonic()
            r = await client.post(path, json=body or {"workflow": "support"}, headers=auth(tok))
            seconds = time.monotonic() - started
            check_response("POST", path, r.status_code, r.headers, r.content)
            if r.status_code == 200 and "client_secret" in r.json():
                watch.add(r.json()["client_secret"])
            return r, seconds

        yield call
        openai.reset()
        r, _ = await call("after-the-fault")
        assert r.status_code == 200, f"not healthy after the fault: {r.text}"


def _code(r: httpx.Response) -> str:
    return assert_spec_error(r.status_code, r.content, r.headers)["code"]


def _tried(name: str) -> None:
    FAULTS_TRIED.append(name)


async def test_timeout_before_headers_is_504_at_the_deadline(mint, openai):
    _tried("no answer (headers never come)")
    openai.for_workflow(WF_SUPPORT, "hang")
    r, seconds = await mint()
    assert r.status_code == 504 and _code(r) == "upstream_timeout"
    assert DEADLINE - 0.1 <= seconds < DEADLINE + SLACK
    assert len(openai.session_requests()) == 1


async def test_slow_body_past_the_deadline_is_504(mint, openai):
    _tried("body trickled past the deadline")
    openai.for_workflow(WF_SUPPORT, "trickle", chunk=16, interval=0.2)
    r, seconds = await mint()
    assert r.status_code == 504 and _code(r) == "upstream_timeout"
    assert seconds < DEADLINE + SLACK


async def test_slow_body_within_the_deadline_is_fine(mint, openai):
    _tried("body trickled within the deadline")
    openai.for_workflow(WF_SUPPORT, "trickle", chunk=100, interval=0.05)
    r, seconds = await mint()
    assert r.status_code == 200, r.text
    assert seconds < DEADLINE


async def test_reset_mid_body_is_retried_then_503(mint, openai):
    _tried("connection reset mid-body")
    openai.for_workflow(WF_SUPPORT, "reset_mid_body")
    r, seconds = await mint()
    assert r.status_code == 503 and _code(r) == "upstream_unavailable"
    assert len(openai.session_requests()) == 1 + RETRIES
    assert seconds < DEADLINE + SLACK


async def test_one_reset_then_success_is_a_200(mint, openai):
    _tried("one reset, then a good answer")
    openai.then("reset_mid_body")
    r, _ = await mint()
    assert r.status_code == 200, r.text
    assert len(openai.session_requests()) == 2


async def test_reset_before_any_byte_is_503(mint, openai):
    _tried("connection reset before the answer")
    openai.for_workflow(WF_SUPPORT, "reset")
    r, _ = await mint()
    assert r.status_code == 503 and _code(r) == "upstream_unavailable"


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("truncated", {}),
        ("no_secret", {}),
        ("not_json", {"status": 200}),
        ("raw", {"status": 200, "body": b""}),
        ("raw", {"status": 200, "body": b"\xff\xfe\x00garbage"}),
        ("raw", {"status": 200, "body": b'["client_secret"]'}),
        ("raw", {"status": 200, "body": b'{"client_secret": 42}'}),
        ("status", {"status": 400}),
        ("status", {"status": 418, "body": b"<html>teapot</html>"}),
    ],
    ids=[
        "truncated-json",
        "no-client-secret",
        "html-200",
        "empty-200",
        "binary-200",
        "json-array",
        "secret-not-string",
        "400",
        "418-html",
    ],
)
async def test_unusable_answers_are_502_upstream_error_without_retry(mint, openai, kind, kw):
    _tried(f"unusable answer: {kind} {kw.get('status', '')}".strip())
    openai.for_workflow(WF_SUPPORT, kind, **kw)
    r, _ = await mint()
    assert r.status_code == 502 and _code(r) == "upstream_error", r.text
    assert len(openai.session_requests()) == 1
    assert b"garbage" not in r.content and b"teapot" not in r.content


async def test_json_with_another_content_type_is_accepted(mint, openai):
    """The body decides: a complete ChatSession labelled text/plain still mints."""
    _tried("ChatSession labelled text/plain")
    openai.for_workflow(WF_SUPPORT, "ok", content_type="text/plain")
    r, _ = await mint()
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_huge_body_is_refused_without_reading_it_all(mint, openai, chunked):
    _tried(f"100 MiB body ({'chunked' if chunked else 'with Content-Length'})")
    size = 100 * 1024 * 1024
    openai.for_workflow(WF_SUPPORT, "huge", size=size, chunked=chunked)
    r, seconds = await mint()
    assert r.status_code == 502 and _code(r) == "upstream_error"
    assert "large" in r.json()["error"]["message"]
    assert seconds < DEADLINE
    await asyncio.sleep(0.2)
    assert openai.huge_sent < 16 * 1024 * 1024, f"{openai.huge_sent} bytes were sent"


async def test_a_gzip_encoded_answer_mints(mint, openai):
    _tried("ChatSession gzip-encoded")
    openai.for_workflow(WF_SUPPORT, "gzip")
    r, _ = await mint()
    assert r.status_code == 200, r.text
    assert r.json()["client_secret"].startswith("ek_")


async def test_a_small_gzip_body_that_decodes_past_the_cap_is_refused(mint, openai):
    # a few KiB on the wire, 20 MiB decoded: Content-Length says nothing about the body read
    _tried("gzip body decoding to 20 MiB")
    openai.for_workflow(WF_SUPPORT, "gzip", size=20 * 1024 * 1024)
    r, _ = await mint()
    assert r.status_code == 502 and _code(r) == "upstream_error"
    assert "large" in r.json()["error"]["message"]


async def test_429_with_a_long_retry_after_ends_at_once(mint, openai):
    _tried("429 Retry-After: 3600")
    openai.for_workflow(WF_SUPPORT, "rate_limited", retry_after="3600")
    r, seconds = await mint()
    assert r.status_code == 503 and _code(r) == "upstream_unavailable"
    assert seconds < DEADLINE - 0.5  # not waited towards the deadline
    assert len(openai.session_requests()) == 1


async def test_429_with_a_short_retry_after_is_waited_then_retried(mint, openai):
    _tried("429 Retry-After: 1, then a good answer")
    openai.then("rate_limited", retry_after="1")
    r, seconds = await mint()
    assert r.status_code == 200, r.text  # within the deadline, or the broker gives up
    assert seconds >= 1.0
    assert len(openai.session_requests()) == 2


async def test_429_with_an_http_date_retry_after(mint, openai):
    _tried("429 Retry-After as an HTTP date (far, then near)")
    openai.then("rate_limited", retry_after="Wed, 21 Oct 2099 07:28:00 GMT")
    r, seconds = await mint()
    assert r.status_code == 503 and _code(r) == "upstream_unavailable"
    assert seconds < DEADLINE - 0.5  # not waited towards the deadline
    openai.then("rate_limited", retry_after=formatdate(time.time() + 1, usegmt=True))
    r, _ = await mint()
    assert r.status_code == 200, r.text  # waited, and within the deadline


@pytest.mark.parametrize(
    ("status", "code", "http"),
    [
        (500, "upstream_error", 502),
        (502, "upstream_error", 502),
        (503, "upstream_unavailable", 503),
        (504, "upstream_error", 502),
        (429, "upstream_unavailable", 503),
    ],
)
async def test_5xx_storm_is_retried_then_mapped(mint, openai, status, code, http):
    _tried(f"{status} storm (every attempt)")
    kind = "rate_limited" if status == 429 else "status"
    openai.for_workflow(WF_SUPPORT, kind, status=status)
    r, seconds = await mint()
    assert r.status_code == http and _code(r) == code, r.text
    assert len(openai.session_requests()) == 1 + RETRIES
    assert seconds < DEADLINE + SLACK


async def test_concurrent_storm_then_recovery(mint, openai):
    _tried("503 storm under 50 concurrent mints")
    openai.for_workflow(WF_SUPPORT, "status", status=503)
    results = await asyncio.gather(*(mint(f"user-{i}") for i in range(50)))
    assert all(r.status_code == 503 and _code(r) == "upstream_unavailable" for r, _ in results)
    assert max(s for _, s in results) < DEADLINE + SLACK + 1
    openai.reset()
    results = await asyncio.gather(*(mint(f"user-{i}") for i in range(50)))
    assert all(r.status_code == 200 for r, _ in results)


async def test_failed_cancel_of_the_previous_session_never_fails_the_mint(mint, openai):
    _tried("cancel of previous_session_id hangs / fails")
    first, _ = await mint()
    previous = first.json()["session_id"]
    openai.then("ok").then("hang")  # the new session is created, the cancel never answers
    r, seconds = await mint(workflow="support", previous_session_id=previous)
    assert r.status_code == 200, r.text
    assert seconds < 2 * DEADLINE + SLACK
    openai.release_hangs()
    openai.then("ok").then("status", status=500)
    r, _ = await mint(workflow="support", previous_session_id=r.json()["session_id"])
    assert r.status_code == 200, r.text


async def test_cancel_faults_map_to_spec_codes(mint, openai):
    _tried("explicit cancel: upstream 500 / hang")
    first, _ = await mint()
    sid = first.json()["session_id"]
    openai.for_workflow(WF_SUPPORT, "ok")
    openai.then("status", status=500).then("status", status=500).then("status", status=500)
    r, _ = await mint(path="/api/chatkit/session/cancel", session_id=sid)
    assert r.status_code == 502 and _code(r) == "upstream_error"
    openai.then("hang")
    r, seconds = await mint(path="/api/chatkit/session/cancel", session_id=sid)
    assert r.status_code == 504 and _code(r) == "upstream_timeout"
    assert seconds < DEADLINE + SLACK


def test_connection_refused_is_503(run_broker, token):
    _tried("connection refused")
    bp = run_broker(live_env("http://127.0.0.1:9/v1", BROKER_UPSTREAM_TIMEOUT="2"))
    tok = token("alice")
    watch.add(tok)
    r = httpx.post(bp.url + "/api/chatkit/session", json={"workflow": "support"}, headers=auth(tok))
    assert r.status_code == 503 and _code(r) == "upstream_unavailable"
    watch.check(bp.logs())


async def test_jwks_served_in_pieces_is_read_whole(make_settings, openai, token):
    """A key set that arrives in several chunks (any real JWKS over TLS can) must verify."""
    _tried("JWKS delivered in 64-byte chunks")
    import json as _json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = _json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    openai.jwks = {"keys": [jwk | {"kid": "k1", "use": "sig", "alg": "ES256"}]}
    openai.jwks_chunk = 64
    settings = make_settings(BROKER_JWT_SECRET=None, BROKER_JWT_JWKS_URL=openai.url + "/jwks.json")
    async with app_client(settings) as c:
        tok = token("alice", key=key, algorithm="ES256", headers={"kid": "k1"})
        r = await c.post("/api/chatkit/session", json={"workflow": "support"}, headers=auth(tok))
    assert r.status_code == 200, r.text


def test_no_secret_in_the_broker_log(broker):
    """Runs last in this module: the log of every fault above holds no secret."""
    lines = watch.check(broker.logs())
    assert lines > 50
    assert "Traceback" not in broker.logs()
    print(f"faults tried: {len(FAULTS_TRIED)}; log lines checked: {lines}")
