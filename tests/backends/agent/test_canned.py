"""Mock mode's canned agent on the real engine: the old mock backend's commands still work,
and every event the canned model streams is a valid openai-python event."""

from __future__ import annotations

import httpx
import pytest

from broker.backends.agent.canned import ERROR_MESSAGE, CannedModel, mock_agent
from broker.backends.agent.engine import AgentServer
from broker.backends.agent.store import MEMORY_URL, SQLStore
from broker.backends.agent.targets import AgentTarget

from .harness import Chat, assistant_texts, done_text, serve, sse


@pytest.fixture
async def mock_url():
    store = SQLStore(MEMORY_URL)
    await store.start()
    server = AgentServer(
        store, AgentTarget("mock", mock_agent(step=0, slow_step=0.01)), openai_client=None
    )
    async with serve(server) as url:
        yield url
    await store.close()


def deltas(events) -> list[str]:
    return [
        e["update"]["delta"]
        for e in events
        if e["type"] == "thread.item.updated"
        and e["update"]["type"] == "assistant_message.content_part.text_delta"
    ]


async def test_a_message_gets_a_marked_echo_in_several_deltas(mock_url) -> None:
    async with httpx.AsyncClient() as http:
        chat = Chat(http, mock_url, "alice")
        events = await chat.send("hello there mock")
        reply = done_text(events)
        assert reply.startswith("**[mock]**") and "> hello there mock" in reply
        assert len(deltas(events)) >= 3 and "".join(deltas(events)) == reply
        again = await chat.send("second")
        assert "> second" in done_text(again)
        assert len(assistant_texts(await chat.items())) == 2


async def test_slow_long_and_error(mock_url) -> None:
    async with httpx.AsyncClient() as http:
        slow = await Chat(http, mock_url, "alice").send("/slow please")
        assert len(deltas(slow)) == 10 and "/slow please" in done_text(slow)
        long = done_text(await Chat(http, mock_url, "alice").send("/long"))
        assert "| command |" in long and "```python" in long
        chat = Chat(http, mock_url, "alice")
        failed = await chat.send("/error")
        assert deltas(failed) and failed[-1]["type"] != "thread.item.done"
        (error,) = [e for e in failed if e["type"] == "error"]
        assert error["message"] == ERROR_MESSAGE and error["allow_retry"] is True


async def test_the_widget_card_is_shown_and_its_button_round_trips(mock_url) -> None:
    async with httpx.AsyncClient() as http:
        chat = Chat(http, mock_url, "alice")
        events = await chat.send("/widget hi")
        widgets = [
            e["item"]
            for e in events
            if e["type"] == "thread.item.done" and e["item"]["type"] == "widget"
        ]
        assert len(widgets) == 1 and "You wrote: /widget hi" in str(widgets[0]["widget"])
        button = widgets[0]["widget"]["children"][-1]
        r = await chat.post(
            "threads.custom_action",
            thread_id=chat.thread_id,
            item_id=widgets[0]["id"],
            action=button["onClickAction"],
        )
        assert r.status_code == 200
        reply = done_text(sse(r.text))
        assert (
            reply.startswith("**[mock]**") and "pressed" in reply and "mock.button_pressed" in reply
        )
        kinds = [i["type"] for i in await chat.items()]
        assert kinds[0] == "user_message" and kinds[-1] == "assistant_message"
        assert sorted(kinds[1:3]) == ["assistant_message", "widget"]


async def test_the_canned_model_answers_unstreamed_runs_too() -> None:
    from agents import Runner

    result = await Runner.run(mock_agent(step=0), "ping")
    assert result.final_output.startswith("**[mock]**") and "> ping" in result.final_output
    assert isinstance(mock_agent().model, CannedModel)
