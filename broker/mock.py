"""Mock mode: signed ``mock_`` secrets and the loopback-only guard.

Mock secrets let front-end code exercise its ``getClientSecret`` flow with no OpenAI key;
they are signed with a per-process key so nothing outside this process can forge or reuse them.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from .upstream import CreatedSession

MOCK_USER = "mock-user"
_SALT = "chatkit-broker.mock-secret"
_LOCAL_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


class MockSessions:
    """A stand-in for the hosted sessions API that mints signed, expiring ``mock_`` secrets."""

    def __init__(self, *, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._serializer = URLSafeTimedSerializer(key or secrets.token_bytes(32), salt=_SALT)
        self._clock = clock
        self._cancelled: set[str] = set()

    async def create(self, body: Mapping[str, Any], *, workflow_label: str) -> CreatedSession:
        seconds = int(body.get("expires_after", {}).get("seconds", 600))
        expires_at = int(self._clock()) + seconds
        session_id = f"cksess_mock_{secrets.token_hex(12)}"
        payload = {"s": session_id, "u": body["user"], "w": body["workflow"]["id"], "e": expires_at}
        return CreatedSession("mock_" + self._serializer.dumps(payload), expires_at, session_id)

    async def cancel(self, session_id: str) -> bool:
        self._cancelled.add(session_id)
        return True

    def verify(self, secret: str) -> dict[str, Any] | None:
        """The payload of a live, unexpired, uncancelled mock secret from this process, else None."""
        if not secret.startswith("mock_"):
            return None
        try:
            payload = self._serializer.loads(secret[5:])
        except BadSignature:
            return None
        if not isinstance(payload, dict) or payload.get("e", 0) <= self._clock():
            return None
        if payload.get("s") in self._cancelled:
            return None
        return payload


def is_loopback_address(host: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (including IPv4-mapped forms)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_local_host_header(host: str | None) -> bool:
    """True when ``Host`` names localhost, 127.0.0.1 or [::1], with any port (DNS rebinding guard)."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    else:
        name, _, port = host.partition(":")
    return name in _LOCAL_HOSTNAMES and (port == "" or port.isdigit())
