"""The machine's real PostgreSQL for tests: reach it, run admin statements, empty the agent
store's tables between tests. Plain functions so that fixtures (tests/backends/agent/conftest.py)
and tests alike import them from here, never from a conftest."""

from __future__ import annotations

import asyncio
import os

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


async def pg_admin(sql: str) -> None:
    """Run one statement on the admin database (CREATE/DROP DATABASE)."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_reachable() -> bool:
    try:
        asyncio.run(pg_admin("SELECT 1"))
    except Exception:  # any failure (refused, auth, timeout) means "not here"
        return False
    return True


async def empty_store(url: str) -> None:
    """Truncate the agent store's tables in the database at ``url``, if they exist yet."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        await conn.execute(
            "DO $$ BEGIN IF to_regclass('ckb_items') IS NOT NULL THEN "
            "TRUNCATE ckb_threads, ckb_items, ckb_attachments; END IF; END $$"
        )
    finally:
        await conn.close()
