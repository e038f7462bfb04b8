"""Loopback checks for mock mode: the socket peer and the ``Host`` header.

Mock mode answers only this machine, and a page on another origin must not reach it through
a DNS name that resolves to 127.0.0.1 (DNS rebinding), so both are checked on every request.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_LOCAL_HOSTNAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


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
