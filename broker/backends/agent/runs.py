"""Server-side use of an agent workflow: a run from a backend service instead of a browser,
and the caller's threads and items as JSON.

Each is phrased as the ChatKit request a browser would send (``threads.create``,
``threads.add_user_message``, ``threads.list``, ``items.list``) and goes through the same
ownership checks and engine, so a run started here continues in the chat UI and back, and
the JSON has ChatKit's own shapes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatkit.server import NonStreamingResult, StreamingResult

from ... import api
from ...errors import BackendError, InvalidRequest, PayloadTooLarge, RunTimeout
from .engine import AgentServer, RunOutcome, current_outcome
from .protocol import process
from .store import MAX_PAGE_SIZE, Caller

__all__ = [
    "MAX_INPUT_BYTES",
    "BackendError",
    "RunAnswer",
    "RunTimeout",
    "chatkit_body",
    "input_text",
    "list_items",
    "list_threads",
    "run",
    "thread_ref",
]

MAX_INPUT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RunAnswer:
    """What ``POST /api/workflows/{name}/runs`` answers."""

    thread_id: str
    output: Any
    output_text: str
    #: a guardrail stopped the message: {"guardrails": [kinds], "message": text}, and no output
    refusal: dict[str, Any] | None = None

    def as_json(self) -> api.RunAnswer:
        answer: api.RunAnswer = {"thread_id": self.thread_id, "output_text": self.output_text}
        if self.refusal is not None:
            answer["refusal"] = self.refusal  # type: ignore[typeddict-item]
        else:
            answer["output"] = self.output
        return answer


def input_text(value: Any) -> str:
    """The user message for a run's ``input``: text as is, JSON as its serialisation."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        raise InvalidRequest('"input" must be a string or a JSON object.')
    if not text.strip():
        raise InvalidRequest('"input" must not be empty.')
    if len(_utf8(text, "input")) > MAX_INPUT_BYTES:
        raise PayloadTooLarge(f'"input" is larger than {MAX_INPUT_BYTES // 1024} KiB.')
    return text


def thread_ref(value: Any) -> str | None:
    """A run's ``thread_id``: absent, or a non-empty id string."""
    if value is not None and not (isinstance(value, str) and value and _utf8(value, "thread_id")):
        raise InvalidRequest('"thread_id" must be a thread id string.')
    return value


def _utf8(text: str, field: str) -> bytes:
    """JSON may carry a lone surrogate (``"\\ud800"``), which is no text: a 400, as the
    ChatKit endpoint answers it, not the ``UnicodeEncodeError`` it raised further on."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidRequest(
            f'"{field}" holds a lone surrogate (\\ud800-\\udfff): send valid Unicode text.'
        ) from None


def chatkit_body(text: str, thread_id: str | None = None, attachments: Sequence[str] = ()) -> bytes:
    """The ChatKit request a browser would send for this message."""
    message = {
        "content": [{"type": "input_text", "text": text}],
        "attachments": list(attachments),
        "inference_options": {},
    }
    if thread_id is None:
        request = {"type": "threads.create", "params": {"input": message}}
    else:
        request = {
            "type": "threads.add_user_message",
            "params": {"thread_id": thread_id, "input": message},
        }
    return json.dumps(request).encode()


async def run(
    server: AgentServer,
    caller: Caller,
    text: str,
    *,
    thread_id: str | None = None,
    timeout: float = 120.0,
    attachments: Sequence[str] = (),
) -> RunAnswer:
    """Send one message and wait for the whole answer (``RunTimeout`` after ``timeout`` s).

    ``output`` is the agent's typed output when it has an ``output_type``, the parsed text
    when the text is a JSON object, what an export returned when it returned a dict, and
    otherwise the text itself. On a timeout the partial reply is saved, as on a hang-up.
    """
    outcome = RunOutcome()
    token = current_outcome.set(outcome)
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            body = chatkit_body(text, thread_id, attachments)
            result = await process(server, body, caller)
            assert isinstance(result, StreamingResult)
            thread_id, error = await _consume(result, thread_id)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise RunTimeout(
            f"The agent did not finish within {timeout:g} s (BROKER_RUN_TIMEOUT)."
        ) from None
    finally:
        current_outcome.reset(token)
    if outcome.budget is not None:
        raise outcome.budget
    if error is not None:
        raise BackendError(error.get("message") or "The agent failed while answering.")
    assert thread_id is not None
    if outcome.refusal is not None:
        return RunAnswer(thread_id, None, outcome.output_text, outcome.refusal)
    return RunAnswer(thread_id, _output(outcome), outcome.output_text)


async def _consume(
    result: StreamingResult, thread_id: str | None
) -> tuple[str | None, dict[str, Any] | None]:
    error = None
    async for chunk in result:
        event = json.loads(chunk.removeprefix(b"data: "))
        if event["type"] == "thread.created":
            thread_id = event["thread"]["id"]
        elif event["type"] == "error":
            error = event
    return thread_id, error


def _output(outcome: RunOutcome) -> Any:
    if outcome.structured or not isinstance(outcome.output, str):
        return outcome.output
    try:
        parsed = json.loads(outcome.output)
    except ValueError:
        return outcome.output
    return parsed if isinstance(parsed, dict) else outcome.output


def _page_params(query: Mapping[str, str], *, orders: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    raw = query.get("limit")
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.")
        params["limit"] = int(raw)
    if query.get("after"):
        params["after"] = query["after"]
    order = query.get("order", "desc" if not orders else "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequest('order must be "asc" or "desc".')
    params["order"] = order
    return params


async def _json(server: AgentServer, caller: Caller, request: dict[str, Any]) -> bytes:
    result = await process(server, json.dumps(request).encode(), caller)
    assert isinstance(result, NonStreamingResult)
    return result.json


async def list_threads(server: AgentServer, caller: Caller, query: Mapping[str, str]) -> bytes:
    """The caller's threads of this workflow, newest first: ChatKit's ``threads.list`` page."""
    params = _page_params(query, orders=False)
    params["order"] = "desc"
    return await _json(server, caller, {"type": "threads.list", "params": params})


async def list_items(
    server: AgentServer, caller: Caller, thread_id: str, query: Mapping[str, str]
) -> bytes:
    """One of the caller's threads, its visible items: ChatKit's ``items.list`` page (404 if
    not theirs)."""
    params = {"thread_id": thread_id, **_page_params(query, orders=True)}
    return await _json(server, caller, {"type": "items.list", "params": params})
