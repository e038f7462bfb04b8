"""Faults behind an agent workflow (issue 15), through the whole broker on real HTTP: the
model (the fake Responses API) unreachable, reset mid-stream, answering garbage, huge,
trickling or silent, and the thread database going down mid-stream. The browser always gets
a ChatKit answer it can act on — its own message kept, the stream ended by an ``error``
event it may retry, never a traceback — and the broker recovers without a restart.
(Model 5xx and ``error`` events: test_engine.py; the database down at start: test_backend.py
and test_cli.py; Redis: test_redis_down.py; Stop: test_engine.py, test_processes.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from broker.app import create_app
from broker.config import load_settings

from ...support import free_port
from ...support.adversarial import logged_text, make_token
from ...support.asgi_server import run_asgi
from ...support.fake_responses import FakeResponses, garbage, reset, text
from .tcp_proxy import TcpProxy, via

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
CREATE = {
    "type": "threads.create",
    "params": {
        "input": {
            "content": [{"type": "input_text", "text": "Tell me everything"}],
            "attachments": [],
            "inference_options": {},
        }
    },
}


@dataclass
class Turn:
    status: int
    events: list[dict[str, Any]] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # seconds from the request to each event

    @property
    def thread_id(self) -> str:
        return next(e["thread"]["id"] for e in self.events if e["type"] == "thread.created")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "error"]

    @property
    def deltas(self) -> list[tuple[float, str]]:
        return [
            (t, e["update"]["delta"])
            for t, e in zip(self.at, self.events, strict=True)
            if e.get("update", {}).get("type") == "assistant_message.content_part.text_delta"
        ]


class Browser:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.auth = {"Authorization": f"Bearer {make_token('alice')}"}

    async def turn(self, body: dict[str, Any] = CREATE) -> Turn:
        started = time.monotonic()
        async with self.http.stream("POST", "/chatkit/support", json=body, headers=self.auth) as r:
            turn = Turn(r.status_code)
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    turn.events.append(json.loads(line[6:]))
                    turn.at.append(time.monotonic() - started)
        return turn

    async def post(self, type_: str, **params: Any) -> httpx.Response:
        body = {"type": type_, "params": params}
        return await self.http.post("/chatkit/support", json=body, headers=self.auth)

    async def saved(self, thread_id: str) -> list[tuple[str, str]]:
        """(type, text) of the thread's items, oldest first, read back through the broker."""
        r = await self.post("items.list", thread_id=thread_id, order="asc")
        assert r.status_code == 200, r.text
        return [
            (i["type"], "".join(part.get("text", "") for part in i["content"]))
            for i in r.json()["data"]
        ]


@contextlib.asynccontextmanager
async def broker(base_env: dict[str, str], model_url: str, db_url: str) -> AsyncIterator[Browser]:
    env = {
        **base_env,
        "OPENAI_BASE_URL": model_url,
        "BROKER_WORKFLOWS": "support=examples.agent.support_agent:agent",
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
    }
    app = create_app(load_settings(env))
    async with (
        run_asgi(app, lifespan="on") as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Browser(http)


@pytest.fixture(autouse=True)
def no_traceback(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    yield
    logged = logged_text(caplog, logging.INFO)
    # (a stream ended by the database leaves chatkit-python 1.6.5's _merge_generators with a
    # pending task, which asyncio reports as "Task was destroyed but it is pending!" with no
    # traceback: upstream, listed in docs/reliability.md)
    assert "Traceback" not in logged, logged[-3000:]


def assert_retryable_error(turn: Turn, *, names: str | None = None) -> None:
    """A 200 stream that ends with one ChatKit ``error`` event the browser may retry."""
    assert turn.status == 200
    (error,) = turn.errors
    assert error["allow_retry"] is True, error
    if names is not None:
        assert names in error.get("message", ""), error
    assert turn.events.index(error) >= len(turn.events) - 2, "the error must end the stream"


async def test_a_model_that_cannot_be_reached_is_an_error_event_and_the_message_kept(
    base_env, tmp_path
) -> None:
    db = f"sqlite:///{tmp_path / 'threads.sqlite3'}"
    async with broker(base_env, f"http://127.0.0.1:{free_port()}/v1", db) as browser:
        turn = await browser.turn()
        assert_retryable_error(turn, names="APIConnectionError")
        assert await browser.saved(turn.thread_id) == [("user_message", "Tell me everything")]


@pytest.mark.parametrize(
    "fault,names",
    [
        (reset("Half a reply and then", after=2), "APIConnectionError"),
        (garbage(b"<html><body>502 Bad Gateway</body></html>\n\n"), "ModelBehaviorError"),
        (garbage(b'data: {"type": "response.created", "respo\n\n'), "JSONDecodeError"),
    ],
    ids=["reset mid-stream", "HTML instead of events", "broken JSON in an event"],
)
async def test_a_model_that_breaks_off_or_sends_garbage_is_an_error_event(
    base_env, responses: FakeResponses, tmp_path, fault, names
) -> None:
    async with broker(base_env, responses.base_url, f"sqlite:///{tmp_path / 't.db'}") as browser:
        responses.script(fault)
        turn = await browser.turn()
        assert_retryable_error(turn, names=names)
        # nothing half-made is saved as the reply; the next message is answered normally
        assert await browser.saved(turn.thread_id) == [("user_message", "Tell me everything")]
        responses.script(text("Back to normal."))
        again = await browser.turn()
        assert not again.errors and "".join(d for _, d in again.deltas) == "Back to normal."


async def test_a_huge_reply_is_streamed_and_saved_whole(
    base_env, responses: FakeResponses, tmp_path
) -> None:
    huge = "All work and no play. " * 150_000  # 3.3 MB
    async with broker(base_env, responses.base_url, f"sqlite:///{tmp_path / 't.db'}") as browser:
        responses.script(text(huge, chunks=400))
        turn = await browser.turn()
        assert turn.status == 200 and not turn.errors
        assert "".join(d for _, d in turn.deltas) == huge
        assert await browser.saved(turn.thread_id) == [
            ("user_message", "Tell me everything"),
            ("assistant_message", huge),
        ]


async def test_a_trickling_model_reaches_the_browser_delta_by_delta(
    base_env, responses: FakeResponses, tmp_path
) -> None:
    async with broker(base_env, responses.base_url, f"sqlite:///{tmp_path / 't.db'}") as browser:
        responses.script(text("one two three four", chunks=4, delay=0.3))  # 0.3 s per event
        turn = await browser.turn()
        times = [t for t, _ in turn.deltas]
        assert len(times) == 4 and not turn.errors
        # each delta arrived when the model sent it, not all at the end
        assert times[-1] - times[0] > 0.7, times
        assert turn.at[-1] - times[0] > 1.0, (times, turn.at[-1])


async def test_a_silent_model_keeps_the_stream_open_and_stop_closes_the_model_call(
    base_env, responses: FakeResponses, tmp_path
) -> None:
    """Slow first token: the browser has its thread and message at once (progress, not a
    blank wait); when it stops waiting, the broker hangs up on the model (what the model
    sends next finds the connection closed)."""
    async with broker(base_env, responses.base_url, f"sqlite:///{tmp_path / 't.db'}") as browser:
        responses.script(text("never sent", hang_after=0))
        seen: list[str] = []
        async with browser.http.stream(
            "POST", "/chatkit/support", json=CREATE, headers=browser.auth
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["type"])
                if responses.hanging.is_set() and "thread.item.added" in seen:
                    break  # the model is silent: the user presses Stop
        assert seen[:2] == ["thread.created", "thread.item.done"], seen  # thread, message
        # the broker hangs up on the still silent model (a model call that outlived the
        # browser would keep it silent until this fails); waited for, not guessed
        deadline = time.monotonic() + 60
        while not responses.disconnected.is_set():
            assert time.monotonic() < deadline, "the model call outlived the browser"
            await asyncio.sleep(0.02)
        responses.release()


async def test_the_database_going_down_mid_stream_is_an_error_event_then_503_then_works(
    base_env, responses: FakeResponses, pg_url: str
) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        db = via(pg_url, proxy.port)
        async with broker(base_env, responses.base_url, db) as browser:
            responses.script(text("A reply the database never sees", chunks=4, hang_after=1))

            async def cut_while_the_model_talks() -> None:
                while not responses.hanging.is_set():
                    await asyncio.sleep(0.01)
                await proxy.cut()
                responses.release()

            cutter = asyncio.create_task(cut_while_the_model_talks())
            turn = await browser.turn()
            await cutter
            assert_retryable_error(turn)
            assert "Traceback" not in json.dumps(turn.events)
            down = await browser.post("threads.list")
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "store_unavailable"
            await proxy.restore()
            assert await browser.saved(turn.thread_id) == [("user_message", "Tell me everything")]
            responses.script(text("Working again."))
            again = await browser.turn()
            assert not again.errors and "".join(d for _, d in again.deltas) == "Working again."
