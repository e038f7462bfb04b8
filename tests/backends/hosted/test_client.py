"""The hosted sessions client through the HTTP API: retries, Retry-After, the deadline, error
mapping, body limits, and what reaches the log but never the browser (SPEC §2-3).

Where back-off would cost real time, the app's ``HostedSessions`` gets an injected clock and
sleep (``FakeTime``): sleeps are recorded and move the clock instead of waiting. Tests of the
deadline itself use real time with sub-second timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from aiohttp import web

from broker.backends.hosted import HostedSessions, UpstreamConfig
from broker.config import Settings
from broker.http import HttpPool
from tests.support import API_KEY, WF_SUPPORT, app_client, free_port
from tests.support.fake_openai import chat_session, error_json
from tests.support.jwt_kit import TinyServer, claims, sign
from tests.support.mint import mint


class FakeTime:
    """A clock that only moves when the client sleeps; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def upstream_config(settings: Settings) -> UpstreamConfig:
    return UpstreamConfig.from_settings(settings)


@contextlib.asynccontextmanager
async def client_on(
    settings: Settings, fake_time: FakeTime | None = None, **kw: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The app, its upstream client on ``fake_time`` (or real time when None)."""
    pool = HttpPool()
    extra = {"clock": fake_time.clock, "sleep": fake_time.sleep} if fake_time else {}
    backend = HostedSessions(upstream_config(settings), pool, **extra, **kw)
    async with app_client(settings, http=pool, backend=backend) as c:
        yield c


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert API_KEY not in r.text
    return err


def broker_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("broker"))


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


# --- which failures are retried ---------------------------------------------------------------

RETRIED: dict[str, tuple[str, dict[str, Any]]] = {
    "429": ("rate_limited", {}),
    "500": ("status", {"status": 500}),
    "502": ("status", {"status": 502}),
    "503": ("status", {"status": 503}),
    "504": ("status", {"status": 504}),
    "connection-reset": ("reset", {}),
}


@pytest.mark.parametrize("failure", list(RETRIED.values()), ids=list(RETRIED))
async def test_retried_failures_then_success(failure, make_settings, openai, fake_time):
    kind, kw = failure
    openai.then(kind, **kw).then(kind, **kw)  # two failures, then the default: ok
    async with client_on(make_settings(), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert r.status_code == 200, r.text
    requests = openai.session_requests()
    assert len(requests) == 3
    assert all(req.body == requests[0].body for req in requests)  # the same request each time
    # exponential back-off with jitter: 0.25 s x 2^n x [0.5, 1.5)
    assert len(fake_time.sleeps) == 2
    assert 0.125 <= fake_time.sleeps[0] < 0.375
    assert 0.25 <= fake_time.sleeps[1] < 0.75


NOT_RETRIED: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "400": ("status", {"status": 400}, 502, "upstream_error"),
    "401": ("unauthorized", {}, 502, "upstream_auth_failed"),
    "403": ("forbidden", {}, 502, "upstream_auth_failed"),
    "404-workflow": ("workflow_not_found", {}, 502, "upstream_workflow_not_found"),
    "408": ("status", {"status": 408}, 502, "upstream_error"),
    "409": ("status", {"status": 409}, 502, "upstream_error"),
    "422": ("status", {"status": 422}, 502, "upstream_error"),
    "501": ("status", {"status": 501}, 502, "upstream_error"),
    "400-with-retry-after": ("status", {"status": 400, "retry_after": "0"}, 502, "upstream_error"),
    "200-not-json": ("not_json", {"status": 200}, 502, "upstream_error"),
    "200-no-client-secret": ("no_secret", {}, 502, "upstream_error"),
    "200-json-array": ("raw", {"status": 200, "body": b"[]"}, 502, "upstream_error"),
    "200-empty": ("raw", {"status": 200, "body": b""}, 502, "upstream_error"),
}


@pytest.mark.parametrize("failure", list(NOT_RETRIED.values()), ids=list(NOT_RETRIED))
async def test_failures_that_are_never_retried(failure, make_settings, openai, fake_time):
    kind, kw, status, code = failure
    openai.for_workflow(WF_SUPPORT, kind, **kw)
    async with client_on(make_settings(), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, status, code)
    assert len(openai.session_requests()) == 1
    assert fake_time.sleeps == []


EXHAUSTED: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "429": ("rate_limited", {}, 503, "upstream_unavailable"),
    "503": ("status", {"status": 503}, 503, "upstream_unavailable"),
    "500": ("status", {"status": 500}, 502, "upstream_error"),
    "502": ("status", {"status": 502}, 502, "upstream_error"),
    "504": ("status", {"status": 504}, 502, "upstream_error"),
    "connection-reset": ("reset", {}, 503, "upstream_unavailable"),
}


@pytest.mark.parametrize("failure", list(EXHAUSTED.values()), ids=list(EXHAUSTED))
@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_retries_stop_at_the_configured_budget(
    failure, retries, make_settings, openai, fake_time
):
    kind, kw, status, code = failure
    openai.for_workflow(WF_SUPPORT, kind, **kw)
    settings = make_settings(BROKER_UPSTREAM_RETRIES=str(retries))
    async with client_on(settings, fake_time) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, status, code)
    assert len(openai.session_requests()) == 1 + retries
    assert len(fake_time.sleeps) == retries


async def test_connection_refused_is_503_after_retries(make_settings, openai, fake_time):
    settings = make_settings(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    async with client_on(settings, fake_time) as c:
        r = await mint(c, sign(claims()))
    err = assert_error(r, 503, "upstream_unavailable")
    assert "reach OpenAI" in err["message"]
    assert len(fake_time.sleeps) == 2


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kw", "slept"),
    [
        ("rate_limited", {"retry_after": "2"}, 2.0),
        ("rate_limited", {"retry_after": "0"}, 0.0),
        ("rate_limited", {"retry_after": "1.5"}, 1.5),
        ("status", {"status": 503, "retry_after": "3"}, 3.0),
        ("status", {"status": 500, "retry_after": "1"}, 1.0),
    ],
    ids=["429-2s", "429-0s", "429-1.5s", "503-3s", "500-1s"],
)
async def test_retry_after_is_honoured(kind, kw, slept, make_settings, openai, fake_time):
    openai.then(kind, **kw)
    async with client_on(make_settings(BROKER_UPSTREAM_TIMEOUT="10"), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert r.status_code == 200, r.text
    assert fake_time.sleeps == [slept]
    assert len(openai.session_requests()) == 2


async def test_retry_after_as_http_date_is_honoured(make_settings, openai, fake_time):
    openai.then("rate_limited", retry_after=formatdate(time.time() + 3, usegmt=True))
    async with client_on(make_settings(BROKER_UPSTREAM_TIMEOUT="10"), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert r.status_code == 200, r.text
    [slept] = fake_time.sleeps
    assert 1.5 <= slept <= 3.5  # whole seconds on the wire, measured against the wall clock


@pytest.mark.parametrize(
    ("kind", "kw", "status", "code"),
    [
        ("rate_limited", {"retry_after": "30"}, 503, "upstream_unavailable"),
        ("status", {"status": 503, "retry_after": "30"}, 503, "upstream_unavailable"),
        ("status", {"status": 500, "retry_after": "30"}, 502, "upstream_error"),
        ("rate_limited", {"retry_after": "3"}, 503, "upstream_unavailable"),  # exactly the deadline
        ("rate_limited", {"retry_after": "1e400"}, 503, "upstream_unavailable"),
        (
            "rate_limited",
            {"retry_after": formatdate(time.time() + 3600, usegmt=True)},
            503,
            "upstream_unavailable",
        ),
    ],
    ids=["429-30s", "503-30s", "500-30s", "429-at-deadline", "429-infinite", "429-date-in-an-hour"],
)
async def test_retry_after_past_the_deadline_ends_at_once(
    kind, kw, status, code, make_settings, openai, fake_time
):
    openai.then(kind, **kw)
    async with client_on(make_settings(BROKER_UPSTREAM_TIMEOUT="3"), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, status, code)
    assert fake_time.sleeps == []
    assert len(openai.session_requests()) == 1


async def test_retry_after_past_the_deadline_answers_without_waiting(make_settings, openai):
    openai.for_workflow(WF_SUPPORT, "rate_limited", retry_after="5")
    async with app_client(make_settings(BROKER_UPSTREAM_TIMEOUT="1")) as c:
        started = time.monotonic()
        r = await mint(c, sign(claims()))
        took = time.monotonic() - started
    assert_error(r, 503, "upstream_unavailable")
    assert took < 0.5
    assert len(openai.session_requests()) == 1


async def test_later_retry_after_that_would_pass_the_deadline_stops_there(
    make_settings, openai, fake_time
):
    openai.for_workflow(WF_SUPPORT, "status", status=503, retry_after="0.6")
    async with client_on(make_settings(BROKER_UPSTREAM_TIMEOUT="1"), fake_time) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, 503, "upstream_unavailable")
    assert fake_time.sleeps == [0.6]  # 0.6 + 0.6 would pass the 1 s deadline
    assert len(openai.session_requests()) == 2


# --- the total deadline (real time, sub-second) ---------------------------------------------


async def test_hanging_upstream_is_504_at_the_deadline(make_settings, openai):
    openai.for_workflow(WF_SUPPORT, "hang")
    async with app_client(make_settings(BROKER_UPSTREAM_TIMEOUT="0.5")) as c:
        started = time.monotonic()
        r = await mint(c, sign(claims()))
        took = time.monotonic() - started
    err = assert_error(r, 504, "upstream_timeout")
    assert "BROKER_UPSTREAM_TIMEOUT" in err["message"]
    assert 0.45 <= took < 1.2
    assert len(openai.session_requests()) == 1


async def test_deadline_counts_back_off_and_earlier_attempts(make_settings, openai):
    # 503 after 0.4 s, Retry-After 0.4 s, then a hang: the deadline is 1.2 s from the start,
    # not 1.2 s from the last attempt (2 s); 0.8 s to spare for a busy machine
    openai.then("status", status=503, retry_after="0.4", delay=0.4).then("hang")
    async with app_client(make_settings(BROKER_UPSTREAM_TIMEOUT="1.2")) as c:
        started = time.monotonic()
        r = await mint(c, sign(claims()))
        took = time.monotonic() - started
    assert_error(r, 504, "upstream_timeout")
    assert 1.15 <= took < 2.0
    assert len(openai.session_requests()) == 2


async def test_slow_answer_past_the_deadline_is_504(make_settings, openai):
    openai.then("ok", delay=1.0)
    async with app_client(make_settings(BROKER_UPSTREAM_TIMEOUT="0.3")) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, 504, "upstream_timeout")


# --- bodies ------------------------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[TinyServer]:
    """A scriptable stand-in for OpenAI (for what the fake cannot say: chunked bodies, fixed
    request ids, redirects)."""
    server = await TinyServer().start()
    yield server
    await server.stop()


async def stream(
    request: web.Request, status: int, parts: list[bytes], headers: dict[str, str] | None = None
) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
        await asyncio.sleep(0.005)  # each part reaches the client on its own
    await resp.write_eof()
    return resp


async def test_body_over_1_mib_with_content_length_is_refused(make_settings, openai):
    big = json.dumps({"client_secret": "ek_x", "pad": "x" * (1024 * 1024)}).encode()
    openai.then("raw", status=200, body=big)
    async with app_client(make_settings()) as c:
        r = await mint(c, sign(claims()))
    err = assert_error(r, 502, "upstream_error")
    assert "large" in err["message"]
    assert len(openai.session_requests()) == 1


async def test_chunked_body_over_1_mib_is_refused(make_settings, upstream):
    chunk = b"x" * 65536

    async def answer(request: web.Request) -> web.StreamResponse:
        return await stream(
            request, 200, [b'{"client_secret": "ek_x", "pad": "', *([chunk] * 20), b'"}']
        )

    upstream.handler = answer
    async with app_client(make_settings(OPENAI_BASE_URL=upstream.url + "/v1")) as c:
        r = await mint(c, sign(claims()))
    err = assert_error(r, 502, "upstream_error")
    assert "large" in err["message"]


async def test_chunked_session_is_read_whole(make_settings, upstream):
    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        data = json.dumps(chat_session(body["user"], body["workflow"])).encode()
        return await stream(request, 200, [data[i : i + 100] for i in range(0, len(data), 100)])

    upstream.handler = answer
    async with app_client(make_settings(OPENAI_BASE_URL=upstream.url + "/v1")) as c:
        r = await mint(c, sign(claims()))
    assert r.status_code == 200, r.text
    assert r.json()["client_secret"].startswith("ek_")


async def test_malformed_http_answer_is_502_not_500(make_settings):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with app_client(make_settings(OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1")) as c:
            r = await mint(c, sign(claims()))
    finally:
        server.close()
        await server.wait_closed()
    assert_error(r, 502, "upstream_error")


async def test_redirects_are_not_followed(make_settings, upstream):
    elsewhere = await TinyServer().start()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(upstream.url + "/v2/chatkit/sessions")

    upstream.handler = redirect
    elsewhere.handler = redirect
    try:
        async with app_client(make_settings(OPENAI_BASE_URL=upstream.url + "/v1")) as c:
            r = await mint(c, sign(claims()))
    finally:
        await elsewhere.stop()
    err = assert_error(r, 502, "upstream_error")
    assert "OPENAI_BASE_URL" in err["message"]
    assert upstream.hits == ["/v1/chatkit/sessions"]  # the API key went to one URL only


# --- what is logged, and what is not sent to the browser --------------------------------------

LOGGED: dict[str, tuple[int, int, str]] = {
    "401": (401, 502, "upstream_auth_failed"),
    "403": (403, 502, "upstream_auth_failed"),
    "404": (404, 502, "upstream_workflow_not_found"),
    "400": (400, 502, "upstream_error"),
    "500": (500, 502, "upstream_error"),
    "429": (429, 503, "upstream_unavailable"),
}


@pytest.mark.parametrize("case", list(LOGGED.values()), ids=list(LOGGED))
async def test_upstream_error_body_and_request_id_go_to_the_log_only(
    case, make_settings, upstream, caplog
):
    caplog.set_level(logging.INFO)
    upstream_status, status, code = case
    detail = "Upstream detail 7Qx: Incorrect API key provided: sk-proj-****wxyz"

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(
            error_json(detail), status=upstream_status, headers={"x-request-id": "req_upstream_7Qx"}
        )

    upstream.handler = answer
    settings = make_settings(OPENAI_BASE_URL=upstream.url + "/v1", BROKER_UPSTREAM_RETRIES="0")
    async with app_client(settings) as c:
        r = await mint(c, sign(claims()))
    assert_error(r, status, code)
    assert "7Qx" not in r.text and "req_upstream" not in r.text and "sk-proj" not in r.text
    logged = broker_log(caplog)
    assert "req_upstream_7Qx" in logged
    assert "Upstream detail 7Qx" in logged
    assert API_KEY not in logged


async def test_no_api_key_or_client_secret_in_logs_across_every_path(make_settings, openai, caplog):
    caplog.set_level(logging.DEBUG)
    kinds: list[tuple[str, dict[str, Any]]] = [
        ("ok", {}),
        ("unauthorized", {}),
        ("forbidden", {}),
        ("workflow_not_found", {}),
        ("rate_limited", {"retry_after": "0"}),
        ("status", {"status": 500, "retry_after": "0"}),
        ("not_json", {"status": 200}),
        ("no_secret", {}),
        ("reset", {}),
        ("ok", {}),
    ]
    bodies: list[str] = []
    async with app_client(
        make_settings(BROKER_UPSTREAM_RETRIES="0", BROKER_UPSTREAM_TIMEOUT="1")
    ) as c:
        for kind, kw in kinds:
            openai.then(kind, **kw)
            bodies.append((await mint(c, sign(claims()))).text)
        openai.then("hang")
        bodies.append((await mint(c, sign(claims()))).text)
    secrets = [s for s in (json.loads(b).get("client_secret") for b in bodies) if s]
    assert len(secrets) == 2
    logged = "\n".join(
        f"{r.getMessage()} {r.__dict__!r}" for r in caplog.records if r.name.startswith("broker")
    )
    assert "upstream" in logged  # the failures were logged
    for secret in [API_KEY, *secrets]:
        assert secret not in logged
    assert all(API_KEY not in b for b in bodies)


# --- the latency metric measures attempts, not back-off ---------------------------------------


async def test_latency_observations_exclude_back_off(make_settings, openai, fake_time):
    observed: list[tuple[str, float]] = []
    openai.then("rate_limited", retry_after="2").then("status", status=503, retry_after="3")
    async with client_on(
        make_settings(BROKER_UPSTREAM_TIMEOUT="10"),
        fake_time,
        observe=lambda op, s: observed.append((op, s)),
    ) as c:
        r = await mint(c, sign(claims()))
    assert r.status_code == 200, r.text
    assert fake_time.sleeps == [2.0, 3.0]
    # the fake clock moves only while sleeping, so every attempt took 0 s on it
    assert observed == [("create", 0.0), ("create", 0.0), ("create", 0.0)]
