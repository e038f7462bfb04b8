"""Mock mode as a whole: loopback only (the ChatKit routes too), per-process session secrets,
the mock backend for every workflow, never a silent fallback to live mode."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from broker.config import load_settings
from broker.loopback import is_local_host_header, is_loopback_address

from ...support import SECRET, app_client, auth
from ...support.mock_broker import user_input

MOCK = {"BROKER_MOCK": "1", "BROKER_LOG_FORMAT": "json"}


async def test_mock_mint_without_token(openai):
    async with app_client(load_settings(MOCK)) as c:
        r = await c.post("/api/chatkit/session", json={"workflow": "topic-generation"})
        broker = c.app.state.broker
        data = r.json()
        workflow = broker.settings.workflow_named("topic-generation")
        admitted = await broker.secrets.admit(data["client_secret"], workflow)
    assert r.status_code == 200, r.text
    assert data["mock"] is True
    assert data["client_secret"].startswith("cks_")
    assert data["session_id"].startswith("bsess_")
    assert data["workflow"] == {"name": "topic-generation", "kind": "mock"}
    backend = data["backend"]
    assert {k: backend[k] for k in ("url", "domain_key")} == {
        "url": "/chatkit/topic-generation",
        "domain_key": "local-dev",
    }
    # mock mode accepts files: the kit turns the attach button on
    assert backend["upload_strategy"] == {"type": "two_phase"}
    assert backend["attachments"]["enabled"] is True
    assert r.headers["x-chatkit-broker-mode"] == "mock"
    assert admitted.identity.user == "mock-user"
    assert admitted.session_id == data["session_id"]
    assert openai.requests == []  # no OpenAI call in mock mode


async def test_mock_secret_opens_its_own_workflow_endpoint_only():
    threads_list = {"type": "threads.list", "params": {"limit": 5}}
    async with app_client(load_settings(MOCK)) as c:
        minted = (
            await c.post("/api/chatkit/session", json={"workflow": "topic-generation"})
        ).json()
        own = await c.post(
            minted["backend"]["url"], json=threads_list, headers=auth(minted["client_secret"])
        )
        other = await c.post(
            "/chatkit/post-writer", json=threads_list, headers=auth(minted["client_secret"])
        )
        unknown = await c.post("/chatkit/nope", json=threads_list)
        alias = await c.post(
            "/mock/chatkit", json=threads_list, headers=auth(minted["client_secret"])
        )
    assert own.status_code == 200, own.text
    assert own.json()["data"] == []
    assert other.status_code == 401
    assert "another workflow" in other.json()["error"]["message"]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert alias.status_code == 200


async def test_mock_every_response_says_mock():
    async with app_client(load_settings(MOCK)) as c:
        for r in (
            await c.get("/api/chatkit/config"),
            await c.get("/api/chatkit/workflows"),
            await c.get("/nope"),
        ):
            assert r.headers["x-chatkit-broker-mode"] == "mock"
        assert (await c.get("/api/chatkit/config")).json()["mode"] == "mock"
        assert (await c.get("/api/chatkit/workflows")).json()["mock"] is True


async def test_token_read_unverified_when_no_key_configured():
    async with app_client(load_settings(MOCK)) as c:
        tok = __import__("jwt").encode(
            {"sub": "dev-bob"}, "any-key-at-all-any-key-at-all-123", "HS256"
        )
        r = await c.post(
            "/api/chatkit/session", json={"workflow": "post-writer"}, headers=auth(tok)
        )
        assert r.status_code == 200
        broker = c.app.state.broker
        admitted = await broker.secrets.admit(
            r.json()["client_secret"], broker.settings.workflow_named("post-writer")
        )
        assert admitted.identity.user == "dev-bob"
        r = await c.post(
            "/api/chatkit/session", json={"workflow": "post-writer"}, headers=auth("garbage")
        )
        assert r.status_code == 401


async def test_token_verified_when_key_configured(token):
    async with app_client(load_settings(MOCK | {"BROKER_JWT_SECRET": SECRET})) as c:
        good = await c.post(
            "/api/chatkit/session", json={"workflow": "post-writer"}, headers=auth(token("carol"))
        )
        bad = await c.post(
            "/api/chatkit/session",
            json={"workflow": "post-writer"},
            headers=auth(token("carol", key="x" * 40)),
        )
    assert good.status_code == 200
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthenticated"


async def test_mock_allowlist_still_applies():
    async with app_client(load_settings(MOCK)) as c:
        r = await c.post("/api/chatkit/session", json={"workflow": "wf_anything"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "workflow_not_allowed"


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.20", "8.8.8.8", "::ffff:10.0.0.1"])
async def test_non_loopback_peer_is_refused(peer):
    async with app_client(load_settings(MOCK), peer=peer) as c:
        r = await c.post(
            "/api/chatkit/session",
            json={"workflow": "topic-generation"},
            headers={"X-Forwarded-For": "127.0.0.1"},
        )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "mock_local_only"
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    "host",
    ["evil.example.com", "evil.example.com:8000", "127.0.0.1.nip.io", "localhost.evil.com", ""],
)
async def test_non_local_host_header_is_refused(host):
    async with app_client(load_settings(MOCK)) as c:
        r = await c.get("/api/chatkit/config", headers={"Host": host})
    assert r.status_code == 403 and r.json()["error"]["code"] == "mock_local_only"


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000", "[::1]", "LOCALHOST"]
)
async def test_local_host_headers_pass(host):
    async with app_client(load_settings(MOCK), peer="::1") as c:
        r = await c.get("/api/chatkit/config", headers={"Host": host})
    assert r.status_code == 200


def test_guards_unit():
    assert (
        is_loopback_address("127.0.0.1")
        and is_loopback_address("127.8.9.10")
        and is_loopback_address("::1")
    )
    assert is_loopback_address("::ffff:127.0.0.1")
    assert (
        not is_loopback_address("10.0.0.1")
        and not is_loopback_address(None)
        and not is_loopback_address("x")
    )
    assert not is_local_host_header("[::1]evil") and not is_local_host_header("localhost:80x")


async def test_live_mode_never_accepts_a_mock_secret(make_settings, openai):
    async with app_client(load_settings(MOCK)) as mock_client:
        secret = (
            await mock_client.post("/api/chatkit/session", json={"workflow": "topic-generation"})
        ).json()["client_secret"]
    async with app_client(make_settings()) as live:
        r = await live.post(
            "/api/chatkit/session", json={"workflow": "support"}, headers=auth(secret)
        )
        cancel = await live.post(
            "/api/chatkit/session/cancel",
            json={"session_id": "cksess_mock_x"},
            headers=auth(secret),
        )
    assert r.status_code == 401 and "session secret" in r.json()["error"]["message"]
    assert cancel.status_code == 401
    assert secret not in r.text
    assert openai.requests == []


async def test_live_mode_has_no_mock_header(client):
    r = await client.get("/api/chatkit/config")
    assert "x-chatkit-broker-mode" not in r.headers


# --- the ChatKit routes behind the guards ----------------------------------------------------

THREADS_CREATE = {"type": "threads.create", "params": {"input": user_input("hi")}}
THREADS_LIST = {"type": "threads.list", "params": {}}


@pytest.mark.parametrize("url", ["/chatkit/topic-generation", "/mock/chatkit"])
@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("10.1.2.3", "127.0.0.1:8000"),  # a non-loopback peer
        ("127.0.0.1", "evil.example:8000"),  # DNS rebinding: loopback peer, foreign Host
        ("127.0.0.1", "localhost.evil.example"),
    ],
)
async def test_loopback_guards_cover_the_chatkit_routes(url, peer, host):
    async with app_client(load_settings(MOCK), peer=peer) as c:
        r = await c.post(
            url, json=THREADS_CREATE, headers={"Host": host, "X-Forwarded-For": "127.0.0.1"}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "mock_local_only"
        # nothing was created behind the guard: mock-user, asking from loopback, has no thread
        local = httpx.ASGITransport(app=c.app, client=("127.0.0.1", 40001))
        async with httpx.AsyncClient(transport=local, base_url="http://127.0.0.1:8000") as own:
            listed = await own.post(url, json=THREADS_LIST)
    assert listed.status_code == 200 and listed.json()["data"] == []


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000"])
async def test_local_hosts_pass_the_guard_of_the_chatkit_route(host):
    async with app_client(load_settings(MOCK)) as c:
        r = await c.post("/chatkit/topic-generation", json=THREADS_LIST, headers={"Host": host})
    assert r.status_code == 200, r.text


async def test_the_mock_routes_do_not_exist_in_live_mode(client):
    response = await client.post("/mock/chatkit", json=THREADS_LIST)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert (await client.get("/mock/chatkit")).status_code == 404  # not 405: no route at all
    config = (await client.get("/api/chatkit/config")).json()
    assert config["mode"] == "live"
    assert config["mock_backend_url"] is None and config["domain_key"] is None


async def test_config_points_the_page_at_the_mock_backend():
    async with app_client(load_settings(MOCK)) as c:
        config = (await c.get("/api/chatkit/config")).json()
    assert config["mode"] == "mock" and config["kinds"] == ["mock"]
    assert config["mock_backend_url"] == "/mock/chatkit"
    assert config["domain_key"] == "local-dev"


def test_the_broker_imports_without_chatkit_or_the_agents_sdk():
    """A hosted-only deployment never loads them: the app and mock's package must import.
    (pydantic is a core dependency now: the settings are a pydantic model.)"""
    code = (
        "import sys\n"
        "for name in ('chatkit', 'agents', 'openai'):\n"
        "    sys.modules[name] = None\n"
        "import broker.app, broker.cli, broker.backends.mock\n"
        "assert broker.backends.mock.MOCK_USER == 'mock-user'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
