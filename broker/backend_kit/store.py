"""Per-user threads for any chatkit-python ``Store``: wrap it, and another user's thread,
item or attachment is "not found".

chatkit-python leaves ownership to your ``Store`` (``context`` is yours to interpret), and
the samples' stores ignore it, so every user sees every thread. ``UserScopedStore`` stamps
the verified user into each thread's and attachment's ``metadata`` when it is saved, checks
it on every load, save and delete (items through their thread), and filters
``load_threads`` — all by delegating to the store you already have. Threads are handed back
without the stamp (some chatkit versions send thread ``metadata`` to the browser; every save
stamps it again); chatkit never sends attachment ``metadata``.

The user comes from ``AssertionMiddleware`` (``current_user()``) unless you pass
``user=lambda context: …``. No verified user means no access at all: fail closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from chatkit.store import AttachmentStore, NotFoundError, Store, StoreItemType
from chatkit.types import Attachment, AttachmentCreateParams, Page, ThreadItem, ThreadMetadata

from .asgi import current_user

OWNER_KEY = "chatkit_broker_owner"
TContext = TypeVar("TContext")


class NoVerifiedUser(RuntimeError):
    """The store was used outside a verified request (no ``AssertionMiddleware``?)."""


def _from_middleware(context: Any) -> str | None:
    return current_user()


def _unstamped(thread: ThreadMetadata) -> ThreadMetadata:
    metadata = {k: v for k, v in (thread.metadata or {}).items() if k != OWNER_KEY}
    return thread.model_copy(update={"metadata": metadata})


class UserScopedStore(Store[TContext], Generic[TContext]):
    """``store`` as each user sees it: only their own threads, items and attachments."""

    def __init__(
        self, store: Store[TContext], user: Callable[[TContext], str | None] = _from_middleware
    ) -> None:
        self.inner = store
        self._user = user

    def owner(self, context: TContext) -> str:
        user = self._user(context)
        if not user:
            raise NoVerifiedUser(
                "no verified user for this store call: put AssertionMiddleware in front of the "
                "server, or pass user= to UserScopedStore"
            )
        return user

    def protect(self, server: Any) -> Any:
        """Check ownership where chatkit asks no store: ``items.feedback`` goes straight to
        ``server.add_feedback``, so another user's (or an unknown) thread or item would be
        answered ``{}``. After this, its thread and items are loaded through this store first:
        "not found" (a 404 through ``AssertionMiddleware``) unless they are the caller's.
        Call it once on the server that uses this store; returns the server."""
        own_feedback = server.add_feedback

        async def add_feedback(
            thread_id: str, item_ids: list[str], feedback: Any, context: TContext
        ) -> None:
            await self._owned_thread(thread_id, context)
            for item_id in item_ids:
                await self.load_item(thread_id, item_id, context)
            await own_feedback(thread_id, item_ids, feedback, context)

        server.add_feedback = add_feedback
        return server

    # --- ids ------------------------------------------------------------------------------

    def generate_thread_id(self, context: TContext) -> str:
        return self.inner.generate_thread_id(context)

    def generate_item_id(
        self, item_type: StoreItemType, thread: ThreadMetadata, context: TContext
    ) -> str:
        return self.inner.generate_item_id(item_type, thread, context)

    # --- threads --------------------------------------------------------------------------

    async def _owned_thread(self, thread_id: str, context: TContext) -> ThreadMetadata:
        user = self.owner(context)
        thread = await self.inner.load_thread(thread_id, context)
        if (thread.metadata or {}).get(OWNER_KEY) != user:
            raise NotFoundError(f"Thread {thread_id} not found")
        return thread

    async def load_thread(self, thread_id: str, context: TContext) -> ThreadMetadata:
        return _unstamped(await self._owned_thread(thread_id, context))

    async def save_thread(self, thread: ThreadMetadata, context: TContext) -> None:
        user = self.owner(context)
        try:
            existing = await self.inner.load_thread(thread.id, context)
        except NotFoundError:
            existing = None
        if existing is not None and (existing.metadata or {}).get(OWNER_KEY) != user:
            raise NotFoundError(f"Thread {thread.id} not found")
        thread.metadata = {**(thread.metadata or {}), OWNER_KEY: user}
        await self.inner.save_thread(thread, context)

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: TContext
    ) -> Page[ThreadMetadata]:
        """The user's own threads: pages of the inner store, filtered, until ``limit`` are
        found (and one more, to know whether there are more). The inner store sees the same
        ``after`` cursor, a thread id, as chatkit gives it."""
        user = self.owner(context)
        found: list[ThreadMetadata] = []
        cursor = after
        while True:
            page = await self.inner.load_threads(limit, cursor, order, context)
            for thread in page.data:
                if (thread.metadata or {}).get(OWNER_KEY) != user:
                    continue
                if len(found) == limit:
                    return Page(data=found, has_more=True, after=found[-1].id)
                found.append(_unstamped(thread))
            if not (page.has_more and page.data):
                return Page(data=found, has_more=False, after=None)
            cursor = page.after or page.data[-1].id

    async def delete_thread(self, thread_id: str, context: TContext) -> None:
        await self._owned_thread(thread_id, context)
        await self.inner.delete_thread(thread_id, context)

    # --- items: owned through their thread ----------------------------------------------

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: TContext
    ) -> Page[ThreadItem]:
        await self._owned_thread(thread_id, context)
        return await self.inner.load_thread_items(thread_id, after, limit, order, context)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: TContext) -> None:
        await self._owned_thread(thread_id, context)
        await self.inner.add_thread_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: TContext) -> None:
        await self._owned_thread(thread_id, context)
        await self.inner.save_item(thread_id, item, context)

    async def load_item(self, thread_id: str, item_id: str, context: TContext) -> ThreadItem:
        await self._owned_thread(thread_id, context)
        item = await self.inner.load_item(thread_id, item_id, context)
        if getattr(item, "thread_id", thread_id) != thread_id:
            raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")
        return item

    async def delete_thread_item(self, thread_id: str, item_id: str, context: TContext) -> None:
        await self._owned_thread(thread_id, context)
        await self.inner.delete_thread_item(thread_id, item_id, context)

    # --- attachments ----------------------------------------------------------------------

    async def save_attachment(self, attachment: Attachment, context: TContext) -> None:
        user = self.owner(context)
        try:
            existing = await self.inner.load_attachment(attachment.id, context)
        except NotFoundError:
            existing = None
        if existing is not None and (existing.metadata or {}).get(OWNER_KEY) != user:
            raise NotFoundError(f"Attachment {attachment.id} not found")
        attachment.metadata = {**(attachment.metadata or {}), OWNER_KEY: user}
        await self.inner.save_attachment(attachment, context)

    async def load_attachment(self, attachment_id: str, context: TContext) -> Attachment:
        user = self.owner(context)
        attachment = await self.inner.load_attachment(attachment_id, context)
        if (attachment.metadata or {}).get(OWNER_KEY) != user:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return attachment

    async def delete_attachment(self, attachment_id: str, context: TContext) -> None:
        await self.load_attachment(attachment_id, context)
        await self.inner.delete_attachment(attachment_id, context)


class UserScopedAttachmentStore(AttachmentStore[TContext], Generic[TContext]):
    """An ``AttachmentStore`` that deletes only the caller's own files.

    chatkit deletes the file (here) before the metadata (the ``Store``), so the owner is
    checked against ``store`` first; new attachments are stamped when chatkit saves them
    through ``store``.
    """

    def __init__(self, attachments: AttachmentStore[TContext], store: UserScopedStore[TContext]):
        self.inner = attachments
        self.store = store

    async def create_attachment(
        self, input: AttachmentCreateParams, context: TContext
    ) -> Attachment:
        self.store.owner(context)  # fail closed before anything is created
        return await self.inner.create_attachment(input, context)

    async def delete_attachment(self, attachment_id: str, context: TContext) -> None:
        await self.store.load_attachment(attachment_id, context)
        await self.inner.delete_attachment(attachment_id, context)

    def generate_attachment_id(self, mime_type: str, context: TContext) -> str:
        return self.inner.generate_attachment_id(mime_type, context)

    def __getattr__(self, name: str) -> Any:  # the sample's write_file/read_file and the like
        return getattr(self.inner, name)
