"""The ``POST /chatkit/sessions`` body for a hosted workflow, built from its configuration.

The user comes from the admitted identity only, never from the request body.
"""

from __future__ import annotations

from typing import Any

from ...auth import Identity
from ...workflow import Workflow


def build_session_request(workflow: Workflow, identity: Identity) -> dict[str, Any]:
    """The ``POST /chatkit/sessions`` body for this workflow; ``user`` comes from the token only."""
    wf: dict[str, Any] = {"id": workflow.id}
    if workflow.version is not None:
        wf["version"] = workflow.version
    state: dict[str, Any] = {}
    for name, value in workflow.state_variables:
        if isinstance(value, tuple):
            claim = identity.claims.get(value[1])
            if isinstance(claim, str | int | float | bool):
                state[name] = claim
        else:
            state[name] = value
    if state:
        wf["state_variables"] = state
    if workflow.tracing is not None:
        wf["tracing"] = {"enabled": workflow.tracing}
    body: dict[str, Any] = {"workflow": wf, "user": identity.user}
    if workflow.expires_after is not None:
        body["expires_after"] = {"anchor": "created_at", "seconds": workflow.expires_after}
    if workflow.max_requests_per_minute is not None:
        body["rate_limits"] = {"max_requests_per_1_minute": workflow.max_requests_per_minute}
    chatkit: dict[str, Any] = {}
    if workflow.automatic_thread_titling is not None:
        chatkit["automatic_thread_titling"] = {"enabled": workflow.automatic_thread_titling}
    if workflow.file_upload is not None:
        upload = workflow.file_upload
        chatkit["file_upload"] = {"enabled": upload.enabled} | _present(
            max_file_size=upload.max_file_size, max_files=upload.max_files
        )
    if workflow.history is not None:
        history = workflow.history
        chatkit["history"] = {"enabled": history.enabled} | _present(
            recent_threads=history.recent_threads
        )
    if chatkit:
        body["chatkit_configuration"] = chatkit
    return body


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
