"""Reading a bounded HTTP response body with aiohttp."""

from __future__ import annotations

import aiohttp


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes:
    """The whole body, or its first ``cap + 1`` bytes when it is longer than ``cap``.

    ``StreamReader.read(n)`` returns as soon as *some* data is buffered — one TCP segment or
    chunk — not ``n`` bytes, so a single ``read(cap + 1)`` can return a truncated body. This
    reads until end of stream or until more than ``cap`` bytes have arrived.
    """
    body = bytearray()
    while len(body) <= cap:
        chunk = await content.read(cap + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
