"""Attachments in an S3-compatible bucket (obstore against moto's real server process)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from broker.errors import FileStorageUnavailable, PayloadTooLarge
from broker.files.storage import S3Storage


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_read_stream_delete(s3_endpoint: str, s3_bucket: str) -> None:
    storage = S3Storage(f"s3://{s3_bucket}/files")
    assert await storage.ping() is None
    data = bytes(range(256)) * 40_000  # 10 MB: a multipart upload
    assert await storage.put("atc_1", chunks(data[:3_000_000], data[3_000_000:])) == len(data)
    assert await storage.read("atc_1") == data
    # stored under the prefix, in the bucket itself
    listing = httpx.get(f"{s3_endpoint}/{s3_bucket}?list-type=2").text
    assert "<Key>files/atc_1</Key>" in listing
    await storage.delete("atc_1")
    with pytest.raises(FileNotFoundError):
        await storage.read("atc_1")
    await storage.delete("atc_1")  # twice is fine


async def test_a_stream_that_fails_half_way_stores_nothing(
    s3_endpoint: str, s3_bucket: str
) -> None:
    storage = S3Storage(f"s3://{s3_bucket}")

    async def too_big() -> AsyncIterator[bytes]:
        yield bytes(6 * 1024 * 1024)  # one part already sent
        raise PayloadTooLarge("too large")

    with pytest.raises(PayloadTooLarge):
        await storage.put("atc_2", too_big())
    with pytest.raises(FileNotFoundError):
        await storage.read("atc_2")


async def test_an_unreachable_endpoint_is_file_storage_unavailable(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ..support import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage = S3Storage(f"s3://{s3_bucket}")
    with pytest.raises(FileStorageUnavailable) as caught:
        await storage.put("atc_3", chunks(b"x"))
    assert s3_bucket in caught.value.message
    assert await storage.ping() is not None
