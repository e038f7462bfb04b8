"""A tiny HTTP/1.1 client over a bare socket, for requests no real client library will send:
arbitrary header bytes, bodies that lie about their length, heads that never end."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    seconds: float


class NoAnswer(AssertionError):
    """The server did not answer within the timeout (a hang), or closed without a status line."""


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_bytes(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    *,
    host: bytes = b"127.0.0.1",
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host, b"Connection: close"]
    for name, value in headers or ():
        lines.append(name + b": " + value)
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_response(sock: socket.socket, timeout: float) -> RawResponse:
    """Read one response (Content-Length or until close); NoAnswer on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    data = b""
    head_end = -1
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"no complete answer within {timeout}s; got {data[:200]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if chunk:
            data += chunk
        if head_end < 0:
            head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").split("\r\n")
            parts = head[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = data[head_end + 4 :]
            length = headers.get("content-length")
            if (length is not None and len(body) >= int(length)) or not chunk:
                if length is not None:
                    body = body[: int(length)]
                return RawResponse(int(parts[1]), headers, body, time.monotonic() - started)
        elif not chunk:
            raise NoAnswer(f"connection closed without an answer; got {data[:200]!r}")


def exchange(url: str, raw: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``raw`` on a new connection and read the answer."""
    with socket.create_connection(address(url), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock, timeout)
