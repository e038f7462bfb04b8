"""Files for agent workflows (and mock mode): chatkit's ``AttachmentStore`` on the broker's
own storage, the signed upload and preview routes, and the converter that shows files to
the model.

Two-phase upload: ``attachments.create`` records the file as pending and answers an
``upload_descriptor`` whose URL is a signed broker capability (this user, this attachment,
"upload", ten minutes); the browser posts the bytes there once; the id then rides in a user
message. Bytes go to ``broker.files.storage`` (a directory, memory or S3), never to the thread
database, which holds only a small row per file (``ckb_files``) saying whose it is, its
state, and which thread it joined; a thread's deletion and a sweep of files never sent
remove the bytes too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import sqlalchemy as sa
from chatkit.store import AttachmentStore, NotFoundError
from chatkit.types import (
    Attachment,
    AttachmentCreateParams,
    AttachmentsCreateReq,
    AttachmentUploadDescriptor,
    ChatKitReq,
    FileAttachment,
    ImageAttachment,
    InputTranscribeReq,
    Page,
    ThreadItem,
    UserMessageItem,
)
from openai.types.responses import ResponseInputTextParam
from pydantic import AnyUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...errors import BrokerError, Forbidden, InvalidRequest, NotFound, RateLimited
from ...files.policy import IMAGE_TYPES, FilesPolicy
from ...files.storage import Storage
from ...files.tokens import FileTokens
from ...files.upload import UploadCut, file_chunks, sniffed_stream
from ...workflow import Workflow
from .engine import HistoryConverter
from .store import Caller, SQLStore, new_id

__all__ = [
    "DescribingConverter",
    "Files",
    "FilesConverter",
    "FilesStore",
    "attachment_ids",
    "current_base",
    "policy_of",
]

log = logging.getLogger("broker.files")

#: the broker's base URL as the browser reached it, for absolute upload/preview URLs
current_base: ContextVar[str] = ContextVar("chatkit_broker_base", default="http://127.0.0.1")
MAX_NAME = 255
SWEEP_EVERY = 60.0
NO_STORE = {"Cache-Control": "no-store"}

files_metadata = sa.MetaData()
files_table = sa.Table(
    "ckb_files",
    files_metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    # pending → uploading → ready; failed: an upload that broke off (the id is unusable)
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("mime_type", sa.String(100), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False, default=0),
    sa.Column("thread_id", sa.String(80), nullable=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ckb_files_owner", "user_id", "workflow", "thread_id"),
    sa.Index("ckb_files_thread", "thread_id"),
)


def attachment_ids(value: Any) -> list[str]:
    """The runs API's ``"attachments"``: a list of attachment ids (from attachments.create)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest('"attachments" must be a list of attachment ids (strings).')
    return value


def policy_of(workflow: Workflow) -> FilesPolicy:
    """The workflow's ``files`` table (every kind reads the default when it has none)."""
    policy = getattr(workflow, "files", None)
    return policy if isinstance(policy, FilesPolicy) else FilesPolicy()


def safe_name(name: str) -> str:
    """A file name safe to store and show: no path, no control characters, at most 255."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip().strip(".")
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 1] + "…"
    return name or "file"


class FilesStore(SQLStore):
    """The thread store plus the ``ckb_files`` rows; deleting a thread deletes its files."""

    storage: Storage | None = None

    async def start(self) -> None:
        await super().start()
        async with self._connect() as conn:
            await conn.run_sync(files_metadata.create_all)

    async def file(self, attachment_id: str, user: str) -> sa.Row[Any] | None:
        if "\x00" in attachment_id:
            return None
        async with self._connect() as conn:
            return (
                await conn.execute(
                    sa.select(files_table).where(
                        files_table.c.id == attachment_id, files_table.c.user_id == user
                    )
                )
            ).first()

    async def add_file(self, **values: Any) -> None:
        await self._write(lambda conn: conn.execute(files_table.insert().values(**values)))

    async def pending_count(self, user: str, workflow: str) -> int:
        async with self._connect() as conn:
            return int(
                await conn.scalar(
                    sa.select(sa.func.count()).where(
                        files_table.c.user_id == user,
                        files_table.c.workflow == workflow,
                        files_table.c.thread_id.is_(None),
                        files_table.c.expires_at > time.time(),
                    )
                )
                or 0
            )

    async def set_state(
        self, attachment_id: str, user: str, want: str, new: str, **values: Any
    ) -> bool:
        """Move a file from ``want`` to ``new`` (atomically: one of two racing uploads wins)."""

        async def work(conn: Any) -> bool:
            result = await conn.execute(
                files_table.update()
                .where(
                    files_table.c.id == attachment_id,
                    files_table.c.user_id == user,
                    files_table.c.state == want,
                )
                .values(state=new, **values)
            )
            return bool(result.rowcount)

        return await self._write(work)

    async def save_attachment(self, attachment: Attachment, context: Caller | str) -> None:
        await super().save_attachment(attachment, context)
        if attachment.thread_id:  # sent in a message: it now lives as long as the thread
            user = context if isinstance(context, str) else context.user
            await self._write(
                lambda conn: conn.execute(
                    files_table.update()
                    .where(files_table.c.id == attachment.id, files_table.c.user_id == user)
                    .values(thread_id=attachment.thread_id)
                )
            )

    async def forget(self, ids: list[str]) -> None:
        """Delete files' bytes and rows (storage first: a row never outlives its bytes' key)."""
        for attachment_id in ids:
            if self.storage is not None:
                with contextlib.suppress(BrokerError, ValueError):
                    await self.storage.delete(attachment_id)

        async def work(conn: Any) -> None:
            from .store import attachments

            await conn.execute(files_table.delete().where(files_table.c.id.in_(ids)))
            await conn.execute(attachments.delete().where(attachments.c.id.in_(ids)))

        if ids:
            await self._write(work)

    async def delete_thread(self, thread_id: str, context: Caller | str) -> None:
        user = context if isinstance(context, str) else context.user
        async with self._connect() as conn:
            ids = list(
                (
                    await conn.scalars(
                        sa.select(files_table.c.id).where(
                            files_table.c.thread_id == thread_id, files_table.c.user_id == user
                        )
                    )
                ).all()
            )
        await super().delete_thread(thread_id, context)
        await self.forget(ids)

    async def sweep(self, now: float | None = None) -> int:
        """Remove files never sent in a message whose time is up; how many."""
        now = time.time() if now is None else now
        async with self._connect() as conn:
            ids = list(
                (
                    await conn.scalars(
                        sa.select(files_table.c.id)
                        .where(files_table.c.thread_id.is_(None), files_table.c.expires_at <= now)
                        .limit(500)
                    )
                ).all()
            )
        await self.forget(ids)
        return len(ids)

    #: set by ``Files``: re-signs preview URLs of images in pages sent to the browser
    refresh: Callable[[Attachment, Caller | str], Attachment] | None = None

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: Caller | str
    ) -> Page[ThreadItem]:
        page = await super().load_thread_items(thread_id, after, limit, order, context)
        if self.refresh is None:
            return page
        refresh = self.refresh
        for item in page.data:
            if isinstance(item, UserMessageItem) and item.attachments:
                item.attachments = [refresh(a, context) for a in item.attachments]
        return page


class Files(AttachmentStore[Caller]):
    """chatkit's ``AttachmentStore`` for every workflow of one backend, plus its routes."""

    def __init__(
        self,
        store: FilesStore,
        storage: Storage,
        tokens: FileTokens,
        workflows: Mapping[str, Workflow],
        *,
        public_url: str | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.tokens = tokens
        self.workflows = dict(workflows)
        self.public_url = public_url
        store.storage = storage
        store.refresh = self.refreshed
        self._sweeper: asyncio.Task[None] | None = None

    def dictation(self, workflow: str) -> bool:
        wf = self.workflows.get(workflow)
        return wf is not None and getattr(wf, "dictation", True) is not False

    def policy(self, workflow: str) -> FilesPolicy:
        wf = self.workflows.get(workflow)
        return policy_of(wf) if wf is not None else FilesPolicy(enabled=False)

    # --- the mint answer ----------------------------------------------------------------

    def kit_options(self, workflow: Workflow) -> dict[str, Any]:
        """What the front-end kit needs: the upload strategy and the composer's limits."""
        policy = policy_of(workflow)
        dictation = {"dictation": {"enabled": self.dictation(workflow.name)}}
        if not policy.enabled:
            return {"attachments": policy.composer(), **dictation}
        return {
            **dictation,
            "upload_strategy": {"type": "two_phase"},
            "attachments": policy.composer(),
        }

    # --- AttachmentStore ----------------------------------------------------------------

    def generate_attachment_id(self, mime_type: str, context: Caller) -> str:
        return new_id("atc")

    def url(self, verb: str, user: str, attachment_id: str) -> str:
        token = self.tokens.sign(verb, user, attachment_id)
        return f"{current_base.get()}/api/files/{attachment_id}/{verb}?t={token}"

    async def create_attachment(self, input: AttachmentCreateParams, context: Caller) -> Attachment:
        policy = self.policy(context.workflow)
        mime = input.mime_type.split(";", 1)[0].strip().lower()
        if not policy.enabled:
            raise InvalidRequest("This workflow does not accept file uploads (attachments.create).")
        if input.size > policy.max_size:
            raise _too_large(policy.max_size)
        if input.size < 0:
            raise InvalidRequest("attachments.create: size must be 0 or more.")
        if not policy.allows(mime):
            raise _unsupported(mime, policy)
        if await self.store.pending_count(context.user, context.workflow) >= policy.max_pending:
            raise RateLimited(
                f"You have {policy.max_pending} files uploaded or waiting that are not sent in a "
                "message yet; send or remove some first."
            )
        attachment_id = self.generate_attachment_id(mime, context)
        await self.store.add_file(
            id=attachment_id,
            user_id=context.user,
            workflow=context.workflow,
            state="pending",
            mime_type=mime,
            size=0,
            thread_id=None,
            expires_at=time.time() + policy.pending_ttl,
        )
        fields: dict[str, Any] = {
            "id": attachment_id,
            "name": safe_name(input.name),
            "mime_type": mime,
            "upload_descriptor": AttachmentUploadDescriptor(
                url=self.url("upload", context.user, attachment_id), method="POST", headers={}
            ),
        }
        if mime in IMAGE_TYPES:
            return ImageAttachment(
                **fields, preview_url=self.url("preview", context.user, attachment_id)
            )
        return FileAttachment(**fields)

    async def delete_attachment(self, attachment_id: str, context: Caller) -> None:
        # ownership was checked before chatkit got the request (check_request)
        record = await self.store.file(attachment_id, context.user)
        if record is not None:
            await self.store.forget([attachment_id])

    def refreshed(self, attachment: Attachment, context: Caller | str) -> Attachment:
        if not isinstance(attachment, ImageAttachment):
            return attachment
        user = context if isinstance(context, str) else context.user
        return attachment.model_copy(
            update={"preview_url": AnyUrl(self.url("preview", user, attachment.id))}
        )

    # --- checks before chatkit sees a request ------------------------------------------------

    async def check(self, request: ChatKitReq, caller: Caller) -> None:
        """Every attachment a message names must be the caller's, of this workflow, uploaded,
        and within the workflow's count: refused before any work (404 as for an unknown id)."""
        if isinstance(request, InputTranscribeReq) and not self.dictation(caller.workflow):
            raise InvalidRequest("This workflow does not offer dictation (input.transcribe).")
        if isinstance(request, AttachmentsCreateReq) and not self.policy(caller.workflow).enabled:
            raise InvalidRequest("This workflow does not accept file uploads (attachments.create).")
        input_ = getattr(request.params, "input", None)
        await self.check_ids(list(getattr(input_, "attachments", None) or []), caller)

    async def check_ids(self, ids: list[str], caller: Caller) -> None:
        """The attachments of one message: the caller's own, of this workflow, uploaded."""
        if not ids:
            return
        policy = self.policy(caller.workflow)
        if len(ids) > policy.max_per_message:
            raise InvalidRequest(
                f"A message may carry at most {policy.max_per_message} attachments; "
                f"this one has {len(ids)}."
            )
        if len(set(ids)) != len(ids):
            raise InvalidRequest("The message names the same attachment twice.")
        for attachment_id in ids:
            record = await self.store.file(attachment_id, caller.user)
            if record is None or record.workflow != caller.workflow:
                raise NotFound(f"Attachment {attachment_id[:80]} not found.")
            if record.state != "ready":
                raise InvalidRequest(
                    f"Attachment {attachment_id[:80]} has not been uploaded (its upload did "
                    "not finish); attach the file again."
                )

    # --- routes -----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/files/{attachment_id}/upload", self.upload, methods=["POST", "PUT"]),
            Route("/api/files/{attachment_id}/preview", self.preview, methods=["GET"]),
        ]

    async def upload(self, request: Request) -> Response:
        """``POST /api/files/{id}/upload?t=…``: the bytes, once, by the user it was signed for."""
        attachment_id = request.path_params["attachment_id"]
        user = self.tokens.check("upload", request.query_params.get("t"), attachment_id)
        request.state.user = user
        record = await self.store.file(attachment_id, user)
        if record is None:
            raise NotFound(f"Attachment {attachment_id[:80]} not found.")
        policy = self.policy(record.workflow)
        if not await self.store.set_state(attachment_id, user, "pending", "uploading"):
            raise Forbidden("This upload URL has already been used.")
        try:
            chunks = file_chunks(request, policy.max_size)
            found, stream = await sniffed_stream(chunks, record.mime_type, policy.accept)
            size = await self.storage.put(attachment_id, stream)
        except UploadCut:
            await self._failed(attachment_id, user)
            log.info("upload of %s cut off; nothing stored", attachment_id)
            raise InvalidRequest(
                "The upload ended before the body did; nothing was stored. Attach the file again."
            ) from None
        except BaseException:
            await self._failed(attachment_id, user)
            raise
        await self.store.set_state(attachment_id, user, "uploading", "ready", size=size)
        caller = Caller(user, record.workflow)
        with contextlib.suppress(NotFoundError):
            attachment = await self.store.load_attachment(attachment_id, caller)
            attachment = attachment.model_copy(
                update={"upload_descriptor": None, "metadata": {"size": size, "type": found}}
            )
            await self.store.save_attachment(attachment, caller)
        return JSONResponse({"id": attachment_id, "size": size, "mime_type": found})

    async def _failed(self, attachment_id: str, user: str) -> None:
        with contextlib.suppress(Exception):
            await self.storage.delete(attachment_id)
        await asyncio.shield(self.store.set_state(attachment_id, user, "uploading", "failed"))

    async def preview(self, request: Request) -> Response:
        """``GET /api/files/{id}/preview?t=…``: an uploaded file, to the user it was signed for."""
        attachment_id = request.path_params["attachment_id"]
        user = self.tokens.check("preview", request.query_params.get("t"), attachment_id)
        request.state.user = user
        record = await self.store.file(attachment_id, user)
        if record is None or record.state != "ready":
            raise NotFound(f"Attachment {attachment_id[:80]} not found.")
        stream = self.storage.stream(attachment_id)
        try:
            first = await anext(stream)
        except (FileNotFoundError, StopAsyncIteration):
            raise NotFound(f"Attachment {attachment_id[:80]} not found.") from None

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in stream:
                yield chunk

        return StreamingResponse(
            body(),
            media_type=record.mime_type,
            headers={
                "Cache-Control": "private, max-age=300",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Content-Disposition": "inline"
                if record.mime_type in IMAGE_TYPES
                else "attachment",
            },
        )

    # --- life cycle -------------------------------------------------------------------------

    def start_sweeper(self, every: float = SWEEP_EVERY) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    removed = await self.store.sweep()
                except BrokerError as exc:
                    log.warning("file sweep skipped: %s", exc.message)
                    continue
                if removed:
                    log.info("removed %d files never sent in a message", removed)

        self._sweeper = asyncio.ensure_future(loop())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.storage.close()


class FilesConverter(HistoryConverter):
    """Shows an attachment to the model by content: images as ``input_image``, PDFs as
    ``input_file``, text as text (for the current turn and every turn of the history).

    A file whose bytes are gone (removed, storage down) becomes a one-line note, so the chat
    keeps working without it.
    """

    def __init__(self, storage: Storage) -> None:
        super().__init__()
        self.storage = storage

    async def attachment_to_message_content(self, attachment: Attachment) -> Any:
        mime = (attachment.metadata or {}).get("type") or attachment.mime_type
        try:
            data = await self.storage.read(attachment.id)
        except (FileNotFoundError, BrokerError, ValueError) as exc:
            log.info("attachment %s not shown to the model: %s", attachment.id, type(exc).__name__)
            return ResponseInputTextParam(
                type="input_text",
                text=f"[attached file {json.dumps(attachment.name)} is not available]",
            )
        encoded = base64.b64encode(data).decode()
        if mime in IMAGE_TYPES:
            return {
                "type": "input_image",
                "image_url": f"data:{mime};base64,{encoded}",
                "detail": "auto",
            }
        if mime == "application/pdf":
            return {
                "type": "input_file",
                "filename": attachment.name,
                "file_data": f"data:application/pdf;base64,{encoded}",
            }
        text = data.decode("utf-8", errors="replace")
        return ResponseInputTextParam(
            type="input_text",
            text=f"<file name={json.dumps(attachment.name)} type={mime}>\n{text}\n</file>",
        )


class DescribingConverter(FilesConverter):
    """Mock mode's: the canned model cannot look at a file, so each attachment reaches it as a
    line saying what arrived (name, type by content, size), which the canned reply quotes."""

    async def attachment_to_message_content(self, attachment: Attachment) -> Any:
        mime = (attachment.metadata or {}).get("type") or attachment.mime_type
        try:
            size = len(await self.storage.read(attachment.id))
        except (FileNotFoundError, BrokerError, ValueError):
            return ResponseInputTextParam(
                type="input_text", text=f"\n[attached {json.dumps(attachment.name)}: not available]"
            )
        return ResponseInputTextParam(
            type="input_text",
            text=f"\n[attached {json.dumps(attachment.name)}: {mime}, {size} bytes, received]",
        )


def _too_large(limit: int) -> BrokerError:
    from ...errors import PayloadTooLarge

    return PayloadTooLarge(f"The file is larger than this workflow's limit of {limit} bytes.")


def _unsupported(mime: str, policy: FilesPolicy) -> BrokerError:
    from ...errors import UnsupportedMediaType

    return UnsupportedMediaType(
        f"This workflow does not accept {mime[:60]!r} files; it accepts {', '.join(policy.accept)}."
    )
