"""Agent workflows through the broker's real HTTP surface: sign-in, session secrets, the
ChatKit endpoint, server-side runs and thread listings, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from chatkit.types import Page, Thread, ThreadItem
from pydantic import TypeAdapter

from broker.config import ConfigError, Settings, load_settings

from ...support import API_KEY, WF_SUPPORT, app_client, auth
from ...support.fake_responses import FakeResponses, http_error, text
from .harness import done_text, sse

SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
AGENTS = "support=examples.agent.support_agent:agent,triage=examples/agent/builder_export.py:run_workflow"
THREADS: TypeAdapter[Page[Thread]] = TypeAdapter(Page[Thread])
ITEMS: TypeAdapter[Page[ThreadItem]] = TypeAdapter(Page[ThreadItem])
MESSAGE = {"attachments": [], "inference_options": {}}


def message(text_: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text_}], **MESSAGE}


@pytest.fixture
def agent_env(base_env: dict[str, str], responses: FakeResponses, db_url: str) -> dict[str, str]:
    return {
        **base_env,
        "OPENAI_BASE_URL": responses.base_url,
        "BROKER_WORKFLOWS": f"{AGENTS},hosted={WF_SUPPORT}",
        "BROKER_SESSION_SECRET": SESSION_SECRET,
        "BROKER_DATABASE_URL": db_url,
    }


@pytest.fixture
async def client(agent_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(load_settings(agent_env)) as c:
        yield c


async def chatkit(
    client: httpx.AsyncClient, name: str, credential: str, type_: str, **params: Any
) -> httpx.Response:
    return await client.post(
        f"/chatkit/{name}", json={"type": type_, "params": params}, headers=auth(credential)
    )


async def test_sign_in_mint_and_chat_with_a_hosted_agent(
    client, token: Callable[..., str], responses: FakeResponses
) -> None:
    responses.script(text("We open at nine."), text("On Monday too."))
    minted = await client.post(
        "/api/chatkit/session", json={"workflow": "support"}, headers=auth(token("alice"))
    )
    assert minted.status_code == 200, minted.text
    session = minted.json()
    assert session["client_secret"].startswith("cks_")
    assert (
        session["workflow"]["kind"] == "agent" and session["backend"]["url"] == "/chatkit/support"
    )
    secret = session["client_secret"]
    r = await chatkit(
        client, "support", secret, "threads.create", input=message("When do you open?")
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert done_text(events) == "We open at nine."
    thread_id = events[0]["thread"]["id"]
    # The app JWT works at the endpoint too, and it is the same user's thread.
    r = await chatkit(
        client,
        "support",
        token("alice"),
        "threads.add_user_message",
        thread_id=thread_id,
        input=message("Monday?"),
    )
    assert done_text(sse(r.text)) == "On Monday too."
    assert responses.requests[1].texts() == ["When do you open?", "We open at nine.", "Monday?"]
    # the model was called with the broker's own key
    assert responses.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"


async def test_threads_are_private_to_their_user_and_workflow(client, token, responses) -> None:
    r = await chatkit(client, "support", token("alice"), "threads.create", input=message("secret"))
    thread_id = sse(r.text)[0]["thread"]["id"]
    for who, where in (("bob", "support"), ("alice", "triage")):
        r = await chatkit(client, where, token(who), "threads.get_by_id", thread_id=thread_id)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await chatkit(
            client,
            where,
            token(who),
            "threads.add_user_message",
            thread_id=thread_id,
            input=message("x"),
        )
        assert r.status_code == 404
    r = await client.get(f"/api/threads/{thread_id}/items", headers=auth(token("bob")))
    assert r.status_code == 404
    r = await client.get("/api/threads", params={"workflow": "support"}, headers=auth(token("bob")))
    assert r.json()["data"] == []
    # a session secret of another workflow is refused at this one
    other = (
        await client.post(
            "/api/chatkit/session", json={"workflow": "triage"}, headers=auth(token("alice"))
        )
    ).json()
    r = await chatkit(client, "support", other["client_secret"], "threads.list")
    assert r.status_code == 401


async def test_a_server_side_run_answers_json_and_continues_in_the_chat(
    client, token, responses
) -> None:
    responses.script(text("Hello from the agent."), text('{"refund": true}'))
    headers = auth(token("alice"))
    r = await client.post("/api/workflows/support/runs", json={"input": "hi"}, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["output"] == answer["output_text"] == "Hello from the agent."
    thread_id = answer["thread_id"]
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": {"order": 7}, "thread_id": thread_id},
        headers=headers,
    )
    assert r.json() == {
        "thread_id": thread_id,
        "output": {"refund": True},
        "output_text": '{"refund": true}',
    }
    assert responses.requests[1].texts()[-1] == '{"order":7}'
    # The same thread in the ChatKit UI's listing and items.
    page = THREADS.validate_python(
        (await client.get("/api/threads?workflow=support", headers=headers)).json()
    )
    assert [t.id for t in page.data] == [thread_id] and page.data[0].title == "hi"
    items = ITEMS.validate_python(
        (await client.get(f"/api/threads/{thread_id}/items?order=asc", headers=headers)).json()
    )
    assert [i.type for i in items.data] == ["user_message", "assistant_message"] * 2
    r = await chatkit(client, "support", token("alice"), "items.list", thread_id=thread_id)
    assert len(r.json()["data"]) == 4


async def test_a_streamed_run_answers_chatkit_events(client, token, responses) -> None:
    responses.script(text("streamed", chunks=3))
    r = await client.post(
        "/api/workflows/support/runs?stream=1", json={"input": "hi"}, headers=auth(token("alice"))
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert done_text(sse(r.text)) == "streamed"


async def test_an_export_runs_behind_the_broker(client, token, responses) -> None:
    responses.script(text('{"topic":"billing"}'), text("Invoice resent."))
    r = await client.post(
        "/api/workflows/triage/runs",
        json={"input": "resend my invoice"},
        headers=auth(token("alice")),
    )
    assert r.json()["output"] == {"output_text": "Invoice resent.", "topic": "billing"}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/workflows/support/runs", {"input": "x" * (300 * 1024)}, 413, "payload_too_large"),
        ("/api/workflows/support/runs", {}, 400, "invalid_request"),
        ("/api/workflows/support/runs", {"input": "hi", "extra": 1}, 400, "invalid_request"),
        ("/api/workflows/support/runs", {"input": 5}, 400, "invalid_request"),
        ("/api/workflows/support/runs", {"input": "hi", "thread_id": 5}, 400, "invalid_request"),
        ("/api/workflows/support/runs", {"input": "hi", "thread_id": "thr_nope"}, 404, "not_found"),
        ("/api/workflows/hosted/runs", {"input": "hi"}, 404, "not_found"),
        ("/api/workflows/nope/runs", {"input": "hi"}, 404, "not_found"),
    ],
)
async def test_bad_runs_are_clean_errors(client, token, path, body, status, code) -> None:
    r = await client.post(path, json=body, headers=auth(token("alice")))
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["request_id"]


async def test_every_server_side_api_needs_sign_in(client) -> None:
    for method, path in (
        ("POST", "/api/workflows/support/runs"),
        ("GET", "/api/threads?workflow=support"),
        ("GET", "/api/threads/thr_x/items"),
        ("POST", "/chatkit/support"),
    ):
        r = await client.request(method, path, json={"input": "hi"})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"


async def test_an_agent_failure_in_a_run_is_a_502(client, token, responses) -> None:
    responses.script(*[http_error(500, "boom")] * 3)  # openai-python retries twice
    r = await client.post(
        "/api/workflows/support/runs", json={"input": "hi"}, headers=auth(token("alice"))
    )
    assert r.status_code == 502 and r.json()["error"]["code"] == "backend_error"
    assert "boom" not in r.text


async def test_a_run_over_the_timeout_is_a_504(agent_env, token, responses) -> None:
    responses.script(text("slow and partial", chunks=4, hang_after=1))
    async with app_client(load_settings({**agent_env, "BROKER_RUN_TIMEOUT": "1"})) as client:
        r = await client.post(
            "/api/workflows/support/runs", json={"input": "hi"}, headers=auth(token("alice"))
        )
    assert r.status_code == 504 and r.json()["error"]["code"] == "run_timeout"
    assert "BROKER_RUN_TIMEOUT" in r.json()["error"]["message"]


def test_a_bad_agent_is_a_configuration_error_naming_the_workflow(agent_env) -> None:
    env = {
        **agent_env,
        "BROKER_WORKFLOWS": "good=examples.agent.support_agent:agent,bad=examples.agent.support_agent:nothing",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert info.value.problems == [
        "workflow 'bad': agent 'examples.agent.support_agent:nothing': module 'examples.agent.support_agent' has no attribute 'nothing'"
    ]


async def test_a_database_that_is_down_is_503_and_not_ready(agent_env, token, tmp_path) -> None:
    env = {**agent_env, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path}/no-such-dir/t.sqlite3"}
    async with app_client(load_settings(env)) as client:
        r = await chatkit(client, "support", token("alice"), "threads.list")
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "thread store" in ready.text
        (tmp_path / "no-such-dir").mkdir()  # the database comes back: no restart needed
        r = await chatkit(client, "support", token("alice"), "threads.list")
        assert r.status_code == 200 and r.json()["data"] == []
        assert (await client.get("/readyz")).status_code == 200


@pytest.fixture
def settings_factory(agent_env) -> Callable[..., Settings]:
    return lambda **kw: load_settings({**agent_env, **kw})


async def test_a_workflow_message_limit_applies_to_agent_messages(
    settings_factory, token, tmp_path, responses
) -> None:
    wf_file = tmp_path / "workflows.toml"
    wf_file.write_text(
        '[workflows.support]\nagent = "examples.agent.support_agent:agent"\nmax_messages_per_minute = 2\n'
    )
    settings = settings_factory(BROKER_WORKFLOWS_FILE=str(wf_file), BROKER_WORKFLOWS="")
    async with app_client(settings) as client:
        codes = []
        for _ in range(3):
            r = await client.post(
                "/api/workflows/support/runs", json={"input": "hi"}, headers=auth(token("alice"))
            )
            codes.append(r.status_code)
        listing = await client.get("/api/threads?workflow=support", headers=auth(token("alice")))
    assert codes == [200, 200, 429]
    assert listing.status_code == 200  # reading is not a message
    assert json.loads(listing.text)["data"]


async def test_the_served_openapi_document_describes_the_agent_routes(client) -> None:
    from broker.openapi import documented_operations, routed_operations

    routed = routed_operations(client.app.routes)
    assert {("/api/workflows/{name}/runs", "POST"), ("/api/threads", "GET")} <= routed
    assert routed <= documented_operations()
    served = (await client.get("/openapi.json")).json()
    assert {(p, m.upper()) for p, ops in served["paths"].items() for m in ops} == routed


async def test_agent_messages_refused_before_a_run_do_not_use_up_the_limit(
    settings_factory, token, tmp_path, responses
) -> None:
    """As for a gateway: bob's messages naming alice's thread are 404s that start no run, so
    his limit of 2 is still whole; a run that went to the model counts."""
    wf_file = tmp_path / "workflows.toml"
    wf_file.write_text(
        '[workflows.support]\nagent = "examples.agent.support_agent:agent"\nmax_messages_per_minute = 2\n'
    )
    settings = settings_factory(BROKER_WORKFLOWS_FILE=str(wf_file), BROKER_WORKFLOWS="")
    async with app_client(settings) as client:
        mine = await client.post(
            "/api/workflows/support/runs", json={"input": "hi"}, headers=auth(token("alice"))
        )
        alices = mine.json()["thread_id"]
        bob = auth(token("bob"))
        for _ in range(3):  # through the runs route and through ChatKit
            r = await client.post(
                "/api/workflows/support/runs",
                json={"input": "x", "thread_id": alices},
                headers=bob,
            )
            assert r.status_code == 404, r.text
            r = await client.post(
                "/chatkit/support",
                json={
                    "type": "threads.add_user_message",
                    "params": {
                        "thread_id": alices,
                        "input": {
                            "content": [{"type": "input_text", "text": "x"}],
                            "attachments": [],
                            "inference_options": {},
                        },
                    },
                },
                headers=bob,
            )
            assert r.status_code == 404, r.text
        codes = [
            (
                await client.post("/api/workflows/support/runs", json={"input": "hi"}, headers=bob)
            ).status_code
            for _ in range(3)
        ]
    assert codes == [200, 200, 429]
    assert len(responses.requests) == 3  # alice's run and bob's two; no refused one


async def test_the_agent_routes_say_no_store_once(settings_factory, token, responses) -> None:
    """Found by schemathesis (tests/adversarial/test_fuzz_kinds.py): the runs and threads routes set
    ``Cache-Control: no-store`` and the middleware added it again to every /api/ answer."""
    async with app_client(settings_factory()) as client:
        alice = auth(token("alice"))
        ran = await client.post("/api/workflows/support/runs", json={"input": "hi"}, headers=alice)
        thread = ran.json()["thread_id"]
        answers = [
            ran,
            await client.post(
                "/api/workflows/support/runs?stream=1", json={"input": "hi"}, headers=alice
            ),
            await client.get("/api/threads?workflow=support", headers=alice),
            await client.get(f"/api/threads/{thread}/items", headers=alice),
            await client.get("/api/threads/nope/items", headers=alice),
        ]
    for r in answers:
        assert r.headers.get_list("cache-control") == ["no-store"], (r.request.url, r.headers)
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 404]


async def test_a_session_secret_reads_back_and_runs_its_own_workflow_only(
    client, token, responses
) -> None:
    """Decided in issue 23: a ``cks_`` secret is the same user at the same workflow, so its
    workflow's read-back (threads, items) and runs accept it; every other ``/api/…`` route,
    and those routes for another workflow, answer 401."""
    responses.script(text("First."), text("Second."))
    mint = {"headers": auth(token("alice"))}
    secret = (
        await client.post("/api/chatkit/session", json={"workflow": "support"}, **mint)
    ).json()["client_secret"]
    with_secret = auth(secret)
    r = await client.post("/api/workflows/support/runs", json={"input": "hi"}, headers=with_secret)
    assert r.status_code == 200, r.text
    thread_id = r.json()["thread_id"]
    r = await client.get("/api/threads", params={"workflow": "support"}, headers=with_secret)
    assert r.status_code == 200 and [t["id"] for t in r.json()["data"]] == [thread_id]
    r = await client.get(f"/api/threads/{thread_id}/items", headers=with_secret)
    assert r.status_code == 200, r.text
    assert [i["type"] for i in r.json()["data"]] == ["user_message", "assistant_message"]
    # another workflow's thread of the same user: not found through this secret
    r = await chatkit(client, "triage", token("alice"), "threads.create", input=message("x"))
    triage_thread = sse(r.text)[0]["thread"]["id"]
    r = await client.get(f"/api/threads/{triage_thread}/items", headers=with_secret)
    assert r.status_code == 404
    refused = [
        client.get("/api/threads", params={"workflow": "triage"}, headers=with_secret),
        client.post("/api/workflows/triage/runs", json={"input": "x"}, headers=with_secret),
        client.post("/api/chatkit/session", json={"workflow": "support"}, headers=with_secret),
        client.get("/api/chatkit/workflows", headers=with_secret),
        client.post(
            "/api/chatkit/session/cancel", json={"session_id": "bsess_x"}, headers=with_secret
        ),
    ]
    for request in refused:
        r = await request
        assert r.status_code == 401, (r.request.url, r.status_code, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"


def nul_requests(thread_id: str, item_id: str) -> list[tuple[str, dict[str, Any]]]:
    """ChatKit requests naming a thread, item, cursor or attachment id with a NUL in it."""
    from .test_protocol import foreign_requests

    nul = "thr_\x00x"
    named = foreign_requests(nul, "msg_\x00", "msg_\x00")
    return [
        *named,
        ("items.list", {"thread_id": thread_id, "after": "msg_\x00"}),
        ("threads.list", {"after": nul}),
        ("threads.retry_after_item", {"thread_id": thread_id, "item_id": "msg_\x00"}),
        (
            "items.feedback",
            {"thread_id": thread_id, "item_ids": [item_id, "\x00"], "kind": "positive"},
        ),
        ("attachments.delete", {"attachment_id": "atc_\x00"}),
    ]


async def test_a_nul_in_an_id_or_cursor_is_answered_as_sqlite_answers_it(
    client, token, responses, db_url: str
) -> None:
    """Found by probing (issue 23): PostgreSQL cannot hold a NUL in text, and asyncpg's
    refusal surfaced as a 500. An id with one in it names nothing: the answers below are
    SQLite's, on both databases."""
    responses.script(text("Hello."))
    alice = token("alice")
    r = await chatkit(client, "support", alice, "threads.create", input=message("hi"))
    thread_id = sse(r.text)[0]["thread"]["id"]
    item_id = (await client.get(f"/api/threads/{thread_id}/items", headers=auth(alice))).json()[
        "data"
    ][0]["id"]
    got = []
    for type_, params in nul_requests(thread_id, item_id):
        r = await chatkit(client, "support", alice, type_, **params)
        got.append((type_, r.status_code))
    for path, params in (
        ("/api/threads/thr_%00x/items", {}),
        (f"/api/threads/{thread_id}/items", {"after": "msg_\x00"}),
        ("/api/threads", {"workflow": "support", "after": "thr_\x00"}),
    ):
        r = await client.get(path, params=params, headers=auth(alice))
        got.append((path, r.status_code))
    r = await client.post(
        "/api/workflows/support/runs",
        json={"input": "x", "thread_id": "thr_\x00"},
        headers=auth(alice),
    )
    got.append(("runs", r.status_code))
    refused = [t for t, status in got if status == 404]
    assert [t for t, status in got if status == 200] == [
        "items.list",  # with after=<NUL>: an unknown cursor is an empty page
        "threads.list",
        f"/api/threads/{thread_id}/items",
        "/api/threads",
    ]
    assert len(refused) == len(got) - 4, got


async def test_a_lone_surrogate_in_a_run_is_a_400_as_at_the_chatkit_endpoint(
    client, token, responses
) -> None:
    """Found by probing (issue 23): ``{"input": "a\\ud800"}`` (valid JSON, not encodable
    text) was a 500 from the runs route."""
    headers = {**auth(token("alice")), "Content-Type": "application/json"}
    for body in (
        b'{"input": "a\\ud800"}',
        b'{"input": {"note": "\\udfff"}}',
        b'{"input": "hi", "thread_id": "thr_\\ud800"}',
    ):
        for query in ("", "?stream=1"):
            r = await client.post(
                f"/api/workflows/support/runs{query}", content=body, headers=headers
            )
            assert r.status_code == 400, (body, query, r.status_code, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
    r = await client.post(
        "/chatkit/support",
        content=b'{"type": "threads.create", "params": {"input": {"content": [{"type": '
        b'"input_text", "text": "a\\ud800"}], "attachments": [], "inference_options": {}}}}',
        headers=headers,
    )
    assert r.status_code == 400
    assert responses.requests == []


async def _agent_backend_of(settings: Settings) -> tuple[Any, Any]:
    """(app, its AgentBackend), built as ``serve`` builds them."""
    from broker.app import build_broker, create_app
    from broker.backends.agent.backend import AgentBackend

    broker = build_broker(settings)
    (backend,) = [b for b in broker.backends if isinstance(b, AgentBackend)]
    return create_app(settings, broker=broker), backend


async def test_the_openai_client_is_closed_even_when_the_shutdown_fails_before_it(
    agent_env, tmp_path
) -> None:
    """Left open, openai-python closes it when it is collected, in a task on whatever loop runs
    then (a later test's), which logs "Task exception was never retrieved" there."""
    env = {**agent_env, "BROKER_DATABASE_URL": f"sqlite:///{tmp_path / 't.sqlite3'}"}
    app, backend = await _agent_backend_of(load_settings(env))

    async def store_fails() -> None:
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="disk went away"):
        async with app.router.lifespan_context(app):
            assert not backend._client.is_closed()
            backend.store.close = store_fails
    assert backend._client.is_closed()


async def test_a_newer_schema_stops_the_start_and_closes_what_had_started(
    agent_env, tmp_path
) -> None:
    from broker.backends.agent.store import (
        SchemaTooNew,
        SQLStore,
        resolve_database_url,
        schema_table,
    )

    url = f"sqlite:///{tmp_path / 't.sqlite3'}"
    store = SQLStore(resolve_database_url(url))
    await store.start()
    async with store._engine.begin() as conn:
        await conn.execute(schema_table.update().values(version=99))
    await store.close()
    app, backend = await _agent_backend_of(load_settings({**agent_env, "BROKER_DATABASE_URL": url}))
    with pytest.raises(SchemaTooNew):
        async with app.router.lifespan_context(app):
            pass
    assert backend._client.is_closed()
    assert backend.files._sweeper is None or backend.files._sweeper.done()
