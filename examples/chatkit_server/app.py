"""The example ChatKit server: verify the broker's assertion, then answer as chatkit-python does.

Everything that decides *who* is calling is the backend kit's ``AssertionMiddleware``: the
``ChatKit-Broker-Assertion`` header, verified against the broker's JWKS (or a shared HS256
secret), bound to the body and used once, and nothing else — an ``X-User-Id`` header is
never read. The endpoint takes the caller the middleware verified; a thread of another
user is chatkit's ``NotFoundError``, which the middleware answers as a 404.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

with warnings.catch_warnings():
    # chatkit.widgets subclasses its own deprecated widget classes at import time
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.server import ChatKitServer, StreamingResult
    from chatkit.types import (
        AssistantMessageContent,
        AssistantMessageContentPartAdded,
        AssistantMessageContentPartDone,
        AssistantMessageContentPartTextDelta,
        AssistantMessageItem,
        ChatKitReq,
        ThreadItem,
        ThreadItemAddedEvent,
        ThreadItemDoneEvent,
        ThreadItemUpdatedEvent,
        ThreadMetadata,
        ThreadStreamEvent,
        UserMessageItem,
        UserMessageTagContent,
        UserMessageTextContent,
    )
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from broker.backend_kit import AssertionMiddleware, AssertionVerifier, VerifiedAssertion

from .store import UserMemoryStore

log = logging.getLogger("example.chatkit")
_REQUEST = TypeAdapter(ChatKitReq)


@dataclass(frozen=True)
class Options:
    """How the example runs: where the broker's keys are, and how it speaks."""

    broker: str = "http://127.0.0.1:8000"
    audience: str = "example"
    issuer: str = "chatkit-broker"
    secret: str | None = None  # for a workflow with assertion = "hs256"
    delay: float = 0.25  # seconds between streamed pieces, so a reply visibly streams
    pieces: int = 6


def _text(item: UserMessageItem) -> str:
    parts = [
        part.text
        for part in item.content
        if isinstance(part, UserMessageTextContent | UserMessageTagContent)
    ]
    return " ".join(part.strip() for part in parts if part.strip())


def _split(text: str, pieces: int) -> list[str]:
    """Word-boundary chunks that join back to ``text`` exactly."""
    words = re.findall(r"\s*\S+\s*", text) or [text]
    size = max(1, -(-len(words) // max(1, pieces)))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


class GreetingServer(ChatKitServer[VerifiedAssertion]):
    """Answers ``Hello <user>, you said: …`` in several deltas; logs a cancelled stream."""

    def __init__(self, store: UserMemoryStore, options: Options) -> None:
        super().__init__(store)
        self.options = options

    async def respond(
        self,
        thread: ThreadMetadata,
        input_user_message: UserMessageItem | None,
        context: VerifiedAssertion,
    ) -> AsyncIterator[ThreadStreamEvent]:
        if input_user_message is None:
            return
        said = _text(input_user_message)
        if thread.title is None:
            thread.title = said[:40] or "Chat"
        reply = f"Hello {context.user}, you said: {said}"
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        log.info("streaming a reply to %s in %s", context.user, thread.id)
        yield ThreadItemAddedEvent(item=item)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        )
        for index, delta in enumerate(_split(reply, self.options.pieces)):
            if index:
                await asyncio.sleep(self.options.delay)
            yield ThreadItemUpdatedEvent(
                item_id=item.id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta),
            )
        content = AssistantMessageContent(text=reply)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartDone(content_index=0, content=content),
        )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [content]}))
        log.info("finished the reply to %s in %s", context.user, thread.id)

    async def handle_stream_cancelled(
        self,
        thread: ThreadMetadata,
        pending_items: list[ThreadItem],
        context: VerifiedAssertion,
    ) -> None:
        """Stop reached us: the browser (through the broker) dropped the connection."""
        log.warning(
            "stream cancelled: %s went away during the reply in %s (%d pending item(s) kept)",
            context.user,
            thread.id,
            len(pending_items),
        )
        await super().handle_stream_cancelled(thread, pending_items, context)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(options: Options) -> AssertionMiddleware:
    """The app: ``POST /chatkit`` (ChatKit protocol) and ``GET /healthz``, behind the kit."""
    if options.secret:
        verifier = AssertionVerifier(
            secret=options.secret, audience=options.audience, issuer=options.issuer
        )
    else:
        verifier = AssertionVerifier(
            jwks_url=options.broker.rstrip("/") + "/.well-known/jwks.json",
            audience=options.audience,
            issuer=options.issuer,
        )
    store = UserMemoryStore()
    server = GreetingServer(store, options)

    async def chatkit_endpoint(request: Request) -> Response:
        caller: VerifiedAssertion = request.state.chatkit_assertion  # set by the middleware
        body = await request.body()
        try:
            _REQUEST.validate_json(body)
        except ValidationError:
            return _error(400, "invalid_request", "Not a ChatKit request.")
        result = await server.process(body, caller)
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(result.json, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/chatkit", chatkit_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    return AssertionMiddleware(app, verifier, exempt=["/healthz"])
