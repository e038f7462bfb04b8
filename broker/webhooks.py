"""Signed webhooks for background runs: ``run.completed``, ``run.failed``, ``run.cancelled``.

Each event is a row in the thread database, inserted in the transaction that finished the
run, so a delivery survives a restart and is made at least once. Any instance delivers due
rows (claimed with a conditional update, so two do not send the same attempt at once),
signed by the Standard Webhooks reference library; a failure (timeout, non-2xx, a redirect,
which is never followed) is retried with exponential back-off for a day.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import sqlalchemy as sa
from standardwebhooks import Webhook

if TYPE_CHECKING:
    from .backends.agent.store import SQLStore

log = logging.getLogger("broker.webhooks")

RETRY_FOR = 24 * 3600.0  # seconds a delivery is retried
FIRST_RETRY = 5.0  # then 10, 20, 40 … seconds, at most MAX_BACKOFF apart
MAX_BACKOFF = 3600.0
SEND_TIMEOUT = 10.0
CLAIM = 60.0  # an attempt in flight is not re-sent by another instance before this
POLL = 2.0
EVENTS = {"completed": "run.completed", "failed": "run.failed", "cancelled": "run.cancelled"}


def check_url(value: str) -> str:
    """https, or http to a loopback address (a receiver on the same machine, for development)."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return value
    raise ValueError("must be an https:// URL (http:// only to a loopback address)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secret(value: str) -> str:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24-64 random bytes."""
    if not value.startswith("whsec_"):
        raise ValueError("must be a Standard Webhooks secret, whsec_ and base64")
    try:
        raw = base64.b64decode(value[6:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if not 24 <= len(raw) <= 64:
        raise ValueError("must hold 24-64 bytes (whsec_ + base64 of 32 random bytes)")
    return value


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def backoff(attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: 5, 10, 20, … capped at an hour."""
    return min(FIRST_RETRY * 2 ** max(attempts - 1, 0), MAX_BACKOFF)


class Webhooks:
    """Records, delivers and redelivers the webhooks of the workflows that configure one."""

    def __init__(self, store: SQLStore, targets: Mapping[str, tuple[str, str]]) -> None:
        from .backends.agent.store import webhook_deliveries

        self.store = store
        self.table = webhook_deliveries
        self.targets = dict(targets)  # workflow -> (url, secret)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def record(self, conn: Any, run: dict[str, Any]) -> None:
        """Insert the event for a run that just ended (inside the transaction that ended it)."""
        target = self.targets.get(run["workflow"])
        event = EVENTS.get(run["status"])
        if target is None or event is None:
            return
        now = time.time()
        payload = {
            "type": event,
            "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            "data": run,
        }
        await conn.execute(
            self.table.insert().values(
                id="msg_" + secrets.token_hex(16),
                run_id=run["id"],
                workflow=run["workflow"],
                event=event,
                payload=json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        self._wake.set()

    # --- delivery -------------------------------------------------------------------------

    def start(self) -> None:
        if self.targets and self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except Exception as exc:  # the database down: try again next round
                log.warning("webhooks: delivery round failed: %s", type(exc).__name__)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)

    async def deliver_due(self) -> int:
        """Send every due delivery once; how many were attempted."""
        t = self.table
        now = time.time()
        async with self.store.transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.next_attempt_at)
                    .where(t.c.status == "pending", t.c.next_attempt_at <= now)
                    .order_by(t.c.next_attempt_at)
                    .limit(20)
                )
            ).all()
        sent = 0
        for row in rows:
            claimed = await self._claim(row.id, row.next_attempt_at, now + CLAIM)
            if claimed is not None:
                await self._attempt(claimed)
                sent += 1
        return sent

    async def _claim(self, delivery_id: str, due: float, until: float) -> Any:
        t = self.table

        async def work(conn: Any) -> Any:
            result = await conn.execute(
                t.update()
                .where(t.c.id == delivery_id, t.c.status == "pending", t.c.next_attempt_at == due)
                .values(next_attempt_at=until)
            )
            if result.rowcount != 1:
                return None
            return (await conn.execute(sa.select(t).where(t.c.id == delivery_id))).first()

        return await self.store.write(work)

    async def _attempt(self, row: Any) -> None:
        target = self.targets.get(row.workflow)
        outcome, ok = ("workflow has no webhook_url now", False)
        if target is not None:
            outcome, ok = await self._send(row.id, row.payload, *target)
        attempts = row.attempts + 1
        now = time.time()
        values: dict[str, Any] = {"attempts": attempts, "last_result": outcome}
        if ok:
            values |= {"status": "delivered", "delivered_at": now}
        elif now + backoff(attempts) - row.created_at > RETRY_FOR:
            values |= {"status": "failed"}
        else:
            values |= {"next_attempt_at": now + backoff(attempts)}
        log.info(
            "webhook %s",
            "delivered" if ok else "not delivered",
            extra={
                "event": row.event,
                "run": row.run_id,
                "workflow": row.workflow,
                "delivery": row.id,
                "attempt": attempts,
                "outcome": outcome,
            },
        )
        t = self.table

        async def work(conn: Any) -> None:
            await conn.execute(t.update().where(t.c.id == row.id).values(**values))

        await self.store.write(work)

    async def _send(self, msg_id: str, payload: str, url: str, secret: str) -> tuple[str, bool]:
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "chatkit-broker-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(SEND_TIMEOUT))
        try:
            async with self._session.post(
                url, data=payload.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return "timed out", False
        except aiohttp.ClientError as exc:
            return f"connection failed ({type(exc).__name__})", False
        if 200 <= status < 300:
            return f"HTTP {status}", True
        if 300 <= status < 400:
            return f"HTTP {status} (redirects are not followed)", False
        return f"HTTP {status}", False

    # --- the CLI --------------------------------------------------------------------------

    async def list(self, run_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        t = self.table
        query = sa.select(t).order_by(t.c.created_at.desc()).limit(limit)
        if run_id:
            query = query.where(t.c.run_id == run_id)
        async with self.store.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "id": r.id,
                "run": r.run_id,
                "workflow": r.workflow,
                "event": r.event,
                "status": r.status,
                "attempts": r.attempts,
                "last_result": r.last_result,
                "next_attempt_at": r.next_attempt_at if r.status == "pending" else None,
            }
            for r in rows
        ]

    async def redeliver(self, delivery_id: str) -> bool:
        """Make a delivery due now again (whatever its status); whether it exists."""
        t = self.table

        async def work(conn: Any) -> int:
            result = await conn.execute(
                t.update()
                .where(t.c.id == delivery_id)
                .values(status="pending", next_attempt_at=time.time(), created_at=time.time())
            )
            return int(result.rowcount)

        return bool(await self.store.write(work))
