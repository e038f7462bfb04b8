"""Fixtures for the agent backend: the store on a real SQLite file and on the machine's real
PostgreSQL (a throwaway database per test session, dropped afterwards)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from broker.backends.agent.store import SQLStore, attachments, items, resolve_database_url, threads

from ...support import need
from ...support.fake_responses import FakeResponses

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_reachable() -> bool:
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception:  # any failure (refused, auth, timeout) means "not here"
        return False
    return True


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database for this test session (``postgresql://…``)."""
    need(pg_reachable(), f"no PostgreSQL at {PG_ADMIN_URL}")
    name = f"ckb_test_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``BROKER_DATABASE_URL`` as a person writes it: a SQLite file, or the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'threads.sqlite3'}"
    url = request.getfixturevalue("pg_url")
    asyncio.run(_empty(url))  # one database per session: each test starts with no threads
    return url


async def _empty(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        await conn.execute(
            "DO $$ BEGIN IF to_regclass('ckb_items') IS NOT NULL THEN "
            "TRUNCATE ckb_threads, ckb_items, ckb_attachments; END IF; "
            "IF to_regclass('ckb_files') IS NOT NULL THEN TRUNCATE ckb_files; END IF; "
            # background runs and their queue: a run left queued by one test must not be
            # run (against another test's scripted model) by the next test's broker
            "IF to_regclass('ckb_runs') IS NOT NULL THEN "
            "TRUNCATE ckb_runs, ckb_run_attachments, ckb_webhook_deliveries; END IF; "
            "IF to_regclass('procrastinate_jobs') IS NOT NULL THEN "
            "TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE; END IF; END $$"
        )
    finally:
        await conn.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    """A started store on an empty database."""
    s = SQLStore(resolve_database_url(db_url))
    await s.start()
    async with s._engine.begin() as conn:
        await conn.execute(items.delete())
        await conn.execute(attachments.delete())
        await conn.execute(threads.delete())
    yield s
    await s.close()


@pytest.fixture(scope="session")
def empty_database() -> Callable[[str], None]:
    """``empty_database(url)`` truncates the store's tables in the PostgreSQL at ``url``: for
    module-scoped fixtures, which share the session's database but cannot use ``db_url``
    (tests import nothing from a conftest)."""
    return lambda url: asyncio.run(_empty(url))


@pytest.fixture
async def openai_client(responses: FakeResponses) -> AsyncIterator[AsyncOpenAI]:
    """What the broker builds from its settings, pointed at the fake (no retries: fast failures).

    Closed in the test's own loop: left to the collector, its connection pool's ``aclose``
    ran after that loop had closed and logged a stray traceback into a later test."""
    client = AsyncOpenAI(
        api_key="sk-test-key-never-shown", base_url=responses.base_url, max_retries=0
    )
    yield client
    await client.close()
