"""Service keys and background runs through the broker's real HTTP routes, in-process (the
two-process story is test_backends_e2e.py): what a key may not do, a signed-in user's own
background run, a background run of a workflow that is not an agent, and the workflows-file
checks of webhook_url / webhook_secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from broker.backends.agent.store import SQLStore, resolve_database_url
from broker.config import ConfigError, load_settings
from broker.logs import redact
from broker.service_keys import ServiceKeys, parse_rate
from broker.webhooks import new_secret

from ...support import WF_SUPPORT, app_client, auth
from ...support.fake_responses import FakeResponses, text

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
AGENTS = "support=examples.agent.support_agent:agent,triage=examples.agent.support_agent:agent"


@pytest.fixture
def agent_env(base_env: dict[str, str], responses: FakeResponses, db_url: str) -> dict[str, str]:
    return {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": f"{AGENTS},hosted={WF_SUPPORT}",
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
    }


@pytest.fixture
async def client(agent_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(load_settings(agent_env)) as c:
        yield c


async def make_key(db_url: str, workflows: list[str], **kw: object) -> str:
    store = SQLStore(resolve_database_url(db_url))
    await store.start()
    try:
        import secrets

        return await ServiceKeys(store).create(f"k-{secrets.token_hex(4)}", workflows, **kw)
    finally:
        await store.close()


async def poll(client: httpx.AsyncClient, run_id: str, headers: dict[str, str]) -> dict:
    for _ in range(150):
        got = await client.get(f"/api/runs/{run_id}", headers=headers)
        assert got.status_code == 200, got.text
        if got.json()["status"] not in ("queued", "in_progress"):
            return got.json()
        await asyncio.sleep(0.1)
    raise AssertionError("the run did not finish")


async def test_a_signed_in_user_runs_in_the_background_too(
    client: httpx.AsyncClient, token: Callable[..., str], responses: FakeResponses
) -> None:
    responses.script(text('{"ok": true}'))
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "go", "background": True},
        headers=auth(token("alice")),
    )
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/runs/{r.json()['id']}"
    done = await poll(client, r.json()["id"], auth(token("alice")))
    assert done["status"] == "completed" and done["output"] == {"ok": True}
    # bob cannot see it, nor cancel it
    assert (
        await client.get(f"/api/runs/{done['id']}", headers=auth(token("bob")))
    ).status_code == 404
    cancel = await client.post(f"/api/runs/{done['id']}/cancel", headers=auth(token("bob")))
    assert cancel.status_code == 404
    # a JWT caller cannot name another user
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "go", "user": "bob"},
        headers=auth(token("alice")),
    )
    assert r.status_code == 400 and "user" in r.json()["error"]["message"]


async def test_a_background_run_of_a_workflow_that_is_not_an_agent_is_a_400(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    r = await client.post(
        "/api/workflows/hosted/runs",
        json={"input": "go", "background": True},
        headers=auth(token("alice")),
    )
    assert r.status_code == 400, r.text
    assert "agent workflows" in r.json()["error"]["message"]
    anonymous = await client.post("/api/workflows/hosted/runs", json={"background": True})
    assert anonymous.status_code == 401


async def test_a_key_is_good_only_where_it_is_meant_to_be(
    client: httpx.AsyncClient, db_url: str, responses: FakeResponses
) -> None:
    key = await make_key(db_url, ["support"], act_for_users=True)
    # not at the mint, nor at a ChatKit endpoint, nor for another workflow
    for method, path, body in (
        ("POST", "/api/chatkit/session", {"workflow": "support"}),
        ("GET", "/api/chatkit/workflows", None),
    ):
        r = await client.request(method, path, json=body, headers=auth(key))
        assert r.status_code == 401, (path, r.text)
        assert key not in r.text
    r = await client.post(
        "/chatkit/support", json={"type": "threads.list", "params": {}}, headers=auth(key)
    )
    assert r.status_code == 401
    r = await client.post("/api/workflows/triage/runs", json={"input": "x"}, headers=auth(key))
    assert r.status_code == 403
    # acting for a user: the run is theirs; the key reads it back with ?user=
    responses.script(text("For Carol."))
    r = await client.post(
        "/api/workflows/support/runs", json={"input": "x", "user": "carol"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    thread_id = r.json()["thread_id"]
    page = await client.get("/api/threads?workflow=support&user=carol", headers=auth(key))
    assert [t["id"] for t in page.json()["data"]] == [thread_id]
    own = await client.get("/api/threads?workflow=support", headers=auth(key))
    assert own.json()["data"] == []  # the key's own history: not carol's
    found = await client.get(f"/api/threads/{thread_id}/items?user=carol", headers=auth(key))
    assert found.status_code == 200 and len(found.json()["data"]) == 2
    other = await client.get(f"/api/threads/{thread_id}/items?user=dave", headers=auth(key))
    assert other.status_code == 404
    # a user id that is not one
    r = await client.post(
        "/api/workflows/support/runs", json={"input": "x", "user": 7}, headers=auth(key)
    )
    assert r.status_code == 400


async def test_a_keys_rate_limits_it(client: httpx.AsyncClient, db_url: str) -> None:
    key = await make_key(db_url, ["support"], rate_per_minute=2)
    statuses = []
    for _ in range(3):
        r = await client.get("/api/threads?workflow=support", headers=auth(key))
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]


def test_rates_parse() -> None:
    assert parse_rate("60/minute") == 60
    assert parse_rate("2/second") == 120
    assert parse_rate("30/hour") == 1
    with pytest.raises(ValueError):
        parse_rate("lots")


def test_a_service_key_is_redacted_from_log_text() -> None:
    key = "ckb_sk_" + "Ab1_-" * 8 + "xyz"
    assert key not in redact(f"oops: key={key} failed")


@pytest.mark.parametrize(
    ("url", "secret", "says"),
    [
        ("http://hooks.example.com/x", None, "https"),
        ("ftp://hooks.example.com/x", None, "https"),
        ("https://hooks.example.com/x", "whsec_notbase64!", "base64"),
        ("https://hooks.example.com/x", "secret", "whsec_"),
        ("https://hooks.example.com/x", "", "go together"),
    ],
)
def test_webhook_keys_in_the_workflows_file_are_checked(
    base_env: dict[str, str], tmp_path: Path, url: str, secret: str | None, says: str
) -> None:
    secret = new_secret() if secret is None else secret
    lines = ["[workflows.support]", 'agent = "examples.agent.support_agent:agent"']
    lines.append(f'webhook_url = "{url}"')
    if secret:
        lines.append(f'webhook_secret = "{secret}"')
    (tmp_path / "wf.toml").write_text("\n".join(lines) + "\n")
    env = base_env | {
        "BROKER_WORKFLOWS": "",
        "BROKER_WORKFLOWS_FILE": str(tmp_path / "wf.toml"),
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": "memory",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    text_ = "\n".join(caught.value.problems)
    assert says in text_ and "webhook" in text_
    assert secret[6:] not in text_ or not secret.startswith("whsec_")


async def test_no_sign_in_token_passes_for_a_keys_own_history(
    client: httpx.AsyncClient, db_url: str, token: Callable[..., str], responses: FakeResponses
) -> None:
    """A key without --act-for-users runs as key:<name>; a JWT whose sub says that is refused,
    so no token reads a key's threads."""
    key = await make_key(db_url, ["support"])
    responses.script(text("Key's own."))
    r = await client.post("/api/workflows/support/runs", json={"input": "x"}, headers=auth(key))
    assert r.status_code == 200
    listed = await client.get("/api/threads?workflow=support", headers=auth(key))
    name = listed.json()["data"][0]["id"]
    for user in [f"key:{n}" for n in ("whatever", "k")]:
        got = await client.get("/api/threads?workflow=support", headers=auth(token(user)))
        assert got.status_code == 401, got.text
    assert name == r.json()["thread_id"]


async def test_a_background_run_past_its_budget_is_refused_before_it_is_queued(
    agent_env: dict[str, str], tmp_path: Path, token: Callable[..., str], responses: FakeResponses
) -> None:
    """A key acting for a user, or the user, cannot get round a spent budget by going to the
    background: the POST is the same 429 ``budget_exceeded`` a synchronous run gets."""
    (tmp_path / "workflows.toml").write_text(
        '[workflows.closed]\nagent = "examples.agent.support_agent:agent"\n'
        "[workflows.closed.budget]\ntokens_per_user_per_day = 0\n"
    )
    env = {**agent_env, "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml")}
    key = await make_key(env["BROKER_DATABASE_URL"], ["closed"], act_for_users=True)
    async with app_client(load_settings(env)) as c:
        for headers, body in (
            (auth(token("alice")), {"input": "go", "background": True}),
            (auth(key), {"input": "go", "background": True, "user": "alice"}),
        ):
            r = await c.post("/api/workflows/closed/runs", json=body, headers=headers)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "budget_exceeded"
            assert r.json()["budget"]["name"] == "tokens_per_user_per_day"
    assert responses.requests == []  # nothing ran


async def test_a_key_may_not_run_a_workflow_with_require(
    agent_env: dict[str, str], tmp_path: Path, token: Callable[..., str], responses: FakeResponses
) -> None:
    """``require`` asks claims of a user's sign-in; a key cannot show them for the user it
    names (nor for itself), so a key is refused there (403), while the user's own token with
    the claim runs it."""
    (tmp_path / "workflows.toml").write_text(
        '[workflows.pro]\nagent = "examples.agent.support_agent:agent"\n'
        '[workflows.pro.require]\nplan = "pro"\n'
    )
    env = {**agent_env, "BROKER_WORKFLOWS_FILE": str(tmp_path / "workflows.toml")}
    acting = await make_key(env["BROKER_DATABASE_URL"], ["pro"], act_for_users=True)
    itself = await make_key(env["BROKER_DATABASE_URL"], ["pro"])
    async with app_client(load_settings(env)) as c:
        for key, extra in ((acting, {"user": "alice"}), (itself, {})):
            for background in (False, True):
                r = await c.post(
                    "/api/workflows/pro/runs",
                    json={"input": "go", "background": background, **extra},
                    headers=auth(key),
                )
                assert r.status_code == 403, r.text
                assert "require" in r.json()["error"]["message"]
            listed = await c.get("/api/threads?workflow=pro&user=alice", headers=auth(acting))
            assert listed.status_code == 403
        assert responses.requests == []
        responses.script(text("For pro users."))
        r = await c.post(
            "/api/workflows/pro/runs",
            json={"input": "go"},
            headers=auth(token("alice", plan="pro")),
        )
        assert r.status_code == 200 and r.json()["output"] == "For pro users.", r.text


async def test_each_route_accepts_exactly_the_credentials_its_documented_security_names(
    client, agent_env, db_url, token
) -> None:
    """/openapi.json (and so docs/reference/http-api.md) lists per operation the credentials
    it takes (the document this broker serves: its routes); each is tried on every authenticated operation: a listed one gets past the
    gate (anything but 401), an unlisted one is a 401."""
    key = await make_key(db_url, ["support"])
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token("alice"))
    )
    secret = minted.json()["client_secret"]
    credentials = {"bearerAuth": token("alice"), "serviceKey": key, "sessionSecret": secret}
    params = {
        "name": "support",
        "workflow": "support",
        "thread_id": "thr_none",
        "run_id": "run_none",
    }
    tried = 0
    served = (await client.get("/openapi.json")).json()  # what this broker routes
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            security = op.get("security") or []
            if not security or {} in security:
                continue  # open routes (signed URLs, health, documents)
            url = path.format(**params)
            query = {"workflow": "support"} if path == "/api/threads" else {}
            listed = {name for alt in security for name in alt}
            assert listed <= set(credentials), (path, listed)
            for scheme, credential in credentials.items():
                r = await client.request(
                    method.upper(),
                    url,
                    params=query,
                    json={} if method == "post" else None,
                    headers=auth(credential),
                )
                tried += 1
                if scheme in listed:
                    assert r.status_code != 401, (method, path, scheme, r.text)
                else:
                    assert r.status_code == 401, (method, path, scheme, r.status_code, r.text)
    assert tried >= 30
