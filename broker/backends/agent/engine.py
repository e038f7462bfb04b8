"""The ChatKit server the broker runs for an agent workflow.

It answers each user message with the workflow's target (targets.py): an ``agents.Agent``
run multi-turn on the thread's history, or an Agent Builder export run once per message
with ``input_as_text`` (the earlier turns are put in front of each of its runs, since an
export rebuilds its history from that text alone). Either way the Agents SDK run is
streamed to ChatKit with chatkit's own ``stream_agent_response``. Failures end the stream
with a ChatKit ``error`` event, never a traceback, and a client that hangs up still gets its
partial reply saved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents import (
    Agent,
    RunConfig,
    Runner,
    RunResultStreaming,
    TResponseInputItem,
    set_tracing_disabled,
)
from agents.models.multi_provider import MultiProvider
from chatkit.actions import Action
from chatkit.agents import AgentContext, ThreadItemConverter, stream_agent_response
from chatkit.errors import CustomStreamError
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    Attachment,
    HiddenContextItem,
    InferenceOptions,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
    WidgetItem,
    is_streaming_req,
)
from openai import AsyncOpenAI
from openai.types.responses import ResponseInputTextParam

from ...errors import BrokerError, BudgetExceeded
from .guardrails import GuardrailBroken, current_trips, failed_in_output, refusal_text
from .outputs import parsed_output, shown_text, title_source
from .protocol import REQUESTS
from .store import Caller, SQLStore
from .targets import AgentTarget, ExportTarget, Target, current_sink, has_output_type, with_client
from .usage import Meter, MeteredProvider, Metering, current_meter

__all__ = ["AgentServer", "RunOutcome", "current_outcome", "message_text"]

log = logging.getLogger("broker.agent")


class _NoTracebackForBrokerErrors(logging.Filter):
    """chatkit logs every exception that ends a stream with its traceback. A ``BrokerError``
    (the thread store unreachable, …) is an expected condition, already one warning line
    of ours and an error event: keep chatkit's line, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BrokerError):
            record.msg, record.args = f"stream ended: {type(exc).__name__}: {exc.message}", None
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("chatkit").addFilter(_NoTracebackForBrokerErrors())

TITLE_LENGTH = 40


@dataclass
class RunOutcome:
    """What one answer produced, for server-side runs: the final output and its text."""

    output: Any = None
    output_text: str = ""
    structured: bool = False
    messages: list[str] = field(default_factory=list)
    #: set when a guardrail stopped the message: {"guardrails": [kinds], "message": text}
    refusal: dict[str, Any] | None = None
    #: set when a budget stopped the answer (before or during the run)
    budget: BudgetExceeded | None = None


#: Set by a caller that wants the outcome of the answer it is about to stream.
current_outcome: ContextVar[RunOutcome | None] = ContextVar("chatkit_broker_outcome", default=None)


def message_text(item: UserMessageItem) -> str:
    """What the user typed, tags as ``@tag``, the way chatkit shows it to a model."""
    parts = []
    for part in item.content:
        if isinstance(part, UserMessageTextContent):
            parts.append(part.text)
        elif isinstance(part, UserMessageTagContent):
            parts.append(f"@{part.text}")
    return "".join(parts)


def make_title(text: str) -> str:
    words = " ".join(title_source(text).split())
    if len(words) <= TITLE_LENGTH:
        return words or "New chat"
    return words[: TITLE_LENGTH - 1].rstrip() + "…"


def is_tripwire(exc: BaseException) -> bool:
    """Agents SDK guardrails and openai-guardrails (exports) both raise *TripwireTriggered."""
    return type(exc).__name__.endswith("TripwireTriggered")


def tripped_names(exc: BaseException) -> list[str]:
    """The guardrail a tripwire exception names: the Agents SDK's guardrail function, or
    openai-guardrails' ``guardrail_name``."""
    result = getattr(exc, "guardrail_result", None)
    guardrail = getattr(result, "guardrail", None)
    if guardrail is not None and callable(getattr(guardrail, "get_name", None)):
        return [str(guardrail.get_name()).replace("_", " ")]
    info = getattr(result, "info", None)
    if isinstance(info, dict) and info.get("guardrail_name"):
        return [str(info["guardrail_name"])]
    return []


class HistoryConverter(ThreadItemConverter):
    """chatkit's converter, with text for what it refuses by default (tags, attachments).

    The broker keeps no file bytes, so an attachment reaches the model as its name only.
    """

    async def attachment_to_message_content(self, attachment: Attachment) -> Any:
        return ResponseInputTextParam(
            type="input_text", text=f"[attached file: {attachment.name} ({attachment.mime_type})]"
        )

    async def tag_to_message_content(self, tag: UserMessageTagContent) -> Any:
        data = json.dumps(tag.data, default=str)
        return ResponseInputTextParam(type="input_text", text=f"<tag {tag.text!r}>{data}</tag>")


class _IdRemap:
    """Give assistant messages ids of the store's own, not the model's.

    chatkit reuses the Responses item id, which is "__fake_id__" for every message with
    Chat Completions or LiteLLM models (openai/chatkit-python#36): replies would overwrite
    each other. Each added message gets a fresh id; its deltas and done follow it.
    """

    def __init__(self, new_id: Callable[[], str]) -> None:
        self._new_id = new_id
        self._open: dict[str, str] = {}
        self._seen: dict[str, str] = {}

    def __call__(self, event: ThreadStreamEvent) -> ThreadStreamEvent:
        if isinstance(event, ThreadItemUpdatedEvent):  # the most frequent: one per delta
            mine = self._open.get(event.item_id)
            if mine is not None:
                # in place, not a copy per delta: chatkit builds each update event afresh and
                # keeps no reference to it (items, which it does keep, are copied below)
                event.item_id = mine
            return event
        if isinstance(event, ThreadItemAddedEvent) and isinstance(event.item, AssistantMessageItem):
            mine = self._new_id()
            self._open[event.item.id] = self._seen[event.item.id] = mine
            return event.model_copy(update={"item": event.item.model_copy(update={"id": mine})})
        if isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, AssistantMessageItem):
            original = event.item.id
            mine = self._open.pop(original, None) or self._new_id()
            self._seen[original] = mine
            return event.model_copy(update={"item": event.item.model_copy(update={"id": mine})})
        if isinstance(event, ThreadItemRemovedEvent) and event.item_id in self._seen:
            return event.model_copy(update={"item_id": self._seen[event.item_id]})
        return event


class AgentServer(ChatKitServer[Caller]):
    """A ``ChatKitServer`` for one workflow's target; the context is the ``Caller``.

    ``openai_client`` carries the broker's key and base URL into every run (as the model
    provider), so nothing depends on process-global Agents SDK defaults; None suits agents
    whose model is a ``Model`` object (mock mode's canned one).
    """

    def __init__(
        self,
        store: SQLStore,
        target: Target,
        *,
        openai_client: AsyncOpenAI | None,
        tracing: bool = False,
        history_limit: int = 100,
        refusal: str | None = None,
        metering: Metering | None = None,
    ) -> None:
        super().__init__(store)
        self.metering = metering  # usage recorded and budgets held per answer (usage.py)
        self.refusal = refusal  # the workflow's guardrail_message template, or the default
        self.store: SQLStore = store
        self.target = target
        self.tracing = tracing
        self.history_limit = history_limit
        self.provider = MeteredProvider(MultiProvider(openai_client=openai_client))
        self.converter = HistoryConverter()
        self._background: set[asyncio.Task[Any]] = set()
        # Per-run RunConfig switches cover Runner calls; an export's own `with trace(...)`
        # needs the process-wide switch too, or it posts traces to api.openai.com.
        set_tracing_disabled(not tracing)

    async def process(
        self, request: str | bytes | bytearray, context: Caller
    ) -> StreamingResult | NonStreamingResult:
        """chatkit's ``process`` with the request parsed by one adapter built at import.

        chatkit 1.6 builds a fresh ``TypeAdapter`` for the ChatKit request union on every
        call, about 5 ms of CPU per request; the rest is chatkit's own routing.
        """
        parsed = REQUESTS.validate_json(request)
        if is_streaming_req(parsed):
            return StreamingResult(self._process_streaming(parsed, context))
        return NonStreamingResult(await self._process_non_streaming(parsed, context))

    def run_config(self) -> RunConfig:
        return RunConfig(model_provider=self.provider, tracing_disabled=not self.tracing)

    def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Caller
    ) -> AsyncIterator[ThreadStreamEvent]:
        """The answer's events; a plain function returning ``_answer``'s generator, so that
        no generator re-yields every event."""
        if input_user_message is not None and thread.title is None:
            thread.title = make_title(message_text(input_user_message))
        return self._answer(thread, input_user_message, context)

    async def _answer(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: Caller
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Run the target for one turn, with the failure handling every turn shares."""
        outcome = current_outcome.get() or RunOutcome()
        meter = None
        if self.metering is not None:
            try:
                meter = await self.metering.begin(
                    getattr(context, "user", context), getattr(context, "tier", ""), thread.id
                )
            except BudgetExceeded as exc:
                outcome.budget = exc
                raise CustomStreamError(exc.message, allow_retry=False) from None
            current_meter.set(meter)
        try:
            async for event in self._answer_metered(thread, input_user_message, context, outcome):
                yield event
        finally:
            if meter is not None:
                self._settle(meter)

    def _settle(self, meter: Meter) -> None:
        """Settle the budget hold in a task of its own, which a hang-up cannot cut off."""
        current_meter.set(None)
        task = asyncio.ensure_future(meter.finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _answer_metered(
        self,
        thread: ThreadMetadata,
        input_user_message: UserMessageItem | None,
        context: Caller,
        outcome: RunOutcome,
    ) -> AsyncIterator[ThreadStreamEvent]:
        remap = _IdRemap(lambda: self.store.generate_item_id("message", thread, context))
        if isinstance(self.target, AgentTarget):
            events = self._run_agent(
                self.target.agent, thread, input_user_message, context, outcome
            )
        else:
            events = self._run_export(self.target, thread, input_user_message, context, outcome)
        try:
            async for event in events:
                event = remap(event)
                if isinstance(event, ThreadItemDoneEvent) and isinstance(
                    event.item, AssistantMessageItem
                ):
                    outcome.messages.append("".join(c.text for c in event.item.content))
                yield event
        except CustomStreamError:
            raise
        except BudgetExceeded as exc:
            # a model call that would have started past the budget: what streamed is kept
            log.info("agent %s: budget %s spent mid-run", self.target.spec, exc.budget["name"])
            outcome.budget = exc
            raise CustomStreamError(
                f"{exc.message} The reply stops here; what it said so far is kept.",
                allow_retry=False,
            ) from None
        except GuardrailBroken as exc:
            log.warning(
                "agent %s: %s%s", self.target.spec, exc, f" (fix: {exc.fix})" if exc.fix else ""
            )
            raise CustomStreamError(
                "This assistant cannot check messages right now (its "
                f"{', '.join(exc.names) or 'guardrail'} check failed), so nothing was sent.",
                allow_retry=exc.fix is None,  # a missing model stays missing: no retry
            ) from None
        except Exception as exc:
            if is_tripwire(exc):
                log.info("agent %s: guardrail tripwire %s", self.target.spec, type(exc).__name__)
                for event in self.refuse(thread, context, outcome, tripped_names(exc)):
                    yield event
                return
            # Type and message for operators; the browser gets a fixed sentence.
            log.warning("agent %s failed: %s: %s", self.target.spec, type(exc).__name__, exc)
            raise CustomStreamError(
                f"The agent failed while answering ({type(exc).__name__}). Try again.",
                allow_retry=True,
            ) from None
        if not outcome.output_text and outcome.messages:
            outcome.output_text = outcome.messages[-1]
        if outcome.output is None and outcome.refusal is None:
            outcome.output = outcome.output_text

    def refuse(
        self, thread: ThreadMetadata, context: Caller, outcome: RunOutcome, names: list[str]
    ) -> list[ThreadStreamEvent]:
        """One short assistant message naming the guardrail (saved, so the thread shows it)."""
        message = refusal_text(self.refusal, names)
        outcome.refusal = {"guardrails": list(dict.fromkeys(names)), "message": message}
        outcome.output, outcome.output_text = None, message
        item = AssistantMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[AssistantMessageContent(text=message)],
        )
        return [ThreadItemAddedEvent(item=item), ThreadItemDoneEvent(item=item)]

    async def action(
        self,
        thread: ThreadMetadata,
        action: Action[str, Any],
        sender: WidgetItem | None,
        context: Caller,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """A widget button: tell the agent in a hidden note, then let it answer.

        The note is a thread item the browser never sees, so the next turns know of the
        press too; an export gets the same sentence as its ``input_as_text``.
        """
        payload = json.dumps(action.payload, default=str)
        note = f"The user pressed a widget button: action {action.type!r}, payload {payload}."
        hidden = ThreadItemDoneEvent(
            item=HiddenContextItem(
                id=self.store.generate_item_id("message", thread, context),
                thread_id=thread.id,
                created_at=datetime.now(),
                content=note,
            )
        )
        if isinstance(self.target, AgentTarget):
            yield hidden  # saved before the run, so the agent reads it in the history
            async for event in self._answer(thread, None, context):
                yield event
            return
        prompt = UserMessageItem(
            id=self.store.generate_item_id("message", thread, context),
            thread_id=thread.id,
            created_at=datetime.now(),
            content=[UserMessageTextContent(text=note)],
            attachments=[],
            inference_options=InferenceOptions(),
        )
        async for event in self._answer(thread, prompt, context):
            yield event
        yield hidden  # after the reply: the export got the note as its input_as_text

    async def _history(
        self, thread: ThreadMetadata, current: UserMessageItem | None, context: Caller
    ) -> tuple[list[ThreadItem], list[ThreadItem]]:
        """The thread before ``current`` and from it on (hidden items included).

        On a retry the items after the message were deleted but hidden ones (chatkit's
        "user cancelled" note) are not paged, so they are cut off here.
        """
        items = await self.store.load_history(thread.id, context, self.history_limit)
        if current is None:
            return items, []
        ids = [item.id for item in items]
        if current.id not in ids:
            return items, [current]
        at = ids.index(current.id)
        return items[:at], [current]

    async def _run_agent(
        self,
        agent: Agent[Any],
        thread: ThreadMetadata,
        current: UserMessageItem | None,
        context: Caller,
        outcome: RunOutcome,
    ) -> AsyncIterator[ThreadStreamEvent]:
        before, now = await self._history(thread, current, context)
        input_items = await self.converter.to_agent_input([*before, *now])
        actx = AgentContext(thread=thread, store=self.store, request_context=context)
        result = Runner.run_streamed(agent, input_items, context=actx, run_config=self.run_config())
        try:
            async for event in stream_agent_response(actx, result):
                yield event
        finally:
            if not result.is_complete:
                result.cancel()
        outcome.structured = has_output_type(agent)
        if outcome.structured:
            outcome.output = _jsonable(result.final_output)
            outcome.output_text = json.dumps(outcome.output, default=str)

    async def _run_export(
        self,
        target: ExportTarget,
        thread: ThreadMetadata,
        current: UserMessageItem | None,
        context: Caller,
        outcome: RunOutcome,
    ) -> AsyncIterator[ThreadStreamEvent]:
        if current is None:
            return  # client tool output or structured input: an export has no step for it
        before, _ = await self._history(thread, current, context)
        sink = _ExportSink(self, thread, context, await self.converter.to_agent_input(before))
        trips: list[str] = []
        token, trips_token = current_sink.set(sink), current_trips.set(trips)
        try:
            task = asyncio.create_task(target.run(target.make_input(message_text(current))))
        finally:
            current_sink.reset(token)
            current_trips.reset(trips_token)
        task.add_done_callback(lambda _: sink.queue.put_nowait(_DONE))
        try:
            while (event := await sink.queue.get()) is not _DONE:
                yield event
            returned = task.result()
        finally:
            if not task.done():
                task.cancel()
        returned = _jsonable(returned) if returned is not None else None
        failed = failed_in_output(returned)
        if failed or (trips and sink.visible == 0):
            # Agent Builder's fail output, or its own end node after a tripwire: a refusal.
            # An output guardrail trips after the reply streamed: the reply is taken back,
            # as chatkit does for an Agents SDK tripwire.
            for item_id in sink.shown:
                yield ThreadItemRemovedEvent(item_id=item_id)
            for event in self.refuse(thread, context, outcome, failed or trips):
                yield event
            return
        outcome.output = returned
        structured = parsed_output(returned)
        if structured is not None:  # {"output_text": "<JSON>", …}: like an output_type
            outcome.output, outcome.structured = structured, True
            outcome.output_text = json.dumps(structured, ensure_ascii=False)
        elif isinstance(returned, dict) and isinstance(returned.get("output_text"), str):
            outcome.output_text = returned["output_text"]
        elif isinstance(returned, str):
            outcome.output_text = returned
        if sink.visible == 0 and returned is not None:
            # Every run was structured (hidden): show what the workflow returned instead.
            shown = shown_text(returned)
            if not outcome.output_text:
                outcome.output_text = shown
            item = AssistantMessageItem(
                id=self.store.generate_item_id("message", thread, context),
                thread_id=thread.id,
                created_at=datetime.now(),
                content=[AssistantMessageContent(text=shown)],
            )
            yield ThreadItemAddedEvent(item=item)
            yield ThreadItemDoneEvent(item=item)

    async def handle_stream_cancelled(
        self, thread: ThreadMetadata, pending_items: list[ThreadItem], context: Caller
    ) -> None:
        """Save the partial reply in a task of its own, which the cancellation cannot reach.

        The request's task is being cancelled (anyio cancels again at every await), so the
        saves chatkit makes here would otherwise be cut off after the first one.
        """
        task = asyncio.ensure_future(
            super().handle_stream_cancelled(thread, pending_items, context)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for saves still running after a cancellation (call before closing the store)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


_DONE = object()


class _ExportSink:
    """Where an export's ``Runner.run`` calls stream to: this answer's event queue."""

    def __init__(
        self,
        server: AgentServer,
        thread: ThreadMetadata,
        context: Caller,
        prior: list[TResponseInputItem],
    ) -> None:
        self.server = server
        self.thread = thread
        self.context = context
        self.prior = prior
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.visible = 0
        self.shown: list[str] = []  # the assistant messages streamed (the model's ids)

    def prepare(self, agent: Agent[Any], input: Any, run_config: Any) -> tuple[Any, RunConfig]:
        config = with_client(run_config, self.server.provider, tracing=self.server.tracing)
        if isinstance(input, str):
            input = [{"role": "user", "content": input}]
        if isinstance(input, list):
            input = [*self.prior, *input]
        return input, config

    async def consume(self, agent: Agent[Any], result: RunResultStreaming) -> None:
        try:
            if has_output_type(agent):
                # A classifier or extractor: its JSON is for the workflow, not the chat.
                async for _ in result.stream_events():
                    pass
                return
            actx = AgentContext(
                thread=self.thread, store=self.server.store, request_context=self.context
            )
            async for event in stream_agent_response(actx, result):
                if isinstance(event, ThreadItemDoneEvent) and isinstance(
                    event.item, AssistantMessageItem
                ):
                    self.visible += 1
                    self.shown.append(event.item.id)
                await self.queue.put(event)
        finally:
            if not result.is_complete:
                result.cancel()


def _jsonable(value: Any) -> Any:
    """A final output as JSON data: pydantic models and dataclasses dumped, others as they are."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
