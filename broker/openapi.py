"""The OpenAPI 3.1 description of the broker's public HTTP API, served at ``GET /openapi.json``.

Written by hand from SPEC §2 rather than generated from the code, so that it is a contract
the code can be checked against: ``tests/test_openapi.py`` compares its operations with the
app's routes and validates real responses against it, and ``tests/test_fuzz.py`` drives
schemathesis with it. ``OPERATIONS`` lists every operation the broker can have; the served
document keeps only those the running app routes (``/mock/chatkit`` exists only in mock
mode, for instance) and states what differs in mock mode.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from . import __version__
from .errors import error_classes

JSON = "application/json"
REQUEST_ID_PATTERN = "^[A-Za-z0-9._-]{1,128}$"

# Every error code the API can answer with, from the error tree (broker/errors.py).
ERROR_CODES = tuple(dict.fromkeys(cls.code for cls in error_classes()))

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

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "description": "The one error shape of the API (SPEC §2).",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "request_id"],
                "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "enum": list(ERROR_CODES)},
                    "message": {
                        "type": "string",
                        "minLength": 1,
                        "description": "A sentence a person can act on.",
                    },
                    "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
                },
            }
        },
    },
    "NotReady": {
        "description": "An error body that also lists what keeps the broker from serving.",
        "allOf": [{"$ref": "#/components/schemas/Error"}],
        "type": "object",
        "required": ["error", "missing"],
        "properties": {
            "missing": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    },
    "SessionRequest": {
        "description": "Which workflow to mint a session for: a configured name or an "
        'allowlisted `wf_…` id. `{"workflow": {"id": …}}` and `{"workflowId": …}` are '
        "accepted for front ends written for the OpenAI starter app (`workflow` wins when both "
        "are sent). Unknown fields are ignored; the user always comes from the token.",
        "type": "object",
        "properties": {
            "workflow": {
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "string", "minLength": 1}},
                    },
                    {"type": "null"},
                ],
            },
            "workflowId": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "null"}]},
            "previous_session_id": {
                "description": "On a refresh, the session this one replaces: the broker "
                "cancels it when the caller owns it (a failed cancel never fails the mint).",
                "type": ["string", "null"],
            },
        },
        "anyOf": [
            {"required": ["workflow"], "properties": {"workflow": {"not": {"type": "null"}}}},
            {
                "required": ["workflowId"],
                "properties": {"workflowId": {"type": "string"}},
            },
        ],
        "examples": [{"workflow": "support"}],
    },
    "Session": {
        "type": "object",
        "required": ["client_secret", "expires_at", "session_id", "workflow", "backend", "mock"],
        "additionalProperties": False,
        "properties": {
            "client_secret": {
                "type": "string",
                "minLength": 1,
                "description": "OpenAI's client secret (`ek_…`) for a hosted workflow; the "
                "broker's own session secret (`cks_…`) for every other kind.",
            },
            "expires_at": {"type": "integer", "description": "Unix time (s) of expiry."},
            "session_id": {
                "type": "string",
                "description": "`cksess_…` (hosted) or `bsess_…` (the broker's own)",
            },
            "workflow": {"$ref": "#/components/schemas/WorkflowRef"},
            "backend": {"$ref": "#/components/schemas/BackendEndpoint"},
            "mock": {"type": "boolean"},
        },
    },
    "WorkflowRef": {
        "type": "object",
        "required": ["name", "kind"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["hosted", "gateway", "agent", "mock"]},
            "id": {"type": "string", "description": "The `wf_` id; hosted workflows only."},
        },
    },
    "BackendEndpoint": {
        "description": "Where ChatKit sends its requests (`api: {url, domainKey, fetch}`, with "
        "`Authorization: Bearer <client_secret>`); null for hosted workflows.",
        "oneOf": [
            {"type": "null"},
            {
                "type": "object",
                "required": ["url", "domain_key"],
                "additionalProperties": False,
                "properties": {
                    "url": {"type": "string", "pattern": "^/chatkit/"},
                    "domain_key": {"type": "string"},
                    "dictation": {
                        "description": "ChatKit's `composer.dictation` (agent workflows).",
                        "type": "object",
                        "properties": {"enabled": {"type": "boolean"}},
                    },
                    "upload_strategy": {
                        "description": "ChatKit's `api.uploadStrategy` (agent workflows).",
                        "type": "object",
                        "properties": {"type": {"enum": ["two_phase", "direct"]}},
                    },
                    "attachments": {
                        "description": "The composer's attachments options, from the "
                        "workflow's `files` policy: enabled, max_size (bytes), max_count, "
                        "accept (MIME type → extensions).",
                        "type": "object",
                        "required": ["enabled"],
                        "properties": {
                            "enabled": {"type": "boolean"},
                            "max_size": {"type": "integer"},
                            "max_count": {"type": "integer"},
                            "accept": {"type": "object"},
                        },
                    },
                },
            },
        ],
    },
    "CancelRequest": {
        "type": "object",
        "properties": {
            "session_id": {"type": ["string", "null"]},
            "all": {"type": "boolean"},
        },
        "anyOf": [
            {
                "required": ["session_id"],
                "properties": {"session_id": {"type": "string", "minLength": 1}},
            },
            {"required": ["all"], "properties": {"all": {"const": True}}},
        ],
        "examples": [{"session_id": "cksess_123"}, {"all": True}],
    },
    "Cancelled": {
        "type": "object",
        "required": ["cancelled"],
        "additionalProperties": False,
        "properties": {"cancelled": {"type": "array", "items": {"type": "string"}}},
    },
    "Workflows": {
        "type": "object",
        "required": ["workflows", "mock"],
        "additionalProperties": False,
        "properties": {
            "workflows": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "label", "kind", "backend"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "label": {"type": "string"},
                        "kind": {"enum": ["hosted", "gateway", "agent", "mock"]},
                        "id": {"type": "string"},
                        "backend": {"$ref": "#/components/schemas/BackendEndpoint"},
                    },
                },
            },
            "mock": {"type": "boolean"},
        },
    },
    "ClientConfig": {
        "type": "object",
        "required": [
            "mode",
            "auth_required",
            "chatkit_js_url",
            "kinds",
            "chatkit_url",
            "mock_backend_url",
            "domain_key",
        ],
        "additionalProperties": False,
        "properties": {
            "mode": {"enum": ["live", "mock"]},
            "auth_required": {"type": "boolean"},
            "chatkit_js_url": {"type": "string"},
            "kinds": {
                "type": "array",
                "items": {"enum": ["hosted", "gateway", "agent", "mock"]},
                "description": "The kinds of backend this broker's workflows use.",
            },
            "chatkit_url": {
                "type": ["string", "null"],
                "description": "`/chatkit/{name}` when some workflow is not hosted, else null.",
            },
            "mock_backend_url": {"type": ["string", "null"]},
            "domain_key": {"type": ["string", "null"]},
        },
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"enum": ["ok", "ready"]}},
    },
}


def _error(description: str, *codes: str, headers: Iterable[str] = ()) -> dict[str, Any]:
    """An error response whose body is the SPEC error shape with one of ``codes``."""
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in headers},
        "content": {
            JSON: {
                "schema": {
                    "allOf": [{"$ref": "#/components/schemas/Error"}],
                    "properties": {
                        "error": {"properties": {"code": {"enum": list(codes)}}},
                    },
                }
            }
        },
    }


def _ok(description: str, schema: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {name: {"$ref": f"#/components/headers/{name}"} for name in headers},
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": "JSON, at most 16 KiB (413 above).",
        "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_BAD_REQUEST = _error(
    "Malformed JSON, not an object, or a known field of the wrong type.", "invalid_request"
)
_UNAUTHENTICATED = _error(
    "No token, or one that is refused (signature, expiry, audience, issuer, user claim); the "
    "message says which, without echoing the token.",
    "unauthenticated",
    headers=["WWW-Authenticate"],
)
_TIMEOUT = _error("The request body did not arrive in time.", "request_timeout")
_TOO_LARGE = _error("The request body is over 16 KiB.", "payload_too_large")
_RATE_LIMITED = _error(
    "The per-user or per-address limit was hit.", "rate_limited", headers=["Retry-After"]
)
_INTERNAL = _error("A bug in the broker; the traceback is in its log.", "internal_error")
_AUTH_UNAVAILABLE = _error(
    "JWKS mode and no key set could ever be fetched; not the caller's fault.", "auth_unavailable"
)
_UPSTREAM = {
    "502": _error(
        "OpenAI refused the API key, does not know the workflow, or answered with an error "
        "or an unusable body.",
        "upstream_auth_failed",
        "upstream_workflow_not_found",
        "upstream_error",
    ),
    "503": _error(
        "OpenAI could not be reached or is overloaded (after retries), or the JWKS has never "
        "been fetched.",
        "upstream_unavailable",
        "auth_unavailable",
    ),
    "504": _error("OpenAI did not answer within the deadline.", "upstream_timeout"),
}
_BEARER = [{"bearerAuth": []}]

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


OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "/api/chatkit/session": {
        "post": {
            "operationId": "createSession",
            "summary": "Mint a ChatKit client secret for the signed-in user",
            "security": _BEARER,
            "requestBody": _body("SessionRequest"),
            "responses": {
                "200": _ok("The new session's client secret.", "Session", "Cache-Control"),
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error(
                    "The workflow is not on the allowlist, or the caller's claims do not meet "
                    "its `require`.",
                    "workflow_not_allowed",
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
            "requestBody": _body("CancelRequest"),
            "responses": {
                "200": _ok("What was cancelled.", "Cancelled", "Cache-Control"),
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "404": _error(
                    "No session with that id was issued to this caller (or it expired); "
                    "nothing was sent upstream.",
                    "not_found",
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
                    "upstream_unavailable",
                    "auth_unavailable",
                    "store_unavailable",
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
                "200": _ok("The allowed workflows.", "Workflows", "Cache-Control"),
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
                "200": _ok("Mode and ChatKit script location.", "ClientConfig", "Cache-Control"),
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
            "responses": {"200": _ok("Serving.", "Status")},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: config valid, JWKS and Redis reached at least once",
            "security": [],
            "responses": {
                "200": _ok("Ready.", "Status"),
                "503": {
                    "description": "Not ready; `missing` names what is missing.",
                    "content": {JSON: {"schema": {"$ref": "#/components/schemas/NotReady"}}},
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
            "security": [{"bearerAuth": []}],
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
                "400": _error("Not a valid ChatKit request.", "invalid_request"),
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", "workflow_not_allowed"),
                "404": _error(
                    "No such workflow here, a hosted one, or a thread or item this user does "
                    "not own.",
                    "not_found",
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "502": _error(
                    "A gateway workflow's server failed, answered something not ChatKit, or "
                    "refused the broker's signed identity (before any byte was relayed).",
                    "backend_error",
                    "backend_rejected_identity",
                ),
                "503": _error(
                    "A gateway workflow's server cannot be reached.", "backend_unavailable"
                ),
                "504": _error(
                    "A gateway workflow's server did not connect or answer in time.",
                    "backend_timeout",
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
            "security": _BEARER,
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "stream", "in": "query", "schema": {"type": "string", "enum": ["1"]}},
            ],
            "requestBody": {
                "required": True,
                "description": "JSON, at most 256 KiB (413 above).",
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["input"],
                            "additionalProperties": False,
                            "properties": {
                                "input": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                                "thread_id": {"type": "string"},
                                "attachments": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "description": "Uploaded attachment ids "
                                    "(attachments.create, then the upload URL).",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The answer (or, with `stream=1`, the ChatKit event stream).",
                    "content": {
                        JSON: {
                            "schema": {
                                "type": "object",
                                "description": "`output` when the workflow answered; "
                                "`refusal` instead when a guardrail stopped the message.",
                                "required": ["thread_id", "output_text"],
                                "properties": {
                                    "thread_id": {"type": "string"},
                                    "output": {},
                                    "output_text": {"type": "string"},
                                    "refusal": {
                                        "type": "object",
                                        "required": ["guardrails", "message"],
                                        "properties": {
                                            "guardrails": {
                                                "type": "array",
                                                "items": {"type": "string"},
                                            },
                                            "message": {"type": "string"},
                                        },
                                    },
                                },
                            }
                        },
                        "text/event-stream": _SSE_EVENTS,
                    },
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", "workflow_not_allowed"),
                "404": _error(
                    "No such agent workflow, or a thread this user does not own.", "not_found"
                ),
                "408": _TIMEOUT,
                "413": _error("The body is over 256 KiB.", "payload_too_large"),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "502": _error("The agent failed while answering.", "backend_error"),
                "503": _error("The thread database cannot be reached.", "store_unavailable"),
                "504": _error("The run took longer than BROKER_RUN_TIMEOUT.", "run_timeout"),
            },
        }
    },
    "/api/threads": {
        "get": {
            "operationId": "listAgentThreads",
            "summary": "The caller's threads of one agent workflow, newest first (ChatKit JSON)",
            "security": _BEARER,
            "parameters": [
                {"name": "workflow", "in": "query", "required": True, "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                {"name": "after", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "A ChatKit page of threads: `{data, has_more, after}`.",
                    "content": {
                        JSON: {"schema": {"type": "object", "required": ["data", "has_more"]}}
                    },
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error("The caller may not use this workflow.", "workflow_not_allowed"),
                "404": _error("No such agent workflow.", "not_found"),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", "store_unavailable"),
            },
        }
    },
    "/api/threads/{thread_id}/items": {
        "get": {
            "operationId": "listAgentThreadItems",
            "summary": "The visible items of one of the caller's threads (ChatKit JSON)",
            "security": _BEARER,
            "parameters": [
                {"name": "thread_id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
                {"name": "after", "in": "query", "schema": {"type": "string"}},
                {
                    "name": "order",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["asc", "desc"]},
                },
            ],
            "responses": {
                "200": {
                    "description": "A ChatKit page of thread items: `{data, has_more, after}`.",
                    "content": {
                        JSON: {"schema": {"type": "object", "required": ["data", "has_more"]}}
                    },
                },
                "400": _BAD_REQUEST,
                "401": _UNAUTHENTICATED,
                "403": _error(
                    "The caller may not use this thread's workflow.", "workflow_not_allowed"
                ),
                "404": _error("No thread of this user with that id.", "not_found"),
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
                "503": _error("The thread database cannot be reached.", "store_unavailable"),
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
                "403": _error("Expired, used, or for another file or verb.", "forbidden"),
                "404": _error("No such attachment.", "not_found"),
                "413": _TOO_LARGE,
                "415": _error("Content not accepted by the workflow.", "unsupported_media_type"),
                "500": _INTERNAL,
                "503": _error("File storage down.", "file_storage_unavailable"),
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
                "403": _error("Expired, or for another file or verb.", "forbidden"),
                "404": _error("No such uploaded attachment.", "not_found"),
                "500": _INTERNAL,
                "503": _error("File storage down.", "file_storage_unavailable"),
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
                    "invalid_request",
                ),
                "401": _UNAUTHENTICATED,
                "404": _error(
                    "A thread or item this user does not own, or the backend is off "
                    "(openai-chatkit not installed).",
                    "not_found",
                ),
                "408": _TIMEOUT,
                "413": _TOO_LARGE,
                "429": _RATE_LIMITED,
                "500": _INTERNAL,
            },
        }
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
                responses["403"] = _error(
                    "Mock mode answers only loopback peers that name localhost, 127.0.0.1 or "
                    "[::1] in Host"
                    + ("; or the workflow is not allowed." if "403" in responses else "."),
                    *(
                        ["mock_local_only", "workflow_not_allowed"]
                        if "403" in responses
                        else ["mock_local_only"]
                    ),
                )
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
        from .cors import preflight_operation

        for path, ops in paths.items():
            op = preflight_operation(path, cors_origins)
            for response in op["responses"].values():
                if "$ref" not in response:
                    response.setdefault("headers", {})["X-Request-ID"] = {
                        "$ref": "#/components/headers/X-Request-ID"
                    }
            ops["options"] = op

    schemas = copy.deepcopy(_SCHEMAS)
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
                else "Live mode: mints hosted ChatKit sessions with the broker's OpenAI key."
            )
            + ' Every error body is `{"error": {"code", "message", "request_id"}}`; '
            "an unknown route is 404 `not_found`, a wrong method 405 `method_not_allowed` "
            "with `Allow`. Before any route: malformed HTTP is 400 `invalid_request`, a head "
            "over 64 KiB 431 `headers_too_large`, a head or body not complete within 10 s "
            "408 `request_timeout`.",
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
                }
            },
            "schemas": schemas,
            "headers": copy.deepcopy(_HEADERS),
            "responses": {
                # any request, before routing (broker/server.py): these close the connection
                "BadRequest": _error("Not valid HTTP/1.1.", "invalid_request"),
                "RequestTimeout": _error(
                    "The request head (or body) did not arrive within 10 s.", "request_timeout"
                ),
                "HeadersTooLarge": _error(
                    "The request line and headers are over 64 KiB.", "headers_too_large"
                ),
                "NotFound": _error("Unknown route.", "not_found"),
                "MethodNotAllowed": _error(
                    "Known route, wrong method; `Allow` lists the right ones.",
                    "method_not_allowed",
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
                    found.add((route.path, method))
        elif isinstance(route, Mount) and route.path in OPERATIONS:
            found |= {(route.path, m.upper()) for m in OPERATIONS[route.path]}
    return found
