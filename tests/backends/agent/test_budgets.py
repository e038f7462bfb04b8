"""Usage and budgets through the broker's HTTP interface, against the fake Responses API
(which reports usage like the real one and counts what it served), on SQLite and PostgreSQL,
with and without a shared Redis."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.backends.agent.workflow import AgentWorkflow
from broker.config import load_settings

from ...support import WF_SUPPORT, app_client, auth
from ...support.contract import check_response
from ...support.fake_responses import FakeResponses, Reply, text, tool_call
from .harness import sse

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
AGENT = "examples.agent.support_agent:agent"


def settings_for(
    env: dict[str, str], tmp_path: Path, budget: str, name: str = "coach", agent: str = AGENT
) -> Any:
    wf_file = tmp_path / f"workflows-{secrets.token_hex(3)}.toml"
    wf_file.write_text(
        f'[workflows.{name}]\nagent = "{agent}"\n\n[workflows.{name}.budget]\n{budget}'
    )
    return load_settings({**env, "BROKER_WORKFLOWS_FILE": str(wf_file), "BROKER_WORKFLOWS": ""})


@pytest.fixture
def agent_env(base_env: dict[str, str], responses: FakeResponses, db_url: str) -> dict[str, str]:
    return {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": f"hosted={WF_SUPPORT}",
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
    }


async def run(
    client: httpx.AsyncClient, credential: str, said: str = "hi", name: str = "coach"
) -> httpx.Response:
    return await client.post(
        f"/api/workflows/{name}/runs", json={"input": said}, headers=auth(credential)
    )


async def test_a_daily_budget_holds_per_user_and_usage_agrees_with_the_fake(
    agent_env, tmp_path, token: Callable[..., str], responses: FakeResponses
) -> None:
    alice, bob = f"alice-{secrets.token_hex(3)}", f"bob-{secrets.token_hex(3)}"
    settings = settings_for(
        agent_env, tmp_path, "tokens_per_user_per_day = 300\nreserve_tokens = 50\n"
    )
    async with app_client(settings) as client:
        codes = []
        for _ in range(20):
            r = await run(client, token(alice), "tell me more " * 5)
            codes.append(r.status_code)
            if r.status_code != 200:
                break
        assert codes[-1] == 429 and len(codes) > 2, codes
        spent = responses.tokens_served()
        assert 300 <= spent < 300 + max(u["total_tokens"] for _, u in responses.served)
        body = r.json()
        assert body["error"]["code"] == "budget_exceeded"
        assert "resets at" in body["error"]["message"] and "UTC" in body["error"]["message"]
        assert body["budget"]["name"] == "tokens_per_user_per_day"
        assert body["budget"]["remaining"] == 0 and body["budget"]["resets_at"].endswith("Z")
        assert int(r.headers["retry-after"]) > 0
        # in the chat: a ChatKit error event saying the same
        r = await client.post(
            "/chatkit/coach",
            json={
                "type": "threads.create",
                "params": {
                    "input": {
                        "content": [{"type": "input_text", "text": "more?"}],
                        "attachments": [],
                        "inference_options": {},
                    }
                },
            },
            headers=auth(token(alice)),
        )
        errors = [e for e in sse(r.text) if e["type"] == "error"]
        assert errors and "resets at" in errors[0]["message"]
        assert responses.tokens_served() == spent  # the refused message reached no model
        # what alice can read about herself agrees with the fake's count
        answer = await client.get("/api/usage", headers=auth(token(alice)))
        # the answer is the documented Usage model (closed objects: no field undocumented)
        check_response("GET", "/api/usage", 200, answer.headers, answer.content)
        mine = answer.json()
        coach = mine["workflows"][0]
        assert coach["today"]["total_tokens"] == spent == coach["this_month"]["total_tokens"]
        assert coach["today"]["calls"] == len(responses.served)
        assert coach["budgets"][0]["used"] == spent and coach["budgets"][0]["remaining"] == 0
        # bob goes on
        r = await run(client, token(bob))
        assert r.status_code == 200, r.text
        theirs = (await client.get("/api/usage", headers=auth(token(bob)))).json()
        assert theirs["workflows"][0]["today"]["total_tokens"] == responses.tokens_served() - spent
        metrics = (await client.get("/metrics")).text
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("broker_agent_tokens_total{") and 'workflow="coach"' in line
        ]
        assert sum(counted) == responses.tokens_served()


async def test_a_model_reporting_no_usage_is_recorded_as_unknown(
    agent_env, tmp_path, token, responses: FakeResponses, caplog
) -> None:
    user = f"carol-{secrets.token_hex(3)}"
    settings = settings_for(agent_env, tmp_path, "tokens_per_user_per_day = 100000\n")
    responses.script(text("No count for this one.", usage=False))
    async with app_client(settings) as client:
        r = await run(client, token(user))
        assert r.status_code == 200, r.text
        mine = (await client.get("/api/usage", headers=auth(token(user)))).json()
    today = mine["workflows"][0]["today"]
    assert today["calls"] == 1 and today["unknown_calls"] == 1 and today["total_tokens"] == 0
    assert "reported no usage" in caplog.text


async def test_a_budget_of_zero_closes_the_workflow(agent_env, tmp_path, token, responses) -> None:
    settings = settings_for(agent_env, tmp_path, "tokens_per_day = 0\n")
    async with app_client(settings) as client:
        r = await run(client, token("dave"))
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert "closed" in r.json()["error"]["message"] and not responses.requests


async def test_tiers_by_claim(agent_env, tmp_path, token, responses) -> None:
    settings = settings_for(
        agent_env,
        tmp_path,
        "tokens_per_user_per_day = 0\n[workflows.coach.budget.tiers.pro]\n"
        'require = { plan = "pro" }\ntokens_per_user_per_day = 100000\n',
    )
    async with app_client(settings) as client:
        free = await run(client, token("erin"))
        pro = await run(client, token("erin", plan="pro"))
        assert free.status_code == 429 and pro.status_code == 200, pro.text
        # a session secret minted for a pro user keeps the tier in the chat
        minted = await client.post(
            "/api/chatkit/session",
            json={"workflow": "coach"},
            headers=auth(token("erin", plan="pro")),
        )
        secret = minted.json()["client_secret"]
        r = await client.post(
            "/chatkit/coach",
            json={
                "type": "threads.create",
                "params": {
                    "input": {
                        "content": [{"type": "input_text", "text": "hi"}],
                        "attachments": [],
                        "inference_options": {},
                    }
                },
            },
            headers=auth(secret),
        )
        assert not [e for e in sse(r.text) if e["type"] == "error"]


def test_bad_price_tables_and_budgets_are_configuration_errors() -> None:
    from pydantic import ValidationError

    for budget, word in (
        ({"prices": {"gpt-9000": {"input": 1, "output": 1}}}, "gpt-9000"),
        ({"prices": {"gpt-4.1": {"input": -1, "output": 1}}}, "greater than or equal"),
        ({"tokens_per_user_per_day": -5}, "tokens_per_user_per_day"),
    ):
        with pytest.raises(ValidationError, match=word):
            AgentWorkflow.model_validate({"name": "c", "agent": "a.b:c", "budget": budget})


async def test_two_brokers_on_one_redis_share_the_budget_and_parallel_runs_overspend_at_most_one_hold(
    agent_env, redis_env, tmp_path, token, responses: FakeResponses
) -> None:
    user = f"frank-{secrets.token_hex(3)}"
    env = {**agent_env, **redis_env}
    settings = settings_for(env, tmp_path, "tokens_per_user_per_day = 400\nreserve_tokens = 200\n")
    async with app_client(settings) as one, app_client(settings) as two:
        results = await asyncio.gather(*(run(c, token(user), "x" * 40) for c in (one, two) * 6))
        codes = [r.status_code for r in results]
        assert 429 in codes and 200 in codes, codes
        biggest = max(u["total_tokens"] for _, u in responses.served)
        assert responses.tokens_served() <= 400 + max(biggest, 200)
        # both brokers now refuse, and agree on what was used
        for c in (one, two):
            assert (await run(c, token(user))).status_code == 429
            budget = (await c.get("/api/usage", headers=auth(token(user)))).json()
            assert budget["workflows"][0]["budgets"][0]["used"] == responses.tokens_served()


async def test_the_usage_command_agrees_with_the_fake(
    agent_env, db_url, tmp_path, token, responses: FakeResponses
) -> None:
    name = f"coach{secrets.token_hex(3)}"  # its own rows, on the session's shared PostgreSQL
    settings = settings_for(agent_env, tmp_path, "tokens_per_user_per_month = 1000000\n", name)
    async with app_client(settings) as client:
        for user, said in (("gina", "hello"), ("gina", "more please"), ("hank", "hi")):
            assert (await run(client, token(user), said, name)).status_code == 200

    def usage_command(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "broker.cli", "usage", "--database-url", db_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = json.loads(usage_command("--json", "--workflow", name))
    assert data["total"]["total_tokens"] == responses.tokens_served() > 0
    assert data["total"]["calls"] == len(responses.served) == 3
    assert [u["user"] for u in data["top_users"]] == ["gina", "hank"]
    assert {r["model"] for r in data["rows"]} == {m for m, _ in responses.served}
    rows = list(csv.DictReader(io.StringIO(usage_command("--csv", "--workflow", name))))
    assert sum(int(r["total_tokens"]) for r in rows) == responses.tokens_served()
    shown = usage_command("--workflow", name)
    assert f"{responses.tokens_served()} tokens in 3 model calls" in shown and "gina" in shown


async def test_a_model_call_past_the_budget_does_not_start_and_the_partial_reply_is_kept(
    agent_env, tmp_path, token, responses: FakeResponses
) -> None:
    """The agent keeps calling a tool; once the run's own use reaches the budget, its next
    model call is refused: the stream ends with an error event saying so, and the thread
    keeps what the run did until then."""
    user = f"ivy-{secrets.token_hex(3)}"
    settings = settings_for(
        agent_env, tmp_path, "tokens_per_user_per_day = 250\nreserve_tokens = 1\n"
    )
    responses.script(
        *(
            Reply(
                outputs=[
                    ("message", f"Checking day {n}."),
                    *tool_call("opening_hours", {"day": "monday"}).outputs,
                ]
            )
            for n in range(10)
        )
    )
    async with app_client(settings) as client:
        r = await client.post(
            "/chatkit/coach",
            json={
                "type": "threads.create",
                "params": {
                    "input": {
                        "content": [{"type": "input_text", "text": "hours?"}],
                        "attachments": [],
                        "inference_options": {},
                    }
                },
            },
            headers=auth(token(user)),
        )
        events = sse(r.text)
        errors = [e for e in events if e["type"] == "error"]
        assert errors and "tokens_per_user_per_day" in errors[0]["message"]
        assert "so far is kept" in errors[0]["message"]
        calls = len(responses.served)
        assert 1 < calls < 10  # stopped part-way, not at the first call
        per_call = [u["total_tokens"] for _, u in responses.served]
        assert sum(per_call[:-1]) < 250 <= sum(per_call)  # the last call was the one over
        thread_id = events[0]["thread"]["id"]
        items = (
            await client.get(f"/api/threads/{thread_id}/items", headers=auth(token(user)))
        ).json()
        said = [i["content"][0]["text"] for i in items["data"] if i["type"] == "assistant_message"]
        assert said == [f"Checking day {n}." for n in range(calls)]  # all kept
        mine = (await client.get("/api/usage", headers=auth(token(user)))).json()
        assert mine["workflows"][0]["today"]["total_tokens"] == responses.tokens_served()


async def test_an_emptied_redis_is_rebuilt_from_the_database_and_a_dead_one_counts_locally(
    agent_env, tmp_path, token, responses: FakeResponses, own_redis
) -> None:
    import redis.asyncio as aioredis

    user = f"jo-{secrets.token_hex(3)}"
    env = {**agent_env, "BROKER_REDIS_URL": own_redis.url, "BROKER_REDIS_PREFIX": "t27:"}
    settings = settings_for(env, tmp_path, "tokens_per_user_per_day = 200\nreserve_tokens = 1\n")
    async with app_client(settings) as client:
        while (await run(client, token(user), "spend")).status_code == 200:
            pass
        spent = responses.tokens_served()
        # Redis loses everything: the counter comes back from the usage table
        r = aioredis.Redis.from_url(own_redis.url)
        await r.flushall()
        await r.aclose()
        refused = await run(client, token(user))
        assert refused.status_code == 429 and refused.json()["budget"]["used"] == spent
        assert (await client.get("/readyz")).json() == {"status": "ready"}
        # Redis dies: counted per process (seeded from the database), still refused, quickly
        own_redis.kill()
        started = asyncio.get_running_loop().time()
        refused = await run(client, token(user))
        assert refused.status_code == 429 and refused.json()["budget"]["used"] == spent
        assert asyncio.get_running_loop().time() - started < 5
        other = await run(client, token(f"kim-{secrets.token_hex(3)}"))
        assert other.status_code == 200, other.text
        metrics = (await client.get("/metrics")).text
        fallbacks = [
            line
            for line in metrics.splitlines()
            if line.startswith("broker_budget_fallbacks_total")
        ]
        assert fallbacks and float(fallbacks[0].split()[-1]) > 0
        # /readyz says so, and stays ready (the rate limits' policy)
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        (note,) = ready.json()["degraded"]
        assert "budgets counted per process" in note and own_redis.url in note
        # Redis back: once the breaker lets it be tried, /readyz no longer says so
        own_redis.start()  # the same server object, so the fixture stops it after the test
        deadline = asyncio.get_running_loop().time() + 10
        while "degraded" in (ready := await client.get("/readyz")).json():
            assert asyncio.get_running_loop().time() < deadline, ready.text
            await asyncio.sleep(0.2)
        assert ready.json() == {"status": "ready"}


async def test_an_export_with_several_agents_counts_each_model_call(
    agent_env, tmp_path, token, responses: FakeResponses
) -> None:
    user = f"lee-{secrets.token_hex(3)}"
    settings = settings_for(
        agent_env,
        tmp_path,
        "tokens_per_user_per_day = 100000\n",
        agent="examples/agent/builder_export.py:run_workflow",
    )
    responses.script(text('{"topic":"billing"}'), text("Refund sent."))
    async with app_client(settings) as client:
        r = await run(client, token(user), "refund?")
        assert r.status_code == 200, r.text
        mine = (await client.get("/api/usage", headers=auth(token(user)))).json()
    today = mine["workflows"][0]["today"]
    assert len(responses.served) == 2 == today["calls"]  # the classifier and the answer
    assert today["total_tokens"] == responses.tokens_served()


async def test_a_run_that_crosses_midnight_settles_on_the_day_it_reserved_in() -> None:
    """The clock turning mid-run: the hold is given back to the window it was taken from, so
    the new day starts clean and the old one ends with exactly the run's use."""
    from datetime import datetime

    from broker.backends.agent.workflow import Budget
    from broker.budgets import BudgetBook, applicable

    async def nothing_recorded(_: Any) -> int:
        return 0

    book = BudgetBook(nothing_recorded)
    budget = Budget(tokens_per_user_per_day=1000, tokens_per_user_per_month=5000)
    before = applicable(budget, "coach", "max", now=datetime(2026, 12, 31, 23, 59, 59))
    after = applicable(budget, "coach", "max", now=datetime(2027, 1, 1, 0, 0, 1))
    assert {a.key for a in before}.isdisjoint(a.key for a in after)
    assert before[0].end == datetime(2027, 1, 1) and before[1].end == datetime(2027, 1, 1)
    hold = await book.begin(before, 400, 0.0)
    await hold.before_call()
    await hold.after_call(150, 0.0)
    await hold.settle()  # after midnight
    assert await book.values(before) == [150, 150]
    assert await book.values(after) == [0, 0]
    assert (await book.begin(after, 400, 0.0)).charged == [400, 400]


async def test_an_exports_guardrail_model_calls_are_counted(
    agent_env, tmp_path, token, responses: FakeResponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guardrails call OpenAI on the export's own client (Jailbreak: Chat Completions), not
    through the metered provider: their tokens are recorded and counted all the same."""
    pytest.importorskip("guardrails", reason="pip install 'chatkit-broker[guardrails]'")
    import spacy

    from broker.migrate import apply_fixes

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-never-shown")
    monkeypatch.setenv("OPENAI_BASE_URL", responses.base_url)
    monkeypatch.chdir(tmp_path)
    spacy.blank("en").to_disk(tmp_path / "en_core_web_sm")  # the PII guardrail's model
    export = tmp_path / f"guarded_{secrets.token_hex(3)}.py"  # its client, this loop's
    source = (Path(__file__).parent / "exports" / "input_guardrails.py").read_text()
    export.write_text(apply_fixes(source)[0])
    user = f"max-{secrets.token_hex(3)}"
    settings = settings_for(
        agent_env,
        tmp_path,
        "tokens_per_user_per_day = 100000\nreserve_tokens = 1\n",
        agent=f"{export}:run_workflow",
    )
    responses.script(text("The pool opens at nine."))
    async with app_client(settings) as client:
        r = await run(client, token(user), "When does the pool open?")
        assert r.status_code == 200, r.text
        mine = (await client.get("/api/usage", headers=auth(token(user)))).json()
    checks = responses.calls("/v1/chat/completions")
    assert len(checks) == 1 and checks[0].body["model"] == "gpt-4.1-mini"  # the Jailbreak check
    assert len(responses.calls("/v1/moderations")) == 1  # no tokens: no row
    guard = [u for _, u in responses.served if "prompt_tokens" in u]
    assert len(guard) == 1 and guard[0]["total_tokens"] > 0
    workflow = mine["workflows"][0]
    assert workflow["today"]["calls"] == len(responses.served) == 2  # the check and the agent
    assert workflow["today"]["total_tokens"] == responses.tokens_served()
    assert workflow["budgets"][0]["used"] == responses.tokens_served()  # against the budget
