"""The OpenAPI 3.1 description of the broker's public HTTP API, served at ``GET /openapi.json``.

The bodies' schemas are generated from ``broker/api.py``, the models the routes validate and
build with; the error codes from the error tree (``broker/errors.py``); the limits from the
constants that enforce them. What is written here is what only a document says: the
operations, their statuses and why each happens. ``OPERATIONS`` lists every operation the
broker can have; the served document keeps only those the running app routes (``/mock/chatkit``
exists only in mock mode, for instance) and states what differs in mock mode.
``tests/test_openapi.py`` compares it with the app's routes and validates real answers
against it, and ``tests/adversarial/test_fuzz*.py`` drive schemathesis with it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from functools import cache
from typing import Any, get_args

from . import __version__, api
from . import errors as E  # the error classes read as E.NotFound in the table
from .cors import ALLOW_HEADERS, ALLOW_METHODS
from .edge import BODY_TIMEOUT, MAX_BODY_BYTES, MAX_CHATKIT_BODY_BYTES
from .server import HEAD_TIMEOUT, MAX_HEAD_BYTES

JSON = "application/json"
REQUEST_ID_PATTERN = api.REQUEST_ID_PATTERN
#: every error code the API can answer with, from the error tree
ERROR_CODES: tuple[str, ...] = get_args(api.ErrorCode)

_HEADERS: dict[str, Any] = {
    "X-Request-ID": {
        "description": "The request id: the caller's own when it is 1-128 characters of "
        "`A-Za-z0-9._-`, else one the broker made. Quote it when reporting a problem.",
        "required": True,
        "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
    },
    "Cache-Control": {
        "description": "`no-store` on every /api/ answer (some carry a secret).",
        "required": True,
        "schema": {"type": "string", "const": "no-store"},
    },
    "WWW-Authenticate": {
        "description": '`Bearer` when no token was sent; `Bearer error="invalid_token"` when '
        "the token was refused (RFC 6750).",
        "required": True,
        "schema": {"type": "string", "enum": ["Bearer", 'Bearer error="invalid_token"']},
    },
    "Retry-After": {
        "description": "Seconds until the caller may try again.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-ChatKit-Broker-Mode": {
        "description": "`mock` on every answer in mock mode.",
        "required": True,
        "schema": {"type": "string", "const": "mock"},
    },
}


@cache
def _schemas() -> dict[str, Any]:
    """The bodies' schemas (pydantic takes ~50 ms to build them; every document shares them)."""
    return api.schemas()


def _ref(body: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{body.__name__}"}


def _error(
    description: str, *errors: type[E.BrokerError], headers: Iterable[str] = ()
) -> dict[str, Any]:
    """An error response: the one error shape, its code one of these errors'."""
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in headers},
        "content": {
            JSON: {
                "schema": {
                    "allOf": [_ref(api.Error)],
                    "properties": {
                        "error": {"properties": {"code": {"enum": [e.code for e in errors]}}},
                    },
                }
            }
        },
    }


def _error_codes(response: dict[str, Any]) -> list[str]:
    """The code enum of an ``_error`` response (the list itself, to extend in place)."""
    schema = response["content"][JSON]["schema"]
    return schema["properties"]["error"]["properties"]["code"]["enum"]


def _ok(description: str, body: type) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(body)}}}


def _body(body: type, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"JSON, at most {limit // 1024} KiB (413 above).",
        "content": {JSON: {"schema": _ref(body)}},
    }


def _too_large(limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    return _error(f"The request body is over {limit // 1024} KiB.", E.PayloadTooLarge)


_BAD_REQUEST = _error(
    "Malformed JSON, not an object, or a known field of the wrong type.", E.InvalidRequest
)
_UNAUTHENTICATED = _error(
    "No token, or one that is refused (signature, expiry, audience, issuer, user claim); the "
    "message says which, without echoing the token.",
    E.Unauthenticated,
    headers=["WWW-Authenticate"],
)
_TIMEOUT = _error("The request body did not arrive in time.", E.RequestTimeout)
_TOO_LARGE = _too_large()
_RATE_LIMITED = _error(
    "The per-user or per-address limit was hit.", E.RateLimited, headers=["Retry-After"]
)
_INTERNAL = _error("A bug in the broker; the traceback is in its log.", E.InternalError)
_AUTH_UNAVAILABLE = _error(
    "JWKS mode and no key set could ever be fetched; not the caller's fault.", E.AuthUnavailable
)
_UPSTREAM = {
    "502": _error(
        "OpenAI refused the API key, does not know the workflow, or answered with an error "
        "or an unusable body.",
        E.UpstreamAuthFailed,
        E.UpstreamWorkflowNotFound,
        E.UpstreamError,
    ),
    "503": _error(
        "OpenAI could not be reached or is overloaded (after retries), or the JWKS has never "
        "been fetched.",
        E.UpstreamUnavailable,
        E.AuthUnavailable,
    ),
    "504": _error("OpenAI did not answer within the deadline.", E.UpstreamTimeout),
}
_BEARER = [{"bearerAuth": []}]
# alternatives (any one): what each route's gate accepts besides the app's JWT
_JWT_OR_SECRET = [{"bearerAuth": []}, {"sessionSecret": []}]
_JWT_SECRET_OR_KEY = [{"bearerAuth": []}, {"sessionSecret": []}, {"serviceKey": []}]
_JWT_OR_KEY = [{"bearerAuth": []}, {"serviceKey": []}]

# One server-sent event, as OpenAPI 3.2 models an event stream's items (and tools read a 3.1
# document's event-stream `schema`): each event's `data` is one ChatKit ThreadStreamEvent, JSON.
_SSE_EVENTS: dict[str, Any] = {
    "schema": {
        "type": "object",
        "description": "One event of the stream; `data` is a ChatKit `ThreadStreamEvent` as JSON.",
        "properties": {
            "data": {"type": "string"},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
}


def _path_param(name: str) -> dict[str, Any]:
    """A required string path parameter (every path parameter the broker has is one)."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# the gateway's file relay routes (broker/backends/gateway/files.py)
_WORKFLOW_PARAM = _path_param("workflow")
_ATTACHMENT_PARAM = {
    **_path_param("attachment_id"),
    "description": "The server's attachment id, percent-encoded (a `/` in it as `%2F`).",
}
_T_PARAM: dict[str, Any] = {
    "name": "t",
    "in": "query",
    "required": True,
    "schema": {"type": "string"},
}

# the ChatKit protocol, as /chatkit/{name} and /mock/chatkit both speak it
_CHATKIT_REQUEST: dict[str, Any] = {
    JSON: {
        "schema": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string"}, "params": {"type": "object"}},
        }
    }
}
_CHATKIT_ANSWER: dict[str, Any] = {
    "description": "A ChatKit JSON answer or an event stream.",
    "content": {
        JSON: {"schema": {"type": "object"}},
        "text/event-stream": _SSE_EVENTS,
    },
}


_RUN: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "workflow", "thread_id"],
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["run"]},
        "status": {
            "type": "string",
            "enum": ["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"],
        },
        "workflow": {"type": "string"},
        "thread_id": {"type": "string"},
        "user": {"type": "string"},
        "created_at": {"type": "integer"},
        "attempts": {"type": "integer"},
        "output": {},
        "output_text": {"type": "string"},
        "refusal": {"type": "object"},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_RUN_ID = _path_param("run_id")
_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "description": "A background run: the same key again answers the same run.",
    "schema": {"type": "string", "maxLength": 200},
}

OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/chatkit/session": {
        "post": {
            "operationId": "createSession",
            "summary": "Mint a ChatKit client secret for the signed-in user",
            "security": _BEARER,
            "requestBody": _body(api.SessionRequest),
            "responses": {
                "200": _ok("The new session's client secret.", api.Session),
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error(
                    "The workflow is not on the allowlist, or the caller's claims do not meet "
                    "its `require`.",
                    E.WorkflowNotAllowed,
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                **_UPSTREAM,
            },
        }
    },
    "/api/chatkit/session/cancel": {
        "post": {
            "operationId": "cancelSession",
            "summary": "Cancel one of the caller's sessions, or all of them",
            "security": _BEARER,
            "requestBody": _body(api.CancelRequest),
            "responses": {
                "200": _ok("What was cancelled.", api.Cancelled),
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "404": _error(
                    "No session with that id was issued to this caller (or it expired); "
                    "nothing was sent upstream.",
                    E.NotFound,
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                **_UPSTREAM,
                "503": _error(
                    "OpenAI could not be reached or is overloaded (after retries), the JWKS has "
                    "never been fetched, or Redis is unreachable so ownership cannot be checked "
                    "(nothing was sent upstream).",
                    E.UpstreamUnavailable,
                    E.AuthUnavailable,
                    E.StoreUnavailable,
                ),
            },
        }
    },
    "/api/chatkit/workflows": {
        "get": {
            "operationId": "listWorkflows",
            "summary": "The workflows this caller's claims allow",
            "security": _BEARER,
            "responses": {
                "200": _ok("The allowed workflows.", api.Workflows),
                "401": _UNAUTHENTICATED,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _AUTH_UNAVAILABLE,
            },
        }
    },
    "/api/chatkit/config": {
        "get": {
            "operationId": "clientConfig",
            "summary": "What the test page needs to know (no auth)",
            "security": [],
            "responses": {
                "200": _ok("Mode and ChatKit script location.", api.ClientConfig),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
            },
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: 200 while the process serves",
            "security": [],
            "responses": {"200": _ok("Serving.", api.Status)},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: config valid, JWKS and Redis reached at least once",
            "security": [],
            "responses": {
                "200": _ok("Ready.", api.Status),
                "503": {
                    "description": "Not ready; `missing` names what is missing.",
                    "content": {JSON: {"schema": _ref(api.NotReady)}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document of the running broker.",
                    "content": {JSON: {"schema": {"type": "object", "required": ["openapi"]}}},
                }
            },
        }
    },
    "/.well-known/jwks.json": {
        "get": {
            "operationId": "assertionKeys",
            "summary": "The public keys of gateway assertions (ChatKit-Broker-Assertion)",
            "description": "Served when a gateway workflow is configured. Backends verify the "
            "ES256 assertion on each proxied request with these keys (current first, then the "
            "ones being rotated out), by `kid`.",
            "security": [],
            "responses": {
                "200": {
                    "description": "A JSON Web Key Set (RFC 7517) of EC P-256 public keys.",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "required": ["keys"],
                                "properties": {
                                    "keys": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["kty", "crv", "x", "y", "kid"],
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        }
    },
    "/chatkit/{name}": {
        "post": {
            "operationId": "chatKit",
            "summary": "The ChatKit endpoint of a gateway, agent or mock workflow",
            "description": "Speaks the ChatKit custom-backend protocol for the workflow `name`. "
            "Hosted workflows have none (404): ChatKit talks to OpenAI with their secret. "
            "For a gateway workflow the request is relayed to its own server, whose JSON "
            "answers (its own 4xx included) and event streams pass through unchanged.",
            "security": _JWT_OR_SECRET,
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The workflow's name on the allowlist.",
                }
            ],
            "requestBody": {
                "required": True,
                "description": "A ChatKit request (`threads.create`, `threads.list`, …). The "
                "bearer is this workflow's session secret (`cks_…`) from /api/chatkit/session, "
                "or the app's JWT.",
                "content": _CHATKIT_REQUEST,
            },
            "responses": {
                "200": _CHATKIT_ANSWER,
                "400": _error("Not a valid ChatKit request.", E.InvalidRequest),
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", E.WorkflowNotAllowed),
                "404": _error(
                    "No such workflow here, a hosted one, or a thread or item this user does "
                    "not own.",
                    E.NotFound,
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "502": _error(
                    "A gateway workflow's server failed, answered something not ChatKit, or "
                    "refused the broker's signed identity (before any byte was relayed).",
                    E.BackendError,
                    E.BackendRejectedIdentity,
                ),
                "503": _error(
                    "A gateway workflow's server cannot be reached.", E.BackendUnavailable
                ),
                "504": _error(
                    "A gateway workflow's server did not connect or answer in time.",
                    E.BackendTimeout,
                ),
            },
        }
    },
    # agent workflows' server-side APIs (routed only when an agent workflow is configured)
    "/api/workflows/{name}/runs": {
        "post": {
            "operationId": "runAgentWorkflow",
            "summary": "Send one message to an agent workflow and get its whole answer",
            "description": "The same engine and threads as the chat: the run's thread shows "
            "up in the user's ChatKit history. `?stream=1` answers the ChatKit events as SSE.",
            "security": _JWT_SECRET_OR_KEY,
            "parameters": [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The agent workflow's name on the allowlist.",
                },
                {
                    "name": "stream",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["1"]},
                    "description": "1: answer the ChatKit events as SSE instead of the whole answer.",
                },
                _IDEMPOTENCY_KEY,
            ],
            "requestBody": _body(api.RunRequest, MAX_CHATKIT_BODY_BYTES),
            "responses": {
                "200": {
                    "description": "The answer (or, with `stream=1`, the ChatKit event stream).",
                    "content": {
                        JSON: {"schema": _ref(api.RunAnswer)},
                        "text/event-stream": _SSE_EVENTS,
                    },
                },
                "202": {
                    "description": "A background run, queued (`background: true`).",
                    "content": {JSON: {"schema": _RUN}},
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", E.WorkflowNotAllowed),
                "404": _error(
                    "No such agent workflow, or a thread this user does not own.", E.NotFound
                ),
                "408": _TIMEOUT,
                "413": _too_large(MAX_CHATKIT_BODY_BYTES),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "502": _error("The agent failed while answering.", E.BackendError),
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
                "504": _error("The run took longer than BROKER_RUN_TIMEOUT.", E.RunTimeout),
            },
        }
    },
    "/api/usage": {
        "get": {
            "operationId": "getUsage",
            "summary": "The caller's usage of agent workflows and what each budget leaves",
            "security": _BEARER,
            "parameters": [
                {"name": "workflow", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "`{user, workflows: [{workflow, tier, today, this_month, "
                    "budgets: [{name, unit, limit, used, remaining, resets_at}]}]}`.",
                    "content": {JSON: {"schema": _ref(api.Usage)}},
                },
                "401": _UNAUTHENTICATED,
                "404": _error("No such agent workflow for this caller.", E.NotFound),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
            },
        }
    },
    "/api/threads": {
        "get": {
            "operationId": "listAgentThreads",
            "summary": "The caller's threads of one agent workflow, newest first (ChatKit JSON)",
            "security": _JWT_SECRET_OR_KEY,
            "parameters": [
                {
                    "name": "workflow",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The agent workflow whose threads to list.",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": api.MAX_PAGE_SIZE},
                    "description": "Page size.",
                },
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "The previous page's `after`, to page on.",
                },
            ],
            "responses": {
                "200": {
                    "description": "A ChatKit page of threads: `{data, has_more, after}`.",
                    "content": {JSON: {"schema": _ref(api.Page)}},
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", E.WorkflowNotAllowed),
                "404": _error("No such agent workflow.", E.NotFound),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
            },
        }
    },
    "/api/threads/{thread_id}/items": {
        "get": {
            "operationId": "listAgentThreadItems",
            "summary": "The visible items of one of the caller's threads (ChatKit JSON)",
            "security": _JWT_SECRET_OR_KEY,
            "parameters": [
                {
                    "name": "thread_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "One of the caller's threads (another user's is a 404).",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": api.MAX_PAGE_SIZE},
                    "description": "Page size.",
                },
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "The previous page's `after`, to page on.",
                },
                {
                    "name": "order",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["asc", "desc"]},
                    "description": "Oldest first (asc, the default) or newest first.",
                },
            ],
            "responses": {
                "200": {
                    "description": "A ChatKit page of thread items: `{data, has_more, after}`.",
                    "content": {JSON: {"schema": _ref(api.Page)}},
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error(
                    "The caller may not use this thread's workflow.", E.WorkflowNotAllowed
                ),
                "404": _error("No thread of this user with that id.", E.NotFound),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
            },
        }
    },
    # background runs (broker/backends/agent/background.py)
    "/api/runs/{run_id}": {
        "get": {
            "operationId": "getBackgroundRun",
            "summary": "A background run: its status, its output when done, its error if not",
            "security": _JWT_OR_KEY,
            "parameters": [_RUN_ID],
            "responses": {
                "200": {"description": "The run.", "content": {JSON: {"schema": _RUN}}},
                "401": _UNAUTHENTICATED,
                "404": _error("No run of this caller with that id.", E.NotFound),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
            },
        }
    },
    "/api/runs/{run_id}/cancel": {
        "post": {
            "operationId": "cancelBackgroundRun",
            "summary": "Cancel a queued or running background run (a finished one is unchanged)",
            "security": _JWT_OR_KEY,
            "parameters": [_RUN_ID],
            "responses": {
                "200": {"description": "The run.", "content": {JSON: {"schema": _RUN}}},
                "401": _UNAUTHENTICATED,
                "404": _error("No run of this caller with that id.", E.NotFound),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", E.StoreUnavailable),
            },
        }
    },
    "/api/files/{attachment_id}/upload": {
        method: {
            "operationId": f"uploadAttachment{method.title()}",
            "summary": "The bytes of an attachment (ChatKit two-phase upload), once",
            "description": "The URL comes signed from `attachments.create` (`?t=`, ten "
            "minutes, this user and file only). Multipart with a `file` part, or the raw bytes.",
            "security": [{}],
            "parameters": [
                {
                    "name": "attachment_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {"name": "t", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "Stored: `{id, size, mime_type}` (type by content)."},
                "400": _BAD_REQUEST,
                "403": _error("Expired, used, or for another file or verb.", E.Forbidden),
                "404": _error("No such attachment.", E.NotFound),
                "413": _error("Over the workflow's files max_size.", E.PayloadTooLarge),
                "415": _error("Content not accepted by the workflow.", E.UnsupportedMediaType),
                "500": _INTERNAL,
                "503": _error("File storage down.", E.FileStorageUnavailable),
            },
        }
        for method in ("post", "put")
    },
    "/api/files/{attachment_id}/preview": {
        "get": {
            "operationId": "previewAttachment",
            "summary": "An uploaded attachment's bytes, for `<img src>` (signed URL, one hour)",
            "security": [{}],
            "parameters": [
                {
                    "name": "attachment_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
                {"name": "t", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {"description": "The file, with its type by content."},
                "403": _error("Expired, or for another file or verb.", E.Forbidden),
                "404": _error("No such uploaded attachment.", E.NotFound),
                "500": _INTERNAL,
                "503": _error("File storage down.", E.FileStorageUnavailable),
            },
        }
    },
    "/api/files/gateway/{workflow}/{attachment_id}/upload": {
        method: {
            "operationId": f"relayGatewayUpload{method.title()}",
            "summary": "A gateway workflow's two-phase upload, streamed to its server, once",
            "description": "The URL replaces the server's own `upload_descriptor.url` in "
            "`attachments.create` (`?t=` sealed: ten minutes, this user, workflow and file). The "
            "body (multipart or raw) is streamed to the server's URL with the descriptor's method "
            "and headers and the broker's assertion; its answer comes back with URLs rewritten. "
            "The URL is spent when the server takes the file (2xx); a use that failed leaves it "
            "for a retry, and one use runs at a time.",
            "security": [{}],
            "parameters": [_WORKFLOW_PARAM, _ATTACHMENT_PARAM, _T_PARAM],
            "responses": {
                "200": {"description": "The server's answer (an attachment), URLs rewritten."},
                "400": _BAD_REQUEST,
                "403": _error(
                    "Expired, used (or in use), forged, or for another file.", E.Forbidden
                ),
                "404": _error("No such workflow taking files.", E.NotFound),
                "413": _error("Over the workflow's files max_size.", E.PayloadTooLarge),
                "500": _INTERNAL,
                "502": _error(
                    "The server failed, redirected, or refused the assertion.",
                    E.BackendError,
                    E.BackendRejectedIdentity,
                ),
                "503": _error("The server cannot be reached.", E.BackendUnavailable),
                "504": _error("The server did not answer in time.", E.BackendTimeout),
            },
        }
        for method in ("post", "put")
    },
    "/api/files/gateway/{workflow}/{attachment_id}/preview": {
        "get": {
            "operationId": "relayGatewayPreview",
            "summary": "A gateway workflow's attachment preview, streamed from its server",
            "description": "The URL replaces the server's own `preview_url` in every relayed "
            "answer (`?t=` sealed: an hour, re-issued whenever the thread is read).",
            "security": [{}],
            "parameters": [_WORKFLOW_PARAM, _ATTACHMENT_PARAM, _T_PARAM],
            "responses": {
                "200": {"description": "The file as the server sent it (nosniff, sandboxed)."},
                "403": _error("Expired, forged, or for another file.", E.Forbidden),
                "404": _error("No such file or workflow.", E.NotFound),
                "500": _INTERNAL,
                "502": _error(
                    "The server failed, redirected, or refused the assertion.",
                    E.BackendError,
                    E.BackendRejectedIdentity,
                ),
                "503": _error("The server cannot be reached.", E.BackendUnavailable),
                "504": _error("The server did not answer in time.", E.BackendTimeout),
            },
        }
    },
    "/api/files/gateway/{workflow}/upload": {
        "post": {
            "operationId": "relayGatewayDirectUpload",
            "summary": "ChatKit's direct upload for a gateway workflow with a direct_upload_url",
            "description": "The mint answer's `uploadUrl` carries `?t=`, sealed for the user, "
            "workflow and session (12 hours), so a post without credentials works; without `t`, "
            "authenticated as ChatKit requests are (the session secret or an app JWT). The "
            "multipart body is streamed to the workflow's `direct_upload_url` with the broker's "
            "assertion; the server's attachment comes back with URLs rewritten.",
            "security": [{}, *_JWT_OR_SECRET],
            "parameters": [_WORKFLOW_PARAM, {**_T_PARAM, "required": False}],
            "responses": {
                "200": {"description": "The server's attachment, URLs rewritten."},
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error(
                    "`t` expired, forged, for another workflow, or its user signed out.",
                    E.Forbidden,
                ),
                "404": _error("No such workflow, or it takes no direct uploads.", E.NotFound),
                "413": _error("Over the workflow's files max_size.", E.PayloadTooLarge),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "502": _error(
                    "The server failed, redirected, or refused the assertion.",
                    E.BackendError,
                    E.BackendRejectedIdentity,
                ),
                "503": _error("The server cannot be reached.", E.BackendUnavailable),
                "504": _error("The server did not answer in time.", E.BackendTimeout),
            },
        }
    },
    "/mock/chatkit": {
        "post": {
            "operationId": "mockChatKit",
            "summary": "Mock mode only: a local ChatKit backend (custom-backend protocol)",
            "description": "Speaks the ChatKit custom-backend protocol (`openai-chatkit`); "
            "answers every message with a canned, clearly marked mock reply.",
            "security": [{}, {"bearerAuth": []}],
            "requestBody": {
                "required": True,
                "description": "A ChatKit request (`threads.create`, `threads.list`, …). The "
                "bearer is a `cks_…` session secret from /api/chatkit/session, or a token as "
                "in mock mode, or none (`mock-user`).",
                "content": _CHATKIT_REQUEST,
            },
            "responses": {
                "200": _CHATKIT_ANSWER,
                "400": _error(
                    "Not a ChatKit request, or one the mock does not fake (files, audio, "
                    "client tools).",
                    E.InvalidRequest,
                ),
                "401": _UNAUTHENTICATED,
                "404": _error(
                    "A thread or item this user does not own, or the backend is off "
                    "(openai-chatkit not installed).",
                    E.NotFound,
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
            },
        }
    },
}


def preflight_operation(path: str, origins: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAPI ``options`` operation of ``path`` when CORS is on, so a client generator (and
    the fuzzer) knows a browser's preflight is answered and how."""
    vary = {"Vary": {"schema": {"type": "string"}}}
    return {
        "operationId": "preflight" + "".join(c for c in path.title() if c.isalnum()),
        "summary": f"CORS preflight for {path}",
        "description": "Answered by the CORS layer for the origins in BROKER_ALLOWED_ORIGINS ("
        + ", ".join(origins)
        + f"), methods {' and '.join(ALLOW_METHODS)}, headers {', '.join(ALLOW_HEADERS)}. "
        "Without both Origin and Access-Control-Request-Method it is not a preflight: 405.",
        "security": [],
        "parameters": [
            {
                "name": "Origin",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "examples": list(origins)},
            },
            {
                "name": "Access-Control-Request-Method",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "examples": list(ALLOW_METHODS)},
            },
            {
                "name": "Access-Control-Request-Headers",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "examples": ["authorization, content-type"]},
            },
        ],
        "responses": {
            "200": {
                "description": "Allowed: the Access-Control-Allow-* headers say what.",
                "headers": {
                    "Access-Control-Allow-Origin": {"schema": {"enum": list(origins)}},
                    "Access-Control-Allow-Methods": {"schema": {"type": "string"}},
                    **vary,
                },
            },
            "400": _error(
                "Not allowed: the message names the origin, method or header refused.",
                E.InvalidRequest,
            ),
            "405": {"$ref": "#/components/responses/MethodNotAllowed"},
        },
    }


def documented_operations() -> set[tuple[str, str]]:
    """Every ``(path, METHOD)`` the document can describe."""
    return {(path, method.upper()) for path, ops in OPERATIONS.items() for method in ops}


def openapi_document(
    *,
    mock: bool = False,
    routed: Iterable[tuple[str, str]] | None = None,
    cors_origins: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The document for one running broker: only the operations it routes (``routed``, as
    ``(path, METHOD)``; all when None), with what mock mode changes written in, and a CORS
    preflight (``options``) on each path when ``cors_origins`` are configured."""
    keep = None if routed is None else {(p, m.upper()) for p, m in routed}
    paths: dict[str, Any] = {}
    for path, ops in OPERATIONS.items():
        for method, op in ops.items():
            if keep is not None and (path, method.upper()) not in keep:
                continue
            op = copy.deepcopy(op)
            responses = op["responses"]
            if mock:
                # tokens are optional; every request must come from loopback to a local Host
                if op.get("security") and {} not in op["security"]:
                    op["security"] = [{}, *op["security"]]
                # the mock guard's 403 beside whatever 403 the operation already had
                before = responses.get("403")
                mock_403 = _error(
                    "Mock mode answers only loopback peers that name localhost, 127.0.0.1 or "
                    "[::1] in Host" + (f"; otherwise: {before['description']}" if before else "."),
                    E.MockLocalOnly,
                )
                if before is not None:
                    codes = _error_codes(mock_403)
                    codes += [c for c in _error_codes(before) if c not in codes]
                responses["403"] = mock_403
            for response in responses.values():
                headers = response.setdefault("headers", {})
                headers["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
                if mock:
                    headers["X-ChatKit-Broker-Mode"] = {
                        "$ref": "#/components/headers/X-ChatKit-Broker-Mode"
                    }
                if path.startswith("/api/"):
                    headers["Cache-Control"] = {"$ref": "#/components/headers/Cache-Control"}
            paths.setdefault(path, {})[method] = op
    if cors_origins:
        for path, ops in paths.items():
            op = preflight_operation(path, cors_origins)
            # a templated path's parameters, which every operation on it must declare
            op["parameters"] = [
                p for p in next(iter(ops.values())).get("parameters", ()) if p["in"] == "path"
            ] + op["parameters"]
            for response in op["responses"].values():
                if "$ref" not in response:
                    response.setdefault("headers", {})["X-Request-ID"] = {
                        "$ref": "#/components/headers/X-Request-ID"
                    }
            ops["options"] = op

    schemas = copy.deepcopy(_schemas())
    mode = {"const": mock}
    schemas["Session"]["properties"]["mock"] = {"type": "boolean", **mode}
    schemas["Workflows"]["properties"]["mock"] = {"type": "boolean", **mode}
    schemas["ClientConfig"]["properties"]["mode"] = {"const": "mock" if mock else "live"}
    schemas["ClientConfig"]["properties"]["auth_required"] = {"const": not mock}
    if mock:
        schemas["Session"]["properties"]["client_secret"]["pattern"] = "^cks_"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatkit-broker",
            "version": __version__,
            "summary": "Gives users signed in with a JWT a ChatKit session, whatever serves it.",
            "description": (
                "MOCK MODE: no OpenAI calls; per-process session secrets; loopback clients only."
                if mock
                else "Live mode: sessions for the allowlisted workflows: agent workflows the "
                "broker serves, gateway workflows it relays to their own ChatKit servers, and "
                "hosted ones (retired 2026-11-30) minted with the broker's OpenAI key."
            )
            + ' Every error body is `{"error": {"code", "message", "request_id"}}`; '
            "an unknown route is 404 `not_found`, a wrong method 405 `method_not_allowed` "
            f"with `Allow`. Before any route: malformed HTTP is 400 `invalid_request`, a head "
            f"over {MAX_HEAD_BYTES // 1024} KiB 431 `headers_too_large`, a head or body not "
            f"complete within {HEAD_TIMEOUT:g} s 408 `request_timeout`.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The signed-in user's JWT from the app's identity provider.",
                },
                "sessionSecret": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "cks_…",
                    "description": "A session secret the broker minted (POST /api/chatkit/session),"
                    " good for its own workflow only.",
                },
                "serviceKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "ckb_sk_…",
                    "description": "A back end's service key (chatkit-broker keys create), good "
                    "for the workflows it names.",
                },
            },
            "schemas": schemas,
            "headers": copy.deepcopy(_HEADERS),
            "responses": {
                # any request, before routing (broker/server.py): these close the connection
                "BadRequest": _error("Not valid HTTP/1.1.", E.InvalidRequest),
                "RequestTimeout": _error(
                    f"The request head did not arrive within {HEAD_TIMEOUT:g} s, or the "
                    f"body within {BODY_TIMEOUT:g} s.",
                    E.RequestTimeout,
                ),
                "HeadersTooLarge": _error(
                    f"The request line and headers are over {MAX_HEAD_BYTES // 1024} KiB.",
                    E.HeadersTooLarge,
                ),
                "NotFound": _error("Unknown route.", E.NotFound),
                "MethodNotAllowed": _error(
                    "Known route, wrong method; `Allow` lists the right ones.",
                    E.MethodNotAllowed,
                ),
            },
        },
    }


def routed_operations(routes: Iterable[Any]) -> set[tuple[str, str]]:
    """The ``(path, METHOD)`` pairs a Starlette route list answers (HEAD, the implicit twin of
    GET, left out). A ``Mount`` at a documented path counts with its documented methods."""
    from starlette.routing import Mount, Route

    found = set()
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((route.path_format, method))  # `{id:path}` documented as `{id}`
        elif isinstance(route, Mount) and route.path in OPERATIONS:
            found |= {(route.path, m.upper()) for m in OPERATIONS[route.path]}
    return found
