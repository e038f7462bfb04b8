"""Run an aiohttp application on a real loopback port inside the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
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


class ThreadedServer:
    """An aiohttp app on 127.0.0.1:<port> in a thread and event loop of its own, for fakes
    that synchronous fixtures start (and that also run standalone). Subclasses add their
    routes in ``routes``; ``serve`` answers the URL, ``shutdown`` stops it."""

    client_max_size = 4 * 1024 * 1024
    backlog = 4096

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def serve(self, port: int = 0) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(port), self._loop).result(10)
        return f"http://127.0.0.1:{port}"

    async def _start(self, port: int) -> int:
        app = web.Application(client_max_size=self.client_max_size)
        self.routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=self.backlog)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def shutdown(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
