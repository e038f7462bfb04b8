"""An agent workflow's options: the Agents SDK agent the broker hosts as a ChatKit server."""

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator

from ...declare import Says, strict_whole
from ...files.policy import FilesPolicy
from ...workflow import Require, Workflow

# package.module:attr, or a file (an Agent Builder export dropped in): path/to/file.py:attr
AGENT_RE = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*|[^:\s]+\.py):[A-Za-z_][A-Za-z0-9_.]*"
)


def _guardrail_message(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 500:
        raise ValueError("must be 1-500 characters")
    return value


def _webhook_url(value: str) -> str:
    from ...webhooks import check_url

    return check_url(value)


def _webhook_secret(value: str) -> str:
    from ...webhooks import check_secret

    return check_secret(value)


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
    budget: "Budget | None" = None
    """[workflows.<name>.budget]: token and money budgets (docs/usage.md)."""
    webhook_url: Annotated[StrictStr, AfterValidator(_webhook_url)] | None = None
    """Where background runs' run.completed/failed/cancelled events are POSTed (https; http
    only to a loopback address), signed per Standard Webhooks with webhook_secret."""
    webhook_secret: Annotated[StrictStr, AfterValidator(_webhook_secret)] | None = Field(
        None, repr=False
    )
    """The whsec_… secret that signs this workflow's webhooks (required with webhook_url)."""

    files: FilesPolicy = FilesPolicy()
    """Attachments ([workflows.<name>.files]): enabled, max_size, accept, max_per_message,
    max_pending, pending_ttl; on by default (images and PDFs, 20 MB)."""
    dictation: bool = True
    """Whether the composer offers dictation (input.transcribe, through OpenAI's
    transcription endpoint; BROKER_TRANSCRIBE_MODEL)."""

    @model_validator(mode="after")
    def _webhook_pair(self) -> "AgentWorkflow":
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError("webhook_url and webhook_secret go together")
        return self


class PriceEntry(BaseModel):
    """One model's price override, US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    """Dollars per million input tokens."""
    cached_input: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Dollars per million cached input tokens (default: the input price)."""
    output: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    """Dollars per million output tokens (reasoning tokens included)."""


Tokens = Annotated[int, Field(ge=0, strict=True), Says(" must be a whole number >= 0")]
Dollars = Annotated[float, Field(ge=0, allow_inf_nan=False), Says(" must be a number >= 0")]


class Limits(BaseModel):
    """The budgets a workflow (or one of its tiers) sets; unset means unlimited, 0 closed."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    tokens_per_user_per_day: Tokens | None = None
    """Tokens one user may spend on this workflow per UTC day."""
    tokens_per_user_per_month: Tokens | None = None
    """Tokens one user may spend on this workflow per calendar month (UTC)."""
    tokens_per_user_per_day_all_workflows: Tokens | None = None
    """Tokens one user may spend per UTC day on all agent workflows together."""
    tokens_per_user_per_month_all_workflows: Tokens | None = None
    """Tokens one user may spend per month on all agent workflows together."""
    tokens_per_day: Tokens | None = None
    """Tokens all users together may spend on this workflow per UTC day."""
    tokens_per_month: Tokens | None = None
    """Tokens all users together may spend on this workflow per month."""
    usd_per_user_per_day: Dollars | None = None
    """US dollars one user may spend on this workflow per UTC day (from the price table)."""
    usd_per_user_per_month: Dollars | None = None
    """US dollars one user may spend on this workflow per month."""
    usd_per_day: Dollars | None = None
    """US dollars all users together may spend on this workflow per UTC day."""
    usd_per_month: Dollars | None = None
    """US dollars all users together may spend on this workflow per month."""


class Tier(Limits):
    """Larger (or smaller) budgets for users whose token carries the ``require`` claims."""

    require: Require = ()
    """Claims that select this tier: claim = value, or a list of accepted values."""


def _prices(value: dict[str, PriceEntry]) -> dict[str, PriceEntry]:
    from ...prices import price_for

    unknown = sorted(name for name in value if price_for(name) is None)
    if unknown:
        raise ValueError(
            f"names unknown model(s) {', '.join(unknown)}; price only models of the shipped "
            "table (chatkit-broker usage --prices lists them) or their dated snapshots"
        )
    return value


class Budget(Limits):
    """``[workflows.<name>.budget]``: token and money budgets, tiers and price overrides."""

    reserve_tokens: Annotated[int, Field(ge=1, strict=True)] = 4000
    """Tokens held for a run while it runs, so parallel runs cannot overspend by more."""
    reserve_usd: Dollars = 0.01
    """Dollars held for a run while it runs (for the usd_* budgets)."""
    tiers: dict[str, Tier] = {}
    """[...budget.tiers.<name>]: budgets for users with given claims; the first match applies."""
    prices: Annotated[dict[str, PriceEntry], AfterValidator(_prices)] = {}
    """Price overrides per model, dollars per million tokens (input, cached_input, output)."""


AgentWorkflow.model_rebuild()
