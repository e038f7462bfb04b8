"""The one pooled outbound HTTP client, shared by every caller of the outside world.

OpenAI, JWKS endpoints, gateways and doctor all reuse it, so keep-alive connections are
reused and nothing opens a pool per request.
"""

from __future__ import annotations

import aiohttp


class HttpPool:
    """The one pooled ``aiohttp.ClientSession`` for all outbound calls (OpenAI, JWKS).

    Created on first use inside the running loop (the lifespan does so at start) and
    closed at shutdown, so keep-alive connections are reused across requests.
    """

    def __init__(self, *, limit: int = 256, keepalive: float = 30.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                trust_env=False,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
