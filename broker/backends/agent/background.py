"""Background runs: ``POST /api/workflows/<name>/runs`` with ``"background": true``.

A run is a row in the thread database, so any instance answers ``GET /api/runs/<id>`` for
any run. Where it executes (``BROKER_RUN_QUEUE``, queue.py): with a PostgreSQL thread
database, on a durable queue (procrastinate) whose workers are every broker instance; with
SQLite, in-process on the instance that accepted it. Either way the instance running a run
renews its lease every ``BROKER_RUN_LEASE``/3 s, and every instance marks a run whose lease
ran out (its instance died or was killed) ``failed`` with ``worker_lost`` — so no run stays
``in_progress`` longer than the lease and one renewal round. It is not retried: the first
attempt may have half-answered in the thread, and a second would send the message again;
``attempts`` in the record says how many started. Cancelling writes ``cancelled``; the
instance running it sees that at its next renewal.
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

from ...errors import BrokerError, NotFound, RunTimeout, StoreUnavailable
from ...logs import failure
from .queue import RunQueue
from .runs import RunAnswer
from .store import Caller, NotFoundError, SQLStore, background_runs, run_attachments

log = logging.getLogger("broker.agent.background")

ACTIVE = ("queued", "in_progress")
CONCURRENCY = 16  # runs one instance executes at once; the rest wait, queued
BACKGROUND_TIMEOUT = 30 * 60.0  # a background run's own limit (a synchronous one: run_timeout)
WORKER_LOST = {
    "code": "worker_lost",
    "message": "The broker instance running this run stopped before it finished; start it again.",
}

Runner = Callable[[str, Caller, str, str, float, tuple[str, ...]], Awaitable[RunAnswer]]
# a job may reach a worker before the transaction inserting its run commits: look again
CLAIM_WAITS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
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

    def __init__(
        self,
        store: SQLStore,
        runner: Runner,
        *,
        lease: float,
        finished: Finished,
        queue: str = "auto",
    ):
        self.store = store
        self.table = background_runs
        self.runner = runner
        self.lease = lease
        self.finished = finished
        self.instance = "ins_" + secrets.token_hex(8)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._keeper: asyncio.Task[None] | None = None
        #: the durable queue (queue.py's rule): PostgreSQL and BROKER_RUN_QUEUE=auto
        self.queue: RunQueue | None = None
        if queue == "auto" and store.dialect == "postgresql":
            self.queue = RunQueue(
                store.url,
                self.run_queued,
                concurrency=CONCURRENCY,
                lease=lease,
                name=self.instance,
            )

    @property
    def executor(self) -> str:
        """Where this instance's background runs execute: ``queue`` or ``in-process``."""
        return "queue" if self.queue is not None else "in-process"

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep())
        if self.queue is not None:
            self.queue.start()

    async def stop(self) -> None:
        """Stop renewing and cancel this instance's runs: they fail as ``worker_lost``
        once their lease runs out, on whichever instance looks first."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self.queue is not None:
            await self.queue.stop()
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
        attachments: tuple[str, ...] = (),
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
            # queued on the queue: no owner, no lease until a worker claims it
            "owner": self.instance if self.queue is None else None,
            "lease_until": now + self.lease if self.queue is None else None,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }

        async def work(conn: Any) -> None:
            await conn.execute(t.insert().values(**values))
            if attachments:
                await conn.execute(
                    run_attachments.insert().values(run_id=run_id, ids=json.dumps(attachments))
                )
            if self.queue is not None:  # deferred before the insert commits: both or neither
                try:
                    await self.queue.defer(run_id)
                except Exception as exc:
                    cause = exc.__cause__ or exc
                    log.warning(
                        "background runs: cannot queue a run: %s (%s)",
                        type(exc).__name__,
                        type(cause).__name__,
                    )
                    raise StoreUnavailable(
                        "The run queue in the thread database cannot be reached; try again shortly."
                    ) from None

        try:
            await self.store.write(work)
        except sa.exc.IntegrityError:  # the same Idempotency-Key, sent twice at once
            found = await self._by_idempotency(caller_ref, idempotency_key or "")
            if found is None:
                raise
            return record_json(found), False
        if self.queue is None:
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
                if row is not None:
                    await self._finish(run_id, row)
        except asyncio.CancelledError:
            pass  # shutting down before the run was claimed (the lease will run out)
        except Exception as exc:
            log.warning("background run %s: claiming it failed: %s", run_id, failure(exc))
        finally:
            self._tasks.pop(run_id, None)

    async def _finish(self, run_id: str, row: Any) -> None:
        """Run a claimed run here and record its end (the in-process and the queue's path)."""
        try:
            status, result = await self._run(row)
            await self._end(run_id, status, result, owner=self.instance)
        except asyncio.CancelledError:
            pass  # cancelled (already recorded) or shutting down (the lease will run out)
        except Exception as exc:  # the database gone: the lease runs out, a reader fails it
            log.warning("background run %s: recording its end failed: %s", run_id, failure(exc))
        finally:
            self._tasks.pop(run_id, None)

    async def run_queued(self, run_id: str) -> None:
        """The queue's job: claim the run (if still queued) and execute it here."""
        row = None
        for wait in CLAIM_WAITS:
            await asyncio.sleep(wait)
            row = await self._claim(run_id, any_owner=True)
            if row is not None or await self._row(run_id) is not None:
                break  # claimed, or cancelled / claimed by another job: nothing to do
        if row is None:
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks[run_id] = task
        await self._finish(run_id, row)

    async def _claim(self, run_id: str, *, any_owner: bool = False) -> Any:
        t = self.table
        mine = sa.true() if any_owner else t.c.owner == self.instance

        async def work(conn: Any) -> Any:
            result = await conn.execute(
                t.update()
                .where(t.c.id == run_id, t.c.status == "queued", mine)
                .values(
                    status="in_progress",
                    owner=self.instance,
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
            attachments = await self._attachments(row.id)
            answer = await self.runner(
                row.workflow, caller, row.input, row.thread_id, BACKGROUND_TIMEOUT, attachments
            )
        except RunTimeout as exc:
            return "incomplete", {"error": {"code": exc.code, "message": exc.message}}
        except BrokerError as exc:
            return "failed", {"error": {"code": exc.code, "message": exc.message}}
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("background run %s failed: %s", row.id, failure(exc))
            return "failed", {
                "error": {"code": "internal_error", "message": "The run failed in the broker."}
            }
        result = answer.as_json()
        result.pop("thread_id", None)
        return "completed", result

    async def _attachments(self, run_id: str) -> tuple[str, ...]:
        async with self.store.transaction() as conn:
            ids = await conn.scalar(
                sa.select(run_attachments.c.ids).where(run_attachments.c.run_id == run_id)
            )
        return tuple(json.loads(ids)) if ids else ()

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

        mine = list(self._tasks)
        # in-process: every run this instance accepted (queued ones wait here); on the
        # queue: the runs its worker executes now (the queued ones wait in the queue)
        owned = t.c.owner == self.instance if self.queue is None else t.c.id.in_(mine)

        async def renew(conn: Any) -> None:
            await conn.execute(
                t.update().where(owned, t.c.status.in_(ACTIVE)).values(lease_until=now + self.lease)
            )

        if self.queue is None or mine:
            await self.store.write(renew)
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
        if self.queue is not None:
            await self.queue.reap()
