"""The broker's own HTTP endpoints. Each handler parses, has the gate admit the caller, calls
the session logic, and shapes the answer; ChatKit traffic itself goes to ``chatkit_endpoint``.

The mint and cancel are plain endpoints (``edge.Plain``: scope and ``receive`` in, the JSON
body of a 200 out, errors raised), which the edge serves without Starlette's router, request
and response objects: the mint is the hot path. The rest are ordinary Starlette handlers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response
from starlette.types import Receive, Scope

from . import api
from .auth import Identity
from .errors import InvalidRequest, NotReady
from .workflow import Workflow

if TYPE_CHECKING:
    from .app import Broker

# Starlette's JSONResponse builds a new encoder per answer (json.dumps with options): one here
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class JSONResponse(_StarletteJSON):
    """Starlette's JSON answer with the same bytes, encoded by one shared encoder."""

    def render(self, content: Any) -> bytes:
        return _encode(content).encode()


def _broker(request: Request) -> Broker:
    return request.app.state.broker


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` in lower case), read straight off the ASGI scope: the
    hot path needs two, and Starlette's ``Headers`` and ``URL`` objects cost more than that."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def authenticate(scope: Scope, broker: Broker, *, count_mint: bool = False) -> Identity:
    """The caller's identity, through the gate (optional only in mock mode, SPEC §5)."""
    identity = await broker.gate.identify(
        header(scope, b"authorization"),
        count_mint=count_mint,
        query=scope.get("query_string", b"").decode("latin-1"),
    )
    scope["state"]["user"] = identity.user
    return identity


async def read_body(receive: Receive) -> bytes:
    """The whole body, straight from ``receive``: Starlette's ``body()`` runs an async
    generator per request for what is, for the broker's small JSON bodies, one message."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def json_body(scope: Scope, receive: Receive) -> Any:
    """The request body as parsed JSON, or a 400 that says what is wrong with it (whether it
    is the right JSON is the body model's question, ``api.Body.parse``)."""
    content_type = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise InvalidRequest("Send the body as JSON with 'Content-Type: application/json'.")
    raw = await read_body(receive)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.") from None


async def create_session(broker: Broker, scope: Scope, receive: Receive) -> bytes:
    """The mint: a plain endpoint the edge serves before the router (``edge.Plain``)."""
    # every authenticated mint counts against the user's limit, whatever its outcome
    identity = await authenticate(scope, broker, count_mint=True)
    ref, previous = api.mint_request(await json_body(scope, receive))
    admission = broker.gate.admit(identity, ref)
    scope["state"]["workflow"] = admission.workflow.name
    minted = await broker.sessions.mint(admission, previous or None)
    answer: api.Session = {
        "client_secret": minted.client_secret,
        "expires_at": minted.expires_at,
        "session_id": minted.session_id,
        "workflow": _workflow_json(admission.workflow, minted.kind),
        "backend": minted.backend,  # type: ignore[typeddict-item]
        "mock": broker.mock,
    }
    return _encode(answer).encode()


def _workflow_json(workflow: Workflow, kind: str) -> api.WorkflowRef:
    """A workflow as answers show it: ``id`` only where OpenAI hosts it."""
    shown: api.WorkflowRef = {"name": workflow.name, "kind": kind}  # type: ignore[typeddict-item]
    if kind == "hosted" and workflow.id is not None:
        shown["id"] = workflow.id
    return shown


async def cancel_session(broker: Broker, scope: Scope, receive: Receive) -> bytes:
    """Cancel: a plain endpoint too (``edge.Plain``)."""
    identity = await authenticate(scope, broker)
    body = api.CancelRequest.parse(await json_body(scope, receive))
    cancelled = await broker.sessions.cancel(identity, body.session_id, all_=body.all)
    answer: api.Cancelled = {"cancelled": cancelled}
    return _encode(answer).encode()


async def list_workflows(request: Request) -> Response:
    broker = _broker(request)
    identity = await authenticate(request.scope, broker)
    shown = []
    for wf in broker.gate.allowed(identity):
        backend = broker.backends.for_workflow(wf)
        entry: api.WorkflowEntry = {"label": wf.label, **_workflow_json(wf, backend.kind)}  # type: ignore[typeddict-item]
        entry["backend"] = backend.endpoint(wf, broker.settings.chatkit_domain_key)
        shown.append(entry)
    answer: api.Workflows = {"workflows": shown, "mock": broker.mock}
    return JSONResponse(answer)


async def client_config(request: Request) -> Response:
    """What the test page needs before sign-in: the mode and how ChatKit reaches each kind."""
    broker = _broker(request)
    s = broker.settings
    kinds = sorted({broker.backends.for_workflow(wf).kind for wf in s.workflows})
    custom = any(kind != "hosted" for kind in kinds)
    answer: api.ClientConfig = {
        "mode": "mock" if broker.mock else "live",
        "auth_required": not broker.mock,
        "chatkit_js_url": s.chatkit_js_url,
        "kinds": kinds,  # type: ignore[typeddict-item]
        "chatkit_url": "/chatkit/{name}" if custom else None,
        "mock_backend_url": "/mock/chatkit" if broker.mock else None,
        "domain_key": s.chatkit_domain_key if custom else None,
    }
    return JSONResponse(answer)


async def healthz(request: Request) -> Response:
    answer: api.Status = {"status": "ok"}
    return JSONResponse(answer)


async def readyz(request: Request) -> Response:
    missing = await _broker(request).not_ready()
    if missing:
        raise NotReady(missing)
    answer: api.Status = {"status": "ready"}
    degraded = await _broker(request).degraded_modes()
    if degraded:
        answer["degraded"] = degraded
    return JSONResponse(answer)


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of this broker: the operations it routes, in its mode."""
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:
        # built on the first ask: the module and its schemas are 2.6 MB of RSS that a broker
        # nobody reads the document of never needs
        from .openapi import openapi_document, routed_operations

        routed = routed_operations(request.app.routes)
        broker = _broker(request)
        doc = openapi_document(
            mock=broker.mock, routed=routed, cors_origins=broker.settings.allowed_origins
        )
        request.app.state.openapi = doc
    return JSONResponse(doc)
