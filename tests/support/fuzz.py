"""What both schemathesis suites (tests/adversarial/test_fuzz.py, test_fuzz_kinds.py) do with a
generated case: sign it in or not, then hold its answer to the document and the SPEC error
shape — written once so that the two suites cannot drift apart in what they check."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .adversarial import SecretWatch
from .contract import assert_spec_error, check_response

ANSWER_WITHIN = 5.0  # seconds: anything slower counts as a hang
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
AUTH_CHOICES = ["valid", "generated", "none"]


def examples(default: int) -> settings:
    """hypothesis settings for a fuzz run: ``FUZZ_EXAMPLES`` overrides the per-suite default,
    no deadline (a loaded 2-core machine), no example database."""
    return settings(
        max_examples=int(os.environ.get("FUZZ_EXAMPLES", str(default))),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def sign_in(case: Any, auth: str, token: Callable[[], str]) -> None:
    """``valid``: a fresh token; ``none``: no Authorization header; ``generated``: whatever
    schemathesis made up."""
    if auth == "valid":
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token()}"}
    elif auth == "none" and case.headers:
        case.headers.pop("Authorization", None)


def check_answer(
    case: Any,
    response: httpx.Response,
    mode: GenerationMode,
    watch: SecretWatch,
    *,
    mock: bool = False,
) -> None:
    """Never a 5xx; a valid case's answer conforms to the document; every answer is one the
    contract allows, every error in the SPEC shape; a minted secret is watched for in logs."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if mode is GenerationMode.POSITIVE:
        case.validate_response(response, checks=CHECKS)
    check_response(
        case.method,
        case.path,
        response.status_code,
        dict(response.headers),
        response.content,
        mock=mock,
    )
    if response.status_code >= 400:
        assert_spec_error(response.status_code, response.content, response.headers)
    elif case.path == "/api/chatkit/session":
        watch.add(response.json().get("client_secret"))
