"""``server.GuardedHttpToolsProtocol`` over raw sockets: the request-head cap at sizes around
the limit, sent in one read and split across reads; one ``Host`` header; aborting a started
response without uvicorn's unattributed error line; no request left for the garbage collector.

The protocol runs in a real uvicorn on a loopback port (``run_asgi``), in front of a small
ASGI app, so these are the bytes a client sends and gets.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time

import pytest
from starlette.types import Receive, Scope, Send

from broker.edge import abort_response, head_with_body
from broker.server import MAX_HEAD_BYTES

from .support.asgi_server import run_asgi
from .support.contract import assert_spec_error
from .support.rawhttp import RawResponse, address, read_response

PROTOCOL = "broker.server:GuardedHttpToolsProtocol"


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/abort":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        abort_response(scope)
        return
    if scope["path"] == "/head-with-body":
        head_with_body(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.3)  # a head written on its own would be read before the body
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        await asyncio.sleep(0.3)  # (else the first read may hold the second chunk too)
        await send({"type": "http.response.body", "body": b"data: second\n\n"})
        return
    body = b'{"status":"ok"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def head_of(size: int, *, host: bytes = b"127.0.0.1") -> bytes:
    """A GET request head of exactly ``size`` bytes (blank line included)."""
    start = b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\nX-Pad: "
    pad = size - len(start) - len(b"\r\n\r\n")
    assert pad >= 0
    head = start + b"a" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


def send_head(url: str, head: bytes, parts: int) -> RawResponse:
    """Send ``head`` in ``parts`` writes with a pause between them (1: one write, so a
    head under the socket buffer arrives in one read), and read the answer."""
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = -(-len(head) // parts)
        try:
            for i in range(0, len(head), step):
                sock.sendall(head[i : i + step])
                if parts > 1:
                    time.sleep(0.05)
        except OSError:
            pass  # refused and closed before all was sent: the answer is still there
        return read_response(sock, 10)


SIZES = [
    MAX_HEAD_BYTES - 1024,
    MAX_HEAD_BYTES - 1,
    MAX_HEAD_BYTES,
    MAX_HEAD_BYTES + 1,
    MAX_HEAD_BYTES + 1024,
    66_000,
    100_000,
    120_000,
    130_000,
    1_000_000,
]


@pytest.fixture
async def url() -> str:
    async with run_asgi(ok_app, http=PROTOCOL) as u:
        yield u


@pytest.mark.parametrize("parts", [1, 3], ids=["one-read", "split"])
@pytest.mark.parametrize("size", SIZES)
async def test_a_head_over_the_cap_is_431_whatever_its_size_and_however_it_arrives(
    url: str, size: int, parts: int
) -> None:
    r = await asyncio.to_thread(send_head, url, head_of(size), parts)
    if size <= MAX_HEAD_BYTES:
        assert r.status == 200, r.body
        assert r.body == b'{"status":"ok"}'
    else:
        assert r.status == 431, (size, r.status, r.body[:200])
        assert assert_spec_error(r.status, r.body, r.headers)["code"] == "headers_too_large"


async def test_a_small_request_after_a_refused_one_is_served(url: str) -> None:
    refused = await asyncio.to_thread(send_head, url, head_of(100_000), 1)
    served = await asyncio.to_thread(send_head, url, head_of(200), 1)
    assert (refused.status, served.status) == (431, 200)


@pytest.mark.parametrize("parts", [1, 2], ids=["one-read", "split"])
async def test_two_host_headers_are_400(url: str, parts: int) -> None:
    head = head_of(300).replace(b"Connection: close", b"Host: evil.example\r\nConnection: close")
    r = await asyncio.to_thread(send_head, url, head, parts)
    assert r.status == 400
    assert assert_spec_error(r.status, r.body, r.headers)["code"] == "invalid_request"
    assert b"Host" in r.body


async def test_one_host_header_is_served(url: str) -> None:
    r = await asyncio.to_thread(send_head, url, head_of(300, host=b"evil.example"), 1)
    assert r.status == 200


def read_until_closed(url: str, raw: bytes) -> bytes:
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


async def test_an_aborted_response_drops_the_connection_without_uvicorns_error_line(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("uvicorn").addHandler(caplog.handler)  # uvicorn's logger does not propagate
    raw = b"GET /abort HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    data = await asyncio.to_thread(read_until_closed, url, raw)
    assert data.startswith(b"HTTP/1.1 200")
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n"), "the chunked body was ended as if complete"
    await asyncio.sleep(0.1)
    logging.getLogger("uvicorn").removeHandler(caplog.handler)
    assert "ASGI callable returned" not in caplog.text


def first_read(url: str, raw: bytes) -> bytes:
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(raw)
        return sock.recv(65536)


async def test_a_head_held_for_its_body_goes_out_in_one_write_with_the_first_chunk(url: str):
    """``edge.head_with_body``: the gateway's first event leaves in the same write (and TCP
    segment) as the answer head, so the browser wakes once for both; the chunks after it,
    and the next response on the connection, are written as usual."""
    raw = b"GET /head-with-body HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    first = await asyncio.to_thread(first_read, url, raw)
    assert first.startswith(b"HTTP/1.1 200")
    assert first.endswith(b"data: first\n\n\r\n"), first
    data = await asyncio.to_thread(read_until_closed, url, raw)
    assert data.endswith(b"data: first\n\n\r\ne\r\ndata: second\n\n\r\n0\r\n\r\n"), data


def keep_alive_gets(url: str, n: int) -> list[int]:
    """``n`` GETs one after another on one keep-alive connection."""
    import http.client

    host, port = address(url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        statuses = []
        for _ in range(n):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        return statuses
    finally:
        conn.close()


async def test_a_finished_request_leaves_no_reference_cycle_behind(url: str) -> None:
    """Every request is freed when its answer is done, not by the garbage collector: the
    scope's extensions must not hold the request cycle that holds the scope. (They did, and
    with `serve`'s rare young collections, 512 connections kept ~12 MB of finished requests.)"""
    gc.collect()
    gc.disable()  # nothing collected while the requests run: what is left is what leaked
    try:
        statuses = await asyncio.to_thread(keep_alive_gets, url, 40)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cycles = [o for o in gc.garbage if type(o).__name__ == "RequestResponseCycle"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert statuses == [200] * 40
    assert cycles == [], f"{len(cycles)} finished requests were only freed by the collector"
