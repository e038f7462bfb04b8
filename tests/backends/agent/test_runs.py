"""Server-side runs and thread listings, with the real Agents SDK against the fake
Responses API, on both databases."""

from __future__ import annotations

import asyncio
import json

import pytest
from agents import Agent
from chatkit.types import Page, Thread, ThreadItem
from pydantic import BaseModel, TypeAdapter

from broker.backends.agent.engine import AgentServer
from broker.backends.agent.runs import (
    MAX_INPUT_BYTES,
    BackendError,
    RunTimeout,
    input_text,
    list_items,
    list_threads,
    run,
)
from broker.backends.agent.store import Caller, SQLStore
from broker.backends.agent.targets import AgentTarget, load_target
from broker.errors import InvalidRequest, NotFound, PayloadTooLarge

from ...support.fake_responses import FakeResponses, http_error, text

ALICE = Caller("alice", "support")
BOB = Caller("bob", "support")
THREADS: TypeAdapter[Page[Thread]] = TypeAdapter(Page[Thread])
ITEMS: TypeAdapter[Page[ThreadItem]] = TypeAdapter(Page[ThreadItem])


class Verdict(BaseModel):
    ok: bool
    reason: str


def server_for(store: SQLStore, client, agent: Agent | None = None) -> AgentServer:
    agent = agent or Agent(name="helper", model="gpt-test")
    return AgentServer(store, AgentTarget("tests:agent", agent), openai_client=client)


def test_input_is_text_or_json_and_at_most_one_megabyte() -> None:
    assert input_text("hello") == "hello"
    assert input_text({"order": 42, "note": "é"}) == '{"order":42,"note":"é"}'
    for bad in (42, None, "   "):
        with pytest.raises(InvalidRequest, match='"input"'):
            input_text(bad)
    input_text("x" * MAX_INPUT_BYTES)
    with pytest.raises(PayloadTooLarge):
        input_text("x" * (MAX_INPUT_BYTES + 1))
    for unencodable in ("a\ud800", {"note": "\udfff"}):  # valid JSON, not text: a 400
        with pytest.raises(InvalidRequest, match="lone surrogate"):
            input_text(unencodable)


async def test_a_run_answers_text_and_continues_its_thread(
    store, openai_client, responses: FakeResponses
) -> None:
    server = server_for(store, openai_client)
    responses.script(text("Hello, service."), text("Still here."))
    first = await run(server, ALICE, "hi")
    assert first.output == first.output_text == "Hello, service."
    second = await run(server, ALICE, "again?", thread_id=first.thread_id)
    assert second.thread_id == first.thread_id and second.output == "Still here."
    assert responses.requests[1].texts() == ["hi", "Hello, service.", "again?"]
    # The run's thread is an ordinary ChatKit thread of alice's.
    page = ITEMS.validate_json(await list_items(server, ALICE, first.thread_id, {}))
    assert [i.type for i in page.data] == ["user_message", "assistant_message"] * 2


async def test_json_output_is_parsed(store, openai_client, responses) -> None:
    typed = Agent(name="judge", model="gpt-test", output_type=Verdict)
    responses.script(text('{"ok": true, "reason": "fine"}'))
    answer = await run(server_for(store, openai_client, typed), ALICE, json.dumps({"claim": "x"}))
    assert answer.output == {"ok": True, "reason": "fine"}
    assert json.loads(answer.output_text) == answer.output
    assert responses.requests[0].texts() == ['{"claim": "x"}']
    # A plain agent whose text happens to be a JSON object: parsed too; other text is kept.
    responses.script(text('{"total": 3}'), text("[1, 2]"))
    plain = server_for(store, openai_client)
    assert (await run(plain, ALICE, "sum")).output == {"total": 3}
    assert (await run(plain, ALICE, "list")).output == "[1, 2]"


async def test_an_export_run_returns_what_the_workflow_returned(
    store, openai_client, responses
) -> None:
    target = load_target("examples.agent.builder_export:run_workflow")
    responses.script(text('{"topic":"billing"}'), text("Refund sent."))
    answer = await run(AgentServer(store, target, openai_client=openai_client), ALICE, "refund?")
    assert answer.output == {"output_text": "Refund sent.", "topic": "billing"}
    assert answer.output_text == "Refund sent."


async def test_a_run_on_someone_elses_thread_is_404(store, openai_client, responses) -> None:
    server = server_for(store, openai_client)
    mine = await run(server, ALICE, "hi")
    with pytest.raises(NotFound):
        await run(server, BOB, "let me in", thread_id=mine.thread_id)
    with pytest.raises(NotFound):
        await list_items(server, BOB, mine.thread_id, {})
    assert len(responses.requests) == 1


async def test_a_failing_agent_is_a_backend_error(store, openai_client, responses) -> None:
    responses.script(http_error(500, "boom"))
    with pytest.raises(BackendError, match="The agent failed while answering") as info:
        await run(server_for(store, openai_client), ALICE, "hi")
    assert info.value.status == 502 and "boom" not in info.value.message


async def test_a_run_that_takes_too_long_times_out_and_keeps_the_partial_reply(
    store, openai_client, responses
) -> None:
    responses.script(text("A slow and partial reply", chunks=4, hang_after=2))
    server = server_for(store, openai_client)
    with pytest.raises(RunTimeout, match="BROKER_RUN_TIMEOUT") as info:
        await run(server, ALICE, "hi", timeout=1.0)
    assert info.value.status == 504
    await server.drain()
    (thread,) = THREADS.validate_json(await list_threads(server, ALICE, {})).data
    texts = [
        i.content[0].text
        for i in (await store.load_thread_items(thread.id, None, 10, "asc", ALICE)).data
        if i.type == "assistant_message"
    ]
    assert texts and "A slow and partial reply".startswith(texts[0])


async def test_thread_listings_page_and_stay_private(store, openai_client, responses) -> None:
    server = server_for(store, openai_client)
    ids = [(await run(server, ALICE, f"question {i}")).thread_id for i in range(3)]
    await run(server, BOB, "bob's")
    page = THREADS.validate_json(await list_threads(server, ALICE, {"limit": "2"}))
    assert [t.id for t in page.data] == ids[::-1][:2] and page.has_more
    rest = THREADS.validate_json(
        await list_threads(server, ALICE, {"limit": "2", "after": page.after})
    )
    assert [t.id for t in rest.data] == [ids[0]] and not rest.has_more
    assert page.data[0].title == "question 2"
    items = ITEMS.validate_json(
        await list_items(server, ALICE, ids[0], {"order": "desc", "limit": "1"})
    )
    assert [i.type for i in items.data] == ["assistant_message"] and items.has_more
    for bad in ({"limit": "0"}, {"limit": "abc"}, {"limit": "101"}, {"order": "sideways"}):
        with pytest.raises(InvalidRequest):
            await list_items(server, ALICE, ids[0], bad)


async def test_concurrent_runs_of_two_users_do_not_mix(store, openai_client, responses) -> None:
    server = server_for(store, openai_client)
    answers = await asyncio.gather(
        *(run(server, Caller(f"user{i}", "support"), f"I am user{i}") for i in range(6))
    )
    for i, answer in enumerate(answers):
        assert answer.output == f"echo: I am user{i}"
        page = THREADS.validate_json(await list_threads(server, Caller(f"user{i}", "support"), {}))
        assert [t.id for t in page.data] == [answer.thread_id]
