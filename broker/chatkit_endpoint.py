"""``POST /chatkit/<name>``: the ChatKit endpoint of every workflow the broker serves itself.

Pure ASGI, so a backend's event stream and the browser's disconnect (ChatKit's Stop button)
pass straight through. The endpoint only finds the workflow and has the gate admit the
caller; the workflow's backend does the rest.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from .auth import bearer_token
from .backends import Backends
from .errors import NotFound
from .gate import Gate
from .session_secrets import SessionSecrets, is_session_secret
from .settings import Settings
from .workflow import Workflow


class ChatKitEndpoint:
    def __init__(
        self,
        settings: Settings,
        gate: Gate,
        backends: Backends,
        secrets: SessionSecrets | None,
        *,
        alias: bool = False,
    ) -> None:
        self._alias = alias
        self._settings = settings
        self._gate = gate
        self._backends = backends
        self._secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._alias:
            await self._serve_alias(scope, receive, send)
            return
        name = scope["path_params"]["name"]
        workflow = self._settings.workflow_named(name)
        if workflow is None:
            raise NotFound(
                f"There is no workflow {name[:80]!r} on this broker's allowlist; "
                "GET /api/chatkit/workflows lists yours."
            )
        await self._serve(workflow, scope, receive, send)

    async def _serve_alias(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/mock/chatkit``: the workflow a session secret names, else the first one."""
        workflow = self._settings.workflows[0]
        token = bearer_token(Headers(scope=scope).get("authorization"))
        if token is not None and is_session_secret(token) and self._secrets is not None:
            named = self._settings.workflow_named(self._secrets.workflow_of(token) or "")
            workflow = named or workflow
        await self._serve(workflow, scope, receive, send)

    async def _serve(self, workflow: Workflow, scope: Scope, receive: Receive, send: Send) -> None:
        backend = self._backends.for_workflow(workflow)
        if not backend.serves_chatkit:
            raise NotFound(
                f"Workflow {workflow.name!r} is hosted by OpenAI: ChatKit talks to OpenAI with "
                "the client_secret from /api/chatkit/session, not to this endpoint."
            )
        authorization = Headers(scope=scope).get("authorization")
        query = scope.get("query_string", b"").decode("latin-1")
        admission = await self._gate.admit_chatkit(authorization, workflow, query=query)
        state = scope.setdefault("state", {})
        state["user"] = admission.identity.user
        state["workflow"] = workflow.name
        await backend.serve(admission, scope, receive, send)
