"""The ChatKit thread store for agent workflows: one ``Store`` for SQLite and PostgreSQL.

Library choice: SQLAlchemy 2 Core (async) because one dialect-neutral query layer gives both
SQLite (aiosqlite) and PostgreSQL (asyncpg) real upserts (``ON CONFLICT``) and pooled async
connections; an ORM would add nothing for rows that are JSON documents.

chatkit-python ships no production store, checks no ownership and calls ``save_*`` and
``add_thread_item`` repeatedly with the same ids, so this store scopes every query to the
caller (user and workflow), writes only upserts, orders by an insertion sequence instead of
chatkit's naive ``datetime.now()`` and keeps hidden context items out of every page it
returns. Records are kept as the JSON of chatkit's own pydantic models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from chatkit.store import NotFoundError, Store, StoreItemType
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from ...api import MAX_PAGE_SIZE
from ...errors import StoreUnavailable
from .options import DEFAULT_DATABASE_URL, MEMORY_URL, DatabaseURLError, resolve_database_url

__all__ = [
    "DEFAULT_DATABASE_URL",
    "MEMORY_URL",
    "SCHEMA_VERSION",
    "Caller",
    "DatabaseURLError",
    "NotFoundError",
    "SQLStore",
    "SchemaTooNew",
    "resolve_database_url",
]

log = logging.getLogger("broker.agent.store")

#: Bump when the tables change, and add the step from the previous version to ``_MIGRATIONS``.
SCHEMA_VERSION = 1
HIDDEN_TYPES = frozenset({"hidden_context_item", "sdk_hidden_context"})
# 128 random bits, where chatkit's default ids carry 32 (uuid4().hex[:8]).
ID_BYTES = 16
_PREFIXES: dict[str, str] = {
    "thread": "thr",
    "message": "msg",
    "tool_call": "tc",
    "workflow": "wf",
    "task": "tsk",
    "attachment": "atc",
    "sdk_hidden_context": "shcx",
}

_ITEM: TypeAdapter[ThreadItem] = TypeAdapter(ThreadItem)
_ATTACHMENT: TypeAdapter[Attachment] = TypeAdapter(Attachment)
_T = TypeVar("_T")


class SchemaTooNew(RuntimeError):
    """The database was written by a newer chatkit-broker; refusing beats corrupting it."""

    def __init__(self, found: int, supported: int, where: str) -> None:
        super().__init__(
            f"The thread database {where} has schema version {found}, but this chatkit-broker "
            f"understands versions up to {supported}. Upgrade chatkit-broker, or point "
            "BROKER_DATABASE_URL at another database."
        )
        self.found = found
        self.supported = supported


@dataclass(frozen=True)
class Caller:
    """The request context: who is asking, and through which workflow.

    Threads belong to one user *and* one workflow, so one agent never continues another's
    conversation. A bare ``str`` context means that user with the workflow ``""``.
    """

    user: str
    workflow: str = ""
    #: the budget tier the user's claims chose (backends/agent/usage.py), "" for none
    tier: str = ""


def _scope(context: Caller | str) -> tuple[str, str]:
    if isinstance(context, str):
        return context, ""
    return context.user, context.workflow


def _unstorable(value: str | None) -> bool:
    """True for an id no row can have: PostgreSQL text cannot hold a NUL (asyncpg refuses the
    query, which was a 500), and every id this store writes is ``prefix_hex``. Such an id is
    answered as an unknown one, on both databases alike."""
    return value is not None and "\x00" in value


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(ID_BYTES)}"


def describe_url(url: str) -> str:
    """Where the database is, for messages: dialect and host or file, never a password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"(SQLite {parsed.database or 'in memory'})"
    return f"(PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database})"


metadata = sa.MetaData()
schema_table = sa.Table(
    "ckb_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only
threads = sa.Table(
    "ckb_threads",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(80), nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Index("ckb_threads_owner", "user_id", "workflow", "seq"),
)
items = sa.Table(
    "ckb_items",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("thread_id", sa.String(80), nullable=False),
    sa.Column("id", sa.String(200), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("hidden", sa.Boolean, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.UniqueConstraint("thread_id", "id", name="ckb_items_thread_item"),
    sa.Index("ckb_items_thread_seq", "thread_id", "seq"),
)
attachments = sa.Table(
    "ckb_attachments",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(200), nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

# One row per model call of an agent workflow (backends/agent/usage.py writes and reads it).
# A new table needs no schema version step: create_all adds it to an older database, and an
# older broker ignores it.
usage = sa.Table(
    "ckb_usage",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("thread_id", sa.String(80), nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("known", sa.Boolean, nullable=False),  # False: the call reported no usage
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("total_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Index("ckb_usage_user_at", "user_id", "at"),
    sa.Index("ckb_usage_workflow_at", "workflow", "at"),
    sa.Index("ckb_usage_at", "at"),
)
# Back ends as callers (broker/service_keys.py, background.py, broker/webhooks.py). New tables
# only, which create_all adds to an existing database, so the schema version stays: an older
# broker on this database ignores them.
service_keys = sa.Table(
    "ckb_service_keys",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("workflows", sa.Text, nullable=False),  # a JSON list of names
    sa.Column("act_for_users", sa.Boolean, nullable=False),
    sa.Column("rate_per_minute", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)
background_runs = sa.Table(
    "ckb_runs",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("caller", sa.Text, nullable=False),  # "key:<name>" or "user:<id>": idempotency scope
    sa.Column("key_name", sa.String(100), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("thread_id", sa.String(80), nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("result", sa.Text, nullable=True),  # JSON: output / error
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("owner", sa.String(80), nullable=True),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("caller", "idempotency_key", name="ckb_runs_idempotency"),
    sa.Index("ckb_runs_status_lease", "status", "lease_until"),
)
# a background run's attachments (ids of the user's uploads), when it has any: a table of its
# own rather than a column, so a database made before needs no schema step
run_attachments = sa.Table(
    "ckb_run_attachments",
    metadata,
    sa.Column("run_id", sa.String(80), primary_key=True),
    sa.Column("ids", sa.Text, nullable=False),  # a JSON list of attachment ids
)
webhook_deliveries = sa.Table(
    "ckb_webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),  # the webhook-id header: msg_…
    sa.Column("run_id", sa.String(80), nullable=False),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_result", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Index("ckb_webhooks_due", "status", "next_attempt_at"),
)

# version → the coroutine that upgrades a database at that version by one step.
_MIGRATIONS: dict[int, Callable[[AsyncConnection], Awaitable[None]]] = {}
_PG_INIT_LOCK = 0x636B62  # one advisory lock id, so two brokers do not create tables at once

# --- the hot path: hand-written SQL on the drivers themselves ---------------------------------
#
# A chat turn reads and writes the thread and its items about six times. Through SQLAlchemy's
# async engine each of those cost about 1 ms of CPU (pool checkout and reset, a greenlet
# switch per call, statement caching, and with aiosqlite six thread hops per statement); the
# same statement on the driver costs 30-60 µs. So these operations run as single statements
# on the drivers: SQLite through the standard library's ``sqlite3`` on two threads of the
# store's own (a reader and a writer: one hop per statement, never the event loop's thread),
# PostgreSQL through an ``asyncpg`` pool (one round trip per statement, prepared once per
# connection). Each write is one statement that checks ownership itself (``INSERT … SELECT …
# WHERE EXISTS (the caller's thread)``), so it stays atomic without a transaction around it.
# Everything else (schema, paging by cursor, deletes, usage, service keys, runs) stays on
# SQLAlchemy Core.

_OWNED = "SELECT 1 FROM ckb_threads WHERE id = ? AND user_id = ? AND workflow = ?"
SQL = {
    "load_thread": "SELECT data FROM ckb_threads WHERE id = ? AND user_id = ? AND workflow = ?",
    "thread_workflow": "SELECT workflow FROM ckb_threads WHERE id = ? AND user_id = ?",
    # only the owner may overwrite: someone else's id matches no row (0 rows changed)
    "save_thread": (
        "INSERT INTO ckb_threads (id, user_id, workflow, data) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET data = excluded.data "
        "WHERE ckb_threads.user_id = excluded.user_id "
        "AND ckb_threads.workflow = excluded.workflow"
    ),
    "save_item": (
        "INSERT INTO ckb_items (thread_id, id, type, hidden, data) "
        f"SELECT ?, ?, ?, CAST(? AS BOOLEAN), ? WHERE EXISTS ({_OWNED}) "
        "ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data, type = excluded.type"
    ),
    "load_item": (
        f"SELECT EXISTS ({_OWNED}), (SELECT data FROM ckb_items WHERE thread_id = ? AND id = ?)"
    ),
    # the caller's thread joined to its latest items: no row when the thread is not the
    # caller's, one row with a NULL when it has no items
    # the thread and its latest items at once, for a request that is about to run a turn
    "thread_recent": (
        "SELECT t.data, i.id, i.data, i.hidden FROM ckb_threads t "
        "LEFT JOIN ckb_items i ON i.thread_id = t.id "
        "WHERE t.id = ? AND t.user_id = ? AND t.workflow = ? ORDER BY i.seq DESC LIMIT ?"
    ),
    "history": (
        "SELECT i.id, i.data, i.hidden FROM ckb_threads t LEFT JOIN ckb_items i ON i.thread_id = t.id "
        "WHERE t.id = ? AND t.user_id = ? AND t.workflow = ? ORDER BY i.seq DESC LIMIT ?"
    ),
    "page_desc": (
        "SELECT i.data FROM ckb_threads t LEFT JOIN ckb_items i "
        "ON i.thread_id = t.id AND NOT i.hidden "
        "WHERE t.id = ? AND t.user_id = ? AND t.workflow = ? ORDER BY i.seq DESC LIMIT ?"
    ),
    "page_asc": (
        "SELECT i.data FROM ckb_threads t LEFT JOIN ckb_items i "
        "ON i.thread_id = t.id AND NOT i.hidden "
        "WHERE t.id = ? AND t.user_id = ? AND t.workflow = ? ORDER BY i.seq ASC LIMIT ?"
    ),
}


#: One request's reads, handed on within it (``remember_reads``): the thread's row, read by
#: the isolation check and again by chatkit, and the latest items, read for the model's
#: history and again by chatkit's ``stream_agent_response`` (its last two, visible).
_reads: ContextVar[dict[tuple[str, ...], Any] | None] = ContextVar("ckb_reads", default=None)


def remember_reads() -> None:
    """From here on, in this request's context, hand a thread's reads on to later ones.

    A request reads its thread's row twice (the ownership check before streaming, then
    chatkit) and its latest items twice (the model's history, then ``stream_agent_response``
    looking for an open workflow); the second of each is answered from the first. Any write
    to the thread in the request forgets what was read of it. What another request writes
    meanwhile is seen as a read a moment earlier would have seen it; every write still
    checks ownership in its own statement."""
    _reads.set({})


def _recent_key(thread_id: str, context: Caller | str) -> tuple[str, ...]:
    return ("recent", thread_id, *_scope(context))


def _forget(thread_id: str) -> None:
    reads = _reads.get()
    if reads:
        for key in [k for k in reads if k[1] == thread_id]:
            del reads[key]


def _numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …``."""
    parts = sql.split("?")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


class _SQLiteLanes:
    """Two ``sqlite3`` connections, each on a thread of its own: reads and writes.

    One statement is one hop to the thread and back; the event loop never waits on the
    file. Writes are serialised by the store's write lock before they get here, so the
    writer never waits on SQLite's lock held by this process."""

    def __init__(self, path: str, timeout: float, where: str) -> None:
        self.path = path
        self.timeout = timeout
        self.where = where
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ckb-sqlite-read")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ckb-sqlite-write")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
            self._opened.append(conn)
        return conn

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def _execute_all(self, jobs: list[tuple[str, Sequence[Any]]]) -> list[int | Exception]:
        """Several writes in one transaction: one commit (one fsync) for all of them. If the
        transaction fails, each runs again alone, so one statement's error is its own."""
        conn = self._conn()
        if len(jobs) > 1:
            try:
                conn.execute("BEGIN IMMEDIATE")
                counts: list[int | Exception] = [conn.execute(*job).rowcount for job in jobs]
                conn.execute("COMMIT")
                return counts
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        results: list[int | Exception] = []
        for job in jobs:
            try:
                results.append(conn.execute(*job).rowcount)
            except sqlite3.Error as exc:
                results.append(exc)
        return results

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except sqlite3.OperationalError as exc:
            log.warning("thread store %s unreachable: %s", self.where, type(exc).__name__)
            raise StoreUnavailable(
                f"The thread store {self.where} cannot be reached; try again shortly."
            ) from None

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return await self._run(self._reader, self._fetch, sql, params)

    async def execute_all(self, jobs: list[tuple[str, Sequence[Any]]]) -> list[int | Exception]:
        results = await self._run(self._writer, self._execute_all, jobs)
        for n, result in enumerate(results):
            if isinstance(result, sqlite3.OperationalError):
                log.warning("thread store %s unreachable: %s", self.where, type(result).__name__)
                results[n] = StoreUnavailable(
                    f"The thread store {self.where} cannot be reached; try again shortly."
                )
        return results

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        (result,) = await self.execute_all([(sql, params)])
        if isinstance(result, Exception):
            raise result
        return result

    async def close(self) -> None:
        for executor in (self._reader, self._writer):
            executor.shutdown(wait=True)
        for conn in self._opened:
            conn.close()
        self._opened.clear()


class _PostgresLanes:
    """``asyncpg`` connections of the store's own: up to ten, opened as needed.

    A pool of the simplest kind (idle connections on a stack): each use is one statement
    outside any transaction, so a connection comes back as it went out, with nothing to
    reset, and asyncpg's own pool (a ``RESET ALL`` round trip and about 140 µs of CPU per
    checkout) would buy nothing. A connection that failed or closed is dropped, and the
    next use opens a fresh one: that is how a PostgreSQL restart is survived."""

    SIZE = 10

    def __init__(self, url: str, timeout: float, where: str) -> None:
        parsed = make_url(url).set(drivername="postgresql")
        self.dsn = parsed.render_as_string(hide_password=False)
        self.timeout = timeout
        self.where = where
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(self.SIZE)
        self._sql: dict[str, str] = {}

    def _numbered(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = _numbered(sql)
        return found

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        import asyncpg

        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        except TimeoutError:
            log.warning("thread store %s: no connection free in time", self.where)
            raise StoreUnavailable(
                f"The thread store {self.where} is too busy; try again shortly."
            ) from None
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_closed():
                    break
                conn = None
            if conn is None:
                conn = await asyncpg.connect(self.dsn, timeout=self.timeout, command_timeout=30)
            yield conn
            if not conn.is_closed():
                self._idle.append(conn)
            conn = None
        except (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError,
        ) as exc:
            log.warning("thread store %s unreachable: %s", self.where, type(exc).__name__)
            raise StoreUnavailable(
                f"The thread store {self.where} cannot be reached; try again shortly."
            ) from None
        finally:
            if conn is not None:  # failed or cancelled mid-statement: not reused
                conn.terminate()
            self._slots.release()

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        async with self._acquire() as conn:
            return list(await conn.fetch(self._numbered(sql), *params))

    async def execute(self, sql: str, params: Sequence[Any]) -> int:
        async with self._acquire() as conn:
            status = await conn.execute(self._numbered(sql), *params)
        return int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.timeout)
            conn.terminate()


class SQLStore(Store[Caller | str]):
    """A ChatKit ``Store`` on SQLAlchemy Core; the context is a ``Caller`` (or a user id).

    Call ``start()`` before use (it creates the tables and checks the schema version) and
    ``close()`` at shutdown. Writes run in their own task and are shielded, so a client that
    hangs up mid-save (chatkit's cancel handler saving a partial reply) still gets it saved.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        history_limit: int = 100,
    ) -> None:
        self.url = url
        self.where = describe_url(url)
        self.history_limit = history_limit
        parsed = make_url(url)
        self._dialect = parsed.get_backend_name()
        self._lanes: _SQLiteLanes | _PostgresLanes
        self._forget: weakref.finalize[Any, Any] | None = None
        if self._dialect == "sqlite":
            path = parsed.database
            if path in (None, "", ":memory:"):
                # "In memory": a file in a private temporary directory, removed with the store
                # (and at exit), so that the hot path's own connections see the same database.
                tmp = tempfile.mkdtemp(prefix="chatkit-broker-threads-")
                self._forget = weakref.finalize(self, shutil.rmtree, tmp, True)
                path = str(Path(tmp) / "threads.sqlite3")
                url = parsed.set(database=path).render_as_string(hide_password=False)
            self._lanes = _SQLiteLanes(path, connect_timeout, self.where)
        else:
            self._lanes = _PostgresLanes(url, connect_timeout, self.where)
        self._engine: AsyncEngine = _make_engine(url, self._dialect, connect_timeout)
        self._writes: set[asyncio.Task[Any]] = set()
        self._inserts: dict[tuple[str, tuple[str, ...]], tuple[str, list[Any]]] = {}
        self._pending: list[tuple[str, Sequence[Any], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # SQLite has one writer at a time: queue this process's writes here, in asyncio, rather
        # than in SQLite, where a transaction that read first and then writes fails at once
        # (SQLITE_BUSY, the busy timeout does not apply) and a queue of 300 outlasts the timeout.
        self._write_lock = asyncio.Lock() if self._dialect == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self._dialect

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Create missing tables and record (or check) the schema version.

        Raises ``SchemaTooNew`` for a database from a newer broker and ``StoreUnavailable``
        when the database cannot be reached.
        """
        async with self._connect() as conn:
            if self._dialect == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_INIT_LOCK)))
            await conn.run_sync(metadata.create_all)
            row = (
                await conn.execute(sa.select(schema_table.c.version).where(schema_table.c.id == 1))
            ).first()
            if row is None:
                await conn.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
                return
            version = int(row.version)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(version, SCHEMA_VERSION, self.where)
            while version < SCHEMA_VERSION:
                await _MIGRATIONS[version](conn)
                version += 1
            await conn.execute(
                schema_table.update().where(schema_table.c.id == 1).values(version=version)
            )

    async def close(self) -> None:
        """Let shielded writes finish, then close the pool."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._lanes.close()
        await self._engine.dispose()
        if self._forget is not None:
            self._forget()

    async def ping(self) -> str | None:
        """A readiness check: None when the database answers, else why not."""
        try:
            async with self._connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except StoreUnavailable as exc:
            return exc.message
        return None

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; a database that is down becomes ``StoreUnavailable`` (503)."""
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("thread store %s unreachable: %s", self.where, type(exc).__name__)
            raise StoreUnavailable(
                f"The thread store {self.where} cannot be reached; try again shortly."
            ) from None
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(
                    f"The thread store {self.where} dropped the connection; try again shortly."
                ) from None
            raise

    def transaction(self) -> Any:
        """One transaction for the back-end tables (service keys, runs, webhooks)."""
        return self._connect()

    async def write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """One shielded write transaction, queued as the store's own writes are."""
        return await self._write(work)

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run one write transaction in its own task, shielded from the caller's cancellation."""

        async def run() -> _T:
            async with self._connect() as conn:
                return await work(conn)

        return await self._shielded(run)

    async def _execute(self, name: str, *params: Any) -> int:
        """One of the hot path's write statements (``SQL``), shielded and queued as every
        write is; the number of rows it changed."""
        return await self._statement(SQL[name], params)

    async def _statement(self, sql: str, params: Sequence[Any]) -> int:
        """One write statement, shielded from the caller's cancellation.

        SQLite: group commit. Statements that arrive while a commit is under way wait, then
        go together in one transaction (one fsync for all): a caller is answered only once
        the transaction holding its statement committed, so nothing is acknowledged that a
        crash could lose, and 30 users' writes no longer queue one fsync each."""
        if self._write_lock is None:  # PostgreSQL commits concurrently on its own
            return await self._shielded(lambda: self._lanes.execute(sql, params))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_take_error)
        self._pending.append((sql, params, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
            self._writes.add(self._flusher)
            self._flusher.add_done_callback(self._settled)
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        """Write what is pending, one transaction at a time, until nothing is."""
        lanes: Any = self._lanes
        lock = self._write_lock or contextlib.nullcontext()
        batch: list[tuple[str, Sequence[Any], asyncio.Future[int]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with lock:
                        results = await lanes.execute_all([(j[0], j[1]) for j in batch])
                except Exception as exc:  # StoreUnavailable: the whole batch
                    results = [exc] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None
            for _, _, future in [*batch, *self._pending]:
                if not future.done():  # cut off (the loop closing): not written
                    future.set_exception(StoreUnavailable("The thread store is shutting down."))

    async def insert(self, table: sa.Table, row: dict[str, Any]) -> None:
        """One row into ``table``, on the hot path's driver (a usage row per model call):
        values converted as SQLAlchemy would (SQLite's dates as its text, booleans as 0/1)."""
        key = (table.name, tuple(row))
        found = self._inserts.get(key)
        if found is None:
            dialect = self._engine.dialect
            columns = [table.c[name] for name in row]
            sql = (
                f"INSERT INTO {table.name} ({', '.join(c.name for c in columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})"
            )
            processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]
            found = self._inserts[key] = (sql, processors)
        sql, processors = found
        params = [
            value if process is None else process(value)
            for value, process in zip(row.values(), processors, strict=True)
        ]
        await self._statement(sql, params)

    async def _fetch(self, name: str, *params: Any) -> list[Any]:
        """One of the hot path's read statements (``SQL``): its rows."""
        return await self._lanes.fetch(SQL[name], params)

    async def _shielded(self, write: Callable[[], Awaitable[_T]]) -> _T:
        """Run a write in its own task, queued behind this process's other writes (SQLite)
        and shielded from the caller's cancellation."""

        async def run() -> _T:
            async with self._write_lock or contextlib.nullcontext():
                return await write()

        task = asyncio.ensure_future(run())
        self._writes.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished write, and take its error: when the caller was cancelled (a
        stream that ended) nobody awaits it, and asyncio would log the store's own
        ``StoreUnavailable`` again as a traceback; the store logged the outage already."""
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()

    # --- ids ----------------------------------------------------------------------------

    def generate_thread_id(self, context: Caller | str) -> str:
        return new_id("thr")

    def generate_item_id(
        self, item_type: StoreItemType, thread: ThreadMetadata, context: Caller | str
    ) -> str:
        return new_id(_PREFIXES.get(item_type, "itm"))

    # --- threads ------------------------------------------------------------------------

    def _owned(self, thread_id: str, context: Caller | str) -> sa.ColumnElement[bool]:
        user, workflow = _scope(context)
        return sa.and_(
            threads.c.id == thread_id, threads.c.user_id == user, threads.c.workflow == workflow
        )

    async def _check_thread(self, conn: AsyncConnection, thread_id: str, context: Any) -> None:
        if _unstorable(thread_id):
            raise NotFoundError(f"Thread {thread_id} not found")
        found = await conn.scalar(sa.select(threads.c.seq).where(self._owned(thread_id, context)))
        if found is None:
            raise NotFoundError(f"Thread {thread_id} not found")

    async def load_thread(self, thread_id: str, context: Caller | str) -> ThreadMetadata:
        if _unstorable(thread_id):
            raise NotFoundError(f"Thread {thread_id} not found")
        reads = _reads.get()
        key = ("thread", thread_id, *_scope(context))
        data = reads.get(key) if reads is not None else None
        if data is None:
            rows = await self._fetch("load_thread", thread_id, *_scope(context))
            if not rows:
                raise NotFoundError(f"Thread {thread_id} not found")
            data = rows[0][0]
            if reads is not None:
                reads[key] = data
        return ThreadMetadata.model_validate_json(data)  # a fresh object for every caller

    async def load_thread_for_turn(self, thread_id: str, context: Caller | str) -> ThreadMetadata:
        """``load_thread`` for a request about to run a turn: the thread's latest items come
        in the same statement, for the model's history later in the request
        (``remember_reads``; without it, this is ``load_thread``)."""
        reads = _reads.get()
        if reads is None or _unstorable(thread_id):
            return await self.load_thread(thread_id, context)
        user, workflow = _scope(context)
        rows = await self._fetch("thread_recent", thread_id, user, workflow, self.history_limit)
        if not rows:
            raise NotFoundError(f"Thread {thread_id} not found")
        reads[("thread", thread_id, user, workflow)] = rows[0][0]
        recent = [(item, data, hidden) for _, item, data, hidden in rows if item is not None]
        reads[_recent_key(thread_id, context)] = (recent, len(rows) < self.history_limit)
        return ThreadMetadata.model_validate_json(rows[0][0])

    async def save_thread(self, thread: ThreadMetadata, context: Caller | str) -> None:
        user, workflow = _scope(context)
        # Metadata only, even when handed a full Thread with its items.
        data = ThreadMetadata.model_validate(thread.model_dump(exclude={"items"})).model_dump_json()
        _forget(thread.id)
        # Only the owner may overwrite; someone else's id matches no row and is refused.
        if not await self._execute("save_thread", thread.id, user, workflow, data):
            raise NotFoundError(f"Thread {thread.id} not found")

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: Caller | str
    ) -> Page[ThreadMetadata]:
        user, workflow = _scope(context)
        where = [threads.c.user_id == user, threads.c.workflow == workflow]
        async with self._connect() as conn:
            rows = await self._page(conn, threads, where, after, limit, order)
        if rows is None:
            return Page(data=[], has_more=False, after=None)
        data, has_more = rows
        return _make_page([ThreadMetadata.model_validate_json(r.data) for r in data], has_more)

    async def thread_workflow(self, thread_id: str, user: str) -> str | None:
        """Which workflow a thread of ``user`` belongs to (None if it is not theirs).

        For routes that name a thread but no workflow, so they can pick the right engine.
        """
        if _unstorable(thread_id):
            return None
        rows = await self._fetch("thread_workflow", thread_id, user)
        return rows[0][0] if rows else None

    async def delete_thread(self, thread_id: str, context: Caller | str) -> None:
        _forget(thread_id)

        async def work(conn: AsyncConnection) -> None:
            await self._check_thread(conn, thread_id, context)
            await conn.execute(items.delete().where(items.c.thread_id == thread_id))
            await conn.execute(threads.delete().where(self._owned(thread_id, context)))

        await self._write(work)

    # --- items --------------------------------------------------------------------------

    async def load_thread_items(
        self,
        thread_id: str,
        after: str | None,
        limit: int,
        order: str,
        context: Caller | str,
    ) -> Page[ThreadItem]:
        if after is None:  # the common case, one statement: a first page
            if _unstorable(thread_id):
                raise NotFoundError(f"Thread {thread_id} not found")
            limit = max(1, min(int(limit), MAX_PAGE_SIZE))
            if order == "desc" and (page := self._recent(thread_id, context, limit)) is not None:
                return page
            query = "page_desc" if order == "desc" else "page_asc"
            rows = await self._fetch(query, thread_id, *_scope(context), limit + 1)
            if not rows:
                raise NotFoundError(f"Thread {thread_id} not found")
            found = [_ITEM.validate_json(data) for (data,) in rows if data is not None]
            return _make_page(found[:limit], len(found) > limit)
        where = [items.c.thread_id == thread_id, items.c.hidden.is_(False)]
        async with self._connect() as conn:
            await self._check_thread(conn, thread_id, context)
            rows = await self._page(conn, items, where, after, limit, order)
        if rows is None:
            return Page(data=[], has_more=False, after=None)
        data, has_more = rows
        return _make_page([_ITEM.validate_json(r.data) for r in data], has_more)

    async def load_history(
        self, thread_id: str, context: Caller | str, limit: int | None = None
    ) -> list[ThreadItem]:
        """The latest ``limit`` items oldest first, hidden context included, for the model.

        ``load_thread_items`` never returns hidden items (they must not reach the browser),
        but the model should still see them, e.g. chatkit's "the user cancelled" note.
        """
        limit = limit or self.history_limit
        if _unstorable(thread_id):
            raise NotFoundError(f"Thread {thread_id} not found")
        reads = _reads.get()
        found = reads.get(_recent_key(thread_id, context)) if reads else None
        if found is not None and (found[1] or len(found[0]) >= limit):
            rows = found[0][:limit]
        else:
            rows = await self._fetch("history", thread_id, *_scope(context), limit)
            if not rows:
                raise NotFoundError(f"Thread {thread_id} not found")
            rows = [row for row in rows if row[0] is not None]
            if reads is not None:  # newest first, and whether that is the whole thread
                reads[_recent_key(thread_id, context)] = (rows, len(rows) < limit)
        return [_ITEM.validate_json(data) for _, data, _ in reversed(rows)]

    def _recent(self, thread_id: str, context: Caller | str, limit: int) -> Page[ThreadItem] | None:
        """The first page newest first from this request's history read, if it holds it."""
        reads = _reads.get()
        found = reads.get(_recent_key(thread_id, context)) if reads else None
        if found is None:
            return None
        rows, whole = found
        visible = [data for _, data, hidden in rows if not hidden]
        if len(visible) <= limit and not whole:
            return None  # hidden items took places: the read may not reach far enough
        found = [_ITEM.validate_json(data) for data in visible[: limit + 1]]
        return _make_page(found[:limit], len(found) > limit)

    async def add_thread_item(
        self, thread_id: str, item: ThreadItem, context: Caller | str
    ) -> None:
        # chatkit can add the same id twice (a workflow still open at the end of a run), so
        # adding is an upsert too; a re-added item keeps its place in the order.
        await self.save_item(thread_id, item, context)

    async def save_item(self, thread_id: str, item: ThreadItem, context: Caller | str) -> None:
        if _unstorable(thread_id):
            raise NotFoundError(f"Thread {thread_id} not found")
        data = _ITEM.dump_json(item).decode()
        hidden = item.type in HIDDEN_TYPES
        reads = _reads.get()
        # this request's read of the latest items, taken out while the write runs (a write
        # that fails or is cut off leaves none behind) and put back with the item in place
        recent = reads.pop(_recent_key(thread_id, context), None) if reads else None
        # one statement: written only into the caller's own thread
        changed = await self._execute(
            "save_item", thread_id, item.id, item.type, hidden, data, thread_id, *_scope(context)
        )
        if not changed:
            raise NotFoundError(f"Thread {thread_id} not found")
        if recent is not None and reads is not None:
            rows, whole = recent
            at = next((n for n, row in enumerate(rows) if row[0] == item.id), None)
            if at is None:  # a new item is the newest; a re-saved one keeps its place
                rows.insert(0, (item.id, data, hidden))
            else:
                rows[at] = (item.id, data, hidden)
            reads[_recent_key(thread_id, context)] = (rows, whole)

    async def load_item(self, thread_id: str, item_id: str, context: Caller | str) -> ThreadItem:
        if _unstorable(thread_id):
            raise NotFoundError(f"Thread {thread_id} not found")
        wanted = "" if _unstorable(item_id) else item_id  # "" is no item's id
        owned, data = (
            await self._fetch("load_item", thread_id, *_scope(context), thread_id, wanted)
        )[0]
        if not owned:
            raise NotFoundError(f"Thread {thread_id} not found")
        if data is None:
            raise NotFoundError(f"Item {item_id} not found in thread {thread_id}")
        return _ITEM.validate_json(data)

    async def delete_thread_item(self, thread_id: str, item_id: str, context: Caller | str) -> None:
        _forget(thread_id)

        async def work(conn: AsyncConnection) -> None:
            await self._check_thread(conn, thread_id, context)
            if not _unstorable(item_id):
                await conn.execute(
                    items.delete().where(items.c.thread_id == thread_id, items.c.id == item_id)
                )

        await self._write(work)

    # --- attachments ----------------------------------------------------------------------

    async def save_attachment(self, attachment: Attachment, context: Caller | str) -> None:
        user, _ = _scope(context)
        insert = self._insert(attachments).values(
            id=attachment.id, user_id=user, data=attachment.model_dump_json()
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[attachments.c.id],
            set_={"data": insert.excluded.data},
            where=attachments.c.user_id == user,
        )

        async def work(conn: AsyncConnection) -> None:
            if (await conn.execute(upsert)).rowcount == 0:
                raise NotFoundError(f"Attachment {attachment.id} not found")

        await self._write(work)

    async def load_attachment(self, attachment_id: str, context: Caller | str) -> Attachment:
        user, _ = _scope(context)
        if _unstorable(attachment_id):
            raise NotFoundError(f"Attachment {attachment_id} not found")
        async with self._connect() as conn:
            data = await conn.scalar(
                sa.select(attachments.c.data).where(
                    attachments.c.id == attachment_id, attachments.c.user_id == user
                )
            )
        if data is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return _ATTACHMENT.validate_json(data)

    async def delete_attachment(self, attachment_id: str, context: Caller | str) -> None:
        user, _ = _scope(context)
        if _unstorable(attachment_id):
            return

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                attachments.delete().where(
                    attachments.c.id == attachment_id, attachments.c.user_id == user
                )
            )

        await self._write(work)

    # --- helpers --------------------------------------------------------------------------

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql if self._dialect == "postgresql" else sqlite).insert(table)

    async def _page(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        where: Sequence[sa.ColumnElement[bool]],
        after: str | None,
        limit: int,
        order: str,
    ) -> tuple[Sequence[sa.Row[Any]], bool] | None:
        """One page of rows by insertion order; None when the ``after`` cursor is unknown.

        An unknown cursor (a deleted item, another user's id) gives an empty page, never a
        restart from the top that would repeat records.
        """
        descending = order == "desc"
        conditions = list(where)
        if after is not None:
            if _unstorable(after):
                return None
            cursor = await conn.scalar(sa.select(table.c.seq).where(*where, table.c.id == after))
            if cursor is None:
                return None
            conditions.append(table.c.seq < cursor if descending else table.c.seq > cursor)
        limit = max(1, min(int(limit), MAX_PAGE_SIZE))
        rows = (
            await conn.execute(
                sa.select(table.c.data)
                .where(*conditions)
                .order_by(table.c.seq.desc() if descending else table.c.seq.asc())
                .limit(limit + 1)
            )
        ).all()
        return rows[:limit], len(rows) > limit


def _take_error(future: asyncio.Future[Any]) -> None:
    """A write's error taken: its caller may have been cancelled and never look."""
    if not future.cancelled():
        future.exception()


def _make_page(data: list[Any], has_more: bool) -> Page[Any]:
    return Page(data=data, has_more=has_more, after=data[-1].id if data and has_more else None)


def _make_engine(url: str, dialect: str, connect_timeout: float) -> AsyncEngine:
    if dialect == "sqlite":
        memory = make_url(url).database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"connect_args": {"timeout": connect_timeout}}
        if memory:
            # One shared connection, or every checkout would see a fresh empty database.
            kwargs.update(poolclass=StaticPool)
        engine = create_async_engine(url, **kwargs)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            if not memory:
                # WAL lets a reader and a writer (two processes, too) work at once.
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(connect_timeout * 1000)}")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,  # a restarted PostgreSQL leaves dead pooled connections behind
        pool_timeout=connect_timeout,
        connect_args={"timeout": connect_timeout, "command_timeout": 30},
    )


async def check_database(url: str, *, connect_timeout: float = 5.0) -> str | None:
    """What keeps ``serve`` from starting: the database unreachable or of a newer schema.

    Run once before the server starts, so an operator gets one clear line and exit 2 instead
    of a broker that answers 503 to every chat. (Once running, an outage is a 503 per request
    and the broker recovers by itself when the database is back.)
    """
    store = SQLStore(url, connect_timeout=connect_timeout)
    try:
        await store.start()
    except StoreUnavailable as exc:
        return exc.message
    except SchemaTooNew as exc:
        return str(exc)
    finally:
        await store.close()
    return None
