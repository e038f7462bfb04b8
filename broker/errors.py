"""The broker's exceptions, each carrying the HTTP status and error code it becomes.

Every failure a caller can see is one of these, so the mapping to the SPEC's error table
lives here and nowhere else; ``error_body`` renders the one JSON shape all errors share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class UpstreamDetail:
    """What OpenAI itself answered, for operators only (logs, ``doctor``).

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
    upstream: UpstreamDetail | None = None

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequest(BrokerError):
    status, code = 400, "invalid_request"


class Unauthenticated(BrokerError):
    """401. ``invalid_token`` marks a token that was sent but refused (RFC 6750 §3.1)."""

    status, code = 401, "unauthenticated"

    def __init__(self, message: str, *, invalid_token: bool = True) -> None:
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class WorkflowNotAllowed(BrokerError):
    status, code = 403, "workflow_not_allowed"


class MockLocalOnly(BrokerError):
    status, code = 403, "mock_local_only"


class NotFound(BrokerError):
    status, code = 404, "not_found"


class MethodNotAllowed(BrokerError):
    status, code = 405, "method_not_allowed"


class RequestTimeout(BrokerError):
    """408: the request body did not arrive in time (the caller may simply retry)."""

    status, code = 408, "request_timeout"


class PayloadTooLarge(BrokerError):
    status, code = 413, "payload_too_large"


class RateLimited(BrokerError):
    status, code = 429, "rate_limited"


class UpstreamAuthFailed(BrokerError):
    status, code = 502, "upstream_auth_failed"


class UpstreamWorkflowNotFound(BrokerError):
    status, code = 502, "upstream_workflow_not_found"


class UpstreamError(BrokerError):
    status, code = 502, "upstream_error"


class UpstreamUnavailable(BrokerError):
    status, code = 503, "upstream_unavailable"


class AuthUnavailable(BrokerError):
    status, code = 503, "auth_unavailable"


class StoreUnavailable(BrokerError):
    """503: the shared store (Redis) cannot be reached, so ownership cannot be checked."""

    status, code = 503, "store_unavailable"


class UpstreamTimeout(BrokerError):
    status, code = 504, "upstream_timeout"


# --- a backend the broker proxies or hosts (gateway, agent) ---------------------------------


class BackendUnavailable(BrokerError):
    """503: the workflow's ChatKit server could not be reached (refused, reset, DNS)."""

    status, code = 503, "backend_unavailable"


class BackendTimeout(BrokerError):
    """504: the workflow's ChatKit server did not connect or answer its first byte in time."""

    status, code = 504, "backend_timeout"


class BackendError(BrokerError):
    """502: the workflow's ChatKit server failed (5xx) or answered something unusable."""

    status, code = 502, "backend_error"


class BackendRejectedIdentity(BrokerError):
    """502: the workflow's ChatKit server refused the broker's signed identity (401/403)."""

    status, code = 502, "backend_rejected_identity"


class RunTimeout(BrokerError):
    """504: a server-side run of an agent workflow did not finish within its limit."""

    status, code = 504, "run_timeout"


class InternalError(BrokerError):
    status, code = 500, "internal_error"


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
