"""One ChatKit request to an agent workflow: parse it, check every id it names against the
caller's own data, then process it and answer JSON or SSE.

chatkit-python checks no ownership and, for streaming requests, fails only once the 200 and
the stream have started, so a foreign or unknown id must be refused here, before
``process()``: as a 404 that looks the same whether the id exists for someone else or not.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from chatkit.errors import ErrorCode
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.store import NotFoundError
from chatkit.types import (
    AttachmentsCreateReq,
    AttachmentsDeleteReq,
    ChatKitReq,
    ClientToolCallItem,
    ErrorEvent,
    InputTranscribeReq,
    StructuredInputItem,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsCustomActionReq,
    ThreadsRetryAfterItemReq,
    ThreadsSyncCustomActionReq,
    UserMessageItem,
    WidgetItem,
)
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from ...errors import BrokerError, InvalidRequest, NotFound
from ..turns import starts_a_turn
from .store import Caller, SQLStore, remember_reads

__all__ = ["answer", "check_request", "describe", "first_chunk", "parse_request", "process"]

log = logging.getLogger("broker.agent")
_STREAM_ERROR = (
    b"data: "
    + ErrorEvent(code=ErrorCode.STREAM_ERROR, allow_retry=True)
    .model_dump_json(by_alias=True, exclude_none=True)
    .encode()
    + b"\n\n"
)
_ERROR_PREFIX = b'data: {"type":"error"'
MAX_MESSAGE = 300
MAX_ID_SHOWN = 80
NO_STORE = {"Cache-Control": "no-store"}
SSE_HEADERS = {**NO_STORE, "X-Accel-Buffering": "no"}
#: built once: a TypeAdapter for the request union takes milliseconds to build
REQUESTS: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)


def parse_request(body: bytes) -> ChatKitReq:
    """The ChatKit request in ``body``, by chatkit's own models; ``InvalidRequest`` if not one."""
    try:
        return REQUESTS.validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One short sentence naming the first bad field, without echoing the body."""
    error = exc.errors(include_url=False, include_input=False)[0]
    if error["type"] == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", ""))[:60]
        return f"Unknown ChatKit request type {tag!r}; expected one such as 'threads.create'."
    if error["type"] == "union_tag_not_found":
        return "Not a valid ChatKit request (type: a request type is required)."
    loc = list(error["loc"])
    kind = "ChatKit"
    if len(loc) > 1 and isinstance(loc[0], str) and "." in loc[0]:
        kind = loc.pop(0)  # the request type the body claimed, e.g. threads.create
    where = ".".join(str(part) for part in loc)
    detail = f"{where}: {error['msg']}" if where else error["msg"]
    message = f"Not a valid {kind} request ({detail})."
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _shown(value: str) -> str:
    return value if len(value) <= MAX_ID_SHOWN else value[: MAX_ID_SHOWN - 1] + "…"


async def check_request(
    request: ChatKitReq, store: SQLStore, caller: Caller, *, uploads: bool = False
) -> None:
    """Refuse, before any work, a request naming anything the caller does not own.

    Threads, items and attachments are looked up in the caller's own scope: ``NotFound``
    (404) for a missing or foreign id, ``InvalidRequest`` (400) for an id of the wrong kind
    (what chatkit would otherwise turn into an error after the 200). ``uploads`` says
    whether an attachment store is configured; without one, uploads are refused up front.
    """
    params: Any = request.params
    if isinstance(request, AttachmentsCreateReq | InputTranscribeReq) and not uploads:
        what = "file uploads" if isinstance(request, AttachmentsCreateReq) else "dictation"
        raise InvalidRequest(f"This workflow does not accept {what} ({request.type}).")
    try:
        thread_id = getattr(params, "thread_id", None)
        if thread_id is not None and starts_a_turn(request.type):
            await store.load_thread_for_turn(thread_id, caller)  # with the latest items
        elif thread_id is not None:
            await store.load_thread(thread_id, caller)
        item_ids = list(getattr(params, "item_ids", None) or [])
        if getattr(params, "item_id", None):
            item_ids.append(params.item_id)
        loaded = [await store.load_item(thread_id, item_id, caller) for item_id in item_ids]
        if isinstance(request, AttachmentsDeleteReq):
            await store.load_attachment(params.attachment_id, caller)
        input_ = getattr(params, "input", None)
        for attachment_id in getattr(input_, "attachments", None) or []:
            await store.load_attachment(attachment_id, caller)
    except NotFoundError as exc:
        raise NotFound(f"{_shown(str(exc))}.") from None

    # after the ownership checks: a foreign thread is a 404 whatever the request
    if isinstance(request, ThreadsSyncCustomActionReq):
        raise InvalidRequest(
            "This workflow answers widget actions as a stream (threads.custom_action), "
            "not synchronously (threads.sync_custom_action)."
        )
    if isinstance(request, ThreadsRetryAfterItemReq) and not isinstance(loaded[0], UserMessageItem):
        raise InvalidRequest("threads.retry_after_item must name a user message (params.item_id).")
    if (
        isinstance(request, ThreadsCustomActionReq)
        and loaded
        and not isinstance(loaded[0], WidgetItem)
    ):
        raise InvalidRequest(f"{request.type} must name a widget item (params.item_id).")
    if isinstance(request, ThreadsAddStructuredInputReq) and not isinstance(
        loaded[0], StructuredInputItem
    ):
        raise InvalidRequest("threads.add_structured_input must name a structured input item.")
    if isinstance(request, ThreadsAddClientToolOutputReq):
        last = await store.load_thread_items(thread_id, None, 1, "desc", caller)
        if not (
            last.data
            and isinstance(last.data[0], ClientToolCallItem)
            and last.data[0].status == "pending"
        ):
            raise InvalidRequest(
                "threads.add_client_tool_output: the thread has no pending client tool call."
            )


async def process(
    server: ChatKitServer[Caller], body: bytes, caller: Caller, *, uploads: bool = False
) -> StreamingResult | NonStreamingResult:
    """Parse, check and start one ChatKit request; chatkit's own errors become 400/404."""
    request = parse_request(body)
    store = server.store
    assert isinstance(store, SQLStore)
    remember_reads()  # the check's reads are chatkit's too: read once, not twice
    await check_request(request, store, caller, uploads=uploads)
    try:
        return await server.process(body, caller)
    except NotFoundError as exc:
        raise NotFound(f"{_shown(str(exc))}.") from None
    except ValueError as exc:
        raise InvalidRequest(f"ChatKit refused this request: {_shown(str(exc))}") from None


async def first_chunk(result: StreamingResult) -> tuple[bytes, AsyncIterator[bytes]]:
    """The stream's first event and the rest: pulled before answering 200, so a request
    that fails at once gets a proper HTTP error instead of a stream that breaks off."""
    stream = aiter(result)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = b""
    except NotFoundError as exc:
        raise NotFound(f"{_shown(str(exc))}.") from None
    except ValueError as exc:
        raise InvalidRequest(f"ChatKit refused this request: {_shown(str(exc))}") from None
    return first, stream


class EventStream(StreamingResponse):
    """The SSE answer: the event pulled before the 200, then chatkit's own, sent as they are.

    Starlette's ``StreamingResponse`` (so its disconnect watch still stops the stream), minus
    a re-yielding generator in front of chatkit's and a type check per event: chatkit
    yields ``bytes``.
    """

    def __init__(self, first: bytes, rest: AsyncIterator[bytes]) -> None:
        super().__init__(rest, media_type="text/event-stream", headers=SSE_HEADERS)
        self.first = first

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        if self.first:
            await send({"type": "http.response.body", "body": self.first, "more_body": True})
        chunk = self.first
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BrokerError as exc:
            # chatkit saves the thread once more after its own error handling (the thread
            # store down at that moment escapes it): end with an error event, not a cut
            # stream — one, not a second after chatkit's own
            log.warning("stream ended: %s: %s", type(exc).__name__, exc.message)
            if not chunk.startswith(_ERROR_PREFIX):
                await send({"type": "http.response.body", "body": _STREAM_ERROR, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def answer(
    server: ChatKitServer[Caller], body: bytes, caller: Caller, *, uploads: bool = False
) -> Response:
    """Check and process one ChatKit request body for ``caller``: JSON, or an SSE stream."""
    result = await process(server, body, caller, uploads=uploads)
    if isinstance(result, NonStreamingResult):
        return Response(result.json, media_type="application/json", headers=NO_STORE)
    first, rest = await first_chunk(result)
    return EventStream(first, rest)
