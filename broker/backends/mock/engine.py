"""Mock ChatKit backend: the server behind `POST /mock/chatkit` in mock mode.

A mock client secret cannot make the real `<openai-chatkit>` component render (hosted mode
checks the secret with OpenAI), but its custom-backend mode talks to any server that speaks
the ChatKit protocol. This module is such a server, built on the optional `openai-chatkit`
package and imported lazily, so the broker still starts (and says how to enable the
backend) when that extra is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.responses import Response, StreamingResponse

from ...errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from . import chatkit_server as _mock_chatkit

__all__ = ["ENABLE_HINT", "MockChatKitBackend", "mock_backend_available"]

ENABLE_HINT = (
    "The mock ChatKit backend (/mock/chatkit) is off because openai-chatkit is not installed; "
    "enable it with: pip install 'chatkit-broker[mock]'"
)

# Requests the mock answers with 400: they need files, audio or client tools it does not fake.
UNSUPPORTED = frozenset(
    {
        "attachments.create",
        "attachments.delete",
        "input.transcribe",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.sync_custom_action",
    }
)
NO_STORE = {"Cache-Control": "no-store"}
SSE_HEADERS = {**NO_STORE, "X-Accel-Buffering": "no"}


def mock_backend_available() -> bool:
    """Whether `openai-chatkit` can be imported, so callers can degrade instead of crash."""
    try:
        from . import chatkit_server as _mock_chatkit  # noqa: F401
    except ImportError:
        return False
    return True


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


class MockChatKitBackend:
    """One in-memory ChatKit server for the whole process; each call names its user.

    `slow_step` is the pause between deltas of the `/slow` reply and `step` that of every
    other reply: small enough to feel quick, large enough to see the text stream in.
    """

    def __init__(self, *, slow_step: float = 0.5, step: float = 0.02) -> None:
        if not mock_backend_available():
            raise RuntimeError(ENABLE_HINT)
        from . import chatkit_server as _mock_chatkit

        self._impl = _mock_chatkit
        self._store = _mock_chatkit.MemoryStore()
        self._server = _mock_chatkit.MockChatKitServer(self._store, step=step, slow_step=slow_step)

    async def handle(self, body: bytes, user: str) -> Response:
        """Answer one ChatKit request for `user`: an SSE stream or a JSON body."""
        try:
            request = self._impl.parse_request(body)
        except self._impl.ValidationError as exc:
            raise InvalidRequest(self._impl.describe(exc)) from None
        if request.type in UNSUPPORTED:
            raise InvalidRequest(f"The mock ChatKit backend does not support {request.type}.")
        await self._check_references(request, user)

        try:
            result = await self._server.process(body, user)
        except self._impl.NotFoundError as exc:
            raise NotFound(f"{exc}.") from None
        if not isinstance(result, self._impl.StreamingResult):
            return Response(result.json, media_type="application/json", headers=NO_STORE)

        # Pull the first event before answering, so a request that fails at once gets a
        # proper HTTP error instead of a 200 stream that breaks off.
        stream = aiter(result)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            first = b""
        except self._impl.NotFoundError as exc:
            raise NotFound(f"{exc}.") from None
        except ValueError as exc:
            raise InvalidRequest(f"The mock ChatKit backend refused this request: {exc}") from None
        return StreamingResponse(
            _chain(first, stream), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def _check_references(self, request: _mock_chatkit.ChatKitReq, user: str) -> None:
        """Refuse ids this user does not own before any work starts (404, never a leak)."""
        params = request.params
        thread_id = getattr(params, "thread_id", None)
        try:
            if thread_id is not None:
                await self._store.load_thread(thread_id, user)
            item_ids = list(getattr(params, "item_ids", None) or [])
            if getattr(params, "item_id", None):
                item_ids.append(params.item_id)
            items = [await self._store.load_item(thread_id, i, user) for i in item_ids]
        except self._impl.NotFoundError as exc:
            raise NotFound(f"{exc}.") from None
        if request.type == "threads.retry_after_item" and not isinstance(
            items[0], self._impl.UserMessageItem
        ):
            raise InvalidRequest("threads.retry_after_item must name a user message.")
        input_ = getattr(params, "input", None)
        if getattr(input_, "attachments", None):
            raise InvalidRequest("The mock ChatKit backend does not accept attachments.")
