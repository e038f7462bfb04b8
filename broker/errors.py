"""The broker's exceptions, each carrying the HTTP status and error code it becomes.

Every failure a caller can see is one of these, so the mapping to the error table lives here
and nowhere else, and ``render`` is the one place that writes the JSON shape all errors
share: ``{"error": {"code", "message", "request_id"}}``. The tree, with the bases a caller
can catch::

    BrokerError                      500 internal_error (a bug)
    ├── ClientError                  4xx: the request must change
    │   ├── InvalidRequest           400 invalid_request
    │   ├── Unauthenticated          401 unauthenticated
    │   ├── WorkflowNotAllowed       403 workflow_not_allowed
    │   ├── MockLocalOnly            403 mock_local_only
    │   ├── NotFound                 404 not_found
    │   ├── MethodNotAllowed         405 method_not_allowed
    │   ├── RequestTimeout           408 request_timeout
    │   ├── PayloadTooLarge          413 payload_too_large
    │   ├── RateLimited              429 rate_limited
    │   └── HeadersTooLarge          431 headers_too_large
    ├── UpstreamFailure              502/504: what serves the workflow failed
    │   ├── UpstreamAuthFailed       502 upstream_auth_failed        (OpenAI)
    │   ├── UpstreamWorkflowNotFound 502 upstream_workflow_not_found (OpenAI)
    │   ├── UpstreamError            502 upstream_error              (OpenAI)
    │   ├── UpstreamTimeout          504 upstream_timeout            (OpenAI)
    │   ├── BackendError             502 backend_error               (a gateway's server)
    │   ├── BackendRejectedIdentity  502 backend_rejected_identity   (a gateway's server)
    │   ├── BackendTimeout           504 backend_timeout             (a gateway's server)
    │   └── RunTimeout               504 run_timeout                 (an agent's run)
    ├── Unavailable                  503: try again later; the caller did nothing wrong
    │   ├── UpstreamUnavailable      503 upstream_unavailable
    │   ├── AuthUnavailable          503 auth_unavailable
    │   ├── StoreUnavailable         503 store_unavailable
    │   ├── BackendUnavailable       503 backend_unavailable
    │   └── NotReady                 503 not_ready (/readyz, with the list of what is missing)
    └── InternalError                500 internal_error
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class UpstreamDetail:
    """What OpenAI (or a backend) itself answered, for operators only (logs, ``doctor``).

    It rides on the exception but is never rendered into a response: browsers get
    ``BrokerError.message`` alone, so upstream bodies are never forwarded.
    """

    status: int
    message: str
    request_id: str


class BrokerError(Exception):
    """A failure with a status, a snake_case code and a message a person can act on."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        upstream: UpstreamDetail | None = None,
    ) -> None:
        super().__init__(message)
        #: the sentence the caller reads
        self.message = message
        #: response headers this error needs (``WWW-Authenticate``, ``Retry-After`` …)
        self.headers: dict[str, str] = dict(headers or {})
        #: what the upstream said, for the log and doctor; never rendered
        self.upstream = upstream

    def extra(self) -> dict[str, Any]:
        """Fields of the body beside ``error`` (most errors have none)."""
        return {}


class ClientError(BrokerError):
    """4xx: the request must change before it can succeed."""

    status, code = 400, "invalid_request"


class UpstreamFailure(BrokerError):
    """502/504: OpenAI, a gateway's ChatKit server or an agent's run failed."""

    status, code = 502, "upstream_error"


class Unavailable(BrokerError):
    """503: something the broker depends on is down; the same request may work later."""

    status, code = 503, "upstream_unavailable"


class InvalidRequest(ClientError):
    """400: malformed JSON, not an object, a missing workflow, a field of the wrong type, not ``application/json``, or not valid HTTP/1.1."""

    status, code = 400, "invalid_request"


class Unauthenticated(ClientError):
    """401. ``invalid_token`` marks a token that was sent but refused (RFC 6750 §3.1)."""

    status, code = 401, "unauthenticated"

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class WorkflowNotAllowed(ClientError):
    """403: the workflow is not on the allowlist, or the caller's claims do not meet its ``require``."""

    status, code = 403, "workflow_not_allowed"


class MockLocalOnly(ClientError):
    """403: mock mode reached from a non-loopback peer or with a non-local ``Host``."""

    status, code = 403, "mock_local_only"


class NotFound(ClientError):
    """404: an unknown route, or a session, thread or item this caller does not own."""

    status, code = 404, "not_found"


class MethodNotAllowed(ClientError):
    """405: a known route with the wrong method (``Allow`` lists the right ones)."""

    status, code = 405, "method_not_allowed"


class RequestTimeout(ClientError):
    """408: the request body did not arrive in time (the caller may simply retry)."""

    status, code = 408, "request_timeout"


class PayloadTooLarge(ClientError):
    """413: the request body is over 16 KiB."""

    status, code = 413, "payload_too_large"


class Forbidden(ClientError):
    """403: a signed file URL that is expired, already used, or for another file or verb."""

    status, code = 403, "forbidden"


class UnsupportedMediaType(ClientError):
    """415: a file whose content is not a type the workflow accepts (whatever its name says)."""

    status, code = 415, "unsupported_media_type"


class RateLimited(ClientError):
    """429: the per-user or per-address limit; ``Retry-After`` and ``RateLimit-*`` say when to come back."""

    status, code = 429, "rate_limited"


class BudgetExceeded(ClientError):
    """429: a usage budget of the workflow is spent (or 0: the workflow is closed).

    The body says which budget, what is left and when it resets (``budget``), so an app can
    show it; ``Retry-After`` is the time to the reset."""

    status, code = 429, "budget_exceeded"

    def __init__(self, message: str, budget: dict[str, Any], retry_after: int | None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(message, headers=headers)
        self.budget = budget

    def extra(self) -> dict[str, Any]:
        return {"budget": self.budget}


class HeadersTooLarge(ClientError):
    """431: the request line and headers are larger than the broker reads (broker/server.py)."""

    status, code = 431, "headers_too_large"


class UpstreamAuthFailed(UpstreamFailure):
    """502: OpenAI answered 401/403: the API key is wrong or lacks access."""

    status, code = 502, "upstream_auth_failed"


class UpstreamWorkflowNotFound(UpstreamFailure):
    """502: OpenAI answered 404: usually a key of another project, or an unpublished workflow."""

    status, code = 502, "upstream_workflow_not_found"


class UpstreamError(UpstreamFailure):
    """502: any other OpenAI error, a body that is not JSON, or one without a ``client_secret``."""

    status, code = 502, "upstream_error"


class UpstreamTimeout(UpstreamFailure):
    """504: OpenAI did not answer within ``BROKER_UPSTREAM_TIMEOUT``."""

    status, code = 504, "upstream_timeout"


class BackendError(UpstreamFailure):
    """502: the workflow's ChatKit server failed (5xx) or answered something unusable."""

    status, code = 502, "backend_error"


class BackendRejectedIdentity(UpstreamFailure):
    """502: the workflow's ChatKit server refused the broker's signed identity (401/403)."""

    status, code = 502, "backend_rejected_identity"


class BackendTimeout(UpstreamFailure):
    """504: the workflow's ChatKit server did not connect or answer its first byte in time."""

    status, code = 504, "backend_timeout"


class RunTimeout(UpstreamFailure):
    """504: a server-side run of an agent workflow did not finish within its limit."""

    status, code = 504, "run_timeout"


class UpstreamUnavailable(Unavailable):
    """503: OpenAI refused or reset the connection, or stayed at 429/503 after the retries."""

    status, code = 503, "upstream_unavailable"


class AuthUnavailable(Unavailable):
    """503: JWKS mode, and no key set could ever be fetched (not the caller's fault)."""

    status, code = 503, "auth_unavailable"


class StoreUnavailable(Unavailable):
    """503: the shared store (Redis) or the thread database cannot be reached."""

    status, code = 503, "store_unavailable"


class FileStorageUnavailable(Unavailable):
    """503: where attachments' bytes live (a directory, an S3 bucket) cannot be reached."""

    status, code = 503, "file_storage_unavailable"


class BackendUnavailable(Unavailable):
    """503: the workflow's ChatKit server could not be reached (refused, reset, DNS)."""

    status, code = 503, "backend_unavailable"


class NotReady(Unavailable):
    """503 from ``/readyz``, naming everything that is missing."""

    status, code = 503, "not_ready"

    def __init__(self, missing: list[str]) -> None:
        super().__init__("Not ready: " + "; ".join(missing))
        self.missing = missing

    def extra(self) -> dict[str, Any]:
        return {"missing": self.missing}


class InternalError(BrokerError):
    """500: a bug. Its traceback goes to the log, never to the caller."""


def error_classes() -> list[type[BrokerError]]:
    """Every error class of the tree, depth first (codes for the OpenAPI document, tests)."""
    found: list[type[BrokerError]] = [BrokerError]
    for cls in found:
        found.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


_BY_STATUS: dict[int, type[BrokerError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    413: PayloadTooLarge,
}


def from_http_status(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> BrokerError:
    """Turn a framework HTTP error (unknown route, wrong method …) into the broker's own error."""
    cls = _BY_STATUS.get(status, InternalError)
    return cls(message, headers=headers)


def error_body(code: str, message: str, request_id: str) -> dict[str, dict[str, str]]:
    """The one error shape of the API: ``{"error": {"code", "message", "request_id"}}``."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


@dataclass(frozen=True)
class Rendered:
    """An error as it goes on the wire: status, headers (lower-case bytes) and JSON body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def render(error: BrokerError, request_id: str) -> Rendered:
    """The one renderer every place that answers with an error uses (routes, middleware,
    CORS preflights, the HTTP protocol guard, /readyz), so the shape cannot drift."""
    data = error_body(error.code, error.message, request_id) | error.extra()
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()
    ]
    return Rendered(error.status, headers, body)
