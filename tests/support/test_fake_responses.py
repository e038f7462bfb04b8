"""The fake Responses API speaks what openai-python parses: every event validated against
openai-python's own types, and the real Agents SDK run against it (streamed, not streamed,
with a tool call)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from agents import Agent, RunConfig, Runner, function_tool
from agents.models.multi_provider import MultiProvider
from openai import AsyncOpenAI
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from .fake_responses import (
    FakeResponses,
    FakeResponsesServer,
    http_error,
    stream_error,
    text,
    tool_call,
)

EVENTS: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeResponses]:
    server = FakeResponsesServer()
    fake = server.start()
    yield fake
    server.stop()


@pytest.fixture(autouse=True)
def _reset(fake: FakeResponses) -> None:
    fake.reset()


def sse_events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def run_config(fake: FakeResponses) -> RunConfig:
    client = AsyncOpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
    return RunConfig(model_provider=MultiProvider(openai_client=client), tracing_disabled=True)


def test_every_streamed_event_is_a_valid_openai_event(fake: FakeResponses) -> None:
    fake.script(text("Hello there, world", chunks=3), tool_call("lookup", {"q": "x"}))
    events = []
    for _ in range(2):
        r = httpx.post(
            fake.base_url + "/responses", json={"model": "m", "input": "hi", "stream": True}
        )
        assert r.headers["content-type"].startswith("text/event-stream")
        events += sse_events(r.text)
    parsed = [EVENTS.validate_python(e) for e in events]
    types = [e.type for e in parsed]
    assert types[:4] == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types.count("response.output_text.delta") == 3
    assert "response.function_call_arguments.delta" in types
    assert types.count("response.completed") == 2
    assert [e.sequence_number for e in parsed[: types.index("response.completed") + 1]] == list(
        range(types.index("response.completed") + 1)
    )
    completed = [e for e in parsed if e.type == "response.completed"]
    assert completed[0].response.output_text == "Hello there, world"
    assert completed[1].response.output[0].type == "function_call"


def test_a_non_streamed_reply_is_a_valid_response(fake: FakeResponses) -> None:
    fake.script(text("plain"))
    r = httpx.post(fake.base_url + "/responses", json={"model": "m", "input": "hi"})
    assert Response.model_validate(r.json()).output_text == "plain"


def test_errors_are_valid_too(fake: FakeResponses) -> None:
    fake.script(stream_error("boom", after=1), http_error(500, "down"))
    events = sse_events(
        httpx.post(
            fake.base_url + "/responses", json={"model": "m", "input": "x", "stream": True}
        ).text
    )
    assert EVENTS.validate_python(events[-1]).type == "error"
    r = httpx.post(fake.base_url + "/responses", json={"model": "m", "input": "x"})
    assert r.status_code == 500 and r.json()["error"]["message"] == "down"


async def test_the_agents_sdk_streams_a_reply_and_runs_a_tool(fake: FakeResponses) -> None:
    calls: list[str] = []

    @function_tool
    def lookup(q: str) -> str:
        """Look something up."""
        calls.append(q)
        return f"found {q}"

    agent = Agent(name="helper", instructions="Be brief.", model="gpt-test", tools=[lookup])
    fake.script(tool_call("lookup", {"q": "weather"}), text("It is sunny.", chunks=4))
    result = Runner.run_streamed(agent, "What is the weather?", run_config=run_config(fake))
    deltas = [
        e.data.delta
        async for e in result.stream_events()
        if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"
    ]
    assert result.final_output == "It is sunny." and "".join(deltas) == "It is sunny."
    assert calls == ["weather"]
    first, second = fake.requests
    assert first.body["stream"] is True and first.body["model"] == "gpt-test"
    assert first.body["instructions"] == "Be brief." and first.texts("user") == [
        "What is the weather?"
    ]
    outputs = [i for i in second.input if i.get("type") == "function_call_output"]
    assert outputs and outputs[0]["output"] == "found weather"


async def test_the_agents_sdk_runs_unstreamed_and_unscripted_requests_echo(
    fake: FakeResponses,
) -> None:
    agent = Agent(name="echo", model="gpt-test")
    result = await Runner.run(agent, "ping", run_config=run_config(fake))
    assert result.final_output == "echo: ping"
    assert "stream" not in fake.requests[0].body
