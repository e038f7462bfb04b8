"""Usage of agent workflows: every model call metered, recorded and checked against budgets.

The hook is the model provider: each ``AgentServer`` hands the Agents SDK a provider whose
models wrap the real ones, so every call (chat messages, retries, widget actions,
server-side runs, each agent of an export) passes through ``MeteredModel``, whatever Runner
call made it. Per call, not per run, so an export with several agents counts each one.
Who is calling comes from ``current_meter``, set by the engine for the answer it runs.

A call's ``usage`` (input, cached input, output, reasoning tokens) becomes one row of
``ckb_usage`` with user, workflow, model, thread and time; a call that reports none (or
ends before it could) is a row with ``known = false`` and a warning, never dropped.

Guardrails of Agent Builder exports call OpenAI on the export's own client, not through the
provider: while openai-guardrails runs (``in_guardrails``, set by ``guardrails.recording``),
a response hook on that client's HTTP client records each Chat Completions (LLM checks) and
Responses (Hallucination Detection) answer's ``usage`` the same way. Moderations report no
tokens and are not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from agents.models.interface import Model, ModelProvider

from ...budgets import MICRO, Applied, BudgetBook, RunHold, applicable
from ...gate import unmet_requirements
from ...prices import Price, cost_usd, price_for
from .store import SQLStore, usage

if TYPE_CHECKING:
    from ...metrics import Metrics
    from .workflow import Budget

__all__ = [
    "Meter",
    "MeteredProvider",
    "Metering",
    "current_meter",
    "in_guardrails",
    "meter_guardrail_client",
    "seed_from",
    "tier_of",
]

log = logging.getLogger("broker.agent.usage")

#: The answer being run: set by the engine, read by ``MeteredModel`` in the Runner's task.
current_meter: ContextVar[Meter | None] = ContextVar("chatkit_broker_meter", default=None)

#: True while openai-guardrails runs checks: only then does the guardrail client's hook record
#: (so a model call the provider already meters is never counted twice)
in_guardrails: ContextVar[bool] = ContextVar("chatkit_broker_in_guardrails", default=False)


def tier_of(budget: Budget | None, claims: Mapping[str, Any]) -> str:
    """The first tier of the budget whose ``require`` the claims meet ("" for none)."""
    if budget is None:
        return ""
    for name, tier in budget.tiers.items():
        if not unmet_requirements(tier, claims):  # type: ignore[arg-type]
            return name
    return ""


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def seed_from(store: SQLStore) -> Any:
    """A budget counter's value rebuilt from the usage table (tokens or micro-dollars)."""

    async def seed(a: Applied) -> int:
        column = usage.c.total_tokens if a.unit == "tokens" else usage.c.cost_usd
        where = [usage.c.at >= a.start, usage.c.at < a.end]
        if a.scope in ("user", "user_all"):
            where.append(usage.c.user_id == a.user)
        if a.scope in ("user", "workflow"):
            where.append(usage.c.workflow == a.workflow)
        async with store._connect() as conn:
            total = await conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(column), 0)).where(*where)
            )
        return int(total) if a.unit == "tokens" else round(float(total) * MICRO)

    return seed


@dataclass
class CallUsage:
    model: str
    known: bool
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def _from_response_usage(model: str, raw: Any) -> CallUsage:
    """The Responses API's ``usage`` object (None when the call reported none)."""
    if raw is None:
        return CallUsage(model, False)
    details_in = getattr(raw, "input_tokens_details", None)
    details_out = getattr(raw, "output_tokens_details", None)
    return CallUsage(
        model,
        True,
        int(getattr(raw, "input_tokens", 0) or 0),
        int(getattr(details_in, "cached_tokens", 0) or 0),
        int(getattr(raw, "output_tokens", 0) or 0),
        int(getattr(details_out, "reasoning_tokens", 0) or 0),
    )


def _from_wire_usage(model: str, raw: Any) -> CallUsage:
    """``usage`` of a JSON answer: Chat Completions' (prompt/completion) or the Responses API's."""
    if not isinstance(raw, dict):
        return CallUsage(model, False)
    if "prompt_tokens" in raw:
        details_in = raw.get("prompt_tokens_details") or {}
        details_out = raw.get("completion_tokens_details") or {}
        return CallUsage(
            model,
            True,
            int(raw.get("prompt_tokens") or 0),
            int(details_in.get("cached_tokens") or 0),
            int(raw.get("completion_tokens") or 0),
            int(details_out.get("reasoning_tokens") or 0),
        )
    details_in = raw.get("input_tokens_details") or {}
    details_out = raw.get("output_tokens_details") or {}
    return CallUsage(
        model,
        True,
        int(raw.get("input_tokens") or 0),
        int(details_in.get("cached_tokens") or 0),
        int(raw.get("output_tokens") or 0),
        int(details_out.get("reasoning_tokens") or 0),
    )


_METERED_PATHS = ("/chat/completions", "/responses")


async def _guardrail_response(response: Any) -> None:
    """httpx response hook of a guardrail client: one usage row per model answer."""
    meter = current_meter.get()
    request = response.request
    if (
        meter is None
        or not in_guardrails.get()
        or request.method != "POST"
        or not request.url.path.endswith(_METERED_PATHS)
        or response.status_code >= 400  # an error answer is not billed
    ):
        return
    model = "unknown"
    try:
        model = str(json.loads(request.content or b"{}").get("model") or model)
        if "json" not in response.headers.get("content-type", ""):
            call = CallUsage(model, False)  # a streamed answer: its usage is not read here
        else:
            await response.aread()
            body = json.loads(response.content)
            model = str(body.get("model") or model)
            call = _from_wire_usage(model, body.get("usage"))
    except Exception as exc:  # never break the guardrail; the row says unknown
        log.warning("a guardrail's answer could not be read for usage (%s)", type(exc).__name__)
        call = CallUsage(model, False)
    await meter.call_done(call)


def meter_guardrail_client(client: Any) -> None:
    """Record the usage of what ``client`` (an export's ``AsyncOpenAI``) answers during guardrails.

    The hook goes on its httpx client, the one place every openai-guardrails check's request
    passes, whichever resource (chat.completions, responses) the check calls.
    """
    hooks = getattr(getattr(client, "_client", None), "event_hooks", None)
    if isinstance(hooks, dict):
        answered = hooks.setdefault("response", [])
        if _guardrail_response not in answered:
            answered.append(_guardrail_response)


class Metering:
    """One workflow's metering: its budget, the shared counters, the store and metrics."""

    def __init__(
        self,
        workflow: str,
        budget: Budget | None,
        store: SQLStore,
        book: BudgetBook,
        metrics: Metrics | None = None,
    ) -> None:
        self.workflow = workflow
        self.budget = budget
        self.store = store
        self.book = book
        self.metrics = metrics
        self.prices: dict[str, Price] = {}
        if budget is not None:
            for name, entry in budget.prices.items():
                cached = entry.cached_input if entry.cached_input is not None else entry.input
                self.prices[name] = Price(entry.input, cached, entry.output)

    def applied(self, user: str, tier: str = "", now: datetime | None = None) -> list[Applied]:
        budget = self.budget
        chosen = budget.tiers.get(tier) if budget is not None and tier else None
        return applicable(budget, self.workflow, user, chosen, now=now)

    async def begin(self, user: str, tier: str, thread_id: str | None) -> Meter:
        """Reserve for one answer (``BudgetExceeded`` when a budget is spent)."""
        budget = self.budget
        hold = await self.book.begin(
            self.applied(user, tier),
            budget.reserve_tokens if budget else 0,
            budget.reserve_usd if budget else 0.0,
        )
        return Meter(self, user, thread_id, hold)

    async def check(self, user: str, tier: str) -> list[tuple[Applied, int]]:
        """Each budget that applies and its counter now; ``BudgetExceeded`` when one is
        spent, so a server-side run is refused (429) before it creates anything."""
        applied = self.applied(user, tier)
        values = await self.book.values(applied)
        for a, value in zip(applied, values, strict=True):
            if a.limit == 0 or value >= a.limit:
                raise self.book.refusal(a, value, closed_=a.limit == 0)
        return list(zip(applied, values, strict=True))

    async def record(self, meter: Meter, call: CallUsage) -> float:
        price = price_for(call.model, self.prices)
        cost = cost_usd(price, call.input_tokens, call.cached_tokens, call.output_tokens)
        row = {
            "at": _now(),
            "user_id": meter.user,
            "workflow": self.workflow,
            "thread_id": meter.thread_id,
            "model": call.model[:200],
            "known": call.known,
            "input_tokens": call.input_tokens,
            "cached_tokens": call.cached_tokens,
            "output_tokens": call.output_tokens,
            "reasoning_tokens": call.reasoning_tokens,
            "total_tokens": call.total,
            "cost_usd": cost,
        }

        if not call.known:
            log.warning(
                "agent %s: a call to model %s reported no usage; recorded as unknown",
                self.workflow,
                call.model,
            )
            if self.metrics is not None:
                self.metrics.usage_unknown(self.workflow, call.model)
        elif self.metrics is not None:
            tokens = {
                "input": call.input_tokens - call.cached_tokens,
                "cached_input": call.cached_tokens,
                "output": call.output_tokens - call.reasoning_tokens,
                "reasoning": call.reasoning_tokens,
            }
            self.metrics.usage(self.workflow, call.model, tokens, cost)
        try:
            await self.store.insert(usage, row)
        except Exception as exc:  # the answer goes on; the operator sees the loss
            log.error(
                "agent %s: usage of a call to %s not recorded (%s: %s)",
                self.workflow,
                call.model,
                type(exc).__name__,
                exc,
            )
        return cost


class Meter:
    """One answer being run: who, which thread, and its budget hold."""

    def __init__(self, metering: Metering, user: str, thread_id: str | None, hold: RunHold) -> None:
        self.metering = metering
        self.user = user
        self.thread_id = thread_id
        self.hold = hold
        self._pending: set[asyncio.Task[Any]] = set()

    async def before_call(self) -> None:
        await self.hold.before_call()

    async def call_done(self, call: CallUsage) -> None:
        cost = await self.metering.record(self, call)
        await self.hold.after_call(call.total, cost)

    def call_ended_early(self, call: CallUsage) -> None:
        """A call cut off (cancelled): recorded in a task of its own the cancel cannot reach."""
        task = asyncio.ensure_future(self.call_done(call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def finish(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.hold.settle()


class MeteredModel(Model):
    """A model whose every call is checked against the budget before and recorded after."""

    def __init__(self, inner: Model, name: str) -> None:
        self.inner = inner
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def close(self) -> None:
        await self.inner.close()

    async def _cleanup_on_run_end(self, owner: object) -> None:
        await self.inner._cleanup_on_run_end(owner)

    def get_retry_advice(self, request: Any) -> Any:
        return self.inner.get_retry_advice(request)

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        meter = current_meter.get()
        if meter is None:
            return await self.inner.get_response(*args, **kwargs)
        await meter.before_call()
        response = await self.inner.get_response(*args, **kwargs)
        u = response.usage
        known = bool(u is not None and (u.requests or u.input_tokens or u.output_tokens))
        call = CallUsage(self.name, known)
        if known:
            call = _from_response_usage(self.name, u)
        await meter.call_done(call)
        return response

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        meter = current_meter.get()
        if meter is None:
            async for event in self.inner.stream_response(*args, **kwargs):
                yield event
            return
        await meter.before_call()
        model, raw, completed = self.name, None, False
        try:
            async for event in self.inner.stream_response(*args, **kwargs):
                if getattr(event, "type", "") == "response.completed":
                    completed = True
                    raw = event.response.usage
                    model = event.response.model or model
                yield event
        except BaseException:
            meter.call_ended_early(
                _from_response_usage(model, raw) if completed else CallUsage(model, False)
            )
            raise
        await meter.call_done(_from_response_usage(model, raw))


class MeteredProvider(ModelProvider):
    """The broker's model provider with every model wrapped in ``MeteredModel``."""

    def __init__(self, inner: ModelProvider, default_model: str = "") -> None:
        self.inner = inner
        self.default_model = default_model

    def get_model(self, model_name: str | None) -> Model:
        model = self.inner.get_model(model_name)
        name = model_name or str(getattr(model, "model", "") or self.default_model or "default")
        return MeteredModel(model, name)

    async def aclose(self) -> None:
        await self.inner.aclose()
