"""The ChatKit server behind `POST /mock/chatkit`, built on the `openai-chatkit` package.

Imported only through `broker.mock_backend`, because importing `chatkit` pulls in
`openai-agents` (about two seconds and a lot of memory) and is an optional extra.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

with warnings.catch_warnings():
    # chatkit.widgets subclasses its own deprecated widget classes at import time.
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.errors import CustomStreamError
    from chatkit.server import ChatKitServer, StreamingResult, stream_widget
    from chatkit.store import NotFoundError, Store
    from chatkit.types import (
        Action,
        AssistantMessageContent,
        AssistantMessageContentPartAdded,
        AssistantMessageContentPartDone,
        AssistantMessageContentPartTextDelta,
        AssistantMessageItem,
        Attachment,
        ChatKitReq,
        FeedbackKind,
        Page,
        ProgressUpdateEvent,
        ThreadItem,
        ThreadItemAddedEvent,
        ThreadItemDoneEvent,
        ThreadItemUpdatedEvent,
        ThreadMetadata,
        ThreadStreamEvent,
        UserMessageItem,
        UserMessageTagContent,
        UserMessageTextContent,
        WidgetItem,
    )
    from chatkit.widgets import DynamicWidgetRoot, WidgetRoot

__all__ = [
    "MemoryStore",
    "MockChatKitServer",
    "NotFoundError",
    "StreamingResult",
    "UserMessageItem",
    "ValidationError",
    "describe",
    "parse_request",
]

MAX_PAGE_SIZE = 100
MAX_MESSAGE = 300
TITLE_LENGTH = 40
WIDGET_ACTION = "mock.button_pressed"

_Record = TypeVar("_Record", ThreadMetadata, ThreadItem)
_REQUESTS: TypeAdapter[ChatKitReq] = TypeAdapter(ChatKitReq)

if not os.environ.get("LOG_LEVEL"):  # chatkit's own switch for its logger
    # chatkit logs every request at INFO; the broker's access log already has one line each.
    logging.getLogger("chatkit").setLevel(logging.WARNING)


def parse_request(body: bytes) -> ChatKitReq:
    """The ChatKit request in `body`, parsed by chatkit's own models (raises ValidationError)."""
    return _REQUESTS.validate_json(body)


def describe(exc: ValidationError) -> str:
    """One short sentence naming the first problem, without echoing the request body."""
    error = exc.errors(include_url=False, include_input=False)[0]
    if error["type"] == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", ""))[:60]
        return f"Unknown ChatKit request type {tag!r}; expected one such as 'threads.create'."
    where = ".".join(str(part) for part in error["loc"])
    detail = f"{where}: {error['msg']}" if where else error["msg"]
    message = f"Not a valid ChatKit request ({detail})."
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


@dataclass
class _UserSpace:
    """Everything one user has stored; other users can never reach it."""

    threads: dict[str, ThreadMetadata] = field(default_factory=dict)
    items: dict[str, list[ThreadItem]] = field(default_factory=dict)
    attachments: dict[str, Attachment] = field(default_factory=dict)


def _page(records: list[_Record], after: str | None, limit: int, order: str) -> Page[_Record]:
    """Cut one page from records kept oldest first, the way ChatKit's cursors expect."""
    ordered = records if order == "asc" else records[::-1]
    start = 0
    if after is not None:
        ids = [record.id for record in ordered]
        # An unknown cursor (say, a deleted item) gives an empty page rather than repeats.
        start = ids.index(after) + 1 if after in ids else len(ordered)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    chunk = ordered[start : start + limit]
    has_more = start + limit < len(ordered)
    return Page(data=chunk, has_more=has_more, after=chunk[-1].id if has_more else None)


class MemoryStore(Store[str]):
    """An in-memory ChatKit store partitioned by user (the request context is the user).

    Threads live in one process only, so they vanish on restart and are not shared
    between workers — fine for a local mock, and it keeps the dependency list empty.
    """

    def __init__(self) -> None:
        self._spaces: dict[str, _UserSpace] = {}

    def _space(self, user: str) -> _UserSpace:
        return self._spaces.setdefault(user, _UserSpace())

    def _items(self, thread_id: str, user: str) -> list[ThreadItem]:
        space = self._spaces.get(user)
        if space is None or thread_id not in space.threads:
            raise NotFoundError(f"Thread {thread_id} not found")
        return space.items.setdefault(thread_id, [])

    async def load_thread(self, thread_id: str, context: str) -> ThreadMetadata:
        self._items(thread_id, context)
        return self._spaces[context].threads[thread_id].model_copy(deep=True)

    async def save_thread(self, thread: ThreadMetadata, context: str) -> None:
        # Store metadata only, even when handed a full Thread with its items.
        metadata = ThreadMetadata.model_validate(thread.model_dump(exclude={"items"}))
        self._space(context).threads[thread.id] = metadata

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: str
    ) -> Page[ThreadMetadata]:
        space = self._spaces.get(context)
        threads = list(space.threads.values()) if space else []
        page = _page(threads, after, limit, order)
        page.data = [thread.model_copy(deep=True) for thread in page.data]
        return page

    async def delete_thread(self, thread_id: str, context: str) -> None:
        self._items(thread_id, context)
        space = self._spaces[context]
        del space.threads[thread_id]
        space.items.pop(thread_id, None)

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: str
    ) -> Page[ThreadItem]:
        page = _page(self._items(thread_id, context), after, limit, order)
        page.data = [item.model_copy(deep=True) for item in page.data]
        return page

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: str) -> None:
        self._items(thread_id, context).append(item.model_copy(deep=True))

    async def save_item(self, thread_id: str, item: ThreadItem, context: str) -> None:
        items = self._items(thread_id, context)
        for index, existing in enumerate(items):
            if existing.id == item.id:
                items[index] = item.model_copy(deep=True)
                return
        items.append(item.model_copy(deep=True))

    async def load_item(self, thread_id: str, item_id: str, context: str) -> ThreadItem:
        for item in self._items(thread_id, context):
            if item.id == item_id:
                return item.model_copy(deep=True)
        raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")

    async def delete_thread_item(self, thread_id: str, item_id: str, context: str) -> None:
        items = self._items(thread_id, context)
        items[:] = [item for item in items if item.id != item_id]

    async def save_attachment(self, attachment: Attachment, context: str) -> None:
        self._space(context).attachments[attachment.id] = attachment.model_copy(deep=True)

    async def load_attachment(self, attachment_id: str, context: str) -> Attachment:
        space = self._spaces.get(context)
        if space is None or attachment_id not in space.attachments:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return space.attachments[attachment_id].model_copy(deep=True)

    async def delete_attachment(self, attachment_id: str, context: str) -> None:
        space = self._spaces.get(context)
        if space is not None:
            space.attachments.pop(attachment_id, None)


def message_text(item: UserMessageItem) -> str:
    """The plain text a user typed, tags included, so the mock can echo it back."""
    parts = [
        part.text
        for part in item.content
        if isinstance(part, UserMessageTextContent | UserMessageTagContent)
    ]
    return " ".join(part.strip() for part in parts if part.strip())


def make_title(text: str) -> str:
    """A short thread title from the first message, as automatic titling would give."""
    words = " ".join(text.split())
    if not words:
        return "Mock chat"
    if len(words) <= TITLE_LENGTH:
        return words
    return words[: TITLE_LENGTH - 1].rstrip() + "…"


def split_deltas(text: str, pieces: int) -> list[str]:
    """Split text on word boundaries into about `pieces` chunks that join back to it exactly."""
    tokens = re.findall(r"\s*\S+\s*", text) or [text]
    pieces = max(1, min(pieces, len(tokens)))
    size, extra = divmod(len(tokens), pieces)
    chunks, start = [], 0
    for index in range(pieces):
        end = start + size + (1 if index < extra else 0)
        chunks.append("".join(tokens[start:end]))
        start = end
    return chunks


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines()) or "> (empty message)"


def echo_reply(text: str) -> str:
    return (
        f"**[mock]** You wrote:\n\n{_quote(text)}\n\n"
        "This reply comes from chatkit-broker's mock ChatKit backend: no model was called "
        "and nothing left this machine. Send `/slow`, `/long`, `/widget` or `/error` "
        "to see the other states a chat UI must handle."
    )


def slow_reply(text: str, step: float) -> str:
    return (
        f"**[mock]** This reply streams slowly, one piece every {step:g} s, so you can watch "
        "the typing state and try the stop button. You wrote:\n\n"
        f"{_quote(text)}"
    )


def long_reply(text: str) -> str:
    return f"""**[mock]** A long reply, to check scrolling and markdown rendering.

You wrote:

{_quote(text)}

## What the mock backend can do

1. Echo every message, streamed in several deltas.
2. Keep threads in memory, separately for each user.
3. Give threads a title taken from their first message.
4. Answer a few commands:
   - `/slow` streams over several seconds;
   - `/error` ends the stream with an error event;
   - `/long` sends this reply;
   - `/widget` sends a small widget card.

## Commands at a glance

| command | what the UI should show | stream ends with |
| --- | --- | --- |
| `/slow` | a reply that types slowly | `thread.item.done` |
| `/error` | a partial reply, then an error | `error` |
| `/long` | markdown: headings, lists, a table, code | `thread.item.done` |
| `/widget` | a card with a button | `thread.item.done` |

## A code block

```python
import httpx

body = {{
    "type": "threads.list",
    "params": {{"limit": 20}},
}}
reply = httpx.post("http://127.0.0.1:8000/mock/chatkit", json=body)
print(reply.json())
```

> Nothing here came from a model: this text is fixed in `broker/_mock_chatkit.py`.

That is the end of the long mock reply."""


def widget_card(text: str) -> WidgetRoot:
    """A small card with a button, to check that widgets render and their actions round-trip."""
    return DynamicWidgetRoot.model_validate(
        {
            "type": "Card",
            "size": "sm",
            "children": [
                {
                    "type": "Row",
                    "gap": 2,
                    "children": [
                        {"type": "Title", "value": "Mock widget", "size": "sm"},
                        {"type": "Spacer"},
                        {"type": "Badge", "label": "mock", "color": "warning"},
                    ],
                },
                {"type": "Text", "value": f"You wrote: {text or '(nothing)'}"},
                {"type": "Divider"},
                {
                    "type": "Caption",
                    "value": "The button sends a custom action back to the mock backend.",
                },
                {
                    "type": "Button",
                    "label": "Press me",
                    "onClickAction": {"type": WIDGET_ACTION, "payload": {"text": text}},
                },
            ],
        }
    )


class MockChatKitServer(ChatKitServer[str]):
    """Answers every message with a canned, clearly marked mock reply; the context is the user.

    `step` is the pause between text deltas of ordinary replies and `slow_step` that of
    `/slow`, so tests can set both to zero while a person still sees text stream in.
    """

    def __init__(self, store: MemoryStore, *, step: float, slow_step: float) -> None:
        super().__init__(store)
        self.step = step
        self.slow_step = slow_step

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: str
    ) -> AsyncIterator[ThreadStreamEvent]:
        if input_user_message is None:
            return
        text = message_text(input_user_message)
        if thread.title is None:
            # ChatKitServer saves the thread and emits thread.updated when it changes.
            thread.title = make_title(text)
        command = text.split(maxsplit=1)[0].lower() if text else ""

        if command == "/slow":
            yield ProgressUpdateEvent(text="[mock] Typing slowly…")
            async for event in self._stream_text(
                thread, context, slow_reply(text, self.slow_step), 10, self.slow_step
            ):
                yield event
        elif command == "/error":
            async for event in self._stream_text(
                thread,
                context,
                "**[mock]** Starting a reply, then failing on purpose…",
                3,
                self.step,
                finish=False,
            ):
                yield event
            raise CustomStreamError(
                "[mock] /error ended this stream with an error event on purpose.",
                allow_retry=True,
            )
        elif command == "/long":
            async for event in self._stream_text(thread, context, long_reply(text), 24, self.step):
                yield event
        elif command == "/widget":
            async for event in self._stream_text(
                thread, context, "**[mock]** Here is a small widget card:", 3, self.step
            ):
                yield event
            async for event in stream_widget(
                thread,
                widget_card(text),
                copy_text=f"[mock] widget card for: {text}",
                generate_id=lambda kind: self.store.generate_item_id(kind, thread, context),
            ):
                yield event
        else:
            pieces = min(12, max(4, len(text.split())))
            async for event in self._stream_text(
                thread, context, echo_reply(text), pieces, self.step
            ):
                yield event

    async def action(
        self,
        thread: ThreadMetadata,
        action: Action[str, Any],
        sender: WidgetItem | None,
        context: str,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Answer the widget card's button so a UI developer sees actions round-trip."""
        if action.type != WIDGET_ACTION:
            raise CustomStreamError(f"[mock] The mock backend has no action {action.type!r}.")
        reply = f"**[mock]** You pressed the widget button (action `{action.type}`)."
        async for event in self._stream_text(thread, context, reply, 4, self.step):
            yield event

    async def add_feedback(
        self, thread_id: str, item_ids: list[str], feedback: FeedbackKind, context: str
    ) -> None:
        """Accept feedback only on the caller's own items; the mock keeps nothing else."""
        for item_id in item_ids:
            await self.store.load_item(thread_id, item_id, context)

    async def _stream_text(
        self,
        thread: ThreadMetadata,
        context: str,
        text: str,
        pieces: int,
        pause: float,
        *,
        finish: bool = True,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Stream one assistant message the way a model would: added, deltas, done."""
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[],
        )
        yield ThreadItemAddedEvent(item=item)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        )
        for index, delta in enumerate(split_deltas(text, pieces)):
            if index and pause > 0:
                await asyncio.sleep(pause)
            yield ThreadItemUpdatedEvent(
                item_id=item.id,
                update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta),
            )
        if not finish:
            return
        content = AssistantMessageContent(text=text)
        yield ThreadItemUpdatedEvent(
            item_id=item.id,
            update=AssistantMessageContentPartDone(content_index=0, content=content),
        )
        yield ThreadItemDoneEvent(item=item.model_copy(update={"content": [content]}))
