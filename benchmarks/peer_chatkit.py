"""The peer of the agent path: a bare chatkit-python server, as a team would write one alone.

    python -m benchmarks.peer_chatkit --port 8100 [--store memory|sqlite] [--db FILE]

Written the way OpenAI's ChatKit samples write a server: a ``ChatKitServer`` whose ``respond``
loads the thread's recent items, converts them with ``simple_to_agent_input``, runs the agent
with ``Runner.run_streamed`` and yields ``stream_agent_response``; one Starlette route under
uvicorn (uvloop, httptools — what the broker runs on too); no sign-in, no limits, no isolation.
The agent is the broker's own example (``examples/agent/support_agent.py``), so both sides send
the model the same request. Tracing is off, as the broker has it by default.

Two stores: ``memory`` (dicts, what the samples ship) and ``sqlite`` (the standard library's
``sqlite3``, items as JSON in one table: the least a durable store can do).
"""

from __future__ import annotations

import argparse
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from agents import Runner, set_tracing_disabled
from chatkit.agents import AgentContext, simple_to_agent_input, stream_agent_response
from chatkit.server import ChatKitServer, StreamingResult
from chatkit.store import NotFoundError, Store
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HISTORY = 20  # items of history sent with each turn, as the samples do

_item = TypeAdapter(ThreadItem)


def _page(rows: list[Any], after: str | None, limit: int, order: str, key: Any) -> Page[Any]:
    rows = sorted(rows, key=key, reverse=order == "desc")
    if after is not None:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    return Page(
        data=rows[:limit],
        has_more=len(rows) > limit,
        after=rows[limit - 1].id if len(rows) > limit else None,
    )


class MemoryStore(Store[dict]):
    """Threads and items in dicts: the store of OpenAI's samples."""

    def __init__(self) -> None:
        self.threads: dict[str, ThreadMetadata] = {}
        self.items: dict[str, dict[str, ThreadItem]] = {}

    async def load_thread(self, thread_id: str, context: dict) -> ThreadMetadata:
        if thread_id not in self.threads:
            raise NotFoundError(f"thread {thread_id} not found")
        return self.threads[thread_id]

    async def save_thread(self, thread: ThreadMetadata, context: dict) -> None:
        self.threads[thread.id] = thread
        self.items.setdefault(thread.id, {})

    async def load_threads(self, limit: int, after: str | None, order: str, context: dict):
        return _page(list(self.threads.values()), after, limit, order, lambda t: t.created_at)

    async def load_thread_items(self, thread_id, after, limit, order, context):
        rows = list(self.items.get(thread_id, {}).values())
        return _page(rows, after, limit, order, lambda i: i.created_at)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        self.items.setdefault(thread_id, {})[item.id] = item

    async def load_item(self, thread_id: str, item_id: str, context: dict) -> ThreadItem:
        try:
            return self.items[thread_id][item_id]
        except KeyError:
            raise NotFoundError(f"item {item_id} not found") from None

    async def delete_thread(self, thread_id: str, context: dict) -> None:
        self.threads.pop(thread_id, None)
        self.items.pop(thread_id, None)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict) -> None:
        self.items.get(thread_id, {}).pop(item_id, None)

    async def save_attachment(self, attachment: Attachment, context: dict) -> None:
        raise NotImplementedError

    async def load_attachment(self, attachment_id: str, context: dict) -> Attachment:
        raise NotImplementedError

    async def delete_attachment(self, attachment_id: str, context: dict) -> None:
        raise NotImplementedError


class SQLiteStore(MemoryStore):
    """The same, durable: every write goes to a ``sqlite3`` file (committed at once)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS threads (id TEXT PRIMARY KEY, created TEXT, body TEXT)"
        )
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, thread TEXT, created TEXT, "
            "body TEXT)"
        )
        self.db.execute("CREATE INDEX IF NOT EXISTS items_thread ON items (thread, created)")

    async def load_thread(self, thread_id: str, context: dict) -> ThreadMetadata:
        row = self.db.execute("SELECT body FROM threads WHERE id = ?", (thread_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"thread {thread_id} not found")
        return ThreadMetadata.model_validate_json(row[0])

    async def save_thread(self, thread: ThreadMetadata, context: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO threads VALUES (?, ?, ?)",
            (thread.id, thread.created_at.isoformat(), thread.model_dump_json()),
        )

    async def load_threads(self, limit: int, after: str | None, order: str, context: dict):
        rows = self.db.execute("SELECT body FROM threads").fetchall()
        threads = [ThreadMetadata.model_validate_json(r[0]) for r in rows]
        return _page(threads, after, limit, order, lambda t: t.created_at)

    async def load_thread_items(self, thread_id, after, limit, order, context):
        rows = self.db.execute(
            "SELECT body FROM items WHERE thread = ? ORDER BY created DESC LIMIT ?",
            (thread_id, limit + 1 if after is None else 10_000),
        ).fetchall()
        items = [_item.validate_json(r[0]) for r in rows]
        return _page(items, after, limit, order, lambda i: i.created_at)

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: dict) -> None:
        created = item.created_at if isinstance(item.created_at, datetime) else datetime.now()
        self.db.execute(
            "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)",
            (item.id, thread_id, created.isoformat(), item.model_dump_json()),
        )

    async def load_item(self, thread_id: str, item_id: str, context: dict) -> ThreadItem:
        row = self.db.execute(
            "SELECT body FROM items WHERE id = ? AND thread = ?", (item_id, thread_id)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"item {item_id} not found")
        return _item.validate_json(row[0])

    async def delete_thread(self, thread_id: str, context: dict) -> None:
        self.db.execute("DELETE FROM items WHERE thread = ?", (thread_id,))
        self.db.execute("DELETE FROM threads WHERE id = ?", (thread_id,))

    async def delete_thread_item(self, thread_id: str, item_id: str, context: dict) -> None:
        self.db.execute("DELETE FROM items WHERE id = ? AND thread = ?", (item_id, thread_id))


class PeerServer(ChatKitServer[dict]):
    def __init__(self, store: Store[dict], agent: Any) -> None:
        super().__init__(store)
        self.agent = agent

    async def respond(self, thread, input_user_message, context):
        page = await self.store.load_thread_items(thread.id, None, HISTORY, "desc", context)
        agent_input = await simple_to_agent_input(list(reversed(page.data)))
        agent_context = AgentContext(thread=thread, store=self.store, request_context=context)
        result = Runner.run_streamed(self.agent, agent_input, context=agent_context)
        async for event in stream_agent_response(agent_context, result):
            yield event


def build_app(store: Store[dict]) -> Starlette:
    from examples.agent.support_agent import agent

    server = PeerServer(store, agent)

    async def chatkit(request: Request) -> Response:
        result = await server.process(await request.body(), {})
        if isinstance(result, StreamingResult):
            return StreamingResponse(result, media_type="text/event-stream")
        return Response(content=result.json, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[Route("/chatkit", chatkit, methods=["POST"]), Route("/healthz", healthz)]
    )


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer_chatkit")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    ap.add_argument("--db", type=Path, default=Path("peer-threads.sqlite3"))
    args = ap.parse_args()
    set_tracing_disabled(True)
    store = MemoryStore() if args.store == "memory" else SQLiteStore(args.db)
    uvicorn.run(build_app(store), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
