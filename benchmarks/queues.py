"""Durable queues for background runs, side by side in one run: procrastinate (PostgreSQL),
arq (Redis) and taskiq with taskiq-redis' stream broker (Redis).

    python -m benchmarks.queues [--jobs 10000] [--only procrastinate,arq,taskiq]

arq pins ``redis<6`` (the broker uses redis 8), so run it from a venv of its own::

    python -m venv /tmp/qvenv && /tmp/qvenv/bin/pip install procrastinate arq taskiq taskiq-redis psutil
    PYTHONPATH=. /tmp/qvenv/bin/python -m benchmarks.queues

Each candidate, with its own defaults except where said, runs its worker as a subprocess of
this script (concurrency 16, as ``BackgroundRuns`` runs), and is measured on:

* **latency**: 200 no-op jobs enqueued 20 ms apart into an idle worker; enqueue → the job's
  function starting (p50 / p95 / max, ms);
* **10,000 queued**: that many jobs enqueued while no worker runs (enqueue wall s and this
  process's CPU s), then one worker started and timed until the last one started; its CPU s,
  and the server's (Redis ``INFO cpu``; PostgreSQL: every ``postgres`` process on the machine,
  so noisy when others use it);
* **worker killed**: a job that sleeps 60 s, its worker SIGKILLed once it started, a second
  worker started: seconds until the job starts again there (each configured to notice a dead
  worker after about 10 s), or "lost". procrastinate needs a caller of
  ``get_stalled_jobs`` / ``retry_job`` (its documented recipe; the second worker runs one
  every 2 s); arq re-runs a job whose in-progress key expired (job timeout + 10 s); taskiq's
  stream broker re-claims messages left unacknowledged for ``idle_timeout`` (acknowledged
  when executed; its default, when received, loses a dead worker's job).

``python -m benchmarks.queues --status`` (the broker's venv) times ``GET /api/runs/<id>``'s
work with 10 and with 10,000 runs queued, side by side.

Loopback only. Writes ``benchmarks/results/queues.json`` (git-ignored) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_ADMIN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = 16
LATENCY_JOBS = 200
DEAD_AFTER = 10  # seconds after which each candidate is told to count a worker dead
RESULTS = Path(__file__).parent / "results" / "queues.json"


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# --- the candidates: each names how to enqueue and how to run a worker ---------------------


class Procrastinate:
    name = "procrastinate"

    def __init__(self, cfg: dict[str, Any]) -> None:
        import procrastinate

        self.cfg = cfg
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=cfg["pg"], kwargs={})
        )

        @self.app.task(name="noop", queue="runs")
        async def noop(tag: str, sent: float) -> None:
            emit(tag=tag, sent=sent, start=time.time())
            if tag == "slow":
                await asyncio.sleep(60)

        self.task = noop

    @staticmethod
    async def prepare(cfg: dict[str, Any]) -> None:
        import procrastinate
        import psycopg

        name = cfg["pg"].rsplit("/", 1)[1]
        async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
            await conn.execute(f'CREATE DATABASE "{name}"')
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=cfg["pg"]))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    @staticmethod
    async def cleanup(cfg: dict[str, Any]) -> None:
        import psycopg

        name = cfg["pg"].rsplit("/", 1)[1]
        async with await psycopg.AsyncConnection.connect(PG_ADMIN, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def enqueue(self, items: list[tuple[str, float]]) -> None:
        async with self.app.open_async():
            if len(items) == 1:
                await self.task.defer_async(tag=items[0][0], sent=items[0][1])
            else:
                await self.task.batch_defer_async(*({"tag": t, "sent": s} for t, s in items))

    async def enqueue_spaced(self, n: int, gap: float) -> None:
        async with self.app.open_async():
            for i in range(n):
                await self.task.defer_async(tag=f"lat{i}", sent=time.time())
                await asyncio.sleep(gap)

    async def work(self) -> None:
        async with self.app.open_async():
            emit(ready=True)
            recover = asyncio.create_task(self._recover())
            try:
                await self.app.run_worker_async(
                    concurrency=CONCURRENCY,
                    install_signal_handlers=False,
                    delete_jobs="successful",
                    update_heartbeat_interval=2,
                    stalled_worker_timeout=DEAD_AFTER,
                )
            finally:
                recover.cancel()

    async def _recover(self) -> None:
        """What the broker would run beside the worker: retry jobs of dead workers."""
        while True:
            await asyncio.sleep(2)
            stalled = await self.app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=DEAD_AFTER
            )
            for job in stalled:
                await self.app.job_manager.retry_job(job)

    @staticmethod
    def server_cpu() -> float:
        import psutil

        total = 0.0
        for proc in psutil.process_iter(["name", "cpu_times"]):
            if proc.info["name"] and proc.info["name"].startswith("postgres"):
                times = proc.info["cpu_times"]
                if times is not None:
                    total += times.user + times.system
        return total


class Arq:
    name = "arq"

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @staticmethod
    async def prepare(cfg: dict[str, Any]) -> None:
        pass

    @staticmethod
    async def cleanup(cfg: dict[str, Any]) -> None:
        await _redis_delete(f"*{cfg['prefix']}*")
        await _redis_delete("arq:*")

    def _settings(self) -> Any:
        from arq.connections import RedisSettings

        return RedisSettings.from_dsn(REDIS_URL)

    async def enqueue(self, items: list[tuple[str, float]]) -> None:
        from arq import create_pool

        pool = await create_pool(self._settings())
        try:
            for tag, sent in items:
                await pool.enqueue_job("noop", tag, sent, _queue_name=self.cfg["prefix"])
        finally:
            await pool.aclose()

    async def enqueue_spaced(self, n: int, gap: float) -> None:
        from arq import create_pool

        pool = await create_pool(self._settings())
        try:
            for i in range(n):
                await pool.enqueue_job(
                    "noop", f"lat{i}", time.time(), _queue_name=self.cfg["prefix"]
                )
                await asyncio.sleep(gap)
        finally:
            await pool.aclose()

    async def work(self) -> None:
        from arq.worker import Worker, func

        async def noop(ctx: Any, tag: str, sent: float) -> None:
            emit(tag=tag, sent=sent, start=time.time())
            if tag == "slow":
                await asyncio.sleep(60)

        worker = Worker(
            functions=[func(noop, name="noop", timeout=DEAD_AFTER - 10 + 60)],
            redis_settings=self._settings(),
            queue_name=self.cfg["prefix"],
            max_jobs=CONCURRENCY,
            handle_signals=False,
            keep_result=0,
        )
        # arq's in-progress key lives job timeout + 10 s: a dead worker's job runs again then
        worker.in_progress_timeout_s = DEAD_AFTER
        emit(ready=True)
        await worker.async_run()

    @staticmethod
    def server_cpu() -> float:
        return _redis_cpu()


class Taskiq:
    name = "taskiq"

    def __init__(self, cfg: dict[str, Any]) -> None:
        from taskiq_redis import RedisStreamBroker

        self.cfg = cfg
        self.broker = RedisStreamBroker(
            REDIS_URL,
            queue_name=cfg["prefix"],
            consumer_group_name=cfg["prefix"],
            idle_timeout=DEAD_AFTER * 1000,
        )

        @self.broker.task(task_name="noop")
        async def noop(tag: str, sent: float) -> None:
            emit(tag=tag, sent=sent, start=time.time())
            if tag == "slow":
                await asyncio.sleep(60)

        self.task = noop

    @staticmethod
    async def prepare(cfg: dict[str, Any]) -> None:
        pass

    @staticmethod
    async def cleanup(cfg: dict[str, Any]) -> None:
        await _redis_delete(f"*{cfg['prefix']}*")

    async def enqueue(self, items: list[tuple[str, float]]) -> None:
        await self.broker.startup()
        try:
            for tag, sent in items:
                await self.task.kiq(tag, sent)
        finally:
            await self.broker.shutdown()

    async def enqueue_spaced(self, n: int, gap: float) -> None:
        await self.broker.startup()
        try:
            for i in range(n):
                await self.task.kiq(f"lat{i}", time.time())
                await asyncio.sleep(gap)
        finally:
            await self.broker.shutdown()

    async def work(self) -> None:
        from taskiq.acks import AcknowledgeType
        from taskiq.receiver import Receiver

        self.broker.is_worker_process = True
        # acknowledged when the job ends, not (the default) when received: else a job of a
        # dead worker is gone for good
        receiver = Receiver(
            self.broker, max_async_tasks=CONCURRENCY, ack_type=AcknowledgeType.WHEN_EXECUTED
        )
        await self.broker.startup()
        emit(ready=True)
        receiver.run_startup = False
        await receiver.listen(asyncio.Event())

    @staticmethod
    def server_cpu() -> float:
        return _redis_cpu()


CANDIDATES = {c.name: c for c in (Procrastinate, Arq, Taskiq)}


async def _redis_delete(pattern: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=pattern, count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


def _redis_cpu() -> float:
    import redis

    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- the driver ------------------------------------------------------------------------------


class WorkerProc:
    def __init__(self, name: str, cfg: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.queues", "--worker", name, json.dumps(cfg)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[1],
        )
        self.other: list[dict[str, Any]] = []
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert json.loads(line).get("ready"), line
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def read(self, n: int, timeout: float, prefix: str = "") -> list[dict[str, Any]]:
        """The next ``n`` starts of jobs whose tag starts with ``prefix`` (fewer if
        ``timeout`` s pass); others are counted in ``self.other``."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                start = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                break
            if start["tag"].startswith(prefix):
                out.append(start)
            else:
                self.other.append(start)
        return out

    def _pump(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self._lines.put(json.loads(line))

    def cpu(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)


def measure(name: str, jobs: int) -> dict[str, Any]:
    cls = CANDIDATES[name]
    suffix = secrets.token_hex(4)
    cfg = {"pg": PG_ADMIN.rsplit("/", 1)[0] + f"/ckb_qbench_{suffix}", "prefix": f"qb{suffix}"}
    asyncio.run(cls.prepare(cfg))
    out: dict[str, Any] = {"candidate": name}
    workers: list[WorkerProc] = []
    try:
        client = cls(cfg)
        # latency into an idle worker
        w1 = WorkerProc(name, cfg)
        workers.append(w1)
        asyncio.run(client.enqueue_spaced(LATENCY_JOBS, 0.02))
        seen = w1.read(LATENCY_JOBS, 60, "lat")
        lat = sorted((s["start"] - s["sent"]) * 1000 for s in seen)
        out["latency_ms"] = {
            "p50": round(statistics.median(lat), 1),
            "p95": round(lat[int(len(lat) * 0.95) - 1], 1),
            "max": round(lat[-1], 1),
            "n": len(lat),
        }
        w1.stop(signal.SIGTERM)
        # 10,000 queued while no worker runs, then drained by one
        items = [(f"t{i}", 0.0) for i in range(jobs)]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        asyncio.run(client.enqueue(items))
        out["enqueue"] = {
            "wall_s": round(time.perf_counter() - wall0, 2),
            "cpu_s": round(time.process_time() - cpu0, 2),
        }
        server0 = cls.server_cpu()
        w2 = WorkerProc(name, cfg)
        workers.append(w2)
        cpu_w0, t0 = w2.cpu(), time.perf_counter()
        seen = w2.read(jobs, 600, "t")
        wall = time.perf_counter() - t0
        out["drain"] = {
            "started": len(seen),
            "wall_s": round(wall, 2),
            "jobs_per_s": round(len(seen) / wall),
            "worker_cpu_s": round(w2.cpu() - cpu_w0, 2),
            "server_cpu_s": round(cls.server_cpu() - server0, 2),
        }
        out["extra_starts"] = len(w1.other) + len(w2.other)
        # a worker killed mid-job
        asyncio.run(client.enqueue([("slow", time.time())]))
        started = w2.read(1, 30, "slow")
        assert started, w2.other
        w2.stop(signal.SIGKILL)
        killed = time.monotonic()
        w3 = WorkerProc(name, cfg)
        workers.append(w3)
        again = w3.read(1, 60, "slow")
        out["worker_killed"] = (
            f"ran again after {time.monotonic() - killed:.1f} s" if again else "lost (60 s)"
        )
    finally:
        for w in workers:
            w.stop()
        asyncio.run(cls.cleanup(cfg))
    return out


async def status_pages(queued: int, reads: int = 500) -> dict[str, Any]:
    """``GET /api/runs/<id>``'s work (``BackgroundRuns.get``) with 10 and with ``queued``
    queued runs in PostgreSQL, side by side: ms and CPU ms per read. Needs the broker's venv."""
    import asyncpg

    from broker.backends.agent.background import BackgroundRuns
    from broker.backends.agent.store import SQLStore
    from broker.settings import resolve_database_url

    name = f"ckb_qbench_status_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    out: dict[str, Any] = {}
    try:
        store = SQLStore(resolve_database_url(url))
        await store.start()

        async def never(*_: Any) -> Any:
            raise AssertionError

        async def nothing(*_: Any) -> None:
            pass

        runs = BackgroundRuns(store, never, lease=30, finished=nothing, queue="in-process")
        done = 0
        for n in (10, queued):
            conn = await asyncpg.connect(url)
            now = time.time()
            rows = [
                (
                    f"run_{secrets.token_hex(16)}",
                    "wf",
                    "u",
                    "user:u",
                    "queued",
                    "thr_x",
                    "x",
                    0,
                    now,
                    now,
                )
                for _ in range(n - done)
            ]
            await conn.copy_records_to_table(
                "ckb_runs",
                records=rows,
                columns=[
                    "id",
                    "workflow",
                    "user_id",
                    "caller",
                    "status",
                    "thread_id",
                    "input",
                    "attempts",
                    "created_at",
                    "updated_at",
                ],
            )
            ids = [
                r["id"]
                for r in await conn.fetch("SELECT id FROM ckb_runs ORDER BY random() LIMIT 50")
            ]
            await conn.execute("ANALYZE ckb_runs")
            await conn.close()
            done = n
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(reads):
                await runs.get(ids[i % len(ids)], lambda row: True)
            out[f"{n} queued"] = {
                "ms_per_read": round((time.perf_counter() - wall0) * 1000 / reads, 2),
                "cpu_ms_per_read": round((time.process_time() - cpu0) * 1000 / reads, 2),
            }
        await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| queue | enqueue→start p50 / p95 / max ms | enqueue 10k: wall s / CPU s "
        "| drain 10k: wall s, jobs/s | worker CPU s | server CPU s | worker SIGKILLed |"
    )
    rows = [head, "|" + "---|" * 7]
    for r in results:
        lat, enq, dr = r["latency_ms"], r["enqueue"], r["drain"]
        rows.append(
            f"| {r['candidate']} | {lat['p50']} / {lat['p95']} / {lat['max']} "
            f"| {enq['wall_s']} / {enq['cpu_s']} | {dr['wall_s']}, {dr['jobs_per_s']} "
            f"| {dr['worker_cpu_s']} | {dr['server_cpu_s']} | {r['worker_killed']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    parser.add_argument("--fresh", action="store_true", help="forget earlier rows")
    parser.add_argument(
        "--status", action="store_true", help="only GET /api/runs/<id> with 10,000 queued"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, cfg = args.worker
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        asyncio.run(CANDIDATES[name](json.loads(cfg)).work())
        return 0
    if args.status:
        print(json.dumps(asyncio.run(status_pages(args.jobs)), indent=2))
        return 0
    results = []
    for name in args.only.split(","):
        print(f"{name} …", file=sys.stderr, flush=True)
        results.append(measure(name, args.jobs))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    # merged with earlier rows of other candidates (each venv runs its own: see above)
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.fresh else []
    names = {r["candidate"] for r in results}
    results = [r for r in earlier if r["candidate"] not in names] + results
    RESULTS.write_text(json.dumps(results, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
