"""Slow and abusive clients against a real ``chatkit-broker serve``: oversized and malformed
heads, clients that hang up mid-body, slowloris heads, bodies that never finish, and 10,000
idle connections. The broker must refuse them cheaply and keep serving everyone else."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from broker.edge import BODY_TIMEOUT
from broker.server import HEAD_TIMEOUT, MAX_HEAD_BYTES
from tests.support.adversarial import (
    SecretWatch,
    broker_process,
    live_env,
    make_token,
    raise_fd_limit,
    rss_mib,
)
from tests.support.contract import assert_spec_error
from tests.support.rawhttp import NoAnswer, address, exchange, read_response, request_bytes

watch = SecretWatch()


@pytest.fixture(scope="module")
def broker(fake_server, tmp_path_factory):
    """A live broker against the fake OpenAI for the whole module, and ``mint(user)``."""
    fake_server.reset()
    with broker_process(live_env(fake_server.base_url), tmp_path_factory.mktemp("abuse")) as bp:

        def mint(user: str = "alice", timeout: float = 10.0):
            tok = make_token(user)
            watch.add(tok)
            raw = request_bytes(
                "POST",
                "/api/chatkit/session",
                [
                    (b"Authorization", b"Bearer " + tok.encode()),
                    (b"Content-Type", b"application/json"),
                ],
                b'{"workflow": "support"}',
            )
            r = exchange(bp.url, raw, timeout)
            if r.status == 200:
                watch.add(json.loads(r.body)["client_secret"])
            return r

        bp.mint = mint  # type: ignore[attr-defined]
        yield bp
        watch.check(bp.logs())


def _wait_for_log(bp, fragment: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = bp.logs()
        if fragment in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{fragment!r} never appeared in the log:\n{bp.logs()[-2000:]}")


def test_client_gone_mid_body_is_not_an_internal_error(broker):
    tok = make_token("alice")
    watch.add(tok)
    head = request_bytes(
        "POST",
        "/api/chatkit/session",
        [(b"Authorization", b"Bearer " + tok.encode()), (b"Content-Type", b"application/json")],
        content_length=False,
    ).replace(b"Connection: close\r\n", b"Content-Length: 100\r\n")
    with socket.create_connection(address(broker.url)) as sock:
        sock.sendall(head + b'{"work')
        time.sleep(0.3)
    text = _wait_for_log(broker, '"status":499')
    assert "unhandled error" not in text and "Traceback" not in text
    assert broker.mint().status == 200


def test_oversized_request_head_is_refused_before_it_is_buffered(broker):
    pid = broker.proc.pid
    before = rss_mib(pid)
    sent = 0
    with socket.create_connection(address(broker.url), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(200):  # up to 200 MiB, as the attack that grew plain uvicorn
                sock.sendall(b"a" * (1024 * 1024))
                sent += 1
        except OSError:
            pass  # the broker closed the connection: what we want
        r = read_response(sock, 5)
    assert r.status == 431
    assert assert_spec_error(r.status, r.body, r.headers)["code"] == "headers_too_large"
    assert sent < 50, f"the broker kept reading: {sent} MiB accepted"
    grew = rss_mib(pid) - before
    assert grew < 20
    print(f"oversized head: refused 431 after {sent} MiB sent (cap 64 KiB), RSS +{grew:.1f} MiB")
    assert broker.mint().status == 200


def test_many_small_headers_within_the_cap_are_served(broker):
    headers = [(f"X-H{i}".encode(), b"v" * 20) for i in range(int(MAX_HEAD_BYTES * 0.8) // 32)]
    r = exchange(broker.url, request_bytes("GET", "/healthz", headers))
    assert r.status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST /api/chatkit/session HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /api/chatkit/session HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on the plain port
    ],
    ids=["garbage", "version", "header-no-colon", "negative-length", "bad-chunk", "nul", "tls"],
)
def test_malformed_http_gets_the_spec_error_shape(broker, raw):
    r = exchange(broker.url, raw, timeout=5)
    assert r.status == 400
    assert assert_spec_error(r.status, r.body, r.headers)["code"] == "invalid_request"
    assert broker.mint().status == 200


class Trickler(threading.Thread):
    """Sends ``data`` one byte every ``interval`` s on its own connection; records the answer."""

    def __init__(self, url: str, data: bytes, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.data, self.interval = url, data, interval
        self.answer: int | None = None
        self.sent = 0
        self.closed_after: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        with socket.create_connection(address(self.url), timeout=60) as sock:
            try:
                for byte in self.data:
                    sock.sendall(bytes([byte]))
                    self.sent += 1
                    time.sleep(self.interval)
                r = read_response(sock, 60)
                self.answer = r.status
            except (OSError, NoAnswer):
                pass
            if self.answer is None:
                try:
                    self.answer = read_response(sock, 1).status
                except (OSError, NoAnswer):
                    self.answer = -1  # closed without an answer
            self.closed_after = time.monotonic() - started


@pytest.mark.slow
def test_slowloris_heads_and_endless_bodies_do_not_starve_others(broker):
    tok = make_token("mallory").encode()
    watch.add(tok.decode())
    head = request_bytes("GET", "/api/chatkit/workflows", [(b"Authorization", b"Bearer " + tok)])
    slowloris = [Trickler(broker.url, head, 0.5) for _ in range(200)]
    endless = []
    for _ in range(50):
        partial = request_bytes(
            "POST",
            "/api/chatkit/session",
            [(b"Authorization", b"Bearer " + tok), (b"Content-Type", b"application/json")],
            content_length=False,
        ).replace(b"Connection: close\r\n", b"Content-Length: 1000\r\n")
        endless.append(partial + b'{"workflow": ')
    stallers = []
    for raw in endless:
        sock = socket.create_connection(address(broker.url), timeout=60)
        sock.sendall(raw)
        stallers.append(sock)
    started = time.monotonic()
    for t in slowloris:
        t.start()

    latencies = []
    while time.monotonic() - started < HEAD_TIMEOUT + 2:
        t0 = time.monotonic()
        r = broker.mint("alice")
        latencies.append(time.monotonic() - t0)
        assert r.status == 200, r.body
        time.sleep(0.1)
    assert max(latencies) < 2.0, f"normal requests slowed down: {max(latencies):.2f}s"

    # the endless bodies were answered 408 at the body deadline
    for sock in stallers:
        r = read_response(sock, BODY_TIMEOUT + 5)
        assert r.status == 408
        assert assert_spec_error(r.status, r.body, r.headers)["code"] == "request_timeout"
        sock.close()
    # the trickled heads were cut off at the head deadline with a 408
    for t in slowloris:
        t.join(HEAD_TIMEOUT + 10)
    answers = [t.answer for t in slowloris]
    assert answers.count(408) == len(slowloris), answers
    assert all(t.closed_after < HEAD_TIMEOUT + 3 for t in slowloris)
    assert all(t.sent < len(head) for t in slowloris)
    pytest.slow_figures = {  # type: ignore[attr-defined]
        "slowloris": len(slowloris),
        "endless_bodies": len(stallers),
        "normal_requests": len(latencies),
        "max_latency_s": round(max(latencies), 3),
    }
    print("slow clients:", pytest.slow_figures)  # type: ignore[attr-defined]


def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@pytest.mark.slow
def test_ten_thousand_idle_connections(run_broker, openai, token):
    want = 10_000
    limit = raise_fd_limit(want * 2 + 1000)  # ours and the broker's (it inherits the limit)
    count = min(want, limit - 500)  # each process has its own limit
    bp = run_broker(live_env(openai.base_url))
    pid = bp.proc.pid
    time.sleep(0.5)  # let the start-up probe's connection close
    baseline_fds = _open_fds(pid)
    tok = token("alice")
    watch.add(tok)
    mint = request_bytes(
        "POST",
        "/api/chatkit/session",
        [(b"Authorization", b"Bearer " + tok.encode()), (b"Content-Type", b"application/json")],
        b'{"workflow": "support"}',
    )

    socks: list[socket.socket] = []
    started = time.monotonic()
    try:
        while len(socks) < count:
            for _ in range(min(500, count - len(socks))):
                socks.append(socket.create_connection(address(bp.url), timeout=10))
            time.sleep(0.02)  # let the broker accept: the listen backlog is finite
        opened_in = time.monotonic() - started
        # all of them are held by the broker (well before the head deadline closes them) …
        deadline = started + HEAD_TIMEOUT / 2
        while _open_fds(pid) < baseline_fds + count * 0.99 and time.monotonic() < deadline:
            time.sleep(0.1)
        held = _open_fds(pid) - baseline_fds
        assert held >= count * 0.99, f"broker holds {held} of {count}"
        # … and it still answers others promptly
        latencies = []
        for i in range(20):
            t0 = time.monotonic()
            r = exchange(bp.url, mint if i % 2 else request_bytes("GET", "/healthz"), 10)
            latencies.append(time.monotonic() - t0)
            assert r.status == 200
        assert max(latencies) < 1.0, latencies
        # idle connections that never send a byte are closed at the head deadline
        deadline = started + HEAD_TIMEOUT + 15
        while _open_fds(pid) > baseline_fds + 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _open_fds(pid) <= baseline_fds + 10, "idle connections were not closed"
        rss = rss_mib(pid)
    finally:
        for s in socks:
            s.close()
    r = exchange(bp.url, mint, 10)
    assert r.status == 200
    watch.add(json.loads(r.body)["client_secret"])
    watch.check(bp.logs())
    print(
        f"idle connections: {count} (fd limit {limit}), opened in {opened_in:.1f}s, "
        f"max latency meanwhile {max(latencies) * 1000:.0f} ms, broker RSS {rss:.0f} MiB"
    )
