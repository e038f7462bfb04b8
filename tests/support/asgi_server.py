"""Run an ASGI app under a real uvicorn server inside the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from .processes import START_TIMEOUT


def bound_socket() -> socket.socket:
    """A loopback TCP socket bound to a free port (not listening yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def run_asgi(
    app: Any, *, sock: socket.socket | None = None, **config: Any
) -> AsyncIterator[str]:
    """``async with run_asgi(app) as url``: real HTTP on a loopback port, stopped at exit.

    The socket is bound first and handed to uvicorn, so there is no free-port race; pass
    one from ``bound_socket()`` to know the URL before the app exists.
    """
    sock = sock or bound_socket()
    port = sock.getsockname()[1]
    settings: dict[str, Any] = {
        "lifespan": "off",
        "log_level": "warning",
        "http": "httptools",
        "timeout_graceful_shutdown": 1,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **settings))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # pytest owns SIGINT
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        # until it serves (an app's startup may import slowly on a busy machine) or fails
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not server.started and not task.done():
            assert asyncio.get_running_loop().time() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        # connections get 1 s (timeout_graceful_shutdown), then the lifespan's shutdown runs:
        # quick, but not within 5 s on a starved machine (cut short, it left clients unclosed)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 60)
        sock.close()
