"""The canned replies, through the broker as the page drives it (mint, then POST
/chatkit/<workflow>): the marked echo and the commands /slow, /error, /long and /widget."""

from __future__ import annotations

import asyncio
import time
import warnings

from pydantic import TypeAdapter

from broker.backends.mock.canned import CannedModel, mock_agent
from broker.backends.mock.replies import ERROR_MESSAGE, SLOW_PROGRESS

from ...support.mock_broker import deltas, event, mock_broker, reply, user_input

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from chatkit.widgets import StrictWidgetRoot


async def test_a_message_gets_a_marked_echo_in_several_deltas_and_titles_the_thread() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        events = await chat.send("Hello, mock!")

    assert [e["type"] for e in events[:3]] == [
        "thread.created",
        "thread.item.done",
        "stream_options",
    ]
    assert events[1]["item"]["type"] == "user_message"
    assert events[1]["item"]["content"][0]["text"] == "Hello, mock!"
    assert events[-1]["type"] == "thread.item.done"
    text, pieces = reply(events)
    assert text.startswith("**[mock]**") and "> Hello, mock!" in text
    assert len(pieces) >= 3
    assert [e["thread"]["title"] for e in events if e["type"] == "thread.updated"] == [
        "Hello, mock!"
    ]


async def test_slow_shows_progress_then_streams_ten_paced_pieces() -> None:
    step = 0.05
    async with mock_broker(slow_step=step) as broker:
        chat = await broker.chat()
        started = time.monotonic()
        events = await chat.send("/slow please")
        elapsed = time.monotonic() - started

    progress = [e for e in events if e["type"] == "progress_update"]
    assert [e["text"] for e in progress] == [SLOW_PROGRESS]
    text, pieces = reply(events)
    assert events.index(progress[0]) < events.index(
        next(e for e in events if e["type"] == "thread.item.added")
    )
    assert text.startswith("**[mock]**") and "/slow please" in text and f"{step:g} s" in text
    assert len(pieces) == 10
    assert elapsed >= 9 * step


async def test_slow_reply_arrives_piece_by_piece() -> None:
    """Events go out as they happen: the first delta long before the next (an hour away)."""
    async with mock_broker(slow_step=3600) as broker:
        chat = await broker.chat()
        body = {"type": "threads.create", "params": {"input": user_input("/slow")}}
        seen = []
        async with broker.http.stream("POST", chat.url, json=body, headers=chat.headers) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            try:
                async with asyncio.timeout(1.5):
                    async for line in lines:
                        if line:
                            seen.append(event(line))
            except TimeoutError:
                pass
            else:
                raise AssertionError("the stream ended: it should wait an hour for piece two")
    assert len(deltas(seen)) == 1  # the first piece is out, the second an hour away
    assert seen[-1]["type"] == "thread.item.updated"


async def test_error_streams_a_partial_reply_then_an_error_event_and_saves_no_reply() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        events = await chat.send("/error")
        items = await chat.items()

    assert deltas(events), "a partial reply streams before the error"
    assert events[-1] == {
        "type": "error",
        "code": "custom",
        "message": ERROR_MESSAGE,
        "allow_retry": True,
    }
    assert not any(
        e["type"] == "thread.item.done" and e["item"]["type"] == "assistant_message" for e in events
    )
    assert [i["type"] for i in items] == ["user_message"]


async def test_long_sends_markdown_with_lists_a_table_and_one_code_block() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        text, pieces = reply(await chat.send("/long"))

    assert text.startswith("**[mock]**") and len(text) > 1000
    assert len(pieces) >= 10
    lines = text.splitlines()
    assert any(line.startswith("1. ") for line in lines)
    assert any(line.lstrip().startswith("- ") for line in lines)
    assert "| --- | --- | --- |" in lines and "| command | what the UI should show |" in text
    assert "```python" in lines and lines.count("```") == 1


async def test_widget_sends_a_card_whose_button_round_trips() -> None:
    async with mock_broker() as broker:
        chat = await broker.chat()
        events = await chat.send("/widget hi")
        widgets = [
            e["item"]
            for e in events
            if e["type"] == "thread.item.done" and e["item"]["type"] == "widget"
        ]
        assert len(widgets) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            card = TypeAdapter(StrictWidgetRoot).validate_python(widgets[0]["widget"])
        assert card.type == "Card"
        badge = card.children[0].children[-1]
        assert badge.type == "Badge" and badge.label == "mock"
        assert "You wrote: /widget hi" in str(widgets[0]["widget"])
        button = next(c for c in card.children if c.type == "Button")

        pressed = await chat.stream(
            "threads.custom_action",
            thread_id=chat.thread_id,
            item_id=widgets[0]["id"],
            action=button.onClickAction.model_dump(mode="json"),
        )
        text, _ = reply(pressed)
        kinds = [i["type"] for i in await chat.items()]

    assert text.startswith("**[mock]**") and "pressed" in text and "mock.button_pressed" in text
    assert kinds[0] == "user_message" and kinds[-1] == "assistant_message"
    assert sorted(kinds[1:3]) == ["assistant_message", "widget"]


async def test_server_side_runs_get_the_canned_echo_too() -> None:
    async with mock_broker() as broker:
        r = await broker.http.post("/api/workflows/post-writer/runs", json={"input": "draft"})
        slow = await broker.http.post("/api/workflows/post-writer/runs", json={"input": "/slow"})
    assert r.status_code == 200, r.text
    assert r.json()["output_text"].startswith("**[mock]**") and "> draft" in r.json()["output_text"]
    assert slow.status_code == 200 and "/slow" in slow.json()["output_text"]


async def test_the_canned_model_answers_unstreamed_runs_without_a_chat() -> None:
    from agents import Runner

    agent = mock_agent(step=0)
    assert isinstance(agent.model, CannedModel)
    result = await Runner.run(agent, "ping")
    assert result.final_output.startswith("**[mock]**") and "> ping" in result.final_output
    slow = await Runner.run(mock_agent(step=0, slow_step=0), "/slow")  # no chat to show progress
    assert "/slow" in slow.final_output
