"""The OpenAPI document stays true: it is valid OpenAPI 3.1, it names exactly the routes the
app serves, and real answers — success and every error path we can provoke — match it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from broker import errors
from broker.config import load_settings
from broker.openapi import ERROR_CODES, documented_operations, openapi_document, routed_operations

from .support import WF_SUPPORT, app_client, auth
from .support.chatkit_bodies import create
from .support.contract import assert_spec_error, check_response


@pytest.mark.parametrize("mock", [False, True], ids=["live", "mock"])
def test_document_is_valid_openapi_31(mock):
    doc = openapi_document(mock=mock)
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_error_code_is_documented():
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BrokerError)
    }
    assert codes <= set(ERROR_CODES)
    # and in docs/http-api.md's error table, where an operator looks a code up
    readme = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| \d{3} \| `([a-z_]+)` \|", readme, re.M)}
    assert codes <= table, sorted(codes - table)
    # every error response in the document uses the SPEC shape
    doc = openapi_document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) >= 400 and "application/json" in response.get("content", {}):
                    schema = response["content"]["application/json"]["schema"]
                    refs = json.dumps(schema)
                    assert "#/components/schemas/Error" in refs or "NotReady" in refs, (
                        path,
                        method,
                        status,
                    )


@pytest.mark.parametrize("mock", [False, True], ids=["live", "mock"])
async def test_documented_operations_are_exactly_the_routes(make_settings, mock):
    settings = make_settings(BROKER_MOCK="1" if mock else None)
    async with app_client(settings) as c:
        routed = routed_operations(c.app.routes)
        r = await c.get("/openapi.json")
    assert r.status_code == 200
    served = r.json()
    # every route the app has is documented …
    assert routed <= documented_operations(), routed - documented_operations()
    # … and the served document describes exactly those
    in_doc = {(p, m.upper()) for p, ops in served["paths"].items() for m in ops}
    assert in_doc == routed
    assert served == openapi_document(mock=mock, routed=routed)
    check_response("GET", "/openapi.json", r.status_code, r.headers, r.content, mock=mock)


async def _exchange(c: httpx.AsyncClient, method: str, path: str, mock: bool = False, **kw):
    r = await c.request(method, path, **kw)
    check_response(method, path, r.status_code, r.headers, r.content, mock=mock)
    return r


async def test_live_answers_match_the_document(make_settings, openai, token):
    tok = auth(token("alice"))
    seen: set[tuple[str, int]] = set()
    async with app_client(make_settings(BROKER_UPSTREAM_TIMEOUT="0.5")) as c:

        async def go(method, path, status, **kw):
            r = await _exchange(c, method, path, **kw)
            assert r.status_code == status, r.text
            seen.add((path, status))
            return r

        session = "/api/chatkit/session"
        minted = await go("POST", session, 200, json={"workflow": "support"}, headers=tok)
        await go("POST", session, 400, content=b"{", headers=tok | _json)
        await go("POST", session, 400, json={"workflow": 7}, headers=tok)
        await go("POST", session, 401, json={"workflow": "support"})
        await go("POST", session, 401, json={"workflow": "support"}, headers=auth("x.y.z"))
        await go("POST", session, 403, json={"workflow": "nope"}, headers=tok)
        await go("POST", session, 413, content=b"{" + b" " * 17000 + b"}", headers=tok | _json)
        for kind, status in [
            ("unauthorized", 502),
            ("workflow_not_found", 502),
            ("not_json", 502),
            ("no_secret", 502),
            ("hang", 504),
        ]:
            openai.then(kind)
            await go("POST", session, status, json={"workflow": "support"}, headers=tok)
        openai.then("rate_limited", retry_after="3600")
        await go("POST", session, 503, json={"workflow": "support"}, headers=tok)

        cancel = "/api/chatkit/session/cancel"
        sid = minted.json()["session_id"]
        await go("POST", cancel, 200, json={"session_id": sid}, headers=tok)
        await go("POST", cancel, 404, json={"session_id": sid}, headers=tok)
        await go("POST", cancel, 200, json={"all": True}, headers=tok)
        await go("POST", cancel, 400, json={"all": "yes"}, headers=tok)
        await go("POST", cancel, 401, json={"all": True})

        await go("GET", "/api/chatkit/workflows", 200, headers=tok)
        await go("GET", "/api/chatkit/workflows", 401)
        await go("GET", "/api/chatkit/config", 200)
        await go("GET", "/healthz", 200)
        await go("GET", "/readyz", 200)
        await go("GET", "/openapi.json", 200)
        await _exchange(c, "GET", "/api/nope")
        await _exchange(c, "GET", session)
        await _exchange(c, "DELETE", "/healthz")
    assert len(seen) >= 18


async def test_live_timeout_and_overload_answers_match(make_settings, openai, token):
    tok = auth(token("alice"))
    async with app_client(
        make_settings(BROKER_UPSTREAM_TIMEOUT="1", BROKER_UPSTREAM_RETRIES="0")
    ) as c:
        for kind, kw, status in [
            ("status", {"status": 500}, 502),
            ("status", {"status": 503}, 503),
            ("reset", {}, 503),
        ]:
            openai.then(kind, **kw)
            r = await _exchange(
                c, "POST", "/api/chatkit/session", json={"workflow": "support"}, headers=tok
            )
            assert r.status_code == status


async def test_mock_answers_match_the_document(make_settings, token):
    settings = make_settings(BROKER_MOCK="1", OPENAI_API_KEY=None)
    async with app_client(settings) as c:
        r = await _exchange(
            c, "POST", "/api/chatkit/session", mock=True, json={"workflow": "support"}
        )
        assert r.status_code == 200 and r.json()["mock"] is True
        r = await _exchange(
            c,
            "POST",
            "/api/chatkit/session",
            mock=True,
            json={"workflow": WF_SUPPORT},
            headers=auth(token("bob")),
        )
        assert r.status_code == 200
        sid = r.json()["session_id"]
        for method, path, kw, status in [
            ("POST", "/api/chatkit/session", {"json": {"workflow": "nope"}}, 403),
            ("POST", "/api/chatkit/session", {"json": []}, 400),
            ("POST", "/api/chatkit/session/cancel", {"json": {"session_id": sid}}, 404),
            ("POST", "/api/chatkit/session/cancel", {"json": {"all": True}}, 200),
            ("GET", "/api/chatkit/workflows", {}, 200),
            ("GET", "/api/chatkit/config", {}, 200),
            ("GET", "/healthz", {}, 200),
            ("GET", "/readyz", {}, 200),
            ("GET", "/openapi.json", {}, 200),
            ("POST", "/mock/chatkit", {"json": {"type": "threads.list", "params": {}}}, 200),
            ("POST", "/mock/chatkit", {"json": {"type": "threads.explode", "params": {}}}, 400),
            ("POST", "/mock/chatkit", {"content": b"{", "headers": _json}, 400),
            (
                "POST",
                "/mock/chatkit",
                {"json": {"type": "threads.get_by_id", "params": {"thread_id": "cthr_nope"}}},
                404,
            ),
            (
                "POST",
                "/mock/chatkit",
                {"json": {"type": "threads.list", "params": {}}, "headers": auth("bad")},
                401,
            ),
        ]:
            r = await _exchange(c, method, path, mock=True, **kw)
            assert r.status_code == status, (path, r.text)
        created = await _exchange(
            c,
            "POST",
            "/mock/chatkit",
            mock=True,
            json=create("hi"),
        )
        assert created.status_code == 200
        assert created.headers["content-type"].startswith("text/event-stream")
    async with app_client(settings, peer="192.0.2.7") as c:
        for method, path in [
            ("POST", "/api/chatkit/session"),
            ("GET", "/healthz"),
            ("GET", "/api/chatkit/config"),
        ]:
            r = await _exchange(c, method, path, mock=True, json={"workflow": "support"})
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "mock_local_only"


_json = {"Content-Type": "application/json"}


# --- CORS preflights in the document (issue 15): with BROKER_ALLOWED_ORIGINS set every
# documented path has an ``options`` operation, and what the broker really answers to a
# preflight (allowed, refused, or not a preflight at all) is what that operation says;
# without origins there is none.

ORIGIN = "https://app.example.com"


def _status_schema(doc: dict, op: dict, status: int) -> dict:
    response = op["responses"][str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response


@pytest.mark.parametrize("mock", [False, True])
async def test_every_path_documents_the_preflight_the_broker_answers(base_env, mock) -> None:
    env = {**base_env, "BROKER_ALLOWED_ORIGINS": ORIGIN}
    if mock:
        env = {"BROKER_MOCK": "1", "BROKER_ALLOWED_ORIGINS": ORIGIN}
    async with app_client(load_settings(env)) as client:
        doc = (await client.get("/openapi.json")).json()
        # valid OpenAPI 3.1: a templated path's preflight declares its path parameters too
        # (it did not, and openapi-spec-validator refused the document with origins set)
        validate(doc)
        paths = doc["paths"]
        assert "/api/chatkit/session" in paths
        for path, ops in paths.items():
            assert "options" in ops, path
            op = ops["options"]
            assert {
                p["name"] for p in op["parameters"] if p["required"] and p["in"] == "header"
            } == {
                "Origin",
                "Access-Control-Request-Method",
            }
            url = path.replace("{name}", "support").replace("{thread_id}", "thr_x")
            allowed = await client.options(
                url,
                headers={
                    "Origin": ORIGIN,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert allowed.status_code == 200, (path, allowed.text)
            assert allowed.headers["access-control-allow-origin"] == ORIGIN
            schema = _status_schema(doc, op, 200)["headers"]["Access-Control-Allow-Origin"]
            jsonschema.validate(allowed.headers["access-control-allow-origin"], schema["schema"])
            refused = await client.options(
                url,
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert refused.status_code == 400, (path, refused.text)
            error = assert_spec_error(400, refused.content)
            assert "origin" in error["message"].lower()
            assert "access-control-allow-origin" not in refused.headers
            not_preflight = await client.options(url)
            assert not_preflight.status_code == 405, (path, not_preflight.text)
            assert_spec_error(405, not_preflight.content)
            assert "405" in op["responses"]


async def test_without_origins_there_is_no_preflight_in_the_document(base_env) -> None:
    async with app_client(load_settings(base_env)) as client:
        doc = (await client.get("/openapi.json")).json()
        assert not [p for p, ops in doc["paths"].items() if "options" in ops]
        r = await client.options(
            "/api/chatkit/session",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_the_usage_answer_is_documented_field_by_field():
    doc = openapi_document()
    schema = doc["paths"]["/api/usage"]["get"]["responses"]["200"]["content"]["application/json"]
    assert schema["schema"] == {"$ref": "#/components/schemas/Usage"}
    schemas = doc["components"]["schemas"]
    assert set(schemas["Usage"]["required"]) == {"user", "workflows"}
    entry = schemas["WorkflowUsage"]
    assert set(entry["required"]) == {"workflow", "tier", "today", "this_month", "budgets"}
    assert set(schemas["UsageTotals"]["properties"]) >= {"total_tokens", "cost_usd", "calls"}
    assert schemas["UsageBudget"]["properties"]["unit"]["enum"] == ["tokens", "usd"]
    for name in ("Usage", "WorkflowUsage", "UsageTotals", "UsageBudget"):
        assert schemas[name]["additionalProperties"] is False, name
