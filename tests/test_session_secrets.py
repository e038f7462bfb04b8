"""The broker's own session secrets (cks_…): minted per workflow, refused when altered, expired,
cancelled, of another workflow or signed with a retired key — and nothing reaches a backend."""

from __future__ import annotations

import pytest

from broker.auth import Identity
from broker.backends import Admission
from broker.config import Workflow, load_settings
from broker.errors import Unauthenticated
from broker.registry import MemoryRegistry
from broker.session_secrets import SessionSecrets

from .support import app_client, auth
from .support.chatkit_bodies import create

MOCK = {"BROKER_MOCK": "1", "BROKER_LOG_FORMAT": "json"}
LIST = {"type": "threads.list", "params": {"limit": 5}}
OLD_KEY = "old-session-key-that-is-at-least-32-bytes!"
NEW_KEY = "new-session-key-that-is-at-least-32-bytes!"
SUPPORT = Workflow(name="support", label="Support", kind="agent", agent="app.bot:agent")


async def _minted(keys, *, registry=None, clock=None, workflow=SUPPORT, claims=None):
    registry = registry or MemoryRegistry()
    kw = {"clock": clock} if clock else {}
    secrets = SessionSecrets(keys, registry, **kw)
    admission = Admission(Identity("alice", claims or {}), workflow)
    created = await secrets.create(admission)
    await registry.add(created.session_id, "alice", created.expires_at)
    return secrets, registry, created


async def test_a_secret_admits_its_user_to_its_workflow():
    secrets, _, created = await _minted([NEW_KEY])
    admitted = await secrets.admit(created.client_secret, SUPPORT)
    assert created.client_secret.startswith("cks_")
    assert admitted.identity.user == "alice"
    assert admitted.session_id == created.session_id
    assert admitted.workflow is SUPPORT


async def test_only_the_claims_the_workflow_forwards_ride_along():
    workflow = Workflow(
        name="helpdesk",
        label="Helpdesk",
        kind="gateway",
        server="https://chat.internal/chatkit",
        forward_claims=("email",),
    )
    secrets, _, created = await _minted(
        [NEW_KEY], workflow=workflow, claims={"email": "a@example.com", "role": "admin"}
    )
    admitted = await secrets.admit(created.client_secret, workflow)
    assert dict(admitted.identity.claims) == {"email": "a@example.com"}


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda s: s[:-3] + ("AAA" if not s.endswith("AAA") else "BBB"), id="tampered"),
        pytest.param(lambda s: s[: len(s) // 2], id="truncated"),
        pytest.param(lambda s: "cks_" + s[4:].replace(".", "!"), id="re-encoded"),
        pytest.param(lambda s: s[4:], id="prefix-stripped"),
        pytest.param(lambda s: s + "x" * 9000, id="oversized"),
    ],
)
async def test_an_altered_secret_is_refused(mangle):
    secrets, _, created = await _minted([NEW_KEY])
    with pytest.raises(Unauthenticated) as refused:
        await secrets.admit(mangle(created.client_secret), SUPPORT)
    assert "not valid here" in refused.value.message
    assert created.client_secret not in refused.value.message


async def test_expiry_is_the_workflows_lifetime():
    now = [1_000_000.0]
    workflow = Workflow(name="support", label="S", kind="agent", agent="a.b:c", expires_after=60)
    registry = MemoryRegistry(clock=lambda: now[0])
    secrets, _, created = await _minted(
        [NEW_KEY], registry=registry, clock=lambda: now[0], workflow=workflow
    )
    assert created.expires_at == 1_000_060
    await secrets.admit(created.client_secret, workflow)
    now[0] += 60
    with pytest.raises(Unauthenticated) as refused:
        await secrets.admit(created.client_secret, workflow)
    assert "expired" in refused.value.message


async def test_a_cancelled_session_is_refused():
    secrets, registry, created = await _minted([NEW_KEY])
    await registry.remove(created.session_id)
    with pytest.raises(Unauthenticated) as refused:
        await secrets.admit(created.client_secret, SUPPORT)
    assert "cancelled" in refused.value.message


async def test_rotation_keeps_old_secrets_while_the_old_key_is_listed():
    old, registry, created = await _minted([OLD_KEY])
    rotated = SessionSecrets([NEW_KEY, OLD_KEY], registry)  # the first signs, all verify
    assert (await rotated.admit(created.client_secret, SUPPORT)).identity.user == "alice"
    fresh = await rotated.create(Admission(Identity("bob", {}), SUPPORT))
    with pytest.raises(Unauthenticated):  # signed with the new key, which `old` does not know
        await old.admit(fresh.client_secret, SUPPORT)
    retired = SessionSecrets([NEW_KEY], registry)
    with pytest.raises(Unauthenticated):
        await retired.admit(created.client_secret, SUPPORT)


# --- through HTTP, in mock mode (the kind that needs no outside server) ----------------------


async def test_cancel_through_the_api_closes_the_chatkit_endpoint():
    async with app_client(load_settings(MOCK)) as c:
        minted = (await c.post("/api/chatkit/session", json={"workflow": "post-writer"})).json()
        url, secret = minted["backend"]["url"], minted["client_secret"]
        before = await c.post(url, json=LIST, headers=auth(secret))
        cancel = await c.post(
            "/api/chatkit/session/cancel", json={"session_id": minted["session_id"]}
        )
        after = await c.post(url, json=LIST, headers=auth(secret))
    assert before.status_code == 200
    assert cancel.json() == {"cancelled": [minted["session_id"]]}
    assert after.status_code == 401
    assert after.json()["error"]["code"] == "unauthenticated"
    assert secret not in after.text


async def test_refresh_with_previous_session_id_retires_the_old_secret():
    async with app_client(load_settings(MOCK)) as c:
        first = (await c.post("/api/chatkit/session", json={"workflow": "post-writer"})).json()
        second = (
            await c.post(
                "/api/chatkit/session",
                json={"workflow": "post-writer", "previous_session_id": first["session_id"]},
            )
        ).json()
        old = await c.post(first["backend"]["url"], json=LIST, headers=auth(first["client_secret"]))
        new = await c.post(
            second["backend"]["url"], json=LIST, headers=auth(second["client_secret"])
        )
    assert old.status_code == 401
    assert new.status_code == 200


async def test_a_session_secret_is_not_a_sign_in_token():
    async with app_client(load_settings(MOCK)) as c:
        minted = (await c.post("/api/chatkit/session", json={"workflow": "post-writer"})).json()
        r = await c.get("/api/chatkit/workflows", headers=auth(minted["client_secret"]))
    assert r.status_code == 401
    assert "only good at its own workflow's ChatKit endpoint" in r.json()["error"]["message"]


async def test_a_secret_in_the_query_string_is_ignored(token):
    key = "k" * 40
    async with app_client(load_settings(MOCK | {"BROKER_JWT_SECRET": key})) as c:
        minted = (
            await c.post(
                "/api/chatkit/session",
                json={"workflow": "post-writer"},
                headers=auth(token("carol", key=key)),
            )
        ).json()
        url, secret = minted["backend"]["url"], minted["client_secret"]
        made = await c.post(url, json=create("hi"), headers=auth(secret))
        carols = await c.post(url, json=LIST, headers=auth(secret))
        # no header: mock mode's anonymous user, whatever the query string carries
        queried = await c.post(f"{url}?access_token={secret}", json=LIST)
    assert made.status_code == 200
    assert len(carols.json()["data"]) == 1
    assert queried.status_code == 200
    assert queried.json()["data"] == []
