"""Deploying: the Procfile, SIGTERM with mints in flight, request ids and log lines across
worker processes, text logs on a terminal, and CORS."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import (
    ROOT,
    WF_SUPPORT,
    BrokerProcess,
    app_client,
    auth,
    cli_command,
    free_port,
    wait_until_serving,
)
from tests.support.mint import MINT, SUPPORT, mint


def test_procfile_serves_on_the_platforms_port(base_env, tmp_path):
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ")
    command = line.removeprefix("web: ")
    assert "$PORT" in command or "${PORT" in command
    port = free_port()
    bin_dir = str(Path(cli_command()[0]).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        **base_env,
        "PORT": str(port),
        "BROKER_PORT": "1",  # an operator's stray BROKER_PORT must not beat the platform's PORT
        "WEB_CONCURRENCY": "2",
    }
    log = tmp_path / "procfile.log"
    proc = subprocess.Popen(
        ["sh", "-c", f"exec {command}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    bp = BrokerProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_until_serving(bp)
        assert httpx.get(bp.url + "/readyz").status_code == 200
    finally:
        assert bp.stop() == 0, bp.logs()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_lets_inflight_mints_finish_and_refuses_new_ones(
    base_env, run_broker, openai, token, workers
):
    openai.for_workflow(WF_SUPPORT, "ok", delay=4.0)
    bp = run_broker({**base_env, "BROKER_UPSTREAM_TIMEOUT": "10"}, "--workers", str(workers))
    tok = token("alice")

    async def slow_mint() -> httpx.Response:
        async with httpx.AsyncClient(base_url=bp.url, timeout=20) as c:
            return await mint(c, tok)

    inflight = [asyncio.create_task(slow_mint()) for _ in range(4)]
    deadline = time.monotonic() + 10
    while len(openai.session_requests()) < 4:  # all four are waiting on the upstream
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    signalled = time.monotonic()
    bp.proc.send_signal(signal.SIGTERM)
    refused = False
    while not refused:  # new requests stop being served while the four are still running
        # the in-flight mints' 4 s upstream delay is the deadline (an event, not a clock: on a
        # busy machine the signal may take a moment longer to be handled)
        assert not any(t.done() for t in inflight), "in-flight mints ended before new ones stopped"
        assert time.monotonic() - signalled < 30, "still serving new requests 30 s after SIGTERM"
        try:
            async with httpx.AsyncClient(base_url=bp.url, timeout=1) as c:
                await c.get("/healthz")
        except httpx.TransportError:
            refused = True
        else:
            await asyncio.sleep(0.05)

    responses = await asyncio.gather(*inflight)
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["client_secret"].startswith("ek_") for r in responses)
    # after its graceful shutdown uvicorn re-raises the signal it caught, so a single server
    # process ends "killed by SIGTERM"; the supervisor of several workers exits 0
    assert await asyncio.to_thread(bp.proc.wait, 20) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < 15  # bounded by timeout_graceful_shutdown
    assert len(openai.session_requests()) == 4


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def access_line(bp: BrokerProcess, request_id: str) -> dict:
    """The access-log line of a request (written just after its response: poll for it)."""
    deadline = time.monotonic() + 5
    while True:
        for line in json_lines(bp.logs()):
            if line["logger"] == "broker.access" and line["request_id"] == request_id:
                return line
        assert time.monotonic() < deadline, bp.logs()
        time.sleep(0.02)


def test_request_ids_echoed_and_on_every_log_line_across_workers(
    base_env, run_broker, openai, token
):
    bp = run_broker(base_env, "--workers", "2")
    tok = token("alice")
    # several requests on fresh connections, so both workers answer some
    for i in range(12):
        rid = f"trace-{i}.x_Y"
        r = httpx.post(
            bp.url + MINT, json=SUPPORT, headers={**auth(tok), "X-Request-ID": rid}, timeout=10
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == rid
    r = httpx.get(bp.url + "/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
    # ids the broker makes are distinct across both workers (each seeds its own generator)
    made = [httpx.get(bp.url + "/healthz").headers["x-request-id"] for _ in range(40)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in made), made
    assert len(set(made)) == len(made), made
    r = httpx.get(bp.url + "/healthz", headers={"X-Request-ID": "x" * 129})
    assert r.headers["x-request-id"] != "x" * 129
    before = access_line(bp, r.headers["x-request-id"])  # the last line before the next request

    # one request that logs several lines: a retried upstream failure
    openai.then("status", status=500)
    r = httpx.post(
        bp.url + MINT, json=SUPPORT, headers={**auth(tok), "X-Request-ID": "retry-1"}, timeout=10
    )
    assert r.status_code == 200
    after = access_line(bp, "retry-1")
    lines = [x for x in json_lines(bp.logs()) if before["ts"] < x["ts"] <= after["ts"]]
    assert len(lines) >= 3, lines  # the upstream warning, the retry, the access line
    assert {x["request_id"] for x in lines} == {"retry-1"}, lines

    access = [x for x in json_lines(bp.logs()) if x["logger"] == "broker.access"]
    assert {f"trace-{i}.x_Y" for i in range(12)} <= {x["request_id"] for x in access}
    assert tok not in bp.logs()


def test_text_logs_on_a_terminal(base_env, tmp_path, token):
    env = {k: v for k, v in base_env.items() if k != "BROKER_LOG_FORMAT"}
    port = free_port()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*cli_command(), "serve", "--port", str(port)],
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    bp = BrokerProcess(f"http://127.0.0.1:{port}", proc, tmp_path / "unused.log")
    bp.log_path.write_text("")
    try:
        wait_until_serving(bp)
        httpx.get(bp.url + "/healthz", headers={"X-Request-ID": "tty-check"})
        output = b""
        deadline = time.monotonic() + 5
        while b"[tty-check]" not in output:
            assert time.monotonic() < deadline, output
            output += os.read(master, 65536)
        line = next(x for x in output.decode().splitlines() if "[tty-check]" in x)
        assert not line.startswith("{") and "GET /healthz 200" in line
    finally:
        bp.stop()
        os.close(master)


# --- CORS -------------------------------------------------------------------------------------

APP = "https://app.example.com"


def preflight(origin: str, method: str = "POST", headers: str = "authorization,content-type"):
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_cors_allowed_origin(make_settings, openai, token):
    settings = make_settings(BROKER_ALLOWED_ORIGINS=f"{APP},http://localhost:5173")
    async with app_client(settings) as c:
        r = await c.options(MINT, headers=preflight(APP, headers="authorization,x-request-id"))
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        assert "POST" in r.headers["access-control-allow-methods"]
        allowed = r.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-request-id"} <= set(allowed.split(", "))
        assert "access-control-allow-credentials" not in r.headers
        assert r.headers["x-request-id"]

        r = await c.post(MINT, json=SUPPORT, headers={**auth(token("alice")), "Origin": APP})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == APP
        exposed = r.headers["access-control-expose-headers"]
        for name in ("X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Reset"):
            assert name in exposed


async def test_cors_refused_origin_method_and_header(make_settings, openai, token):
    async with app_client(make_settings(BROKER_ALLOWED_ORIGINS=APP)) as c:
        for headers in (
            preflight("https://evil.example"),
            preflight(APP + ".evil.example"),
            preflight(APP, method="DELETE"),
            preflight(APP, headers="authorization,x-evil"),
        ):
            r = await c.options(MINT, headers=headers)
            assert r.status_code == 400, headers
            assert r.json()["error"]["code"] == "invalid_request"
            assert "BROKER_ALLOWED_ORIGINS" in r.json()["error"]["message"]
            if headers["Origin"] != APP:
                assert "access-control-allow-origin" not in r.headers
        # a simple request from elsewhere is served (the token guards it) but not readable
        r = await c.get("/api/chatkit/config", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_cors_headers_reach_a_429(make_settings, openai):
    settings = make_settings(BROKER_ALLOWED_ORIGINS=APP, BROKER_IP_RATE_LIMIT="1/hour")
    async with app_client(settings) as c:
        await c.get("/api/chatkit/config", headers={"Origin": APP})
        r = await c.get("/api/chatkit/config", headers={"Origin": APP})
        assert r.status_code == 429
        assert r.headers["access-control-allow-origin"] == APP
        assert "Retry-After" in r.headers["access-control-expose-headers"]


async def test_no_cors_when_unset(client):
    r = await client.options(MINT, headers=preflight(APP))
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
    r = await client.get("/api/chatkit/config", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers
