"""Which request headers reach a gateway backend: an allowlist, not a deny-list.

A deny-list of identity headers (``X-Forwarded-User``, ``X-Auth-Request-Email``…) is one new
hole per proxy convention (Kong's ``X-Consumer-Username`` got through one), so only what a
ChatKit request needs is forwarded — ``FORWARDED`` below, plus the names a workflow lists in
``forward_headers`` — and the backend learns who is calling from the broker's signed
assertion alone. A name matches only in its ``-`` spelling, in any case: ``X_Tenant`` is
not ``X-Tenant`` (some servers fold one into the other: oauth2-proxy CVE-2025-64484). Names
listed in ``Connection`` are dropped even when allowed (Fabio CVE-2025-48865), only the
first copy of a repeated name is kept, and the broker's own headers are set last.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# what a ChatKit request needs, and W3C trace context; docs/gateway.md lists exactly these
FORWARDED = (
    "content-type",
    "accept",
    "accept-language",
    "user-agent",
    "traceparent",
    "tracestate",
)
# RFC 9110 §7.6.1, and the list Go's ReverseProxy removes
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# never forwarded even when a workflow names them: the user's credentials for the broker,
# framing and target headers the HTTP client sets itself, and the broker's own headers
NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "expect",
        "x-request-id",
        "forwarded",
        "x-real-ip",
    }
)
# names that proxies and identity-aware gateways use for the caller: a workflow may not
# forward them (config refuses it), whatever the allowlist says
IDENTITY_PREFIXES = (
    "chatkit-broker-",
    "x-user",
    "x-forwarded-",
    "x-auth-request-",
    "x-remote-",
    "x-authenticated-",
    "x-consumer-",
    "x-identity",
    "x-original-user",
    "x-token-",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-pomerium-",
    "cf-access-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
)
IDENTITY_NAMES = frozenset({"remote-user", "x-email", "x-id-token", "x-access-token"})
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")


def fold(name: str | bytes) -> str:
    """The comparison form of a header name for deny checks: lower case, ``_`` read as ``-``."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.strip().lower().replace("_", "-")


def refused_forward_header(name: str) -> str | None:
    """Why a workflow's ``forward_headers`` may not name ``name``, or None when it may."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        return f"{name!r} is not a header name (letters, digits and '-')"
    folded = fold(name)
    if folded in HOP_BY_HOP or folded in NEVER_FORWARDED:
        return f"{name!r} is set by the broker or its HTTP client, never forwarded"
    if folded in IDENTITY_NAMES or folded.startswith(IDENTITY_PREFIXES):
        return (
            f"{name!r} could pass for the caller's identity; the backend reads who is "
            "calling from the broker's signed assertion"
        )
    return None


class HeaderPolicy:
    """Filters a request's headers for the backend.

    ``denied`` (``BROKER_GATEWAY_STRIP_HEADERS``: names, or prefixes ending in ``*``) is a veto
    that wins over any workflow's ``forward_headers``.
    """

    def __init__(self, denied: Iterable[str] = ()) -> None:
        names, prefixes = set(IDENTITY_NAMES), list(IDENTITY_PREFIXES)
        for entry in denied:
            folded = fold(entry)
            if not folded:
                continue
            if folded.endswith("*"):
                prefixes.append(folded[:-1])
            else:
                names.add(folded)
        self._denied = frozenset(names) | NEVER_FORWARDED | HOP_BY_HOP
        self._prefixes = tuple(prefixes)
        self._allowed: dict[tuple[str, ...], frozenset[str]] = {}

    def is_denied(self, name: str | bytes) -> bool:
        """Whether a header of this name is never forwarded, whatever a workflow allows."""
        folded = fold(name)
        return folded in self._denied or folded.startswith(self._prefixes)

    def allowed(self, extra: Sequence[str] = ()) -> frozenset[str]:
        """The lower-case names forwarded for a workflow that lists ``extra`` (memoised: one
        set per workflow, not per request)."""
        key = tuple(extra)
        found = self._allowed.get(key)
        if found is None:
            found = frozenset(FORWARDED) | {
                name.lower() for name in key if not self.is_denied(name) and "_" not in name
            }
            self._allowed[key] = found
        return found

    def forward(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        own: Sequence[tuple[str, str]],
        allowed: frozenset[str] | None = None,
    ) -> list[tuple[str, str]]:
        """The headers to send upstream: inbound ones on the allowlist, then the broker's ``own``.

        ``Connection``-listed names go first (hop-by-hop, even when allowed); a name is kept
        only in its exact ``-`` spelling and only its first copy; the broker's headers last.
        """
        allow = allowed if allowed is not None else self.allowed()
        listed: set[str] = set()
        for name, value in headers:
            if fold(name) == "connection":
                listed.update(fold(token) for token in value.decode("latin-1").split(","))
        kept: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, value in headers:
            lower = name.decode("latin-1").lower()
            if lower not in allow or lower in seen or fold(lower) in listed:
                continue
            seen.add(lower)
            try:  # the HTTP client re-encodes values as UTF-8: keep only what round-trips
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
            kept.append((lower, text))
        kept.extend(own)
        return kept
