"""Mock mode's agent: an Agents SDK ``Model`` that streams canned, clearly marked replies.

Mock mode then runs on the real agent engine (store, history, streaming, stop, retry),
only without a model: nothing leaves the machine. ``/slow`` streams slowly (after a progress
line), ``/error`` fails mid-reply, ``/long`` sends markdown and ``/widget`` sends a card
(through a tool, as a real agent would) whose button round-trips. The words are in
replies.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from agents import (
    Agent,
    AgentHooks,
    FunctionTool,
    RunContextWrapper,
    StopAtTools,
    function_tool,
)
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model
from agents.usage import Usage
from chatkit.agents import AgentContext
from chatkit.errors import CustomStreamError
from chatkit.types import ProgressUpdateEvent
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ..agent.targets import AgentTarget
from .replies import (
    ERROR_MESSAGE,
    ERROR_START,
    SLOW_PROGRESS,
    WIDGET_INTRO,
    echo_reply,
    long_reply,
    pressed_reply,
    slow_reply,
    split_deltas,
    widget_card,
)

__all__ = ["ERROR_MESSAGE", "CannedModel", "mock_agent", "mock_target"]

WIDGET_TOOL = "show_mock_widget"
_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
_ACTION = re.compile(r"The user pressed a widget button: action '([^']*)'")


def _last_user_text(input: str | list[TResponseInputItem]) -> str:
    if isinstance(input, str):
        return input
    for entry in reversed(input):
        if not isinstance(entry, dict) or entry.get("role") != "user":
            continue
        content = entry.get("content")
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


def _answered_tool(input: str | list[TResponseInputItem]) -> bool:
    """Whether the last thing in the input is the output of the widget tool."""
    return (
        isinstance(input, list)
        and bool(input)
        and isinstance(input[-1], dict)
        and input[-1].get("type") == "function_call_output"
    )


def _command(text: str) -> str:
    """The message's first word, lower-cased: ``/slow``, ``/error``, … or anything else."""
    words = text.split(maxsplit=1)
    return words[0].lower() if words else ""


class CannedModel(Model):
    """Answers from the last user message; ``step``/``slow_step`` pace the deltas."""

    def __init__(self, *, step: float = 0.02, slow_step: float = 0.5) -> None:
        self.step = step
        self.slow_step = slow_step

    def plan(self, input: str | list[TResponseInputItem]) -> tuple[str, int, float, str | None]:
        """(text, pieces, pause, then): then is "error" or "widget" or None."""
        if _answered_tool(input):
            return "", 0, 0.0, None
        text = _last_user_text(input)
        if "<HiddenContext>" in text:
            pressed = _ACTION.search(text)
            action = pressed.group(1) if pressed else "?"
            return pressed_reply(action), 4, self.step, None
        message = text.strip()
        command = _command(message)
        if command == "/slow":
            return slow_reply(message, self.slow_step), 10, self.slow_step, None
        if command == "/error":
            return ERROR_START, 3, self.step, "error"
        if command == "/long":
            return long_reply(message), 24, self.step, None
        if command == "/widget":
            return WIDGET_INTRO, 3, self.step, "widget"
        return echo_reply(message), min(12, max(4, len(message.split()))), self.step, None

    async def get_response(
        self,
        system_instructions,
        input,
        model_settings,
        tools,
        output_schema,
        handoffs,
        tracing,
        **_: Any,
    ) -> ModelResponse:  # type: ignore[override]
        text, _, _, then = self.plan(input)
        if then == "error":
            raise CustomStreamError(ERROR_MESSAGE, allow_retry=True)
        output = [_message("msg_" + secrets.token_hex(12), text, "completed")] if text else []
        if then == "widget":
            output.append(_widget_call(_last_user_text(input)))
        response = Response.model_validate(_response(output, "completed"))
        return ModelResponse(output=response.output, usage=Usage(), response_id=None)

    async def stream_response(
        self,
        system_instructions,
        input,
        model_settings,
        tools,
        output_schema,
        handoffs,
        tracing,
        **_: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:  # type: ignore[override]
        text, pieces, pause, then = self.plan(input)
        seq = 0

        def event(data: dict[str, Any]) -> TResponseStreamEvent:
            nonlocal seq
            data["sequence_number"] = seq
            seq += 1
            return _EVENT.validate_python(data)  # type: ignore[return-value]

        yield event({"type": "response.created", "response": _response([], "in_progress")})
        output: list[dict[str, Any]] = []
        if text:
            item_id = "msg_" + secrets.token_hex(12)
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            yield event(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": _message(item_id, "", "in_progress"),
                }
            )
            yield event({"type": "response.content_part.added", **where, "part": _part("")})
            for index, delta in enumerate(split_deltas(text, pieces)):
                if index and pause > 0:
                    await asyncio.sleep(pause)
                yield event(
                    {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}
                )
            if then == "error":
                # The SDK drops events still queued when a model fails; let them go out first.
                await asyncio.sleep(max(pause, 0.05))
                raise CustomStreamError(ERROR_MESSAGE, allow_retry=True)
            yield event(
                {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
            )
            yield event({"type": "response.content_part.done", **where, "part": _part(text)})
            done = _message(item_id, text, "completed")
            yield event({"type": "response.output_item.done", "output_index": 0, "item": done})
            output.append(done)
        if then == "widget":
            call = _widget_call(_last_user_text(input))
            index = len(output)
            yield event(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**call, "status": "in_progress"},
                }
            )
            yield event({"type": "response.output_item.done", "output_index": index, "item": call})
            output.append(call)
        yield event({"type": "response.completed", "response": _response(output, "completed")})


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [_part(text)] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _widget_call(said: str) -> dict[str, Any]:
    text = said.strip().split(maxsplit=1)
    return {
        "type": "function_call",
        "id": "fc_" + secrets.token_hex(12),
        "call_id": "call_" + secrets.token_hex(12),
        "name": WIDGET_TOOL,
        "arguments": json.dumps({"text": text[1] if len(text) > 1 else ""}),
        "status": "completed",
    }


def _response(output: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "id": "resp_" + secrets.token_hex(12),
        "object": "response",
        "created_at": int(time.time()),
        "model": "mock",
        "status": status,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }


@function_tool(name_override=WIDGET_TOOL)
async def show_mock_widget(ctx: RunContextWrapper[AgentContext[Any]], text: str) -> str:
    """Show the mock widget card, whose button sends a custom action back."""
    # The tool runs while chatkit may still be relaying the text before it; a moment's
    # pause keeps the card below that text (chatkit merges the two streams as they come).
    await asyncio.sleep(0.05)
    await ctx.context.stream_widget(
        widget_card(f"/widget {text}".strip()),
        copy_text=f"[mock] widget card for: /widget {text}".strip(),
    )
    return "The widget card is shown."


class _SlowProgress(AgentHooks[AgentContext[Any]]):
    """Shows a progress line before a ``/slow`` reply, as a model that takes its time would.

    Only the run's context can reach the chat stream (a ``Model`` cannot), so a hook does it.
    """

    async def on_llm_start(self, context, agent, system_prompt, input_items) -> None:  # type: ignore[override]
        chat = context.context  # None in a bare ``Runner.run``, which has no stream to show
        slow = _command(_last_user_text(input_items)) == "/slow"
        if isinstance(chat, AgentContext) and slow and not _answered_tool(input_items):
            await chat.stream(ProgressUpdateEvent(text=SLOW_PROGRESS))


def mock_target(*, step: float = 0.02, slow_step: float = 0.5) -> AgentTarget:
    """Mock mode's target for every workflow."""
    return AgentTarget("mock", mock_agent(step=step, slow_step=slow_step))


def mock_agent(*, step: float = 0.02, slow_step: float = 0.5) -> Agent[Any]:
    """The agent every workflow runs in mock mode."""
    tool: FunctionTool = show_mock_widget
    return Agent(
        name="Mock",
        instructions="Canned replies; no model is called.",
        model=CannedModel(step=step, slow_step=slow_step),
        tools=[tool],
        hooks=_SlowProgress(),
        # The run ends with the card, as the old mock backend's did.
        tool_use_behavior=StopAtTools(stop_at_tool_names=[WIDGET_TOOL]),
    )
