"""An in-memory ChatKit ``Store`` that keeps each verified user's threads apart.

chatkit-python does no ownership checks of its own: isolation lives entirely in the store,
keyed here by the user the broker's assertion named (never by anything the browser sent).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TypeVar

from chatkit.store import NotFoundError, Store
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata

from broker.assertion import VerifiedAssertion

_Row = TypeVar("_Row", ThreadMetadata, ThreadItem)


def _page(rows: list[_Row], after: str | None, limit: int, order: str) -> Page[_Row]:
    """One page of rows kept oldest first; ``after`` is an exclusive cursor, as ChatKit expects."""
    ordered = rows if order == "asc" else rows[::-1]
    ids = [row.id for row in ordered]
    start = (ids.index(after) + 1 if after in ids else len(ids)) if after else 0
    chunk = ordered[start : start + max(1, limit)]
    has_more = start + len(chunk) < len(ordered)
    return Page(data=chunk, has_more=has_more, after=chunk[-1].id if has_more and chunk else None)


class UserMemoryStore(Store[VerifiedAssertion]):
    """Threads and items per user; a thread id of another user is simply not found."""

    def __init__(self) -> None:
        self._threads: dict[str, dict[str, ThreadMetadata]] = defaultdict(dict)
        self._items: dict[tuple[str, str], list[ThreadItem]] = {}
        self._attachments: dict[str, dict[str, Attachment]] = defaultdict(dict)

    def _owned(self, thread_id: str, user: str) -> list[ThreadItem]:
        if thread_id not in self._threads[user]:
            raise NotFoundError(f"Thread {thread_id} not found")
        return self._items.setdefault((user, thread_id), [])

    async def load_thread(self, thread_id: str, context: VerifiedAssertion) -> ThreadMetadata:
        self._owned(thread_id, context.user)
        return self._threads[context.user][thread_id].model_copy(deep=True)

    async def save_thread(self, thread: ThreadMetadata, context: VerifiedAssertion) -> None:
        metadata = ThreadMetadata.model_validate(thread.model_dump(exclude={"items"}))
        self._threads[context.user][thread.id] = metadata

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: VerifiedAssertion
    ) -> Page[ThreadMetadata]:
        return _page(list(self._threads[context.user].values()), after, limit, order)

    async def delete_thread(self, thread_id: str, context: VerifiedAssertion) -> None:
        self._owned(thread_id, context.user)
        del self._threads[context.user][thread_id]
        self._items.pop((context.user, thread_id), None)

    async def load_thread_items(
        self,
        thread_id: str,
        after: str | None,
        limit: int,
        order: str,
        context: VerifiedAssertion,
    ) -> Page[ThreadItem]:
        return _page(self._owned(thread_id, context.user), after, limit, order)

    async def add_thread_item(
        self, thread_id: str, item: ThreadItem, context: VerifiedAssertion
    ) -> None:
        await self.save_item(thread_id, item, context)  # the same id can arrive twice: upsert

    async def save_item(self, thread_id: str, item: ThreadItem, context: VerifiedAssertion) -> None:
        items = self._owned(thread_id, context.user)
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item.model_copy(deep=True)
                return
        items.append(item.model_copy(deep=True))

    async def load_item(
        self, thread_id: str, item_id: str, context: VerifiedAssertion
    ) -> ThreadItem:
        for item in self._owned(thread_id, context.user):
            if item.id == item_id:
                return item.model_copy(deep=True)
        raise NotFoundError(f"Item {item_id} not found")

    async def delete_thread_item(
        self, thread_id: str, item_id: str, context: VerifiedAssertion
    ) -> None:
        items = self._owned(thread_id, context.user)
        items[:] = [item for item in items if item.id != item_id]

    async def save_attachment(self, attachment: Attachment, context: VerifiedAssertion) -> None:
        self._attachments[context.user][attachment.id] = attachment

    async def load_attachment(self, attachment_id: str, context: VerifiedAssertion) -> Attachment:
        found = self._attachments[context.user].get(attachment_id)
        if found is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return found

    async def delete_attachment(self, attachment_id: str, context: VerifiedAssertion) -> None:
        self._attachments[context.user].pop(attachment_id, None)
