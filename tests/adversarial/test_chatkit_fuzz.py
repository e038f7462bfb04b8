"""Hypothesis over ChatKit request bodies at ``POST /chatkit/<name>`` (issue 15), against a real
``chatkit-broker serve`` in mock mode and one serving an agent workflow (SQLite file, the fake
Responses API behind it): about half the bodies are valid ChatKit requests of every type, built
from chatkit-python's own request models with the ids of real threads and items
(tests/support/chatkit_requests.py), the rest any JSON and near-ChatKit JSON with odd params.
Each is either a valid answer (JSON or an event stream) or a 4xx in the SPEC error shape naming
the problem; never a 5xx, never a traceback or a secret in the log. The split (valid or not,
by status) is printed."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import ROOT
from tests.support.adversarial import SecretWatch, broker_process, live_env, make_token, mock_env
from tests.support.chatkit_requests import is_valid, valid_requests
from tests.support.contract import assert_spec_error
from tests.support.fake_responses import FakeResponses, FakeResponsesServer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SESSION_SECRET = "session-secret-that-is-at-least-32-bytes!"
TYPES = [
    "threads.create",
    "threads.add_user_message",
    "threads.get_by_id",
    "threads.list",
    "threads.update",
    "threads.delete",
    "threads.retry_after_item",
    "threads.custom_action",
    "threads.sync_custom_action",
    "threads.add_client_tool_output",
    "threads.add_structured_input",
    "items.list",
    "items.feedback",
    "attachments.create",
    "attachments.delete",
    "input.transcribe",
    "threads.nope",
    "",
]
watch = SecretWatch()
FIGURES: Counter[str] = Counter()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
message = st.fixed_dictionaries(
    {
        "content": st.one_of(
            st.just([{"type": "input_text", "text": "hi"}]),
            st.lists(st.dictionaries(st.sampled_from(["type", "text"]), json_values), max_size=2),
            json_values,
        ),
        "attachments": st.one_of(st.just([]), st.lists(st.text(max_size=10), max_size=2)),
        "inference_options": st.one_of(st.just({}), json_values),
    }
)
ids = st.one_of(st.text(max_size=40), st.just("thr_" + "0" * 32), json_values)
params = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "thread_id": ids,
            "item_id": ids,
            "item_ids": st.lists(ids, max_size=3),
            "attachment_id": ids,
            "input": st.one_of(message, json_values),
            "title": json_values,
            "limit": st.one_of(st.integers(-5, 10**9), json_values),
            "order": st.sampled_from(["asc", "desc", "sideways"]),
            "after": ids,
            "action": st.one_of(st.just({"type": "x", "payload": {}}), json_values),
            "result": json_values,
            "kind": st.sampled_from(["positive", "negative", "meh"]),
        },
    ),
)
GOOD_MESSAGE = {
    "content": [{"type": "input_text", "text": "hello"}],
    "attachments": [],
    "inference_options": {},
}
valid = st.sampled_from(
    [
        {"type": "threads.list", "params": {}},
        {"type": "threads.list", "params": {"limit": 5, "order": "asc"}},
        {"type": "threads.create", "params": {"input": GOOD_MESSAGE}},
    ]
)
hostile = st.one_of(
    valid,
    st.builds(lambda t, p: {"type": t, "params": p}, st.sampled_from(TYPES), params),
    st.builds(
        lambda t, p, x: {"type": t, "params": p, **x},
        st.sampled_from(TYPES),
        params,
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    ),
    json_values,
)


@pytest.fixture(scope="module")
def responses() -> Iterator[FakeResponses]:
    server = FakeResponsesServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory):
    # no pause between canned pieces: the answers, not the pacing, are under test here
    env = mock_env(BROKER_MOCK_STEP="0")
    with broker_process(env, tmp_path_factory.mktemp("mock")) as bp:
        yield bp


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, responses: FakeResponses):
    where: Path = tmp_path_factory.mktemp("agent")
    env = live_env(
        responses.base_url,
        BROKER_WORKFLOWS="support=examples.agent.support_agent:agent",
        BROKER_SESSION_SECRET=SESSION_SECRET,
        BROKER_DATABASE_URL=f"sqlite:///{where / 'threads.sqlite3'}",
        PYTHONPATH=str(ROOT),  # the broker runs in a temp dir
    )
    with broker_process(env, where) as bp:
        yield bp


def _credential(http: httpx.Client, mode: str) -> str:
    if mode == "agent":
        tok = make_token("fuzzer")
        watch.add(tok)
        r = http.post(
            "/api/chatkit/session",
            json={"workflow": "support"},
            headers={"Authorization": f"Bearer {tok}"},
        )
    else:
        r = http.post("/api/chatkit/session", json={"workflow": "support"})
    assert r.status_code == 200, r.text
    secret = r.json()["client_secret"]
    watch.add(secret)
    return secret


def _known_ids(http: httpx.Client, headers: dict[str, str]) -> dict[str, list[str]]:
    """A real thread of the fuzzer's and its items — ids a valid request can name, each item
    in that thread — and one more thread, which only ``threads.delete`` names."""
    for text in ("kept", "doomed"):
        created = http.post(
            "/chatkit/support",
            json={
                "type": "threads.create",
                "params": {
                    "input": {**GOOD_MESSAGE, "content": [{"type": "input_text", "text": text}]}
                },
            },
            headers=headers,
        )
        assert created.status_code == 200, created.text
    listed = http.post(
        "/chatkit/support", json={"type": "threads.list", "params": {}}, headers=headers
    )
    doomed, *threads = [t["id"] for t in listed.json()["data"]]  # newest first
    items = []
    for thread in threads:
        page = http.post(
            "/chatkit/support",
            json={"type": "items.list", "params": {"thread_id": thread}},
            headers=headers,
        )
        items += [i["id"] for i in page.json()["data"]]
    assert len(threads) == 1 and items, (threads, items)
    return {"thread": threads, "item": items, "doomed thread": [doomed]}


@pytest.mark.parametrize("mode", ["mock", "agent"])
def test_any_json_at_the_chatkit_endpoint_is_an_answer_or_a_named_400(
    mode: str, request: pytest.FixtureRequest
) -> None:
    broker = request.getfixturevalue(mode)
    statuses: Counter[int] = Counter()
    split: Counter[tuple[str, int]] = Counter()
    with httpx.Client(base_url=broker.url, timeout=15) as http:
        secret = _credential(http, mode)
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        # valid requests of every type and bodies chatkit-python refuses, taken in turn (a
        # one_of would lean on its first branch), so each side gets half the examples
        pairs = st.tuples(
            valid_requests(_known_ids(http, headers)), hostile.filter(lambda b: not is_valid(b))
        )
        turn = iter(range(10**9))

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(pair=pairs)
        def run(pair: tuple[object, object]) -> None:
            body = pair[next(turn) % 2]
            r = http.post("/chatkit/support", content=json.dumps(body), headers=headers)
            statuses[r.status_code] += 1
            split["valid" if is_valid(body) else "invalid", r.status_code] += 1
            assert r.status_code < 500, (body, r.status_code, r.text[:500])
            if r.status_code >= 400:
                error = assert_spec_error(r.status_code, r.content, dict(r.headers))
                assert error["message"].strip(), body
                assert "Traceback" not in error["message"]
                # 415: a file type the workflow does not take; 429: more files waiting to be
                # sent than a user may have (both from attachments.create)
                assert r.status_code in (400, 404, 413, 415, 429), (body, r.text[:300])
            else:
                ctype = r.headers["content-type"]
                assert ctype.startswith(("application/json", "text/event-stream")), ctype
                if ctype.startswith("application/json"):
                    json.loads(r.content)

        run()
    FIGURES[mode] = sum(statuses.values())
    valid_n = sum(n for (kind, _), n in split.items() if kind == "valid")
    print(
        f"chatkit bodies ({mode}): {dict(sorted(statuses.items()))}; valid ChatKit requests "
        f"{valid_n}: {_by_status(split, 'valid')}, invalid {sum(statuses.values()) - valid_n}: "
        f"{_by_status(split, 'invalid')}"
    )
    assert statuses[400] > 0 and statuses[200] > 0
    assert valid_n >= 0.3 * sum(statuses.values()), split  # a real share of valid requests
    assert split["valid", 200] >= 0.3 * valid_n, split  # and most of those answered
    logs = broker.logs()
    assert "Traceback" not in logs
    watch.check(logs)


def _by_status(split: Counter[tuple[str, int]], kind: str) -> dict[int, int]:
    return dict(sorted((status, n) for (k, status), n in split.items() if k == kind))
