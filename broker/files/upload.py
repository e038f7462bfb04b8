"""An upload's bytes as a stream, size enforced while reading and type decided by content.

Accepts what browsers and curl send: ``multipart/form-data`` with a ``file`` part (what
ChatKit's two-phase upload posts) or the raw bytes as the body. The body is parsed as it
arrives (python-multipart's push parser), never collected: a file over the limit is refused
at the first byte past it, before anything is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from .policy import SNIFF_BYTES, sniff

__all__ = ["UploadCut", "file_chunks", "sniffed_stream"]

MULTIPART_OVERHEAD = 16 * 1024


class UploadCut(Exception):
    """The client stopped sending before the body ended: nothing may be stored."""


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than this workflow's limit of {limit} bytes.")


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise InvalidRequest("Content-Length is not a number.") from None
    if declared > limit:
        raise _too_large(limit - MULTIPART_OVERHEAD if limit > MULTIPART_OVERHEAD else limit)
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise _too_large(limit)
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise UploadCut() from None
    if declared and seen < declared:
        raise UploadCut()


async def file_chunks(request: Request, max_size: int) -> AsyncIterator[bytes]:
    """The file's bytes: the ``file`` part of a multipart body, or the raw body."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        async for chunk in _body(request, max_size):
            yield chunk
        return
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary.")
    out: list[bytes] = []
    state = {"field": b"", "value": b"", "headers": {}, "wanted": False, "seen": False}
    size = 0

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][bytes(state["field"]).lower()] = bytes(state["value"])
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["wanted"] = not state["seen"] and disposition.get(b"name") == b"file"
        state["seen"] = state["seen"] or state["wanted"]
        state["headers"] = {}

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["wanted"]:
            out.append(data[start:end])

    def on_part_end() -> None:
        state["wanted"] = False

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    async for chunk in _body(request, max_size + MULTIPART_OVERHEAD):
        try:
            parser.write(chunk)
        except Exception:
            raise InvalidRequest("The multipart body is malformed.") from None
        for piece in out:
            size += len(piece)
            if size > max_size:
                raise _too_large(max_size)
            yield piece
        out.clear()
    try:
        parser.finalize()
    except Exception:
        raise InvalidRequest("The multipart body is malformed.") from None
    for piece in out:
        size += len(piece)
        if size > max_size:
            raise _too_large(max_size)
        yield piece
    if not state["seen"]:
        raise InvalidRequest('Send the file as the multipart part named "file".')


async def sniffed_stream(
    chunks: AsyncIterator[bytes], declared: str, accepted: tuple[str, ...] | list[str]
) -> tuple[str, AsyncIterator[bytes]]:
    """Read the first bytes, decide the type by content, and give back the whole stream.

    ``UnsupportedMediaType`` (415) when the content is not accepted or not what was declared
    at ``attachments.create`` (a PDF named photo.png is refused, as is a PNG declared as a
    PDF); ``InvalidRequest`` for an empty file. Nothing has been stored when either is raised.
    """
    head = b""
    ended = False
    while len(head) < SNIFF_BYTES:
        try:
            head += await anext(chunks)
        except StopAsyncIteration:
            ended = True
            break
    if not head:
        raise InvalidRequest("The file is empty (0 bytes); nothing was stored.")
    found = sniff(head, complete=ended, declared=declared)
    base = declared.split(";", 1)[0].strip().lower()
    if found is None or found not in accepted:
        raise UnsupportedMediaType(
            f"The file's content is {found or 'not a recognised type'}; this workflow accepts "
            f"{', '.join(accepted)} (checked by content, not by name)."
        )
    if found != base and not (found.startswith("text/") and base.startswith("text/")):
        raise UnsupportedMediaType(
            f"The file's content is {found}, but it was declared as {base[:60]!r}."
        )

    async def whole() -> AsyncIterator[bytes]:
        yield head
        if not ended:
            async for chunk in chunks:
                yield chunk

    return found, whole()
