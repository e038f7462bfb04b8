"""Exports with the remaining node kinds run in the engine once migrated: user approval,
set state, while, transform and end nodes (approval_and_tools.py), and hosted tools
(hosted_tools.py, which migrate names because only OpenAI runs them)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from broker.backends.agent.engine import AgentServer
from broker.backends.agent.targets import load_target
from broker.migrate import apply_fixes

from ...support.fake_responses import FakeResponses, text
from .harness import Chat, assistant_texts, serve

EXPORTS = Path(__file__).parent / "exports"


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, responses: FakeResponses) -> Path:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-never-shown")
    monkeypatch.setenv("OPENAI_BASE_URL", responses.base_url)
    return tmp_path


def migrated(home: Path, export: str) -> str:
    fixed, _ = apply_fixes((EXPORTS / export).read_text())
    (home / export).write_text(fixed)
    return f"{home / export}:run_workflow"


async def test_approval_state_while_transform_and_end_nodes_answer(
    home: Path, store, openai_client, responses: FakeResponses
) -> None:
    target = load_target(migrated(home, "approval_and_tools.py"))
    responses.script(text("Part 7 is in stock."))
    async with (
        serve(AgentServer(store, target, openai_client=openai_client)) as url,
        httpx.AsyncClient() as http,
    ):
        chat = Chat(http, url, "alice")
        events = await chat.send("I need a new chain")
        assert [e for e in events if e["type"] == "error"] == []
        # the agent's reply streamed once; the end node's {"response": …} adds no second copy
        assert assistant_texts(await chat.items()) == ["Part 7 is in stock."]
    (request,) = responses.calls("/v1/responses")
    assert [t["name"] for t in request.body["tools"]] == ["lookup_part"]
    schema = request.body["tools"][0]["parameters"]["properties"]
    assert schema["sku"]["anyOf"] == [{"type": "string"}, {"type": "null"}]  # from str | None


async def test_an_export_with_hosted_tools_sends_them_upstream(
    home: Path, store, openai_client, responses: FakeResponses
) -> None:
    target = load_target(migrated(home, "hosted_tools.py"))
    responses.script(text("Here is what I found."))
    async with (
        serve(AgentServer(store, target, openai_client=openai_client)) as url,
        httpx.AsyncClient() as http,
    ):
        chat = Chat(http, url, "alice")
        await chat.send("Which chain fits a Trail 5?")
        assert assistant_texts(await chat.items()) == ["Here is what I found."]
    (request,) = responses.calls("/v1/responses")
    kinds = [t["type"] for t in request.body["tools"]]
    assert kinds == ["web_search", "file_search", "code_interpreter", "mcp"]
