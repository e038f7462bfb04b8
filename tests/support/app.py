"""The broker app in-process: an httpx client over the ASGI transport, lifespan run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from broker.app import build_broker, create_app
from broker.config import Settings


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, *, peer: str = "127.0.0.1", **broker_kw: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in-process, with the app's lifespan running."""
    app = create_app(settings, broker=build_broker(settings, **broker_kw))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client,
    ):
        client.app = app  # type: ignore[attr-defined]
        yield client
