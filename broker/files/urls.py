"""The broker's own base URL, as the browser reached it: file URLs in answers are absolute."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["base_url"]


def base_url(scope: Scope, public_url: str | None) -> str:
    """``BROKER_PUBLIC_URL`` when set, else the request's scheme and ``Host`` (which a
    trusted proxy's forwarded headers have already set)."""
    if public_url:
        return public_url.rstrip("/")
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1") or "127.0.0.1"
    return f"{scope.get('scheme', 'http')}://{host}"
