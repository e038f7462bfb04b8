"""Checks a real HTTP answer against the broker's OpenAPI document and the SPEC error shape.

Shared by the contract, fuzz, fault and abuse tests so that every answer any of them sees
is held to the same rules: documented status, body matching its schema, required headers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from broker import api
from broker.openapi import ERROR_CODES, openapi_document

# the error body as broker/api.py declares it (its codes are the error tree's)
_ERROR_VALIDATOR = Draft202012Validator(
    {"$ref": "#/components/schemas/Error", "components": {"schemas": api.schemas()}}
)


def assert_spec_error(
    status: int, body: bytes | str, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A 4xx/5xx body must be ``{"error": {"code", "message", "request_id"}}`` with a known code
    (and the same request id as the ``X-Request-ID`` header); returns the inner error."""
    try:
        data = json.loads(body)
    except ValueError:
        raise AssertionError(f"{status} error body is not JSON: {body[:300]!r}") from None
    errors = sorted(_ERROR_VALIDATOR.iter_errors(data), key=str)
    assert not errors, f"{status} error body breaks the SPEC shape: {errors[0].message}: {data}"
    error = data["error"]
    assert error["code"] in ERROR_CODES, f"unknown error code {error['code']!r}"
    if headers is not None:
        lower = {k.lower(): ", ".join(v) if isinstance(v, list) else v for k, v in headers.items()}
        assert lower.get("x-request-id") == error["request_id"], (lower, error)
    return error


@cache
def _document(mock: bool) -> dict[str, Any]:
    return openapi_document(mock=mock)


@cache
def _validator(mock: bool, pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` that can resolve ``#/components/...``."""
    doc = _document(mock)
    node: Any = doc
    for part in pointer.split("/"):
        node = node[part.replace("~1", "/")]
    return Draft202012Validator({**node, "components": doc["components"]})


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"].removeprefix("#/").split("/")
        node = doc
        for part in ref:
            node = node[part]
    return node


def check_response(
    method: str,
    path: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    mock: bool = False,
) -> None:
    """Assert that this answer is one the OpenAPI document allows."""
    doc = _document(mock)
    lower = {k.lower(): ", ".join(v) if isinstance(v, list) else v for k, v in headers.items()}
    assert "x-request-id" in lower, f"{method} {path} {status}: no X-Request-ID"
    op = doc["paths"].get(path, {}).get(method.lower())
    if op is None:
        # unknown route or wrong method: 404 / 405, the SPEC error shape
        expected = 405 if path in doc["paths"] else 404
        assert status == expected, f"{method} {path}: {status}, expected {expected}"
        error = assert_spec_error(status, body, headers)
        assert error["code"] == ("method_not_allowed" if status == 405 else "not_found")
        if status == 405:
            assert lower.get("allow"), "405 without Allow"
        return
    responses = op["responses"]
    assert str(status) in responses, (
        f"{method} {path} answered {status}, which the document does not list: {body[:300]!r}"
    )
    response = _resolve(doc, responses[str(status)])
    for name, spec in response.get("headers", {}).items():
        spec = _resolve(doc, spec)
        if spec.get("required"):
            assert name.lower() in lower, f"{method} {path} {status}: header {name} missing"
            value = lower[name.lower()]
            hv = Draft202012Validator(spec["schema"])
            problems = [e.message for e in hv.iter_errors(value)]
            assert not problems, f"{method} {path} {status}: header {name}={value!r}: {problems}"
    content_type = lower.get("content-type", "").split(";")[0].strip()
    content = response.get("content", {})
    assert content_type in content, (
        f"{method} {path} {status}: content type {content_type!r}, documented {list(content)}"
    )
    if content_type == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise AssertionError(f"{method} {path} {status}: body is not JSON") from None
        pointer = f"paths/{path.replace('/', '~1')}/{method.lower()}/responses/{status}"
        if "$ref" in responses[str(status)]:
            pointer = responses[str(status)]["$ref"].removeprefix("#/")
        validator = _validator(mock, f"{pointer}/content/application~1json/schema")
        problems = sorted(validator.iter_errors(data), key=str)
        assert not problems, (
            f"{method} {path} {status}: body does not match the document: "
            f"{problems[0].message} at {list(problems[0].absolute_path)}: {str(data)[:300]}"
        )
    if status >= 400 and content_type == "application/json":
        assert_spec_error(status, body, headers)
