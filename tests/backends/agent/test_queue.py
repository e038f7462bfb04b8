"""Background runs on the durable queue (procrastinate in the thread database's PostgreSQL),
in real ``chatkit-broker serve`` processes: 10,000 queued runs held while a broker is
SIGKILLed mid-run, its runs failed within the lease by the second instance (which answers
for them), the queued ones run there; SQLite still executing in-process; a broker whose
PostgreSQL is cut stopping within seconds (SIGTERM to ``serve``, the lifespan in-process), a
run whose end cannot be written logged in one line; and ``doctor``'s queue check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.app import create_app
from broker.backends.agent.background import CONCURRENCY
from broker.backends.agent.queue import RunQueue
from broker.config import load_settings
from broker.settings import resolve_database_url

from ...support import BrokerProcess, free_port
from ...support.adversarial import logged_text
from ...support.asgi_server import run_asgi
from ...support.fake_responses import FakeResponses, text
from .tcp_proxy import TcpProxy, ThreadedProxy, via
from .test_backends_e2e import (
    USER,
    Receiver,
    bearer,
    cli,
    create_key,
    setup,
    wait_for,
)

QUEUED = 10_000
SLOTS = CONCURRENCY  # runs one instance executes at once


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    """A webhook receiver (the workflows file of ``setup`` names one)."""
    r = Receiver()
    yield r
    r.close()


async def _noop(run_id: str) -> None:
    raise AssertionError("the test's own RunQueue only defers")


async def _sql(url: str, query: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _enqueue_many(url: str, thread_id: str, n: int) -> list[str]:
    """``n`` queued runs of USER on ``thread_id``, as ``BackgroundRuns.create`` writes them,
    copied in bulk, and their jobs deferred in one statement (cheap: seconds, not minutes)."""
    import asyncpg

    now = time.time()
    ids = [f"run_{secrets.token_hex(16)}" for _ in range(n)]
    rows = [
        (rid, "support", USER, "key:bulk", None, "queued", thread_id, f"job {i}", 0, now, now)
        for i, rid in enumerate(ids)
    ]
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.copy_records_to_table(
            "ckb_runs",
            records=rows,
            columns=[
                "id",
                "workflow",
                "user_id",
                "caller",
                "key_name",
                "status",
                "thread_id",
                "input",
                "attempts",
                "created_at",
                "updated_at",
            ],
        )
    finally:
        await conn.close()
    queue = RunQueue(resolve_database_url(url), _noop, concurrency=1, lease=3, name="test")
    try:
        await queue.defer_many(ids)
    finally:
        await queue.stop()
    return ids


def runs(url: str) -> list[Any]:
    """The runs that ended, for a failure's message."""
    query = "SELECT status, result FROM ckb_runs WHERE status NOT IN ('queued', 'in_progress')"
    return [dict(r) for r in asyncio.run(_sql(url, query))]


def jobs(url: str) -> dict[str, int]:
    rows = asyncio.run(
        _sql(url, "SELECT status::text AS s, count(*) AS n FROM procrastinate_jobs GROUP BY 1")
    )
    return {r["s"]: r["n"] for r in rows}


def test_ten_thousand_queued_runs_outlive_a_broker_killed_mid_run(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    pg_url: str,
    empty_database: Callable[[str], None],
    tmp_path: Path,
    hooks: Receiver,
) -> None:
    empty_database(pg_url)
    env, _ = setup(tmp_path, responses, pg_url, hooks)
    _, key = create_key(env, tmp_path, "--act-for-users")
    doomed = run_broker(env)
    # the first run makes the user's thread; it and the next SLOTS - 1 hang at the model
    responses.script(*[text("never finished", chunks=4, hang_after=1) for _ in range(2 * SLOTS)])
    body = {"input": "first", "user": USER, "background": True}
    first = httpx.post(
        f"{doomed.url}/api/workflows/support/runs", json=body, headers=bearer(key), timeout=10
    )
    assert first.status_code == 202, first.text
    thread_id = first.json()["thread_id"]
    ids = asyncio.run(_enqueue_many(pg_url, thread_id, QUEUED))
    # the queue holds: one instance runs SLOTS of them, the rest wait as jobs to do
    wait_for(lambda: jobs(pg_url).get("doing") == SLOTS, 30, "the worker to fill its slots")
    assert jobs(pg_url) == {"doing": SLOTS, "todo": QUEUED + 1 - SLOTS}, runs(pg_url)
    running = {
        r["id"]
        for r in asyncio.run(_sql(pg_url, "SELECT id FROM ckb_runs WHERE status='in_progress'"))
    }
    assert len(running) == SLOTS
    # status pages answer as usual with 10,000 waiting: the newest queued one, a new run
    last = httpx.get(f"{doomed.url}/api/runs/{ids[-1]}", headers=bearer(key), timeout=10)
    assert last.status_code == 404  # not this key's run (the bulk rows are no key's)
    mine = httpx.get(f"{doomed.url}/api/runs/{ids[-1]}", headers=_user(USER), timeout=10)
    assert mine.status_code == 200 and mine.json()["status"] == "queued", mine.text
    late = httpx.post(
        f"{doomed.url}/api/workflows/support/runs",
        json={"input": "late", "user": USER, "background": True},
        headers=bearer(key),
        timeout=10,
    )
    assert late.status_code == 202 and late.json()["status"] == "queued", late.text

    doomed.proc.kill()  # SIGKILL mid-run: SLOTS runs in progress, 10,000 queued
    doomed.proc.wait(5)
    killed = time.monotonic()
    survivor = run_broker(env)
    up = time.monotonic()
    victim = sorted(running)[0]

    def ended() -> dict[str, Any] | None:
        got = httpx.get(f"{survivor.url}/api/runs/{victim}", headers=_user(USER), timeout=10)
        return got.json() if got.json()["status"] not in ("in_progress", "queued") else None

    final = wait_for(ended, 30, "the killed broker's run to be failed")
    # BROKER_RUN_LEASE=3 bounds it, from when another instance runs (its start-up is
    # longer than the lease on a busy machine; a reader marks a run past its lease failed)
    assert time.monotonic() - max(up, killed + 3) < 5
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost"
    assert final["attempts"] == 1  # not retried: said in the record
    states = asyncio.run(
        _sql(
            pg_url,
            "SELECT status, count(*) AS n FROM ckb_runs WHERE id = ANY($1::text[]) GROUP BY 1",
            list(running),
        )
    )
    wait_for(
        lambda: (
            {
                r["status"]: r["n"]
                for r in asyncio.run(
                    _sql(
                        pg_url,
                        "SELECT status, count(*) AS n FROM ckb_runs "
                        "WHERE id = ANY($1::text[]) GROUP BY 1",
                        list(running),
                    )
                )
            }
            == {"failed": SLOTS}
        ),
        20,
        f"every run of the killed broker failed (was {states})",
    )
    # the queued runs outlived it: the survivor's worker took the next ones, the rest wait;
    # the dead worker's jobs were reaped (retried: they wait, then end at once, their runs
    # ended) and none is left "doing" on it
    expected = {"doing": SLOTS, "todo": QUEUED + 2 - SLOTS}
    wait_for(lambda: jobs(pg_url) == expected, 30, f"{expected} (was {jobs(pg_url)})")
    alive = asyncio.run(
        _sql(
            pg_url,
            "SELECT count(*) AS n FROM procrastinate_jobs j JOIN procrastinate_workers w "
            "ON w.id = j.worker_id WHERE j.status = 'doing' "
            "AND w.last_heartbeat > now() - interval '3 seconds'",
        )
    )
    assert alive[0]["n"] == SLOTS  # every job in progress is on the live worker
    survivor.stop()  # before the fake lets its hanging replies go, so nothing drains


def _user(sub: str) -> dict[str, str]:
    from .test_processes import token

    return token(sub)


def test_sqlite_runs_in_process_and_postgresql_on_the_queue(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    db_url: str,
    tmp_path: Path,
    hooks: Receiver,
) -> None:
    env, _ = setup(tmp_path, responses, db_url, hooks)
    _, key = create_key(env, tmp_path, "--act-for-users")
    broker = run_broker(env)
    responses.script(text('{"ok": true}'))
    r = httpx.post(
        f"{broker.url}/api/workflows/support/runs",
        json={"input": "hi", "user": USER, "background": True},
        headers=bearer(key),
        timeout=10,
    )
    assert r.status_code == 202, r.text

    def done() -> dict[str, Any] | None:
        got = httpx.get(f"{broker.url}/api/runs/{r.json()['id']}", headers=bearer(key)).json()
        return got if got["status"] == "completed" else None

    assert wait_for(done, 30, "the run")["output"] == {"ok": True}
    if db_url.startswith("postgresql"):
        assert "background runs execute on the queue (procrastinate" in broker.logs()
        assert jobs(db_url) == {}  # its job was taken off the queue when it finished
    else:
        assert "background runs execute in-process" in broker.logs()


def test_a_broker_whose_postgresql_is_down_stops_at_once_on_sigterm(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    pg_url: str,
    empty_database: Callable[[str], None],
    tmp_path: Path,
    hooks: Receiver,
) -> None:
    """The queue's worker and its pool keep reconnecting while the database is gone; SIGTERM
    (what uvicorn gets from a process manager) must still end the broker within seconds,
    its log without a traceback (the app's shutdown once outlived 60 s)."""
    empty_database(pg_url)
    with ThreadedProxy("127.0.0.1", 5432) as proxy:
        db = via(pg_url, proxy.port)
        env, _ = setup(tmp_path, responses, db, hooks)
        broker = run_broker(env)
        wait_for(lambda: "queue worker" in broker.logs(), 30, "the queue's worker to start")
        proxy.cut()  # PostgreSQL is gone: every connection dropped, new ones refused
        # the queue notices (its LISTEN connection, its pool reconnecting)
        wait_for(lambda: '"logger":"psycopg.pool"' in broker.logs(), 20, "the pool to reconnect")
        time.sleep(1.0)
        asked = time.monotonic()
        broker.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            broker.proc.wait(30)
        took = time.monotonic() - asked
        code = broker.stop()  # (kills it if it is still there)
        logs = broker.logs()
        assert took < 8, f"SIGTERM took {took:.1f} s (exit {code}):\n{logs[-3000:]}"
        # (uvicorn ends by raising the signal it caught again: -15 is a clean stop)
        assert "Application shutdown complete" in logs, logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]


async def test_the_app_whose_postgresql_is_down_shuts_down_at_once(
    responses: FakeResponses,
    pg_url: str,
    empty_database: Callable[[str], None],
    tmp_path: Path,
    hooks: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same through the app's lifespan in this process (how the in-process tests run a
    broker): its shutdown must end within seconds, leaving no task that outlives it."""
    caplog.set_level(logging.INFO)
    await asyncio.to_thread(empty_database, pg_url)
    logged = _logged(caplog)
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        db = via(pg_url, proxy.port)
        env, _ = setup(tmp_path, responses, db, hooks)
        app = create_app(load_settings(env))  # what a broker process gets (setup's env)
        server = run_asgi(app, lifespan="on")
        await server.__aenter__()
        await logged("queue worker", 30)
        await proxy.cut()
        await logged("error connecting in 'chatkit-broker-runs'", 20)  # the pool reconnecting
        await asyncio.sleep(1.0)
        asked = time.monotonic()
        closing = asyncio.create_task(server.__aexit__(None, None, None))
        done, _ = await asyncio.wait({closing}, timeout=30)
        took = time.monotonic() - asked
        assert done, f"the app's shutdown outlived {took:.0f} s"
        closing.result()
        assert took < 8, f"the app's shutdown took {took:.1f} s"
    assert "Traceback" not in logged_text(caplog, logging.INFO)


def test_doctor_says_whether_the_queue_is_reachable_and_its_tables_exist(
    responses: FakeResponses,
    pg_url: str,
    empty_database: Callable[[str], None],
    tmp_path: Path,
    hooks: Receiver,
) -> None:
    """``chatkit-broker doctor`` on a PostgreSQL agent store checks the background-run queue:
    its tables there (and how many runs wait), or the database out of reach, named."""
    empty_database(pg_url)
    asyncio.run(_tables(pg_url))
    env, _ = setup(tmp_path, responses, pg_url, hooks)

    def queue_check(env: dict[str, str]) -> dict[str, Any]:
        done = cli(env, tmp_path, "doctor", "--json", "--timeout", "60")
        report = json.loads(done.stdout)
        return next(c for c in report["checks"] if c["id"] == "queue")

    up = queue_check(env)
    assert up["status"] == "pass", up
    assert up["summary"] == "reachable, its tables exist; 0 runs waiting"
    gone = via(pg_url, free_port())
    down = queue_check({**env, "BROKER_DATABASE_URL": gone})
    assert down["status"] == "fail", down
    assert down["summary"].startswith("the thread database cannot be reached: "), down
    assert "\n" not in down["summary"] and down["fix"]
    # in-process background runs: no queue to check
    done = cli({**env, "BROKER_RUN_QUEUE": "in-process"}, tmp_path, "doctor", "--json")
    assert "queue" not in [c["id"] for c in json.loads(done.stdout)["checks"]]


async def _tables(url: str) -> None:
    """procrastinate's tables, as a broker's start creates them."""
    queue = RunQueue(resolve_database_url(url), _noop, concurrency=1, lease=3, name="test")
    try:
        await queue.counts()
    finally:
        await queue.stop()


def _logged(caplog: pytest.LogCaptureFixture) -> Callable[[str, float], Awaitable[None]]:
    """``await logged(text, timeout)``: until the captured log holds ``text``."""

    async def logged(text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in caplog.text:
            assert time.monotonic() < deadline, f"{text!r} never logged"
            await asyncio.sleep(0.05)

    return logged


async def test_a_run_whose_end_cannot_be_recorded_is_one_log_line(
    responses: FakeResponses,
    pg_url: str,
    empty_database: Callable[[str], None],
    tmp_path: Path,
    hooks: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database lost while a queued run talks to the model: its end cannot be written
    (its lease runs out; a reader fails it), which the log says in one line, no traceback."""
    caplog.set_level(logging.INFO)
    await asyncio.to_thread(empty_database, pg_url)
    logged = _logged(caplog)
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        db = via(pg_url, proxy.port)
        env, _ = setup(tmp_path, responses, db, hooks)
        _, key = await asyncio.to_thread(create_key, env, tmp_path, "--act-for-users")
        responses.script(text("An answer nobody records", chunks=4, hang_after=1))
        app = create_app(load_settings(env))
        async with (
            run_asgi(app, lifespan="on") as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            r = await http.post(
                "/api/workflows/support/runs",
                json={"input": "hi", "user": USER, "background": True},
                headers=bearer(key),
            )
            assert r.status_code == 202, r.text
            while not responses.hanging.is_set():
                await asyncio.sleep(0.02)
            await proxy.cut()
            responses.release()
            await logged("recording its end failed", 30)
    (line,) = [m for m in caplog.messages if "recording its end failed" in m]
    assert line.endswith(
        "recording its end failed: StoreUnavailable: The thread store (PostgreSQL at "
        f"127.0.0.1:{proxy.port}/{pg_url.rsplit('/', 1)[1]}) cannot be reached; try again shortly."
    ), line
    assert "Traceback" not in logged_text(caplog, logging.INFO)


def test_procrastinate_errors_are_one_line_without_a_traceback(caplog):
    """A lost database makes procrastinate log its listener's error with a traceback (CI saw it
    when a test stopped PostgreSQL mid-stream); every log handler gets one line instead."""
    import procrastinate  # noqa: F401  (creates its loggers, as RunQueue's start does)

    from broker.backends.agent.queue import _condense_logs

    _condense_logs()
    caplog.set_level(logging.INFO)
    try:
        try:
            raise ConnectionRefusedError("connection failed: port 1 refused\n  Is it running?")
        except ConnectionRefusedError as cause:
            raise RuntimeError("\n    Database error.\n    ") from cause
    except RuntimeError:
        logging.getLogger("procrastinate.utils").exception("listener error")
    (record,) = [r for r in caplog.records if "listener error" in r.getMessage()]
    assert record.name == "procrastinate.utils" and record.levelno == logging.ERROR
    assert record.exc_info is None
    assert record.getMessage() == (
        "listener error (ConnectionRefusedError: connection failed: port 1 refused)"
    )
    assert "Traceback" not in caplog.text
    # psycopg_pool's failed reconnects, libpq's two-line message: its first line
    logging.getLogger("psycopg.pool").warning(
        "error connecting in %r: %s", "runs", "connection failed: refused\n\tIs it running?"
    )
    assert caplog.messages[-1] == "error connecting in 'runs': connection failed: refused"
