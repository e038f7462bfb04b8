"""An agent workflow's options: the Agents SDK agent the broker hosts as a ChatKit server."""

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, StrictStr

from ...declare import Says, strict_whole
from ...files.policy import FilesPolicy
from ...workflow import Workflow

# package.module:attr, or a file (an Agent Builder export dropped in): path/to/file.py:attr
AGENT_RE = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*|[^:\s]+\.py):[A-Za-z_][A-Za-z0-9_.]*"
)


def _guardrail_message(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 500:
        raise ValueError("must be 1-500 characters")
    return value


def _agent(value: str) -> str:
    if not AGENT_RE.fullmatch(value):
        raise ValueError(
            "must be package.module:attr or path/file.py:attr "
            f"(an import path or a file, a colon, the attribute), got {value[:80]!r}"
        )
    return value


class AgentWorkflow(Workflow):
    """An Agents SDK agent (or an Agent Builder export) the broker runs, threads in its store."""

    target_key = "agent"
    kind: Literal["agent"] = "agent"
    agent: Annotated[StrictStr, AfterValidator(_agent)]
    """The agent: package.module:attr, or path/to/export.py:attr."""
    max_messages_per_minute: strict_whole(1) | None = None
    """Messages (streaming ChatKit requests) per user per minute."""
    guardrail_message: (
        Annotated[StrictStr, AfterValidator(_guardrail_message), Says(" must be a string")] | None
    ) = None
    """The refusal the chat shows when a guardrail stops a message ({guardrail}: its kind)."""
    files: FilesPolicy = FilesPolicy()
    """Attachments ([workflows.<name>.files]): enabled, max_size, accept, max_per_message,
    max_pending, pending_ttl; on by default (images and PDFs, 20 MB)."""
    dictation: bool = True
    """Whether the composer offers dictation (input.transcribe, through OpenAI's
    transcription endpoint; BROKER_TRANSCRIBE_MODEL)."""
