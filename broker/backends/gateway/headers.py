"""Which request headers reach a gateway backend, and which never do.

The backend learns who is calling from the broker's signed assertion alone, so every inbound
header that could pass for identity is removed — in any case, with ``_`` for ``-`` (some
servers fold one into the other: oauth2-proxy CVE-2025-64484), and after the hop-by-hop
step, so a client cannot smuggle one through by naming it in ``Connection`` (Fabio
CVE-2025-48865). The broker's own headers are set last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
# the user's credentials for the broker are not the backend's business; the broker (or its
# HTTP client) sets the framing and target headers itself
NEVER_FORWARDED = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "content-length",
        "accept-encoding",
        "expect",
        "x-request-id",
        "forwarded",
        "x-real-ip",
    }
)
# names that proxies and identity-aware gateways use for the caller: a prefix ends with "-"
IDENTITY_PREFIXES = (
    "chatkit-broker-",
    "x-user",
    "x-forwarded-",  # -user, -email, -groups; -uri/-host fooled oauth2-proxy (CVE-2026-40575)
    "x-auth-request-",
    "x-remote-",
    "x-authenticated-",
    "x-goog-authenticated-",
    "x-goog-iap-",
    "x-pomerium-",
    "cf-access-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
)
IDENTITY_NAMES = frozenset({"remote-user", "x-email", "x-id-token", "x-access-token"})


def fold(name: str | bytes) -> str:
    """The comparison form of a header name: lower case, ``_`` read as ``-``."""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return text.strip().lower().replace("_", "-")


class HeaderPolicy:
    """Filters a request's headers for the backend; ``extra`` adds names (``X-Tenant``) or
    prefixes (``X-Acme-*``) from ``BROKER_GATEWAY_STRIP_HEADERS``."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        names, prefixes = set(IDENTITY_NAMES), list(IDENTITY_PREFIXES)
        for entry in extra:
            folded = fold(entry)
            if not folded:
                continue
            if folded.endswith("*"):
                prefixes.append(folded[:-1])
            else:
                names.add(folded)
        self._names = frozenset(names) | NEVER_FORWARDED | HOP_BY_HOP
        self._prefixes = tuple(prefixes)

    def is_identity(self, name: str | bytes) -> bool:
        """Whether a header of this name could pass for the caller's identity (or credentials)."""
        folded = fold(name)
        return folded in self._names or folded.startswith(self._prefixes)

    def forward(
        self, headers: Sequence[tuple[bytes, bytes]], own: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The headers to send upstream: inbound ones that survive, then the broker's ``own``.

        Order matters: ``Connection``-listed names go first (hop-by-hop), identity-like
        names next, and only then are the broker's own headers appended.
        """
        listed: set[str] = set()
        for name, value in headers:
            if fold(name) == "connection":
                listed.update(fold(token) for token in value.decode("latin-1").split(","))
        kept: list[tuple[str, str]] = []
        for name, value in headers:
            folded = fold(name)
            if folded in listed or self.is_identity(folded):
                continue
            try:  # the HTTP client re-encodes values as UTF-8: keep only what round-trips
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                continue
            kept.append((name.decode("latin-1"), text))
        kept.extend(own)
        return kept
