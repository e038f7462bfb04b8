"""A ChatKit server in the shape of OpenAI's customer-support sample, written for these tests.

Like the sample (openai-chatkit-advanced-samples ``examples/customer-support/backend``): an
in-memory ``Store`` that ignores ``context`` — every user sees every thread — an attachment
store beside it, and one endpoint that hands the body to ``server.process(body,
{"request": request})``. It calls no model: ``respond`` streams a canned reply.

``create_app(kit=None)`` is the sample unchanged; ``kit=KitOptions(...)`` adds the backend
kit's lines — the same ones docs/gateway.md's diff adds to the real sample: the middleware on
the app, the user-scoped wrappers around both stores.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
    from chatkit.server import ChatKitServer, StreamingResult
    from chatkit.store import AttachmentStore, NotFoundError, Store
    from chatkit.types import (
        AssistantMessageContent,
        AssistantMessageItem,
        Attachment,
        AttachmentCreateParams,
        FileAttachment,
        Page,
        ThreadItem,
        ThreadItemDoneEvent,
        ThreadMetadata,
        ThreadStreamEvent,
        UserMessageItem,
    )
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class SampleMemoryStore(Store[dict]):
    """The sample's store, in spirit: dicts keyed by id, ``context`` never read."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, list[ThreadItem]] = defaultdict(list)
        self.attachments: dict[str, Attachment] = {}

    async def load_thread(self, thread_id: str, context: dict) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(f"Thread {thread_id} not found")
        return self.threads[thread_id]

    async def save_thread(self, thread: ThreadMetadata, context: dict) -> None:
        self.threads[thread.id] = ThreadMetadata.model_validate(
            thread.model_dump(exclude={"items"})
        )

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: dict
    ) -> Page[ThreadMetadata]:
        return _page(list(self.threads.values()), after, limit, order)

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: dict
    ) -> Page[ThreadItem]:
        return _page(self.items.get(thread_id, []), after, limit, order)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        self.items[thread_id].append(item)

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        rows = self.items[thread_id]
        for index, row in enumerate(rows):
            if row.id == item.id:
                rows[index] = item
                return
        rows.append(item)

    async def load_item(self, thread_id: str, item_id: str, context: dict) -> ThreadItem:
        for item in self.items.get(thread_id, []):
            if item.id == item_id:
                return item
        raise NotFoundError(f"Item {item_id} not found")

    async def delete_thread(self, thread_id: str, context: dict) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict) -> None:
        self.items[thread_id] = [i for i in self.items.get(thread_id, []) if i.id != item_id]

    async def save_attachment(self, attachment: Attachment, context: dict) -> None:
        self.attachments[attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: dict) -> Attachment:
        if attachment_id not in self.attachments:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return self.attachments[attachment_id]

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        self.attachments.pop(attachment_id, None)


def _page(rows: list[Any], after: str | None, limit: int, order: str) -> Page[Any]:
    ordered = sorted(rows, key=lambda r: r.created_at, reverse=order == "desc")
    start = 0
    if after:
        ids = [r.id for r in ordered]
        start = ids.index(after) + 1 if after in ids else len(ids)
    chunk = ordered[start : start + limit]
    more = start + limit < len(ordered)
    return Page(data=chunk, has_more=more, after=chunk[-1].id if more and chunk else None)


class SampleAttachmentStore(AttachmentStore[dict]):
    """Two-phase upload metadata only; the files themselves never matter to these tests."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def create_attachment(self, input: AttachmentCreateParams, context: dict) -> Attachment:
        return FileAttachment(
            id=self.generate_attachment_id(input.mime_type, context),
            name=input.name,
            mime_type=input.mime_type,
        )

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        self.deleted.append(attachment_id)


class SampleServer(ChatKitServer[dict]):
    """Answers every message with a canned line; never calls a model."""

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: dict
    ) -> AsyncIterator[ThreadStreamEvent]:
        yield ThreadItemDoneEvent(
            item=AssistantMessageItem(
                id=self.store.generate_item_id("message", thread, context),
                thread_id=thread.id,
                created_at=datetime.now(),
                content=[AssistantMessageContent(text="How can I help with your flight?")],
            )
        )


@dataclass(frozen=True)
class KitOptions:
    jwks_url: str
    audience: str
    issuer: str


def create_app(kit: KitOptions | None = None) -> Starlette:
    store: Any = SampleMemoryStore()
    attachments: Any = SampleAttachmentStore()
    if kit is not None:  # the kit's lines, as in docs/gateway.md's diff for the sample
        from broker.backend_kit import UserScopedAttachmentStore, UserScopedStore

        store = UserScopedStore(store)
        attachments = UserScopedAttachmentStore(attachments, store)
    server = SampleServer(store, attachment_store=attachments)
    if kit is not None:
        store.protect(server)  # items.feedback: chatkit asks no store method for it

    async def chatkit_endpoint(request: Request) -> Response:
        result = await server.process(await request.body(), {"request": request})
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(content=result.json, media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy"})

    app = Starlette(
        routes=[
            Route("/support/chatkit", chatkit_endpoint, methods=["POST"]),
            Route("/support/health", health, methods=["GET"]),
        ]
    )
    if kit is not None:
        from broker.backend_kit import AssertionMiddleware

        app.add_middleware(
            AssertionMiddleware,
            jwks_url=kit.jwks_url,
            audience=kit.audience,
            issuer=kit.issuer,
            exempt=["/support/health"],
        )
    app.state.store = store
    app.state.attachments = attachments
    return app
