"""CORS preflights in the OpenAPI document (issue 15, first-review gap): with
BROKER_ALLOWED_ORIGINS set every documented path has an ``options`` operation, and what the
broker really answers to a preflight — allowed, refused, or not a preflight at all — is what
that operation says; without origins there is none."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from broker.config import load_settings

from .support import app_client
from .support.contract import assert_spec_error

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
