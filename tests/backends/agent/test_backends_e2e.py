"""Back ends as first-class callers (issue 28), as a team's back end meets them: a service key
made with the CLI, a background run for a named user on one ``chatkit-broker serve``, read
back on a second one sharing the database (SQLite file or PostgreSQL), a Standard Webhooks
delivery verified with the spec's reference library, and a broker killed mid-run."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from broker.webhooks import new_secret

from ...support import API_KEY, SECRET, BrokerProcess
from ...support.fake_responses import FakeResponses, text
from ...support.processes import base_env, cli_command
from .test_processes import ROOT, SESSION_SECRET, token

USER = "1764168881795908"


class Receiver:
    """A webhook receiver on loopback: records every POST; answers 500 ``fail_first`` times."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self.statuses: list[int] = []  # answers for the first POSTs, then 204
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                receiver.paths.append(self.path)
                receiver.deliveries.append(
                    ({k.lower(): v for k, v in self.headers.items()}, body, status)
                )
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("location", "/elsewhere")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/runs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, status in self.deliveries if status == 204]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def setup(
    tmp_path: Path, responses: FakeResponses, db_url: str, hook: Receiver
) -> tuple[dict, str]:
    secret = new_secret()
    (tmp_path / "workflows.toml").write_text(
        "[workflows.support]\n"
        f'agent = "{ROOT}/examples/agent/support_agent.py:agent"\n'
        f'webhook_url = "{hook.url}"\n'
        f'webhook_secret = "{secret}"\n'
        "[workflows.billing]\n"
        f'agent = "{ROOT}/examples/agent/support_agent.py:agent"\n'
    )
    env = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml"),
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
        "BROKER_LOG_FORMAT": "json",
        "BROKER_RUN_LEASE": "3",
    }
    return env, secret


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    full = {**base_env(), **env}
    return subprocess.run(
        [*cli_command(), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def create_key(env: dict[str, str], cwd: Path, *flags: str) -> tuple[str, str]:
    name = "crm-" + secrets.token_hex(3)
    done = cli(env, cwd, "keys", "create", "--name", name, "--workflows", "support", *flags)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key.startswith("ckb_sk_") and len(key) > 40
    return name, key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_back_end_runs_a_workflow_for_a_user_in_the_background(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    db_url: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    env, secret = setup(tmp_path, responses, db_url, receiver)
    name, key = create_key(env, tmp_path, "--act-for-users")
    first, second = run_broker(env), run_broker(env)
    # the model takes a while (2 s), as a long structured answer does
    responses.script(text('{"score": 7, "plan": "walk daily"}', chunks=4, delay=0.5))
    started = time.monotonic()
    body = {"input": {"profile": {"age": 41}}, "user": USER, "background": True}
    headers = bearer(key) | {"Idempotency-Key": "profile-41"}
    r = httpx.post(
        f"{first.url}/api/workflows/support/runs", json=body, headers=headers, timeout=10
    )
    assert r.status_code == 202, r.text
    assert time.monotonic() - started < 1.5  # at once, not when the model is done
    run = r.json()
    assert run["id"].startswith("run_") and run["status"] in ("queued", "in_progress")
    assert run["thread_id"].startswith("thr_")
    # a retried POST with the same Idempotency-Key is the same run, not a second one
    again = httpx.post(f"{second.url}/api/workflows/support/runs", json=body, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == run["id"]

    def done() -> dict[str, Any] | None:
        got = httpx.get(f"{second.url}/api/runs/{run['id']}", headers=bearer(key), timeout=10)
        assert got.status_code == 200, got.text
        return got.json() if got.json()["status"] == "completed" else None

    finished = wait_for(done, 30, "the run to complete")
    assert finished["output"] == {"score": 7, "plan": "walk daily"}
    assert finished["thread_id"] == run["thread_id"] and finished["user"] == USER
    assert len(responses.requests) == 1  # one model call: the retried POST ran nothing

    # the webhook, signed per Standard Webhooks, verified with the reference library
    wait_for(receiver.accepted, 15, "the webhook")
    headers_seen, raw, _ = receiver.deliveries[0]
    event = Webhook(secret).verify(raw, headers_seen)
    assert event["type"] == "run.completed"
    assert event["data"]["id"] == run["id"] and event["data"]["output"]["score"] == 7
    assert headers_seen["webhook-id"].startswith("msg_")
    with pytest.raises(Exception):  # noqa: B017 (the library raises its own WebhookVerificationError)
        Webhook(new_secret()).verify(raw, headers_seen)

    # the user sees the run's thread in their history, with the message and the answer
    threads = httpx.get(f"{first.url}/api/threads?workflow=support", headers=token(USER))
    assert run["thread_id"] in [t["id"] for t in threads.json()["data"]]
    # …and so does the run record; another user does not
    assert httpx.get(f"{first.url}/api/runs/{run['id']}", headers=token(USER)).status_code == 200
    assert httpx.get(f"{first.url}/api/runs/{run['id']}", headers=token("eve")).status_code == 404

    # the CLI: the key listed (never itself), its delivery listed as delivered
    listed = cli(env, tmp_path, "keys", "list")
    assert name in listed.stdout and "act-for-users" in listed.stdout and key not in listed.stdout
    hooks = cli(env, tmp_path, "webhooks", "list", "--run", run["id"])
    assert "run.completed" in hooks.stdout and "delivered" in hooks.stdout
    # one structured line per use: key name, user, workflow, run; never the key
    lines = [json.loads(line) for line in first.logs().splitlines() if line.startswith("{")]
    used = [x for x in lines if x.get("service_key") == name and x.get("run") == run["id"]]
    assert used and used[0]["user"] == USER and used[0]["workflow"] == "support"
    assert key not in first.logs() + second.logs()


def executing(db_url: str, run_id: str, brokers: list[BrokerProcess]) -> BrokerProcess:
    """The broker running ``run_id``: its record's owner, named in that broker's start-up log."""
    import asyncio

    import sqlalchemy as sa

    from broker.backends.agent.store import SQLStore, background_runs
    from broker.settings import resolve_database_url

    async def owner() -> str:
        store = SQLStore(resolve_database_url(db_url))
        try:
            async with store.transaction() as conn:
                t = background_runs
                return await conn.scalar(sa.select(t.c.owner).where(t.c.id == run_id))
        finally:
            await store.close()

    instance = asyncio.run(owner())
    (found,) = [b for b in brokers if f"this instance: {instance})" in b.logs()]
    return found


def test_a_broker_killed_mid_run_leaves_the_run_failed_not_stuck(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    db_url: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    env, secret = setup(tmp_path, responses, db_url, receiver)
    _, key = create_key(env, tmp_path, "--act-for-users")
    first, second = run_broker(env), run_broker(env)
    responses.script(text("never finished", chunks=4, hang_after=1))
    body = {"input": "a long job", "user": USER, "background": True}
    r = httpx.post(f"{first.url}/api/workflows/support/runs", json=body, headers=bearer(key))
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    assert responses.hanging.wait(15)
    # SQLite: the instance that accepted it runs it; PostgreSQL: whichever took it off the queue
    doomed = executing(db_url, run_id, [first, second])
    survivor = second if doomed is first else first
    status = httpx.get(f"{survivor.url}/api/runs/{run_id}", headers=bearer(key)).json()["status"]
    assert status == "in_progress"
    doomed.proc.kill()  # SIGKILL: no shutdown, no chance to record anything
    doomed.proc.wait(5)
    killed = time.monotonic()

    def failed() -> dict[str, Any] | None:
        got = httpx.get(f"{survivor.url}/api/runs/{run_id}", headers=bearer(key)).json()
        return got if got["status"] != "in_progress" else None

    final = wait_for(failed, 15, "the run to be marked failed")
    assert time.monotonic() - killed < 8  # BROKER_RUN_LEASE=3 bounds it
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost"
    responses.release()
    # the survivor delivers run.failed, signed
    wait_for(receiver.accepted, 15, "the run.failed webhook")
    headers_seen, raw, _ = receiver.deliveries[0]
    assert Webhook(secret).verify(raw, headers_seen)["type"] == "run.failed"


def test_bad_keys_and_what_a_key_may_not_do(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    db_url: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    env, _ = setup(tmp_path, responses, db_url, receiver)
    plain_name, plain = create_key(env, tmp_path)  # not allowed to act for users
    broker = run_broker(env)
    url = f"{broker.url}/api/workflows/support/runs"
    revoked_name, revoked = create_key(env, tmp_path, "--act-for-users")
    assert cli(env, tmp_path, "keys", "revoke", revoked_name).returncode == 0
    messages = set()
    for bad in (revoked, "ckb_sk_" + "A" * 43, "ckb_sk_short", plain[:-1] + "x"):
        r = httpx.post(url, json={"input": "hi"}, headers=bearer(bad))
        assert r.status_code == 401, r.text
        messages.add(r.json()["error"]["message"])
    assert len(messages) == 1  # never says which part was wrong
    # a key without --act-for-users may not name a user; it runs as itself
    r = httpx.post(url, json={"input": "hi", "user": USER}, headers=bearer(plain))
    assert r.status_code == 403, r.text
    responses.script(text("Hello, back end."))
    r = httpx.post(url, json={"input": "hi"}, headers=bearer(plain))
    assert r.status_code == 200 and r.json()["output"] == "Hello, back end.", r.text
    own = httpx.get(f"{broker.url}/api/threads?workflow=support", headers=bearer(plain))
    assert r.json()["thread_id"] in [t["id"] for t in own.json()["data"]]
    # a workflow the key does not name; a key on a route it is not for
    r = httpx.post(
        f"{broker.url}/api/workflows/billing/runs", json={"input": "hi"}, headers=bearer(plain)
    )
    assert r.status_code == 403, r.text
    r = httpx.post(
        f"{broker.url}/api/chatkit/session", json={"workflow": "support"}, headers=bearer(plain)
    )
    assert r.status_code == 401
    # bad background bodies
    r = httpx.post(url, json={"input": "hi", "background": "yes"}, headers=bearer(plain))
    assert r.status_code == 400
    r = httpx.post(
        url,
        json={"input": "hi", "background": True},
        headers=bearer(plain) | {"Idempotency-Key": "x" * 201},
    )
    assert r.status_code == 400
    assert httpx.get(f"{broker.url}/api/runs/run_nope", headers=bearer(plain)).status_code == 404
    assert plain_name in broker.logs() and plain not in broker.logs()


def test_cancel_on_another_instance_and_a_webhook_retried_past_500_and_a_redirect(
    run_broker: Callable[..., BrokerProcess],
    responses: FakeResponses,
    db_url: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    env, secret = setup(tmp_path, responses, db_url, receiver)
    receiver.statuses = [500, 307]  # then 204: retried after 5 s and 10 s, never redirected
    _, key = create_key(env, tmp_path)
    first, second = run_broker(env), run_broker(env)
    responses.script(text("never finished", chunks=4, hang_after=1))
    r = httpx.post(
        f"{first.url}/api/workflows/support/runs",
        json={"input": "long", "background": True},
        headers=bearer(key),
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    assert responses.hanging.wait(15)
    cancelled = httpx.post(f"{second.url}/api/runs/{run_id}/cancel", headers=bearer(key))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # the instance running it stops it at its next lease renewal (BROKER_RUN_LEASE/3 = 1 s)
    # and hangs up on the model, whose reply is still silent (waited for, not guessed: a busy
    # machine renews late); a run left going would keep the reply hanging until this fails
    assert responses.disconnected.wait(60), "the cancelled run kept its model call"
    responses.release()
    got = httpx.get(f"{first.url}/api/runs/{run_id}", headers=bearer(key)).json()
    assert got["status"] == "cancelled" and got["error"]["code"] == "cancelled"
    # cancelling a finished run changes nothing
    again = httpx.post(f"{first.url}/api/runs/{run_id}/cancel", headers=bearer(key))
    assert again.json()["status"] == "cancelled"
    wait_for(receiver.accepted, 40, "the run.cancelled webhook, third attempt")
    assert [status for _, _, status in receiver.deliveries] == [500, 307, 204]
    assert receiver.paths == ["/hooks/runs"] * 3  # the redirect was not followed
    ids = {headers["webhook-id"] for headers, _, _ in receiver.deliveries}
    assert len(ids) == 1  # one message, retried: receivers dedupe on webhook-id
    headers_seen, raw, _ = receiver.deliveries[-1]
    assert Webhook(secret).verify(raw, headers_seen)["type"] == "run.cancelled"
    listed = cli(env, tmp_path, "webhooks", "list", "--run", run_id).stdout
    assert "delivered" in listed and "attempts=3" in listed
    # redeliver: sent once more, same id
    delivery = listed.split("\t", 1)[0]
    assert cli(env, tmp_path, "webhooks", "redeliver", delivery).returncode == 0
    wait_for(lambda: len(receiver.deliveries) == 4, 15, "the redelivery")
    assert receiver.deliveries[-1][0]["webhook-id"] == delivery
