"""The agent backend's routes for back ends as callers (issue 28): a service key as the third
kind of caller on the runs and read-back routes, background runs and their ``/api/runs/…``.

Kept apart from ``backend.py`` so the synchronous run and the ChatKit endpoint read as
before; each function here is one step those handlers call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...errors import InvalidRequest, NotFound
from ...gate import unmet_requirements
from ...service_keys import ServiceKey
from ...workflow import Workflow
from ..base import Admission

if TYPE_CHECKING:
    from .backend import AgentBackend

NO_STORE = {"Cache-Control": "no-store"}
IDEMPOTENCY_MAX = 200


def webhook_targets(workflows: Sequence[Workflow]) -> dict[str, tuple[str, str]]:
    """workflow name -> (webhook_url, webhook_secret), for the workflows that set them."""
    targets = {}
    for wf in workflows:
        url, secret = getattr(wf, "webhook_url", None), getattr(wf, "webhook_secret", None)
        if url and secret:
            targets[wf.name] = (url, secret)
    return targets


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False),
        status_code=status,
        media_type="application/json",
        headers=NO_STORE | (headers or {}),
    )


async def json_object(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise InvalidRequest("Send the body as JSON with 'Content-Type: application/json'.")
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


_body = json_object


async def _key(backend: AgentBackend, request: Request) -> ServiceKey | None:
    """The calling service key (401 if it is not a live one), or None for other callers."""
    authorization = request.headers.get("authorization")
    if backend.gate.service_key_token(authorization) is None:
        return None
    await backend._ensure_started()
    key = await backend.gate.service_key(authorization)
    request.state.service_key = key.name
    return key


async def refuse_background_elsewhere(backend: AgentBackend, request: Request) -> None:
    """A background run of a workflow that is not an agent one is a 400 (once the caller is
    known), not the 404 a run of an unknown workflow gets."""
    workflow = backend.settings.workflow_named(request.path_params["name"])
    if workflow is None or workflow.name in backend._servers:
        return
    if await _key(backend, request) is None:
        await backend.gate.identify(request.headers.get("authorization"))
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        return
    if isinstance(body, dict) and body.get("background") is True:
        raise InvalidRequest(
            f"Background runs are for agent workflows; {workflow.name!r} is a "
            f"{workflow.kind} workflow."
        )


async def admit_run(
    backend: AgentBackend, request: Request, workflow: Workflow
) -> tuple[Admission, dict[str, Any], ServiceKey | None]:
    """Admit a run's caller (a service key, a session secret or an app JWT) and read its body."""
    request.state.workflow = workflow.name
    key = await _key(backend, request)
    if key is not None:
        body = await _body(request)
        admission = await backend.gate.admit_service_key(key, workflow, body.get("user"))
        return admission, body, key
    admission = await backend.gate.admit_chatkit(request.headers.get("authorization"), workflow)
    return admission, await _body(request), None


async def admit_read(backend: AgentBackend, request: Request, workflow: Workflow) -> Admission:
    """``GET /api/threads``: a key reads its own threads, or (acting for users) ``?user=``'s."""
    key = await _key(backend, request)
    if key is None:
        return await backend.gate.admit_chatkit(request.headers.get("authorization"), workflow)
    return await backend.gate.admit_service_key(key, workflow, request.query_params.get("user"))


async def admit_thread_read(backend: AgentBackend, request: Request, thread_id: str) -> Admission:
    """``GET /api/threads/<id>/items`` for a key: a thread of a workflow it names, of
    ``?user=`` (acting for users) or its own; 404 for any other."""
    key = await _key(backend, request)
    assert key is not None
    user = request.query_params.get("user")
    owner = user if user is not None else key.caller
    name = await backend.store.thread_workflow(thread_id, owner)
    if name is None or name not in key.workflows or name not in backend._servers:
        raise NotFound(f"Thread {thread_id[:80]} not found.")
    workflow = backend._agent_workflow(name)
    admission = await backend.gate.admit_service_key(key, workflow, user)
    request.state.user = admission.identity.user
    return admission


async def start_background(
    backend: AgentBackend,
    request: Request,
    admission: Admission,
    key: ServiceKey | None,
    text: str,
    thread_id: str | None,
    attachments: tuple[str, ...] = (),
) -> Response:
    """202 and the queued run; the same run again for a repeated ``Idempotency-Key``."""
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and not (
        1 <= len(idempotency_key) <= IDEMPOTENCY_MAX and idempotency_key.isprintable()
    ):
        raise InvalidRequest(f"Idempotency-Key must be 1-{IDEMPOTENCY_MAX} printable characters.")
    await backend._ensure_started()
    record, _ = await backend.background.create(
        workflow=admission.workflow.name,
        user=admission.identity.user,
        key_name=key.name if key is not None else None,
        text=text,
        thread_id=thread_id,
        idempotency_key=idempotency_key,
        attachments=attachments,
    )
    request.state.run = record["id"]
    return _json(record, 202, {"Location": f"/api/runs/{record['id']}"})


async def _reader(backend: AgentBackend, request: Request) -> Callable[[Any], bool]:
    """Which runs this caller may see: a key, the runs it started on workflows it still
    names; a signed-in user, their own runs (a key's runs for them included)."""
    key = await _key(backend, request)
    if key is not None:
        return lambda row: row.key_name == key.name and row.workflow in key.workflows
    identity = await backend.gate.identify(request.headers.get("authorization"))
    request.state.user = identity.user
    await backend._ensure_started()

    def may_see(row: Any) -> bool:
        workflow = backend.settings.workflow_named(row.workflow)
        return (
            row.user_id == identity.user
            and workflow is not None
            and not unmet_requirements(workflow, identity.claims)
        )

    return may_see


def _log_fields(request: Request, record: dict[str, Any]) -> None:
    """The access line's run, workflow and (for a key's run) user: one line per use."""
    request.state.run = record["id"]
    request.state.workflow = record["workflow"]
    if "user" in record:
        request.state.user = record["user"]


def routes(backend: AgentBackend) -> list[BaseRoute]:
    async def get_run(request: Request) -> Response:
        """``GET /api/runs/<id>``: a background run's status, output or error."""
        may_see = await _reader(backend, request)
        record = await backend.background.get(request.path_params["run_id"], may_see)
        _log_fields(request, record)
        return _json(record)

    async def cancel_run(request: Request) -> Response:
        """``POST /api/runs/<id>/cancel``: stop a queued or running background run."""
        may_see = await _reader(backend, request)
        record = await backend.background.cancel(request.path_params["run_id"], may_see)
        _log_fields(request, record)
        return _json(record)

    return [
        Route("/api/runs/{run_id}", get_run, methods=["GET"]),
        Route("/api/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    ]
