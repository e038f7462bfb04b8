"""Caching of the front-end kit, ``/chatkit-broker.js``, which the page mount serves from
``static/`` (also when the test page itself is off).

The kit is the browser half of the broker's contract, so it is versioned with the broker:
``/chatkit-broker.js?v=<version>`` may be cached for a year (the URL changes with the broker),
the bare URL only for five minutes (an upgrade reaches browsers quickly). It is public code
without secrets, so any origin may load it as a module script, which needs CORS.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.types import Scope

from . import __version__

KIT_FILE = "chatkit-broker.js"
KIT_PATH = "/" + KIT_FILE
PINNED = "public, max-age=31536000, immutable"
UNPINNED = "public, max-age=300"


def kit_headers(scope: Scope, version: str = __version__) -> list[tuple[bytes, bytes]]:
    """Extra response headers for a request of the kit; none for any other path."""
    if scope.get("path") != KIT_PATH:
        return []
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    pinned = query.get("v") == [version]
    return [
        (b"cache-control", (PINNED if pinned else UNPINNED).encode()),
        (b"x-chatkit-broker-version", version.encode()),
        (b"access-control-allow-origin", b"*"),
        (b"cross-origin-resource-policy", b"cross-origin"),
        (b"x-content-type-options", b"nosniff"),
    ]
