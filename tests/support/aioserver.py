"""Run an aiohttp application on a real loopback port inside the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, *, keepalive: float = 75.0, **server: Any
) -> AsyncIterator[str]:
    """``async with serve(app) as url``: ``url`` is ``http://127.0.0.1:<port>``."""
    runner = web.AppRunner(
        app, keepalive_timeout=keepalive, handle_signals=False, shutdown_timeout=0.1, **server
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
