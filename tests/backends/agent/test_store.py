"""The thread store's contract, on a real SQLite file and on the real PostgreSQL alike."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    FileAttachment,
    HiddenContextItem,
    InferenceOptions,
    Page,
    SDKHiddenContextItem,
    Thread,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)

from broker.backends.agent.store import (
    MEMORY_URL,
    SCHEMA_VERSION,
    Caller,
    DatabaseURLError,
    NotFoundError,
    SchemaTooNew,
    SQLStore,
    resolve_database_url,
    schema_table,
)
from broker.errors import StoreUnavailable

from ...support import free_port
from .tcp_proxy import TcpProxy, via

ALICE = Caller("alice", "support")
BOB = Caller("bob", "support")
ALICE_SALES = Caller("alice", "sales")


def thread(store: SQLStore, *, title: str | None = None, at: datetime | None = None):
    return ThreadMetadata(
        id=store.generate_thread_id(ALICE), title=title, created_at=at or datetime.now()
    )


def user_msg(store: SQLStore, thread_id: str, text: str, at: datetime | None = None):
    return UserMessageItem(
        id=store.generate_item_id("message", thread(store), ALICE),
        thread_id=thread_id,
        created_at=at or datetime.now(),
        content=[UserMessageTextContent(text=text)],
        attachments=[],
        inference_options=InferenceOptions(),
    )


def reply(thread_id: str, item_id: str, text: str) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id,
        thread_id=thread_id,
        created_at=datetime.now(),
        content=[AssistantMessageContent(text=text)],
    )


def texts(page: Page) -> list[str]:
    out = []
    for item in page.data:
        out.append(item.content[0].text)
    return out


async def new_thread(store: SQLStore, context=ALICE, **kw) -> ThreadMetadata:
    t = thread(store, **kw)
    await store.save_thread(t, context)
    return t


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mock", "expected"),
    [
        (None, True, MEMORY_URL),
        ("", False, "sqlite+aiosqlite:///./chatkit-broker.sqlite3"),
        ("memory", False, MEMORY_URL),
        ("sqlite:///:memory:", False, MEMORY_URL),
        ("sqlite:///data/t.sqlite3", False, "sqlite+aiosqlite:///data/t.sqlite3"),
        ("sqlite:////abs/t.sqlite3", True, "sqlite+aiosqlite:////abs/t.sqlite3"),
        ("postgresql://u:p@db:5432/app", False, "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgres://u@db/app", False, "postgresql+asyncpg://u@db/app"),
        (
            "postgresql://u@db/app?sslmode=require",
            False,
            "postgresql+asyncpg://u@db/app?ssl=require",
        ),
    ],
)
def test_database_urls_map_to_the_async_drivers(given, mock, expected) -> None:
    assert resolve_database_url(given, mock=mock) == expected


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "sqlite://relative", "just-a-path.db"])
def test_unsupported_database_urls_are_a_configuration_error(bad: str) -> None:
    with pytest.raises(DatabaseURLError, match="BROKER_DATABASE_URL"):
        resolve_database_url(bad)


# --- threads ----------------------------------------------------------------------------


async def test_a_thread_round_trips_and_saving_again_updates_it(store: SQLStore) -> None:
    t = await new_thread(store, title="first")
    t.title = "renamed"
    t.metadata["last_response_id"] = "resp_1"
    await store.save_thread(t, ALICE)
    loaded = await store.load_thread(t.id, ALICE)
    assert loaded == t
    page = await store.load_threads(10, None, "desc", ALICE)
    assert [x.id for x in page.data] == [t.id]


async def test_a_full_thread_is_stored_as_metadata_only(store: SQLStore) -> None:
    t = thread(store)
    full = Thread(**t.model_dump(), items=Page(data=[user_msg(store, t.id, "hi")]))
    await store.save_thread(full, ALICE)
    loaded = await store.load_thread(t.id, ALICE)
    assert type(loaded) is ThreadMetadata
    assert (await store.load_thread_items(t.id, None, 10, "asc", ALICE)).data == []


async def test_threads_are_ordered_by_insertion_not_by_their_timestamps(store: SQLStore) -> None:
    now = datetime.now()
    # Each later thread carries an *earlier* created_at, as naive clocks or a skewed host can.
    made = [await new_thread(store, at=now - timedelta(hours=i)) for i in range(5)]
    asc = await store.load_threads(10, None, "asc", ALICE)
    desc = await store.load_threads(10, None, "desc", ALICE)
    assert [t.id for t in asc.data] == [t.id for t in made]
    assert [t.id for t in desc.data] == [t.id for t in reversed(made)]


async def test_thread_pages_walk_every_thread_once(store: SQLStore) -> None:
    made = [(await new_thread(store)).id for _ in range(7)]
    seen, after = [], None
    while True:
        page = await store.load_threads(3, after, "desc", ALICE)
        seen += [t.id for t in page.data]
        if not page.has_more:
            assert page.after is None
            break
        assert page.after == page.data[-1].id
        after = page.after
    assert seen == made[::-1]


async def test_threads_belong_to_one_user_and_one_workflow(store: SQLStore) -> None:
    t = await new_thread(store, title="alice's")
    for other in (BOB, ALICE_SALES, "alice"):
        with pytest.raises(NotFoundError):
            await store.load_thread(t.id, other)
        assert (await store.load_threads(10, None, "desc", other)).data == []
        with pytest.raises(NotFoundError):
            await store.delete_thread(t.id, other)
        hijack = t.model_copy(update={"title": "hijacked"})
        with pytest.raises(NotFoundError):
            await store.save_thread(hijack, other)
    assert (await store.load_thread(t.id, ALICE)).title == "alice's"


async def test_a_foreign_cursor_gives_an_empty_page(store: SQLStore) -> None:
    mine = await new_thread(store)
    theirs = await new_thread(store, BOB)
    await new_thread(store, BOB)
    page = await store.load_threads(10, mine.id, "desc", BOB)
    assert page.data == [] and not page.has_more
    assert (await store.load_threads(10, theirs.id, "asc", ALICE)).data == []


async def test_deleting_a_thread_deletes_its_items(store: SQLStore) -> None:
    t = await new_thread(store)
    await store.add_thread_item(t.id, user_msg(store, t.id, "hi"), ALICE)
    await store.delete_thread(t.id, ALICE)
    with pytest.raises(NotFoundError):
        await store.load_thread(t.id, ALICE)
    with pytest.raises(NotFoundError):
        await store.load_thread_items(t.id, None, 10, "asc", ALICE)
    # Re-creating the id (impossible in practice) would not resurrect the old items.
    await store.save_thread(t, ALICE)
    assert (await store.load_thread_items(t.id, None, 10, "asc", ALICE)).data == []


# --- items ------------------------------------------------------------------------------


async def test_items_keep_insertion_order_and_adding_twice_is_an_upsert(store: SQLStore) -> None:
    t = await new_thread(store)
    now = datetime.now()
    first = user_msg(store, t.id, "one", at=now)
    await store.add_thread_item(t.id, first, ALICE)
    await store.add_thread_item(t.id, reply(t.id, "msg_x", "partial"), ALICE)
    await store.add_thread_item(t.id, user_msg(store, t.id, "three", at=now - timedelta(1)), ALICE)
    # The same id again (chatkit re-adds an open workflow): replaced in place, not duplicated.
    await store.add_thread_item(t.id, reply(t.id, "msg_x", "two"), ALICE)
    await store.save_item(
        t.id, first.model_copy(update={"content": [UserMessageTextContent(text="ONE")]}), ALICE
    )
    assert texts(await store.load_thread_items(t.id, None, 10, "asc", ALICE)) == [
        "ONE",
        "two",
        "three",
    ]
    assert texts(await store.load_thread_items(t.id, None, 10, "desc", ALICE)) == [
        "three",
        "two",
        "ONE",
    ]
    assert (await store.load_item(t.id, "msg_x", ALICE)).content[0].text == "two"


async def test_item_pages_walk_both_ways_without_repeats(store: SQLStore) -> None:
    t = await new_thread(store)
    for i in range(9):
        await store.add_thread_item(t.id, reply(t.id, f"msg_{i}", str(i)), ALICE)
    for order, expected in (
        ("asc", [str(i) for i in range(9)]),
        ("desc", [str(i) for i in range(8, -1, -1)]),
    ):
        seen, after = [], None
        while True:
            page = await store.load_thread_items(t.id, after, 4, order, ALICE)
            seen += texts(page)
            if not page.has_more:
                break
            after = page.after
        assert seen == expected
    assert (await store.load_thread_items(t.id, "msg_gone", 4, "asc", ALICE)).data == []


async def test_hidden_items_are_stored_but_never_paged(store: SQLStore) -> None:
    t = await new_thread(store)
    await store.add_thread_item(t.id, user_msg(store, t.id, "hi"), ALICE)
    hidden = HiddenContextItem(
        id="hcx_1", thread_id=t.id, created_at=datetime.now(), content="secret note"
    )
    sdk = SDKHiddenContextItem(
        id="shcx_1", thread_id=t.id, created_at=datetime.now(), content="cancelled"
    )
    await store.add_thread_item(t.id, hidden, ALICE)
    await store.add_thread_item(t.id, reply(t.id, "msg_1", "hello"), ALICE)
    await store.add_thread_item(t.id, sdk, ALICE)
    for order in ("asc", "desc"):
        page = await store.load_thread_items(t.id, None, 10, order, ALICE)
        assert {item.type for item in page.data} == {"user_message", "assistant_message"}
    history = await store.load_history(t.id, ALICE)
    assert [i.type for i in history] == [
        "user_message",
        "hidden_context_item",
        "assistant_message",
        "sdk_hidden_context",
    ]
    assert [i.id for i in await store.load_history(t.id, ALICE, limit=2)] == ["msg_1", "shcx_1"]


async def test_items_of_another_users_thread_cannot_be_read_or_written(store: SQLStore) -> None:
    t = await new_thread(store)
    await store.add_thread_item(t.id, reply(t.id, "msg_1", "private"), ALICE)
    for other in (BOB, ALICE_SALES):
        with pytest.raises(NotFoundError):
            await store.load_thread_items(t.id, None, 10, "asc", other)
        with pytest.raises(NotFoundError):
            await store.load_item(t.id, "msg_1", other)
        with pytest.raises(NotFoundError):
            await store.load_history(t.id, other)
        with pytest.raises(NotFoundError):
            await store.add_thread_item(t.id, reply(t.id, "msg_2", "injected"), other)
        with pytest.raises(NotFoundError):
            await store.save_item(t.id, reply(t.id, "msg_1", "overwritten"), other)
        with pytest.raises(NotFoundError):
            await store.delete_thread_item(t.id, "msg_1", other)
    assert texts(await store.load_thread_items(t.id, None, 10, "asc", ALICE)) == ["private"]


async def test_a_missing_item_is_not_found(store: SQLStore) -> None:
    t = await new_thread(store)
    with pytest.raises(NotFoundError, match="msg_nope"):
        await store.load_item(t.id, "msg_nope", ALICE)
    await store.add_thread_item(t.id, reply(t.id, "msg_1", "x"), ALICE)
    await store.delete_thread_item(t.id, "msg_1", ALICE)
    with pytest.raises(NotFoundError):
        await store.load_item(t.id, "msg_1", ALICE)


async def test_a_write_survives_the_cancellation_of_its_caller(store: SQLStore) -> None:
    """chatkit saves the partial reply from inside a cancelled task; the save must land."""
    t = await new_thread(store)
    task = asyncio.ensure_future(
        store.add_thread_item(t.id, reply(t.id, "msg_1", "partial"), ALICE)
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if (await store.load_thread_items(t.id, None, 10, "asc", ALICE)).data:
            break
        await asyncio.sleep(0.01)
    assert texts(await store.load_thread_items(t.id, None, 10, "asc", ALICE)) == ["partial"]


# --- attachments ------------------------------------------------------------------------


async def test_attachments_are_scoped_to_their_owner(store: SQLStore) -> None:
    att = FileAttachment(id="atc_1", name="a.txt", mime_type="text/plain", metadata={"k": "v"})
    await store.save_attachment(att, ALICE)
    await store.save_attachment(att.model_copy(update={"thread_id": "thr_1"}), ALICE)  # upsert
    assert (await store.load_attachment("atc_1", ALICE)).thread_id == "thr_1"
    with pytest.raises(NotFoundError):
        await store.load_attachment("atc_1", BOB)
    with pytest.raises(NotFoundError):
        await store.save_attachment(att.model_copy(update={"name": "evil.exe"}), BOB)
    await store.delete_attachment("atc_1", BOB)  # a no-op for a stranger
    loaded = await store.load_attachment("atc_1", ALICE)
    assert loaded.name == "a.txt" and loaded.metadata == {"k": "v"}
    await store.delete_attachment("atc_1", ALICE)
    with pytest.raises(NotFoundError):
        await store.load_attachment("atc_1", ALICE)


# --- ids, persistence, schema -----------------------------------------------------------


def test_ids_carry_at_least_96_random_bits() -> None:
    store = SQLStore(MEMORY_URL)
    t = thread(store)
    ids = [store.generate_thread_id(ALICE) for _ in range(500)]
    ids += [
        store.generate_item_id(kind, t, ALICE)
        for kind in ("message", "tool_call", "workflow", "sdk_hidden_context")
        for _ in range(100)
    ]
    assert len(set(ids)) == len(ids)
    for value in ids:
        prefix, _, random_part = value.partition("_")
        assert re.fullmatch(r"[0-9a-f]{32}", random_part), value
        assert prefix in {"thr", "msg", "tc", "wf", "shcx"}


async def test_a_second_store_on_the_same_database_sees_the_threads(store: SQLStore) -> None:
    t = await new_thread(store, title="kept")
    await store.add_thread_item(t.id, reply(t.id, "msg_1", "hello"), ALICE)
    other = SQLStore(store.url)
    await other.start()
    try:
        assert (await other.load_thread(t.id, ALICE)).title == "kept"
        assert texts(await other.load_thread_items(t.id, None, 5, "asc", ALICE)) == ["hello"]
    finally:
        await other.close()


async def test_the_schema_version_is_recorded_and_a_newer_one_is_refused(store: SQLStore) -> None:
    async with store._engine.begin() as conn:
        assert await conn.scalar(sa.select(schema_table.c.version)) == SCHEMA_VERSION
        await conn.execute(schema_table.update().values(version=SCHEMA_VERSION + 1))
    newer = SQLStore(store.url)
    try:
        with pytest.raises(
            SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}"
        ) as info:
            await newer.start()
        assert "BROKER_DATABASE_URL" in str(info.value)
    finally:
        await newer.close()
        async with store._engine.begin() as conn:
            await conn.execute(schema_table.update().values(version=SCHEMA_VERSION))


async def test_the_in_memory_store_works_without_a_file() -> None:
    store = SQLStore(resolve_database_url(None, mock=True))
    await store.start()
    t = await new_thread(store)
    await store.add_thread_item(t.id, reply(t.id, "msg_1", "hi"), ALICE)
    assert texts(await store.load_thread_items(t.id, None, 5, "asc", ALICE)) == ["hi"]
    assert await store.ping() is None
    await store.close()


# --- the database is down ---------------------------------------------------------------


async def test_an_unreachable_postgresql_is_store_unavailable() -> None:
    store = SQLStore(
        f"postgresql+asyncpg://postgres:hunter2@127.0.0.1:{free_port()}/x", connect_timeout=1
    )
    with pytest.raises(StoreUnavailable) as info:
        await store.start()
    assert info.value.status == 503 and info.value.code == "store_unavailable"
    assert "PostgreSQL at 127.0.0.1" in info.value.message and "hunter2" not in info.value.message
    assert "cannot be reached" in (await store.ping() or "")
    await store.close()


async def test_an_unopenable_sqlite_file_is_store_unavailable(tmp_path) -> None:
    store = SQLStore(
        resolve_database_url(f"sqlite:///{tmp_path}/missing-dir/t.sqlite3"), connect_timeout=1
    )
    with pytest.raises(StoreUnavailable, match="SQLite"):
        await store.start()
    await store.close()


async def test_postgresql_going_down_and_back_is_503_then_works(pg_url: str) -> None:
    """Through a TCP proxy the test can cut: every call fails with 503 while it is down, and
    the pool recovers (pre-ping) once it is back, without a restart."""
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = resolve_database_url(via(pg_url, proxy.port))
        store = SQLStore(url, connect_timeout=1)
        await store.start()
        t = await new_thread(store)
        await proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.load_thread(t.id, ALICE)
        with pytest.raises(StoreUnavailable):
            await store.add_thread_item(t.id, reply(t.id, "msg_1", "x"), ALICE)
        assert await store.ping() is not None
        await proxy.restore()
        assert (await store.load_thread(t.id, ALICE)).id == t.id
        await store.close()


async def test_a_threads_workflow_is_found_for_its_owner_only(store: SQLStore) -> None:
    t = await new_thread(store, ALICE_SALES)
    assert await store.thread_workflow(t.id, "alice") == "sales"
    assert await store.thread_workflow(t.id, "bob") is None
    assert await store.thread_workflow("thr_unknown", "alice") is None


async def test_hundreds_of_concurrent_writers_on_one_sqlite_file_all_land(tmp_path) -> None:
    """Found by the agent load test (tests/adversarial/test_load_agent.py): under 300 users a SQLite write
    failed "unreachable" (SQLITE_BUSY: a transaction that read before writing is refused at
    once, and a long queue outlasts the busy timeout), so one user's reply ended in an error.
    The store now queues its own writes; every one lands, none waits on SQLite's lock."""
    store = SQLStore(resolve_database_url(f"sqlite:///{tmp_path / 't.db'}"), connect_timeout=0.2)
    await store.start()
    threads = [await new_thread(store) for _ in range(20)]

    async def user(i: int) -> None:
        t = threads[i % len(threads)]
        for n in range(4):
            await store.add_thread_item(t.id, reply(t.id, f"msg_{i}_{n}", "x" * 200), ALICE)
            await store.save_thread(t, ALICE)
            await store.load_thread_items(t.id, None, 5, "desc", ALICE)

    await asyncio.gather(*(user(i) for i in range(200)))
    total = 0
    for t in threads:
        total += len((await store.load_thread_items(t.id, None, 100, "asc", ALICE)).data)
    assert total == 200 * 4
    await store.close()


async def test_sqlite_writes_that_arrive_together_commit_together(tmp_path) -> None:
    """Group commit (docs/performance.md): forty replies saved at once go to the file in a
    transaction or two, not forty commits; each caller still hears back only after the
    commit holding its write, a write into someone else's thread is still refused alone,
    and every other one lands."""
    store = SQLStore(resolve_database_url(f"sqlite:///{tmp_path / 't.db'}"))
    await store.start()
    mine, bobs = await new_thread(store), await new_thread(store, BOB)
    lanes = store._lanes
    batches: list[int] = []
    execute_all = lanes.execute_all

    async def counted(jobs):
        batches.append(len(jobs))
        return await execute_all(jobs)

    lanes.execute_all = counted
    saves = [
        store.add_thread_item(mine.id, reply(mine.id, f"msg_{n}", f"reply {n}"), ALICE)
        for n in range(40)
    ]
    saves.insert(20, store.add_thread_item(bobs.id, reply(bobs.id, "msg_x", "intruder"), ALICE))
    results = await asyncio.gather(*saves, return_exceptions=True)
    assert [type(r).__name__ for r in results].count("NotFoundError") == 1
    assert isinstance(results[20], NotFoundError)
    assert sum(batches) == 41 and len(batches) <= 2
    page = await store.load_thread_items(mine.id, None, 100, "asc", ALICE)
    assert texts(page) == [f"reply {n}" for n in range(40)]
    assert texts(await store.load_thread_items(bobs.id, None, 5, "asc", BOB)) == []
    await store.close()
