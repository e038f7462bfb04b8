"""A ChatKit server in the shape of OpenAI's customer-support sample, written for these tests.

Like the sample (openai-chatkit-advanced-samples ``examples/customer-support/backend``): an
in-memory ``Store`` that ignores ``context`` — every user sees every thread — an attachment
store beside it, and one endpoint that hands the body to ``server.process(body,
{"request": request})``. It calls no model: ``respond`` streams a canned reply.

``create_app(kit=None)`` is the sample unchanged; ``kit=KitOptions(...)`` adds the backend
kit's lines — the same ones docs/gateway.md's diff adds to the real sample: the middleware on
the app, the user-scoped wrappers around both stores.

``create_app(files=True)`` stores files as the sample's ``LocalAttachmentStore`` and its
routes do: two-phase uploads whose ``upload_descriptor.url`` and ``preview_url`` are built
from the request (``request.url_for``: the server's own host), ``POST|PUT
/support/attachments/<id>/upload`` taking multipart or raw bytes, ``GET …/<id>/content``; plus
a direct-upload route (``POST /support/attachments``, multipart ``file``). Its previews stay
http URLs on its own host (the sample turns them into ``data:`` URLs after the upload), the
harder case for a proxy. ``SampleFiles`` records what arrived, for the tests to look at.
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
        AudioInput,
        FileAttachment,
        Page,
        ThreadItem,
        ThreadItemDoneEvent,
        ThreadMetadata,
        ThreadStreamEvent,
        TranscriptionResult,
        UserMessageItem,
    )
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.types import AttachmentUploadDescriptor, ImageAttachment


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


@dataclass
class Upload:
    """One request that reached an upload route, as the backend saw it."""

    attachment_id: str
    method: str
    headers: dict[str, str]
    complete: bool  # False: the connection broke before the body ended
    size: int = 0
    done: bool = False  # the route has finished with it (whole, refused or broken off)


class SampleFiles(AttachmentStore[dict]):
    """The sample's attachment store, in spirit: URLs from ``request.url_for``, bytes in a
    dict, the attachment saved with its descriptor removed once the bytes arrived."""

    def __init__(self, store: SampleMemoryStore) -> None:
        self.store = store
        self.files: dict[str, bytes] = {}
        self.uploads: list[Upload] = []
        self.previews: list[dict[str, str]] = []  # headers of each preview request
        self.redirect = False  # answer uploads and previews with a redirect to another host
        self.upload_headers: dict[str, str] = {}  # headers the descriptor asks for
        self.fail_uploads = 0  # answer this many more uploads (once read) with a 500
        self.id_prefix = ""  # ids like "<prefix>atc_…" (a storage path, say: "u/7/")

    def generate_attachment_id(self, mime_type: str, context: dict) -> str:
        return self.id_prefix + super().generate_attachment_id(mime_type, context)

    async def create_attachment(self, input: AttachmentCreateParams, context: dict) -> Attachment:
        request: Request = context["request"]
        attachment_id = self.generate_attachment_id(input.mime_type, context)
        upload = str(request.url_for("upload_attachment", attachment_id=attachment_id))
        descriptor = AttachmentUploadDescriptor(
            url=upload, method="POST", headers=dict(self.upload_headers)
        )
        if input.mime_type.startswith("image/"):
            preview = str(request.url_for("download_attachment", attachment_id=attachment_id))
            return ImageAttachment(
                id=attachment_id,
                name=input.name,
                mime_type=input.mime_type,
                upload_descriptor=descriptor,
                preview_url=preview,
            )
        return FileAttachment(
            id=attachment_id,
            name=input.name,
            mime_type=input.mime_type,
            upload_descriptor=descriptor,
        )

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        self.files.pop(attachment_id, None)


async def _file_bytes(request: Request) -> bytes:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise ValueError("no file part")
        return await part.read()
    return await request.body()


def _file_routes(server: SampleServer, files: SampleFiles) -> list[Route]:
    from starlette.requests import ClientDisconnect

    async def upload(request: Request) -> Response:
        attachment_id = request.path_params["attachment_id"]
        record = Upload(attachment_id, request.method, dict(request.headers), complete=False)
        files.uploads.append(record)
        if files.redirect:
            record.done = True
            return Response(status_code=307, headers={"Location": "http://elsewhere.test/x"})
        try:
            data = await _file_bytes(request)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody reads it: the client is gone
        finally:
            record.done = True
        record.complete, record.size = True, len(data)
        if files.fail_uploads:
            files.fail_uploads -= 1
            return JSONResponse({"detail": "storage is down"}, status_code=500)
        if not data:
            return JSONResponse({"detail": "Attachment payload is required."}, status_code=400)
        try:
            attachment = await server.store.load_attachment(attachment_id, {"request": request})
        except NotFoundError:
            return JSONResponse({"detail": "no such attachment"}, status_code=404)
        files.files[attachment_id] = data
        attachment = attachment.model_copy(update={"upload_descriptor": None})
        await server.store.save_attachment(attachment, {"request": request})
        return JSONResponse(attachment.model_dump(mode="json"))

    async def download(request: Request) -> Response:
        attachment_id = request.path_params["attachment_id"]
        files.previews.append(dict(request.headers))
        if files.redirect:
            return Response(status_code=302, headers={"Location": "http://elsewhere.test/x"})
        data = files.files.get(attachment_id)
        if data is None:
            return JSONResponse({"detail": "not uploaded"}, status_code=404)
        attachment = await server.store.load_attachment(attachment_id, {"request": request})
        return Response(data, media_type=attachment.mime_type)

    async def direct(request: Request) -> Response:
        record = Upload("", request.method, dict(request.headers), complete=False)
        files.uploads.append(record)
        form = await request.form()
        part = form.get("file")
        if part is None or isinstance(part, str):
            return JSONResponse({"detail": "no file part"}, status_code=400)
        data = await part.read()
        record.complete, record.size = True, len(data)
        mime = part.content_type or "application/octet-stream"
        attachment_id = files.generate_attachment_id(mime, {})
        record.attachment_id = attachment_id
        preview = str(request.url_for("download_attachment", attachment_id=attachment_id))
        attachment = ImageAttachment(
            id=attachment_id, name=part.filename or "file", mime_type=mime, preview_url=preview
        )
        files.files[attachment_id] = data
        await server.store.save_attachment(attachment, {"request": request})
        return JSONResponse(attachment.model_dump(mode="json"))

    return [
        Route(
            "/support/attachments/{attachment_id:path}/upload",
            upload,
            methods=["POST", "PUT"],
            name="upload_attachment",
        ),
        Route(
            "/support/attachments/{attachment_id:path}/content",
            download,
            methods=["GET"],
            name="download_attachment",
        ),
        Route("/support/attachments", direct, methods=["POST"]),
    ]


class SampleServer(ChatKitServer[dict]):
    """Answers every message with a canned line and every dictation with a stand-in
    transcript naming the audio's size; never calls a model."""

    async def transcribe(self, audio_input: AudioInput, context: dict) -> TranscriptionResult:
        return TranscriptionResult(
            text=f"heard {len(audio_input.data)} bytes of {audio_input.media_type}"
        )

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


def create_app(kit: KitOptions | None = None, *, files: bool = False) -> Starlette:
    store: Any = SampleMemoryStore()
    attachments: Any = SampleFiles(store) if files else SampleAttachmentStore()
    uploads = attachments
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
            *(_file_routes(server, uploads) if files else []),
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
