"""Reading a bounded HTTP response body with aiohttp."""

from __future__ import annotations

import asyncio

import aiohttp


async def read_capped(content: aiohttp.StreamReader, cap: int, length: int | None = None) -> bytes:
    """The whole body, or its first ``cap + 1`` bytes when it is longer than ``cap``.

    ``length`` is the body's size on the wire when the caller knows it is also the size read
    (a ``Content-Length`` and no decoding): then the body is read in one call, which is the
    common case and costs one wait instead of a loop. A body that ends before ``length``
    bytes is a ``ClientPayloadError``, as aiohttp reports a broken body otherwise.

    Without it: ``StreamReader.read(n)`` returns as soon as *some* data is buffered — one TCP
    segment or chunk — not ``n`` bytes, so a single ``read(cap + 1)`` can return a truncated
    body. This reads until end of stream or until more than ``cap`` bytes have arrived.
    """
    if length is not None and length <= cap:
        try:
            return await content.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise aiohttp.ClientPayloadError(
                f"the body ended after {len(exc.partial)} of {length} bytes"
            ) from None
    body = bytearray()
    while len(body) <= cap:
        chunk = await content.read(cap + 1 - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
