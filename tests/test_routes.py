"""The HTTP API through the ASGI app, against the fake OpenAI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support import API_KEY, WF_SALES, WF_SUPPORT, app_client, auth


async def test_mint_plain_workflow_sends_exact_upstream_request(client, openai, token):
    r = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token("alice"))
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["client_secret"].startswith("ek_")
    assert data["session_id"].startswith("cksess_")
    assert data["workflow"] == {"name": "support", "kind": "hosted", "id": WF_SUPPORT}
    assert data["backend"] is None  # ChatKit talks to OpenAI with this secret
    assert data["mock"] is False
    assert isinstance(data["expires_at"], int)
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-request-id"]

    [req] = openai.session_requests()
    assert req.method == "POST"
    assert req.headers["Authorization"] == f"Bearer {API_KEY}"
    assert req.headers["OpenAI-Beta"] == "chatkit_beta=v1"
    assert req.headers["Content-Type"] == "application/json"
    assert "OpenAI-Organization" not in req.headers and "OpenAI-Project" not in req.headers
    assert req.body == {"workflow": {"id": WF_SUPPORT}, "user": "alice"}


async def test_mint_with_every_option(make_settings, openai, token, tmp_path: Path):
    wf_file = tmp_path / "workflows.toml"
    wf_file.write_text(
        f"""
[workflows.full]
id = "{WF_SALES}"
label = "Everything"
version = "3"
expires_after = 120
max_requests_per_minute = 7
tracing = false
automatic_thread_titling = false
file_upload = {{ enabled = true, max_file_size = 20, max_files = 5 }}
history = {{ enabled = true, recent_threads = 20 }}
require = {{ role = "pro" }}
state_variables = {{ plan = "claim:plan", locale = "en", beta = true, missing = "claim:nope" }}
"""
    )
    settings = make_settings(
        BROKER_WORKFLOWS=None,
        BROKER_WORKFLOWS_FILE=str(wf_file),
        OPENAI_ORGANIZATION="org-123",
        OPENAI_PROJECT="proj_456",
    )
    async with app_client(settings) as c:
        tok = token("bob", role="pro", plan="gold")
        r = await c.post("/api/chatkit/session", json={"workflow": "full"}, headers=auth(tok))
    assert r.status_code == 200, r.text
    [req] = openai.session_requests()
    assert req.headers["OpenAI-Organization"] == "org-123"
    assert req.headers["OpenAI-Project"] == "proj_456"
    assert req.body == {
        "workflow": {
            "id": WF_SALES,
            "version": "3",
            "state_variables": {"plan": "gold", "locale": "en", "beta": True},
            "tracing": {"enabled": False},
        },
        "user": "bob",
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "rate_limits": {"max_requests_per_1_minute": 7},
        "chatkit_configuration": {
            "automatic_thread_titling": {"enabled": False},
            "file_upload": {"enabled": True, "max_file_size": 20, "max_files": 5},
            "history": {"enabled": True, "recent_threads": 20},
        },
    }


@pytest.mark.parametrize(
    "body",
    [
        {"workflow": WF_SUPPORT},
        {"workflow": {"id": "support"}},
        {"workflow": {"id": WF_SUPPORT}},
        {"workflowId": "support"},
        {"workflow": "support", "workflowId": "sales"},
        {"workflow": "support", "user": "mallory", "extra": [1, 2]},
    ],
    ids=[
        "by-id",
        "object-name",
        "object-id",
        "workflowId",
        "workflow-wins",
        "user-in-body-ignored",
    ],
)
async def test_starter_app_body_shapes(client, openai, token, body):
    r = await client.post("/api/chatkit/session", json=body, headers=auth(token("alice")))
    assert r.status_code == 200, r.text
    assert r.json()["workflow"]["name"] == "support"
    assert openai.session_requests()[0].body["user"] == "alice"


@pytest.mark.parametrize(
    ("content", "headers", "fragment"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[1,2]", {}, "JSON object"),
        (b"{}", {}, "Name the workflow"),
        (b'{"workflow": 3}', {}, "'workflow' must be"),
        (b'{"workflow": {"id": 3}}', {}, "'workflow.id'"),
        (b'{"workflowId": []}', {}, "'workflowId'"),
        (b'{"workflow": "support", "previous_session_id": 5}', {}, "previous_session_id"),
        (b'{"workflow": "support", "workflowId": 7}', {}, "'workflowId'"),
        (b"[" * 5000 + b"]" * 5000, {}, "not valid JSON"),
        (b'{"workflow": "support"}', {"Content-Type": "text/plain"}, "Content-Type"),
    ],
    ids=[
        "bad-json",
        "array",
        "empty",
        "int",
        "id-int",
        "workflowId-list",
        "prev-int",
        "losing-workflowId-int",
        "deep",
        "ctype",
    ],
)
async def test_bad_bodies_are_400(client, openai, token, content, headers, fragment):
    h = {"Content-Type": "application/json", **auth(token()), **headers}
    r = await client.post("/api/chatkit/session", content=content, headers=h)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert fragment in err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    assert openai.session_requests() == []


async def test_unknown_workflow_is_403_and_nothing_goes_upstream(client, openai, token):
    for ref in ("nope", "wf_" + "c3" * 24):
        r = await client.post("/api/chatkit/session", json={"workflow": ref}, headers=auth(token()))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "workflow_not_allowed"
    assert openai.requests == []


async def test_missing_token_is_401_with_plain_challenge(client, openai):
    r = await client.post("/api/chatkit/session", json={"workflow": "support"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "unauthenticated"
    assert openai.requests == []


async def test_bad_token_is_401_invalid_token(client, openai, token):
    tok = token(key="another-secret-that-is-also-32-bytes-long!!")
    r = await client.post("/api/chatkit/session", json={"workflow": "support"}, headers=auth(tok))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "signature" in r.json()["error"]["message"]
    assert tok not in r.text
    assert openai.requests == []


async def test_workflows_filtered_by_require(make_settings, token, tmp_path):
    wf_file = tmp_path / "wf.toml"
    wf_file.write_text(
        f'[workflows.pro]\nid = "{WF_SALES}"\nlabel = "Pro only"\nrequire = {{ role = "pro" }}\n'
    )
    settings = make_settings(
        BROKER_WORKFLOWS=f"support={WF_SUPPORT}", BROKER_WORKFLOWS_FILE=str(wf_file)
    )
    async with app_client(settings) as c:
        basic = await c.get("/api/chatkit/workflows", headers=auth(token("a", role="basic")))
        pro = await c.get("/api/chatkit/workflows", headers=auth(token("b", role="pro")))
        denied = await c.post(
            "/api/chatkit/session", json={"workflow": "pro"}, headers=auth(token("a", role="basic"))
        )
    assert [w["name"] for w in basic.json()["workflows"]] == ["support"]
    assert pro.json() == {
        "workflows": [
            {
                "name": "support",
                "label": "support",
                "kind": "hosted",
                "id": WF_SUPPORT,
                "backend": None,
            },
            {"name": "pro", "label": "Pro only", "kind": "hosted", "id": WF_SALES, "backend": None},
        ],
        "mock": False,
    }
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "workflow_not_allowed"


async def test_config_endpoint_live(client):
    r = await client.get("/api/chatkit/config")
    assert r.json() == {
        "mode": "live",
        "auth_required": True,
        "chatkit_js_url": "https://cdn.platform.openai.com/deployments/chatkit/chatkit.js",
        "kinds": ["hosted"],
        "chatkit_url": None,
        "mock_backend_url": None,
        "domain_key": None,
    }


async def test_health_and_unknown_routes(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    r = await client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/api/chatkit/session")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]


async def test_request_id_kept_when_sane_else_replaced(client):
    r = await client.get("/healthz", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert r.headers["x-request-id"] == "abc.DEF-123_x"
    for bad in ("has space", "x" * 129, "semi;colon"):
        r = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert r.headers["x-request-id"] != bad
        assert len(r.headers["x-request-id"]) >= 8


async def test_body_over_16k_is_413(client, openai, token):
    big = json.dumps({"workflow": "support", "pad": "x" * 17000})
    h = {"Content-Type": "application/json", **auth(token())}
    r = await client.post("/api/chatkit/session", content=big, headers=h)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    async def chunks():
        for _ in range(20):
            yield b"x" * 1024

    r = await client.post("/api/chatkit/session", content=chunks(), headers=h)
    assert r.status_code == 413
    assert openai.requests == []


@pytest.mark.parametrize(
    ("kind", "kw", "status", "code"),
    [
        ("unauthorized", {}, 502, "upstream_auth_failed"),
        ("forbidden", {}, 502, "upstream_auth_failed"),
        ("workflow_not_found", {}, 502, "upstream_workflow_not_found"),
        ("status", {"status": 400}, 502, "upstream_error"),
        ("not_json", {}, 502, "upstream_error"),
        ("no_secret", {}, 502, "upstream_error"),
    ],
)
async def test_upstream_failures_map_to_spec_codes(client, openai, token, kind, kw, status, code):
    openai.for_workflow(WF_SUPPORT, kind, **kw)
    r = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token())
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "Incorrect API key" not in r.text  # upstream bodies are never forwarded
    assert len(openai.session_requests()) == 1  # 4xx are not retried


async def test_workflow_not_found_message_names_the_usual_causes(client, openai, token):
    openai.for_workflow(WF_SUPPORT, "workflow_not_found")
    r = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token())
    )
    message = r.json()["error"]["message"]
    assert "another project" in message and "not published" in message


# --- the mint and cancel as plain endpoints (issue 24): the edge serves them itself, before
# the router; a request carrying an Origin that CORS wraps goes through the router to the same
# code. Both ways must answer alike, and count in the metrics alike.

ORIGIN = "https://app.example"


def _shown(r) -> tuple[int, dict[str, str], object]:
    """Status, headers without the CORS ones and the per-answer values, and the body shape."""
    skip = {"x-request-id", "content-length", "vary"}
    headers = {
        k: v for k, v in r.headers.items() if k not in skip and not k.startswith("access-control-")
    }
    data = r.json()
    if "error" in data:
        assert data["error"]["request_id"] == r.headers["x-request-id"]
        data = {"error": {k: v for k, v in data["error"].items() if k != "request_id"}}
    else:
        data = sorted(data)
    return r.status_code, headers, data


async def test_plain_endpoints_answer_alike_with_and_without_cors(make_settings, openai, token):
    async with app_client(make_settings(BROKER_ALLOWED_ORIGINS=ORIGIN)) as c:
        good = {"workflow": "support"}
        cases = [
            ("/api/chatkit/session", good, auth(token("alice"))),
            ("/api/chatkit/session", good, {}),  # 401
            ("/api/chatkit/session", {"workflow": "nope"}, auth(token("alice"))),  # 403
            ("/api/chatkit/session", {"workflow": 3}, auth(token("alice"))),  # 400
            ("/api/chatkit/session/cancel", {"all": True}, auth(token("alice"))),
            ("/api/chatkit/session/cancel", {"session_id": "cksess_x"}, auth(token("alice"))),
        ]
        for path, body, headers in cases:
            direct = await c.post(path, json=body, headers={**headers, "X-Request-ID": "rid-1"})
            wrapped = await c.post(path, json=body, headers={**headers, "Origin": ORIGIN})
            assert direct.headers["x-request-id"] == "rid-1"
            assert wrapped.headers["access-control-allow-origin"] == ORIGIN
            assert _shown(direct) == _shown(wrapped), (path, body)
            assert direct.headers["cache-control"] == "no-store"
        metrics = (await c.get("/metrics")).text
    # every outcome twice, once each way: ok, the 401, the 403 and the 400
    mints = [line for line in metrics.splitlines() if line.startswith("broker_session_mints_total")]
    assert len(mints) == 4 and all(line.endswith(" 2.0") for line in mints), mints
    assert 'broker_session_mints_total{outcome="ok",workflow="support"} 2.0' in metrics
    assert (
        'broker_http_requests_total{method="POST",route="/api/chatkit/session",status="200"} 2.0'
        in metrics
    )
