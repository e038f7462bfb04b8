"""Minting a session over the HTTP API, written once: the paths, the default body, and a
client-side ``mint`` for in-process clients (``app_client``) and for real processes."""

from __future__ import annotations

from typing import Any

import httpx

from .env import auth

MINT = "/api/chatkit/session"
CANCEL = "/api/chatkit/session/cancel"
SUPPORT = {"workflow": "support"}


def _headers(token: str | None) -> dict[str, str]:
    return auth(token) if token else {}


async def mint(
    client: httpx.AsyncClient, token: str | None, workflow: str = "support", **body: Any
) -> httpx.Response:
    """``POST /api/chatkit/session`` for ``workflow`` as the holder of ``token`` (None: no
    Authorization header); ``body`` adds fields to the JSON."""
    return await client.post(MINT, json={"workflow": workflow, **body}, headers=_headers(token))


def mint_sync(
    base_url: str,
    token: str | None,
    workflow: str = "support",
    *,
    timeout: float = 10,
    **body: Any,
) -> httpx.Response:
    """``mint`` against a real broker process at ``base_url``, blocking."""
    return httpx.post(
        base_url + MINT,
        json={"workflow": workflow, **body},
        headers=_headers(token),
        timeout=timeout,
    )


async def mint_id(client: httpx.AsyncClient, token: str, **body: Any) -> str:
    """``mint`` that must succeed; the new session's id."""
    r = await mint(client, token, **body)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]
