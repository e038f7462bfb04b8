"""Where attachments' bytes live: a local directory (the default), memory (mock mode) or an
S3-compatible bucket (several brokers sharing one), behind one small async interface.

Library choice for S3: obstore (one Rust-backed API over S3, GCS, Azure; streamed multipart
puts from an async iterator, no botocore). Every store writes a file whole or not at all:
the local one writes to a temporary name and renames, obstore aborts its multipart upload
when the stream fails, so an upload cut off half-way leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import FileStorageUnavailable

__all__ = ["LocalStorage", "MemoryStorage", "S3Storage", "Storage", "open_storage"]

KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")
CHUNK = 64 * 1024


def _key(key: str) -> str:
    if not KEY_RE.fullmatch(key):  # ids are prefix_hex: never a path
        raise ValueError(f"not a storage key: {key[:40]!r}")
    return key


class Storage:
    """Bytes by key. ``put`` consumes a stream and stores it only if the stream ends cleanly."""

    where = "storage"

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        raise NotImplementedError

    async def read(self, key: str) -> bytes:
        """The whole file (bounded by the workflow's max_size): what the model is sent."""
        return b"".join([chunk async for chunk in self.stream(key)])

    def stream(self, key: str) -> AsyncIterator[bytes]:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def ping(self) -> str | None:
        return None

    async def close(self) -> None:
        return None

    def unavailable(self, exc: BaseException) -> FileStorageUnavailable:
        return FileStorageUnavailable(
            f"The file storage {self.where} cannot be reached ({type(exc).__name__}); "
            "chat works, attachments do not until it is back."
        )


class MemoryStorage(Storage):
    """Mock mode's: files live as long as the process."""

    where = "(in memory)"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        parts = [chunk async for chunk in chunks]
        self.files[_key(key)] = data = b"".join(parts)
        return len(data)

    async def stream(self, key: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        data = self.files.get(_key(key))
        if data is None:
            raise FileNotFoundError(key)
        for at in range(0, len(data), CHUNK):
            yield data[at : at + CHUNK]

    async def delete(self, key: str) -> None:
        self.files.pop(_key(key), None)


class LocalStorage(Storage):
    """A directory: ``<root>/<key>``, written as ``<root>/.partial/<random>`` then renamed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.where = f"(directory {self.root})"
        self._partial = self.root / ".partial"

    def _ready(self) -> None:
        try:
            self._partial.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.unavailable(exc) from None

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        final = self.root / _key(key)
        self._ready()
        temp = self._partial / secrets.token_hex(8)
        size = 0
        try:
            with open(temp, "wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    size += len(chunk)
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise self.unavailable(exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return size

    async def stream(self, key: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        path = self.root / _key(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self.unavailable(exc) from None
        with handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / _key(key)).unlink()

    async def ping(self) -> str | None:
        try:
            self._ready()
        except FileStorageUnavailable as exc:
            return exc.message
        return None


class S3Storage(Storage):
    """An S3-compatible bucket through obstore: ``s3://bucket/prefix``; credentials and the
    endpoint from the usual ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for MinIO and the like)."""

    def __init__(self, url: str, **config: Any) -> None:
        from obstore.store import S3Store  # only when an S3 URL is configured

        parts = urlsplit(url)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.where = f"(bucket {self.bucket})"
        endpoint = config.pop("endpoint", None) or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and endpoint.startswith("http://"):
            config.setdefault("allow_http", True)
        options: dict[str, Any] = {"client_options": {"timeout": "30s", "connect_timeout": "3s"}}
        if endpoint:
            config["endpoint"] = endpoint
        self.store = S3Store(
            self.bucket,
            prefix=self.prefix or None,
            config={k: v for k, v in config.items() if v is not None} or None,
            retry_config={
                "max_retries": 1,
                "backoff": {"init_backoff": timedelta(milliseconds=100)},
                "retry_timeout": timedelta(seconds=3),
            },
            **options,
        )

    async def put(self, key: str, chunks: AsyncIterator[bytes]) -> int:
        import obstore

        counted = _Counted(chunks)
        try:
            await obstore.put_async(self.store, _key(key), counted, chunk_size=5 * 1024 * 1024)
        except (OSError, TimeoutError) as exc:
            raise self.unavailable(exc) from None
        except Exception as exc:
            if counted.error is not None:
                raise counted.error from None
            if type(exc).__module__.startswith("obstore"):
                raise self.unavailable(exc) from None
            raise
        return counted.size

    async def stream(self, key: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        import obstore

        try:
            result = await obstore.get_async(self.store, _key(key))
        except FileNotFoundError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("obstore") or isinstance(exc, OSError):
                raise self.unavailable(exc) from None
            raise
        async for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    async def delete(self, key: str) -> None:
        import obstore

        try:
            await obstore.delete_async(self.store, _key(key))
        except FileNotFoundError:
            return
        except Exception as exc:
            if type(exc).__module__.startswith("obstore") or isinstance(exc, OSError):
                raise self.unavailable(exc) from None
            raise

    async def ping(self) -> str | None:
        import obstore

        try:
            await asyncio.wait_for(obstore.list(self.store, chunk_size=1).collect_async(), 5)
        except Exception as exc:
            return self.unavailable(exc).message
        return None


class _Counted:
    """An async iterator over the upload that remembers the size and the error that ended it
    (the size limit, a client gone), so obstore's wrapper exception does not hide it."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self.error: BaseException | None = None

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise
        self.size += len(chunk)
        return chunk


def open_storage(url: str | None, *, mock: bool = False) -> Storage:
    """The storage ``BROKER_FILES_STORAGE`` names: a directory path, ``s3://bucket/prefix``,
    or ``memory``; unset, ``./chatkit-broker-files`` (memory in mock mode)."""
    if url == "memory" or (url is None and mock):
        return MemoryStorage()
    if url and url.startswith("s3://"):
        return S3Storage(url)
    return LocalStorage(url or "./chatkit-broker-files")
