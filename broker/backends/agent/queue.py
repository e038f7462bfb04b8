"""The durable queue background runs execute on when the thread database is PostgreSQL:
procrastinate, in that same database (chosen by ``benchmarks/queues.py``; docs/back-ends.md
has the figures).

The rule (``BROKER_RUN_QUEUE=auto``): a PostgreSQL thread database — what several instances
share — runs background runs on this queue, and every ``chatkit-broker serve`` is one of its
workers (no process of its own); SQLite (one instance, or several on one machine's file)
runs them in-process on the instance that accepted them.

A run is deferred as a job in the transaction that inserts its record, before that commits:
a job whose insert failed finds no run and does nothing; a run whose job could not be
deferred is not created (503). The run record stays the truth a caller reads (its status,
lease and ``worker_lost``); the job only says which instance runs it. A job left ``doing`` by
a worker that died is retried by ``reap()`` (procrastinate's stalled-jobs recipe), which
finds its run already ended and does nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from sqlalchemy.engine import make_url

from ...logs import failure

log = logging.getLogger("broker.agent.queue")


class _Condensed(logging.Filter):
    """procrastinate's and psycopg_pool's records, each one line: procrastinate logs a lost
    database (its LISTEN connection, a worker's poll) with a full traceback, psycopg_pool its
    failed reconnects with libpq's two-line message, and the broker's logs carry neither (the
    error's type and first line say what happened). A filter on each of their loggers, so
    every handler (the broker's, or any other listening) sees the one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = (
                "%s (%s)",
                (record.getMessage(), failure(exc.__cause__ or exc)),
            )
            record.exc_info = record.exc_text = record.stack_info = None
        message = record.getMessage()
        if "\n" in message:
            record.msg, record.args = message.splitlines()[0].rstrip(), ()
        return True


def _condense_logs() -> None:
    """procrastinate's loggers (one per module, all created by ``import procrastinate``) at
    WARNING, and psycopg_pool's, each with ``_Condensed`` once."""
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (
            (name.split(".")[0] == "procrastinate" or name == "psycopg.pool")
            and isinstance(logger, logging.Logger)
            and not any(isinstance(f, _Condensed) for f in logger.filters)
        ):
            logger.addFilter(_Condensed())


QUEUE = "ckb_runs"
TASK = "ckb_run"
_SCHEMA_LOCK = 0x636B6271  # one advisory lock id, so two brokers do not create the schema at once
RETRY_START = 2.0  # seconds between attempts to open the queue while the database is down
# Shutdown is bounded whatever the database's state: libpq gives up a connect after
# CONNECT_TIMEOUT (an unreachable host), a caller waits POOL_WAIT for a pooled connection,
# the worker gets STOP_GRACE to stop on its own and the pool CLOSE_WAIT to close.
CONNECT_TIMEOUT = 5
POOL_WAIT = 10.0
STOP_GRACE = 2.0
CLOSE_WAIT = 1.0


def libpq_url(async_url: str) -> str:
    """The thread database's SQLAlchemy URL (``postgresql+asyncpg://…?ssl=…``) as libpq's."""
    url = make_url(async_url).set(drivername="postgresql")
    query = {("sslmode" if k == "ssl" else k): v for k, v in url.query.items()}
    plain = url.set(query={}).render_as_string(hide_password=False)
    pairs = [(k, v) for k, vs in query.items() for v in (vs if isinstance(vs, tuple) else (vs,))]
    return plain + (f"?{urlencode(pairs)}" if pairs else "")


_TABLES = "SELECT to_regclass('procrastinate_jobs')"


async def waiting_jobs(database_url: str, *, timeout: float) -> int | None:
    """How many of this queue's jobs wait in the thread database, or None when procrastinate's
    tables are not there yet (``doctor``'s look; raises when the database cannot be reached)."""
    import psycopg

    connect = psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True, connect_timeout=max(1, int(timeout))
    )
    async with asyncio.timeout(timeout), await connect as conn:
        found = await (await conn.execute(_TABLES)).fetchone()
        if found is None or found[0] is None:
            return None
        row = await (
            await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = %s AND status = 'todo'",
                (QUEUE,),
            )
        ).fetchone()
        return int(row[0]) if row else 0


class RunQueue:
    """procrastinate on the thread database: defer a run, run this instance's worker."""

    def __init__(
        self,
        database_url: str,
        execute: Callable[[str], Awaitable[None]],
        *,
        concurrency: int,
        lease: float,
        name: str,
    ) -> None:
        import procrastinate

        # its INFO lines are two per job; the broker logs each run's end itself
        _condense_logs()
        self.conninfo = libpq_url(database_url)
        self.lease = lease
        self.concurrency = concurrency
        self.name = name
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=self.conninfo,
                min_size=1,
                max_size=4,
                name="chatkit-broker-runs",
                timeout=POOL_WAIT,
                kwargs={"connect_timeout": CONNECT_TIMEOUT},
            )
        )

        @self.app.task(name=TASK, queue=QUEUE)
        async def run_job(run_id: str) -> None:
            await execute(run_id)

        self._task = run_job
        self._opened = False
        self._open_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Stop the worker and close the pool in a few seconds, the database up or gone.

        Cancelled, procrastinate's worker stops gracefully: its jobs get
        ``shutdown_graceful_timeout``, then it unregisters itself, a query. With the database
        gone that query waits for a pooled connection (the pool reconnecting meanwhile), so
        after ``STOP_GRACE`` the pool is closed, which fails the wait at once (``PoolClosed``);
        a worker still in a query on a connection that never answers is cancelled again."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.wait({worker}, timeout=STOP_GRACE)
        self._opened = False
        await self._close()
        if worker is not None:
            if not worker.done():
                worker.cancel()
            await asyncio.wait({worker}, timeout=STOP_GRACE)
            if worker.done() and not worker.cancelled():
                worker.exception()  # retrieved: _work ends cancelled, or with what stopped it
            elif not worker.done():
                log.warning("background runs: the queue's worker did not stop in time")

    async def _close(self) -> None:
        """Close the pool within ``CLOSE_WAIT`` (psycopg_pool's own bound on its tasks),
        also one left half-open by a start-up that was cancelled (its tasks would otherwise
        outlive the app); whoever still waits for a connection gets ``PoolClosed``."""
        with contextlib.suppress(Exception):
            await self.app.connector.pool.close(timeout=CLOSE_WAIT)
        with contextlib.suppress(Exception):
            await self.app.close_async()  # the pool closed: forgets it

    async def _open(self) -> None:
        """Open the pool and make sure of the schema, once (the worker and a first defer
        may both ask at start-up; neither goes on before the tables exist)."""
        async with self._open_lock:
            if self._opened:
                return
            try:
                await self.app.open_async()
                await self._ensure_schema()
            except BaseException:
                await self._close()
                raise
            self._opened = True

    async def _ensure_schema(self) -> None:
        """procrastinate's tables, created once by whichever broker starts first."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
            try:
                found = await (await conn.execute(_TABLES)).fetchone()
                if found is None or found[0] is None:
                    await conn.execute(self.app.schema_manager.get_schema())
                    log.info("background runs: created procrastinate's tables")
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))

    async def _work(self) -> None:
        """Run this instance's worker; while the database is down, try again."""
        while True:
            try:
                await self._open()
                log.info("background runs: queue worker %s started", self.name)
                await self.app.run_worker_async(
                    queues=[QUEUE],
                    name=self.name,
                    concurrency=self.concurrency,
                    install_signal_handlers=False,
                    delete_jobs="always",  # the run record keeps what the caller reads
                    update_heartbeat_interval=max(self.lease / 3, 1.0),
                    stalled_worker_timeout=self.lease,
                    shutdown_graceful_timeout=0.5,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # stopping: procrastinate's shutdown failed on the lost database and
                    # raised that instead of the cancellation; end, do not start again
                    raise asyncio.CancelledError from None
                log.warning(
                    "background runs: the queue is unavailable (%s); trying again",
                    type(exc).__name__,
                )
                await asyncio.sleep(RETRY_START)

    # --- deferring and reaping ------------------------------------------------------------

    async def defer(self, run_id: str) -> None:
        """Queue one run (raises when the database cannot take it)."""
        await self._open()
        await self._task.defer_async(run_id=run_id)

    async def defer_many(self, run_ids: list[str]) -> None:
        """Queue many runs in one statement."""
        await self._open()
        await self._task.batch_defer_async(*({"run_id": run_id} for run_id in run_ids))

    async def reap(self) -> int:
        """Retry the jobs of workers whose heartbeat stopped (their runs are failed by their
        lease); each such job then ends at once. How many were retried."""
        if not self._opened:
            return 0
        manager = self.app.job_manager
        stalled = list(
            await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self.lease)
        )
        for job in stalled:
            await manager.retry_job(job)
        # then forget the dead workers (their jobs, retried, no longer name them)
        await manager.prune_stalled_workers(self.lease)
        return len(stalled)

    async def counts(self) -> dict[str, int]:
        """Jobs of this queue by status (for tests and the benchmark)."""
        await self._open()
        rows = await self.app.connector.execute_query_all_async(
            "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs "
            "WHERE queue_name = %(queue)s GROUP BY status",
            queue=QUEUE,
        )
        return {row["status"]: int(row["n"]) for row in rows}
