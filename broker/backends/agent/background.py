"""Background runs: ``POST /api/workflows/<name>/runs`` with ``"background": true``.

A run is a row in the thread database, so any instance answers ``GET /api/runs/<id>`` for
any run. It executes in-process on the instance that accepted it (the durable queue for
several instances is not built yet): that instance renews a lease on its runs every
``BROKER_RUN_LEASE``/3 s, and every instance marks a run whose lease ran out (its instance
died or was killed) ``failed`` with ``worker_lost`` — so no run stays ``in_progress``.
Cancelling writes ``cancelled``; the instance running it sees that at its next renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from chatkit.types import ThreadMetadata

from ...errors import BrokerError, NotFound, RunTimeout
from .runs import RunAnswer
from .store import Caller, NotFoundError, SQLStore, background_runs

log = logging.getLogger("broker.agent.background")

ACTIVE = ("queued", "in_progress")
CONCURRENCY = 16  # runs one instance executes at once; the rest wait, queued
BACKGROUND_TIMEOUT = 30 * 60.0  # a background run's own limit (a synchronous one: run_timeout)
WORKER_LOST = {
    "code": "worker_lost",
    "message": "The broker instance running this run stopped before it finished; start it again.",
}

Runner = Callable[[str, Caller, str, str, float], Awaitable[RunAnswer]]
Finished = Callable[[Any, dict[str, Any]], Awaitable[None]]


def record_json(row: Any) -> dict[str, Any]:
    """What ``GET /api/runs/<id>`` answers (and webhooks carry as ``data``)."""
    out: dict[str, Any] = {
        "id": row.id,
        "object": "run",
        "status": row.status,
        "workflow": row.workflow,
        "thread_id": row.thread_id,
        "created_at": int(row.created_at),
        "attempts": row.attempts,
    }
    if row.key_name is not None:
        out["user"] = row.user_id
    if row.result:
        out |= json.loads(row.result)
    return out


class BackgroundRuns:
    """The run records and this instance's share of executing them."""

    def __init__(self, store: SQLStore, runner: Runner, *, lease: float, finished: Finished):
        self.store = store
        self.table = background_runs
        self.runner = runner
        self.lease = lease
        self.finished = finished
        self.instance = "ins_" + secrets.token_hex(8)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._keeper: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep())

    async def stop(self) -> None:
        """Stop renewing and cancel this instance's runs: they fail as ``worker_lost``
        once their lease runs out, on whichever instance looks first."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- creating and reading -------------------------------------------------------------

    async def create(
        self,
        *,
        workflow: str,
        user: str,
        key_name: str | None,
        text: str,
        thread_id: str | None,
        idempotency_key: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """The new run (and True), or the one this caller made with ``idempotency_key``."""
        t = self.table
        caller_ref = f"key:{key_name}" if key_name is not None else f"user:{user}"
        if idempotency_key is not None:
            found = await self._by_idempotency(caller_ref, idempotency_key)
            if found is not None:
                return record_json(found), False
        caller = Caller(user, workflow)
        if thread_id is None:
            thread_id = self.store.generate_thread_id(caller)
            await self.store.save_thread(
                ThreadMetadata(id=thread_id, created_at=datetime.now()), caller
            )
        else:
            try:
                await self.store.load_thread(thread_id, caller)
            except NotFoundError:
                raise NotFound(f"Thread {thread_id[:80]} not found.") from None
        now = time.time()
        run_id = "run_" + secrets.token_hex(16)
        values = {
            "id": run_id,
            "workflow": workflow,
            "user_id": user,
            "caller": caller_ref,
            "key_name": key_name,
            "status": "queued",
            "thread_id": thread_id,
            "input": text,
            "idempotency_key": idempotency_key,
            "owner": self.instance,
            "lease_until": now + self.lease,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }

        async def work(conn: Any) -> None:
            await conn.execute(t.insert().values(**values))

        try:
            await self.store.write(work)
        except sa.exc.IntegrityError:  # the same Idempotency-Key, sent twice at once
            found = await self._by_idempotency(caller_ref, idempotency_key or "")
            if found is None:
                raise
            return record_json(found), False
        self._tasks[run_id] = asyncio.create_task(self._execute(run_id))
        return record_json(await self._row(run_id)), True

    async def _by_idempotency(self, caller_ref: str, key: str) -> Any:
        t = self.table
        async with self.store.transaction() as conn:
            return (
                await conn.execute(
                    sa.select(t).where(t.c.caller == caller_ref, t.c.idempotency_key == key)
                )
            ).first()

    async def _row(self, run_id: str) -> Any:
        async with self.store.transaction() as conn:
            return (
                await conn.execute(sa.select(self.table).where(self.table.c.id == run_id))
            ).first()

    async def get(self, run_id: str, may_see: Callable[[Any], bool]) -> dict[str, Any]:
        """The run, if ``may_see`` its row (else 404, as for no run); a run whose lease ran
        out is marked failed first, so a reader never sees a dead run ``in_progress``."""
        if "\x00" in run_id:
            raise NotFound("Run not found.")
        row = await self._row(run_id)
        if row is None or not may_see(row):
            raise NotFound(f"Run {run_id[:80]} not found.")
        if row.status in ACTIVE and row.lease_until is not None and row.lease_until < time.time():
            await self._expire(run_id)
            row = await self._row(run_id)
        return record_json(row)

    async def cancel(self, run_id: str, may_see: Callable[[Any], bool]) -> dict[str, Any]:
        """Cancel a queued or running run; a finished one is answered as it is."""
        current = await self.get(run_id, may_see)
        if current["status"] in ACTIVE:
            error = {"code": "cancelled", "message": "The run was cancelled."}
            await self._end(run_id, "cancelled", {"error": error}, owner=None)
            task = self._tasks.get(run_id)
            if task is not None:
                task.cancel()
        row = await self._row(run_id)
        return record_json(row)

    # --- executing ------------------------------------------------------------------------

    async def _execute(self, run_id: str) -> None:
        try:
            async with self._slots:
                row = await self._claim(run_id)
                if row is None:
                    return
                status, result = await self._run(row)
                await self._end(run_id, status, result, owner=self.instance)
        except asyncio.CancelledError:
            pass  # cancelled (already recorded) or shutting down (the lease will run out)
        except Exception:
            log.exception("background run %s: recording its end failed", run_id)
        finally:
            self._tasks.pop(run_id, None)

    async def _claim(self, run_id: str) -> Any:
        t = self.table

        async def work(conn: Any) -> Any:
            result = await conn.execute(
                t.update()
                .where(t.c.id == run_id, t.c.status == "queued", t.c.owner == self.instance)
                .values(
                    status="in_progress",
                    attempts=t.c.attempts + 1,
                    lease_until=time.time() + self.lease,
                    updated_at=time.time(),
                )
            )
            if result.rowcount != 1:
                return None
            return (await conn.execute(sa.select(t).where(t.c.id == run_id))).first()

        return await self.store.write(work)

    async def _run(self, row: Any) -> tuple[str, dict[str, Any]]:
        caller = Caller(row.user_id, row.workflow)
        try:
            answer = await self.runner(
                row.workflow, caller, row.input, row.thread_id, BACKGROUND_TIMEOUT
            )
        except RunTimeout as exc:
            return "incomplete", {"error": {"code": exc.code, "message": exc.message}}
        except BrokerError as exc:
            return "failed", {"error": {"code": exc.code, "message": exc.message}}
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background run %s failed", row.id)
            return "failed", {
                "error": {"code": "internal_error", "message": "The run failed in the broker."}
            }
        result = answer.as_json()
        result.pop("thread_id", None)
        return "completed", result

    async def _end(
        self, run_id: str, status: str, result: dict[str, Any], *, owner: str | None
    ) -> bool:
        """Record a run's end (only if still active, and still ours when ``owner``), and its
        webhook in the same transaction; whether this call ended it."""
        t = self.table

        async def work(conn: Any) -> bool:
            where = [t.c.id == run_id, t.c.status.in_(ACTIVE)]
            if owner is not None:
                where.append(t.c.owner == owner)
            updated = await conn.execute(
                t.update()
                .where(*where)
                .values(
                    status=status,
                    result=json.dumps(result, ensure_ascii=False),
                    lease_until=None,
                    updated_at=time.time(),
                )
            )
            if updated.rowcount != 1:
                return False
            row = (await conn.execute(sa.select(t).where(t.c.id == run_id))).first()
            await self.finished(conn, record_json(row))
            return True

        ended = await self.store.write(work)
        if ended:
            log.info(
                "background run %s",
                status,
                extra={"run": run_id, "outcome": status},
            )
        return ended

    async def _expire(self, run_id: str) -> None:
        t = self.table

        async def work(conn: Any) -> bool:
            updated = await conn.execute(
                t.update()
                .where(t.c.id == run_id, t.c.status.in_(ACTIVE), t.c.lease_until < time.time())
                .values(
                    status="failed",
                    result=json.dumps({"error": WORKER_LOST}),
                    lease_until=None,
                    updated_at=time.time(),
                )
            )
            if updated.rowcount != 1:
                return False
            row = (await conn.execute(sa.select(t).where(t.c.id == run_id))).first()
            await self.finished(conn, record_json(row))
            return True

        if await self.store.write(work):
            log.warning("background run %s: its instance stopped; marked failed", run_id)

    async def _keep(self) -> None:
        """Renew this instance's leases, notice runs cancelled elsewhere, expire dead ones."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self._keep_once()
            except Exception as exc:  # the database down: the next round tries again
                log.warning("background runs: lease round failed: %s", type(exc).__name__)

    async def _keep_once(self) -> None:
        t = self.table
        now = time.time()

        async def renew(conn: Any) -> None:
            await conn.execute(
                t.update()
                .where(t.c.owner == self.instance, t.c.status.in_(ACTIVE))
                .values(lease_until=now + self.lease)
            )

        await self.store.write(renew)
        mine = list(self._tasks)
        async with self.store.transaction() as conn:
            ended = (
                (
                    await conn.execute(
                        sa.select(t.c.id).where(t.c.id.in_(mine), t.c.status.not_in(ACTIVE))
                    )
                )
                .scalars()
                .all()
                if mine
                else []
            )
            expired = (
                (
                    await conn.execute(
                        sa.select(t.c.id)
                        .where(t.c.status.in_(ACTIVE), t.c.lease_until < now)
                        .limit(100)
                    )
                )
                .scalars()
                .all()
            )
        for run_id in ended:
            task = self._tasks.get(run_id)
            if task is not None:
                task.cancel()
        for run_id in expired:
            await self._expire(run_id)
