"""The HTTP endpoints. Each handler parses, calls the session logic, and shapes the answer."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import Identity, bearer_token
from .errors import InvalidRequest, NotFound, Unauthenticated, error_body
from .mock import MOCK_USER
from .mock_backend import ENABLE_HINT
from .openapi import openapi_document, routed_operations

if TYPE_CHECKING:
    from .app import Broker


def _broker(request: Request) -> Broker:
    return request.app.state.broker


async def authenticate(request: Request, broker: Broker) -> Identity:
    """The caller's identity from ``Authorization: Bearer``; optional only in mock mode (SPEC §5)."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        if broker.settings.mock:
            identity = Identity(user=MOCK_USER, claims={})
        else:
            raise Unauthenticated(
                "Sign-in required: send 'Authorization: Bearer <JWT>' from your app's sign-in.",
                invalid_token=False,
            )
    elif broker.settings.mock and not broker.verifier.configured:
        identity = broker.verifier.read_unverified(token)
    else:
        identity = await broker.verifier.verify(token)
    request.state.user = identity.user
    return identity


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise InvalidRequest("Send the body as JSON with 'Content-Type: application/json'.")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _workflow_ref(body: dict[str, Any]) -> str:
    """The workflow a mint names: ``workflow`` (string or ``{id}``) wins over ``workflowId``.

    Both fields are type-checked when present, even the one that loses.
    """
    workflow, workflow_id = body.get("workflow"), body.get("workflowId")
    if workflow_id is not None and not isinstance(workflow_id, str):
        raise InvalidRequest("'workflowId' must be a string.")
    if isinstance(workflow, dict):
        workflow = workflow.get("id")
        if not isinstance(workflow, str):
            raise InvalidRequest("'workflow.id' must be a string.")
    elif workflow is not None and not isinstance(workflow, str):
        raise InvalidRequest("'workflow' must be a workflow name, or an object with an 'id'.")
    ref = workflow if workflow is not None else workflow_id
    if ref is None:
        raise InvalidRequest('Name the workflow: {"workflow": "<name>"}.')
    if not ref:
        raise InvalidRequest("The workflow name is empty.")
    return ref


async def create_session(request: Request) -> Response:
    broker = _broker(request)
    identity = await authenticate(request, broker)
    if broker.limits is not None:  # every authenticated mint counts, whatever its outcome
        await broker.limits.hit_user(identity.user)
    body = await json_body(request)
    ref = _workflow_ref(body)
    previous = body.get("previous_session_id")
    if previous is not None and not isinstance(previous, str):
        raise InvalidRequest("'previous_session_id' must be a string.")
    workflow = broker.sessions.resolve(ref, identity)
    request.state.workflow = workflow.name
    minted = await broker.sessions.mint(identity, workflow, previous or None)
    return JSONResponse(
        {
            "client_secret": minted.client_secret,
            "expires_at": minted.expires_at,
            "session_id": minted.session_id,
            "workflow": {"name": workflow.name, "id": workflow.id},
            "mock": broker.settings.mock,
        }
    )


async def cancel_session(request: Request) -> Response:
    broker = _broker(request)
    identity = await authenticate(request, broker)
    body = await json_body(request)
    all_ = body.get("all", False)
    session_id = body.get("session_id")
    if not isinstance(all_, bool) or (session_id is not None and not isinstance(session_id, str)):
        raise InvalidRequest('Send {"session_id": "cksess_…"} or {"all": true}.')
    if not all_ and not session_id:
        raise InvalidRequest('Send {"session_id": "cksess_…"} or {"all": true}.')
    cancelled = await broker.sessions.cancel(identity, session_id, all_=all_)
    return JSONResponse({"cancelled": cancelled})


async def list_workflows(request: Request) -> Response:
    broker = _broker(request)
    identity = await authenticate(request, broker)
    workflows = broker.sessions.allowed_workflows(identity)
    return JSONResponse(
        {
            "workflows": [{"name": w.name, "label": w.label, "id": w.id} for w in workflows],
            "mock": broker.settings.mock,
        }
    )


async def client_config(request: Request) -> Response:
    broker = _broker(request)
    s = broker.settings
    backend = s.mock and broker.mock_backend is not None
    return JSONResponse(
        {
            "mode": "mock" if s.mock else "live",
            "auth_required": not s.mock,
            "chatkit_js_url": s.chatkit_js_url,
            "mock_backend_url": "/mock/chatkit" if backend else None,
            "domain_key": "local-dev" if backend else None,
        }
    )


async def mock_chatkit(request: Request) -> Response:
    """The mock ChatKit backend (mock mode only): every ChatKit request, for the caller's user."""
    broker = _broker(request)
    if broker.mock_backend is None:
        raise NotFound(ENABLE_HINT)
    user = await _mock_chatkit_user(request, broker)
    request.state.user = user
    return await broker.mock_backend.handle(await request.body(), user)


async def _mock_chatkit_user(request: Request, broker: Broker) -> str:
    """A mock client secret names its own user; anything else follows the mock-mode token rules."""
    token = bearer_token(request.headers.get("authorization"))
    if token is not None and token.startswith("mock_") and broker.mock_secrets is not None:
        payload = broker.mock_secrets.verify(token)
        if payload is None:
            raise Unauthenticated(
                "This mock client secret has expired, was cancelled or was issued by another "
                "broker process; mint a new one at /api/chatkit/session."
            )
        return str(payload["u"])
    return (await authenticate(request, broker)).user


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    missing = await _broker(request).not_ready()
    if missing:
        message = "Not ready: " + "; ".join(missing)
        body = error_body("not_ready", message, request.state.request_id) | {"missing": missing}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready"})


async def openapi_json(request: Request) -> Response:
    """The OpenAPI document of this broker: the operations it routes, in its mode."""
    doc = getattr(request.app.state, "openapi", None)
    if doc is None:
        routed = routed_operations(request.app.routes)
        doc = openapi_document(mock=_broker(request).settings.mock, routed=routed)
        request.app.state.openapi = doc
    return JSONResponse(doc)
