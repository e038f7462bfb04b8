"""The agent engine end to end: the real Agents SDK and chatkit-python against the fake
Responses API, served over real HTTP, with threads in SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    RunContextWrapper,
    StopAtTools,
    function_tool,
    input_guardrail,
    set_trace_processors,
    set_tracing_disabled,
)
from agents.tracing import TracingProcessor
from chatkit.actions import ActionConfig
from chatkit.agents import AgentContext, ClientToolCall
from chatkit.types import SDKHiddenContextItem
from chatkit.widgets import Button, Card

from broker.backends.agent.engine import AgentServer
from broker.backends.agent.store import Caller, SQLStore
from broker.backends.agent.targets import AgentTarget, load_target

from ...support.fake_responses import FakeResponses, http_error, stream_error, text, tool_call
from .harness import Chat, assistant_texts, done_text, serve, sse

ROOT = Path(__file__).resolve().parents[3]
ALICE = Caller("alice", "support")
MSG_ID = re.compile(r"msg_[0-9a-f]{32}")


def agent_server(store: SQLStore, client, agent: Agent | None = None, **kw) -> AgentServer:
    agent = agent or Agent(name="helper", instructions="Be brief.", model="gpt-test")
    return AgentServer(store, AgentTarget("tests:agent", agent), openai_client=client, **kw)


async def test_a_streamed_reply_is_saved_to_the_store(
    store, openai_client, responses: FakeResponses
) -> None:
    responses.script(text("Hi there, Alice!", chunks=4))
    server = agent_server(store, openai_client)
    async with serve(server) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        events = await chat.send("Hello")
        kinds = [e["type"] for e in events]
        assert kinds[:3] == ["thread.created", "thread.item.done", "stream_options"]
        assert kinds.count("thread.item.updated") >= 4 and "error" not in kinds
        deltas = [
            e["update"]["delta"]
            for e in events
            if e["type"] == "thread.item.updated"
            and e["update"]["type"] == "assistant_message.content_part.text_delta"
        ]
        assert "".join(deltas) == "Hi there, Alice!" == done_text(events)
        # Saved: a reload shows the same conversation, under ids of the store's own.
        r = await chat.post("threads.get_by_id", thread_id=chat.thread_id)
        thread = r.json()
        assert thread["title"] == "Hello"
        assert [i["type"] for i in thread["items"]["data"]] == ["user_message", "assistant_message"]
        assert assistant_texts(thread["items"]["data"]) == ["Hi there, Alice!"]
        assert MSG_ID.fullmatch(thread["items"]["data"][1]["id"])
    request = responses.requests[0]
    assert request.body["stream"] is True and request.body["instructions"] == "Be brief."
    assert request.headers["Authorization"] == "Bearer sk-test-key-never-shown"


async def test_the_second_message_sends_the_history_upstream(
    store, openai_client, responses
) -> None:
    responses.script(text("Paris."), text("About 2.1 million."))
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("Capital of France?")
        second = await chat.send("How many people live there?")
        assert done_text(second) == "About 2.1 million."
        assert assistant_texts(await chat.items()) == ["Paris.", "About 2.1 million."]
    first, again = responses.requests
    assert first.texts() == ["Capital of France?"]
    assert again.texts() == ["Capital of France?", "Paris.", "How many people live there?"]
    assert [m.get("role") for m in again.input] == ["user", "assistant", "user"]


class CountingLanes:
    """The store's own driver connections, passed through, with each statement counted."""

    def __init__(self, lanes) -> None:
        self.lanes = lanes
        self.reads: list[str] = []
        self.writes: list[str] = []

    async def fetch(self, sql, params):
        self.reads.append(sql.split()[1])
        return await self.lanes.fetch(sql, params)

    async def execute(self, sql, params):
        self.writes.append(sql.split()[2])
        return await self.lanes.execute(sql, params)

    async def execute_all(self, jobs):  # SQLite's writes, committed together
        self.writes += [sql.split()[2] for sql, _ in jobs]
        return await self.lanes.execute_all(jobs)

    async def close(self) -> None:
        await self.lanes.close()


async def test_a_follow_up_turn_costs_the_store_one_read_and_two_writes(
    store, openai_client, responses
) -> None:
    """The store's share of a turn (docs/performance.md): the isolation check reads the
    thread with its latest items, and the user's message and the reply are written, each
    one statement; chatkit's reads and the model's history are answered from the first."""
    import sqlalchemy as sa

    responses.script(text("Paris."), text("About 2.1 million."))
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("Capital of France?")
        counting = store._lanes = CountingLanes(store._lanes)
        through_sqlalchemy: list[str] = []
        sa.event.listen(
            store._engine.sync_engine,
            "before_cursor_execute",
            lambda conn, cursor, statement, *rest: through_sqlalchemy.append(statement),
        )
        second = await chat.send("How many people live there?")
        assert done_text(second) == "About 2.1 million."
    assert counting.reads == ["t.data,"]  # the thread's row with its latest items
    assert counting.writes == ["ckb_items", "ckb_items"]  # the question; the answer
    assert through_sqlalchemy == []


async def test_models_that_reuse_one_message_id_do_not_overwrite_replies(
    store, openai_client, responses
) -> None:
    """Chat Completions models give every message "__fake_id__" (openai/chatkit-python#36)."""
    responses.script(text("one", item_id="__fake_id__"), text("two", item_id="__fake_id__"))
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("first")
        await chat.send("second")
        items = await chat.items()
    assert assistant_texts(items) == ["one", "two"]
    ids = [i["id"] for i in items if i["type"] == "assistant_message"]
    assert all(MSG_ID.fullmatch(i) for i in ids) and len(set(ids)) == 2


async def test_an_agent_builder_export_streams_and_hides_its_classifier(
    store, openai_client, responses
) -> None:
    target = load_target("examples.agent.builder_export:run_workflow")
    responses.script(text('{"topic":"billing"}'), text("Your invoice is on its way."))
    responses.script(text('{"topic":"other"}'), text("We are open 9 to 5."))
    server = AgentServer(store, target, openai_client=openai_client)
    async with serve(server) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        events = await chat.send("Where is my invoice?")
        assert done_text(events) == "Your invoice is on its way."
        assert '{"topic"' not in str(events)  # the classifier's JSON is not shown
        await chat.send("And when are you open?")
        assert assistant_texts(await chat.items()) == [
            "Your invoice is on its way.",
            "We are open 9 to 5.",
        ]
    classify, bill, classify2, general = responses.requests
    # Every Runner.run of the export was streamed, through the broker's client.
    assert all(r.body["stream"] is True for r in responses.requests)
    assert classify.body["text"]["format"]["type"] == "json_schema"
    assert "billing" in bill.body["instructions"] and "general" in general.body["instructions"]
    # The export is single-turn; the broker puts the earlier turns in front of its runs.
    assert classify2.texts()[:2] == ["Where is my invoice?", "Your invoice is on its way."]
    assert classify2.texts()[-1] == "And when are you open?"


async def test_an_export_whose_runs_are_all_structured_shows_what_it_returned(
    store, openai_client, responses, tmp_path
) -> None:
    (tmp_path / "extract.py").write_text(
        "from agents import Agent, Runner\n"
        "from pydantic import BaseModel\n"
        "class Out(BaseModel):\n    city: str\n"
        "class WorkflowInput(BaseModel):\n    input_as_text: str\n"
        "extractor = Agent(name='x', model='gpt-test', output_type=Out)\n"
        "async def run_workflow(workflow_input: WorkflowInput):\n"
        "    r = await Runner.run(extractor, input=workflow_input.input_as_text)\n"
        "    return {'city': r.final_output.city}\n"
    )
    target = load_target("extract.py:run_workflow", base_dir=tmp_path)
    responses.script(text('{"city":"Lyon"}'))
    async with (
        serve(AgentServer(store, target, openai_client=openai_client)) as url,
        httpx.AsyncClient() as http,
    ):
        chat = Chat(http, url, "alice")
        assert done_text(await chat.send("I live in Lyon")) == "City: Lyon"  # not JSON


async def test_an_agent_that_fails_ends_the_stream_with_an_error_event(
    store, openai_client, responses
) -> None:
    responses.script(http_error(500, "upstream exploded"), stream_error("mid-stream failure"))
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        for _ in range(2):
            events = await chat.send("hi")
            (last,) = [e for e in events if e["type"] == "error"]
            assert (
                last["type"] == "error" and last["code"] == "custom" and last["allow_retry"] is True
            )
            assert "The agent failed while answering" in last["message"]
            body = str(events)
            assert "Traceback" not in body and "sk-test-key" not in body and "exploded" not in body
        # The user's messages were kept; no half reply was saved as done.
        items = await chat.items()
        assert [i["type"] for i in items] == ["user_message", "user_message"]


async def test_an_export_that_raises_says_so_without_its_message(
    store, openai_client, tmp_path
) -> None:
    (tmp_path / "broken.py").write_text(
        "async def run_workflow(workflow_input: str):\n"
        "    raise RuntimeError('database password is hunter2')\n"
    )
    target = load_target("broken.py:run_workflow", base_dir=tmp_path)
    async with (
        serve(AgentServer(store, target, openai_client=openai_client)) as url,
        httpx.AsyncClient() as http,
    ):
        events = await Chat(http, url, "alice").send("hi")
    (error,) = [e for e in events if e["type"] == "error"]
    assert "RuntimeError" in error["message"] and "hunter2" not in str(events)


async def test_a_guardrail_tripwire_shows_one_refusal_naming_it(
    store, openai_client, responses
) -> None:
    @input_guardrail
    async def topic_filter(ctx, agent, input) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info="no", tripwire_triggered=True)

    agent = Agent(name="guarded", model="gpt-test", input_guardrails=[topic_filter])
    responses.script(text("this must not be kept", delay=0.05, chunks=5))
    async with serve(agent_server(store, openai_client, agent)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        events = await chat.send("something forbidden")
        assert [e for e in events if e["type"] == "error"] == []
        refusal = "Sorry, I can't help with that: the topic filter check stopped this message."
        assert assistant_texts(await chat.items()) == [refusal]
        assert "this must not be kept" not in str(await chat.items())


async def test_a_client_that_hangs_up_gets_its_partial_reply_saved(
    store, openai_client, responses
) -> None:
    responses.script(
        text("Partial reply, then much more text", chunks=6, hang_after=2), text("Fine.")
    )
    server = agent_server(store, openai_client)
    async with serve(server) as url:
        message = {
            "content": [{"type": "input_text", "text": "Tell me a story"}],
            "attachments": [],
            "inference_options": {},
        }
        seen, deltas, thread_id = "", 0, None
        async with httpx.AsyncClient() as http:
            body = {"type": "threads.create", "params": {"input": message}}
            async with http.stream("POST", url, json=body, headers={"X-Test-User": "alice"}) as r:
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    (event,) = sse(line)
                    thread_id = thread_id or event.get("thread", {}).get("id")
                    update = event.get("update", {})
                    if update.get("type") == "assistant_message.content_part.text_delta":
                        seen += update["delta"]
                        deltas += 1
                    if responses.hanging.is_set() and deltas == 2:
                        break  # hang up mid-reply
        assert seen and "Partial reply, then much more text".startswith(seen)
        saved: list = []
        for _ in range(200):
            page = await store.load_thread_items(thread_id, None, 10, "asc", ALICE)
            saved = [i for i in page.data if i.type == "assistant_message"]
            history = await store.load_history(thread_id, ALICE)
            if saved and history[-1].type == "sdk_hidden_context":
                break
            await asyncio.sleep(0.025)
        assert [i.content[0].text for i in saved] == [seen]
        assert "cancelled" in history[-1].content
        # The next turn tells the model that the user stopped the last reply.
        responses.release()
        async with httpx.AsyncClient() as http:
            chat = Chat(http, url, "alice")
            chat.thread_id = thread_id
            assert done_text(await chat.send("Never mind")) == "Fine."
    texts = responses.requests[-1].texts()
    assert texts[:2] == ["Tell me a story", seen]
    assert "The user cancelled the stream" in texts[2] and texts[3] == "Never mind"


async def test_retry_replaces_the_reply_and_drops_what_followed(
    store, openai_client, responses
) -> None:
    responses.script(text("First answer."), text("Second answer."))
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("Question?")
        user_id = (await chat.items())[0]["id"]
        # A hidden note after the message (as a hang-up leaves) must not reach the retry.
        await store.add_thread_item(
            chat.thread_id,
            SDKHiddenContextItem(
                id="shcx_1",
                thread_id=chat.thread_id,
                created_at=datetime.now(),
                content="The user cancelled the stream.",
            ),
            ALICE,
        )
        r = await chat.post("threads.retry_after_item", thread_id=chat.thread_id, item_id=user_id)
        assert r.status_code == 200 and done_text(sse(r.text)) == "Second answer."
        assert assistant_texts(await chat.items()) == ["Second answer."]
    assert responses.requests[1].texts() == ["Question?"]


async def test_a_client_tool_call_round_trips_through_the_browser(
    store, openai_client, responses
) -> None:
    @function_tool
    async def get_location(ctx: RunContextWrapper[AgentContext]) -> str:
        """Ask the browser where the user is."""
        ctx.context.client_tool_call = ClientToolCall(name="get_location", arguments={})
        return "asked the browser"

    agent = Agent(
        name="geo",
        model="gpt-test",
        tools=[get_location],
        tool_use_behavior=StopAtTools(stop_at_tool_names=["get_location"]),
    )
    responses.script(tool_call("get_location", {}), text("You are in Oslo."))
    async with serve(agent_server(store, openai_client, agent)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        events = await chat.send("Where am I?")
        (call,) = [
            e["item"]
            for e in events
            if e["type"] == "thread.item.done" and e["item"]["type"] == "client_tool_call"
        ]
        assert call["status"] == "pending" and call["name"] == "get_location"
        r = await chat.post(
            "threads.add_client_tool_output", thread_id=chat.thread_id, result={"city": "Oslo"}
        )
        assert r.status_code == 200 and done_text(sse(r.text)) == "You are in Oslo."
        # Now nothing is pending: a second tool output is refused before any stream.
        again = await chat.post(
            "threads.add_client_tool_output", thread_id=chat.thread_id, result={}
        )
        assert again.status_code == 400
    outputs = [i for i in responses.requests[1].input if i.get("type") == "function_call_output"]
    assert outputs and "Oslo" in outputs[0]["output"]


async def test_a_widget_action_reaches_the_agent_as_hidden_context(
    store, openai_client, responses
) -> None:
    @function_tool
    async def show_card(ctx: RunContextWrapper[AgentContext]) -> str:
        """Show a card with a button."""
        card = Card(
            children=[
                Button(
                    label="Approve",
                    onClickAction=ActionConfig(type="order.approve", payload={"order": 7}),
                )
            ]
        )
        await ctx.context.stream_widget(card)
        return "card shown"

    agent = Agent(
        name="orders",
        model="gpt-test",
        tools=[show_card],
        tool_use_behavior=StopAtTools(stop_at_tool_names=["show_card"]),
    )
    responses.script(tool_call("show_card", {}), text("Order 7 approved."))
    async with serve(agent_server(store, openai_client, agent)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        events = await chat.send("Show me order 7")
        (widget,) = [
            e["item"]
            for e in events
            if e["type"] == "thread.item.done" and e["item"]["type"] == "widget"
        ]
        action = {"type": "order.approve", "payload": {"order": 7}}
        r = await chat.post(
            "threads.custom_action", thread_id=chat.thread_id, item_id=widget["id"], action=action
        )
        assert r.status_code == 200 and done_text(sse(r.text)) == "Order 7 approved."
        # The note is stored for the model but never shown.
        assert [i["type"] for i in await chat.items()] == [
            "user_message",
            "widget",
            "assistant_message",
        ]
    note = responses.requests[-1].texts()[-1]
    assert "<HiddenContext>" in note and "order.approve" in note and '"order": 7' in note


async def test_feedback_rename_and_delete_work_for_the_owner(
    store, openai_client, responses
) -> None:
    async with serve(agent_server(store, openai_client)) as url, httpx.AsyncClient() as http:
        chat = Chat(http, url, "alice")
        await chat.send("hi")
        reply = (await chat.items())[1]["id"]
        r = await chat.post(
            "items.feedback", thread_id=chat.thread_id, item_ids=[reply], kind="positive"
        )
        assert r.status_code == 200 and r.json() == {}
        r = await chat.post("threads.update", thread_id=chat.thread_id, title="Renamed")
        assert r.json()["title"] == "Renamed"
        listed = (await chat.post("threads.list", limit=5)).json()["data"]
        assert [t["title"] for t in listed] == ["Renamed"]
        assert (await chat.post("threads.delete", thread_id=chat.thread_id)).status_code == 200
        assert (await chat.post("threads.get_by_id", thread_id=chat.thread_id)).status_code == 404


class TraceCollector(TracingProcessor):
    """Receives every trace the Agents SDK would export (instead of api.openai.com)."""

    def __init__(self) -> None:
        self.traces: list[str] = []

    def on_trace_start(self, trace) -> None:
        self.traces.append(trace.name)

    def on_trace_end(self, trace) -> None: ...
    def on_span_start(self, span) -> None: ...
    def on_span_end(self, span) -> None: ...
    def shutdown(self) -> None: ...
    def force_flush(self) -> None: ...


@pytest.mark.parametrize("tracing", [False, True])
async def test_agents_sdk_tracing_is_off_unless_asked_for(
    store, openai_client, responses, tracing: bool
) -> None:
    collector = TraceCollector()
    set_trace_processors([collector])
    try:
        target = load_target("examples.agent.builder_export:run_workflow")
        server = AgentServer(store, target, openai_client=openai_client, tracing=tracing)
        responses.script(text('{"topic":"other"}'), text("ok"))
        async with serve(server) as url, httpx.AsyncClient() as http:
            assert done_text(await Chat(http, url, "alice").send("hi")) == "ok"
    finally:
        set_trace_processors([])
        set_tracing_disabled(True)
    # The export opens `with trace("Triage")` itself: only the process-wide switch stops it.
    assert ("Triage" in collector.traces) is tracing
